// SPDX-License-Identifier: MIT
// The default tokeniser: one token per byte (vocabulary 256), so any text on any machine
// tokenises the same way with nothing to download. Pre-tokenised user data bypasses it.
#pragma once

#include <torch/torch.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct ByteTokenizer {
  static constexpr int64_t vocab_size = 256;

  [[nodiscard]] static std::vector<int64_t> encode(std::string_view text) {
    std::vector<int64_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  // [N] uint8 tensor holding the bytes; compact storage for corpora.
  [[nodiscard]] static torch::Tensor encode_tensor(std::string_view text) {
    auto out = torch::empty({int64_t(text.size())}, torch::kUInt8);
    // memcpy from/to a null pointer is undefined even for 0 bytes (an empty tensor has none).
    if (!text.empty()) std::memcpy(out.data_ptr(), text.data(), text.size());
    return out;
  }
  [[nodiscard]] static std::string decode(const std::vector<int64_t>& ids) {
    std::string text;
    text.reserve(ids.size());
    for (auto id : ids) text.push_back(static_cast<char>(id & 0xff));
    return text;
  }
};

BTX_NAMESPACE_END
}  // namespace btx
