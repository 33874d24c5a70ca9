// SPDX-License-Identifier: MIT
// How text becomes token ids and back, for corpora and for evaluations that generate: one
// byte per token by default (nothing to train or download), or any subword model a program
// plugs in (the pipeline demo's SentencePiece model) as two functions and a vocabulary size.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <btx/data/byte_tokenizer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct TextCodec {
  std::string name = "bytes";  // for manifests and logs
  int64_t vocab_size = ByteTokenizer::vocab_size;
  std::function<std::vector<int64_t>(std::string_view)> encode = ByteTokenizer::encode;
  std::function<std::string(const std::vector<int64_t>&)> decode = ByteTokenizer::decode;

  [[nodiscard]] static TextCodec bytes() { return {}; }
  [[nodiscard]] bool is_bytes() const { return name == "bytes"; }

  // [N] int32 ids of `text` (bytes: without a round trip through int64).
  [[nodiscard]] torch::Tensor encode_tensor(std::string_view text) const {
    if (is_bytes()) return ByteTokenizer::encode_tensor(text).to(torch::kInt32);
    const auto ids = encode(text);
    return torch::tensor(ids, torch::kInt64).to(torch::kInt32).reshape({int64_t(ids.size())});
  }
};

BTX_NAMESPACE_END
}  // namespace btx
