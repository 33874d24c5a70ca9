// SPDX-License-Identifier: MIT
// nanoGPT token files: a flat little-endian array of uint16 (or uint32 when the vocabulary
// exceeds 65535) token ids, e.g. train.bin / val.bin.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Returns [N] int32 token ids.
inline torch::Tensor read_token_file(const std::string& path, const std::string& dtype) {
  if (dtype != "uint16" && dtype != "uint32") {
    throw std::invalid_argument("token file '" + path +
                                "': token_dtype must be uint16 or uint32, got '" + dtype + "'");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("token file '" + path + "' cannot be opened");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  const size_t width = dtype == "uint16" ? 2 : 4;
  if (bytes.size() % width != 0) {
    throw std::invalid_argument("token file '" + path + "' has " + std::to_string(bytes.size()) +
                                " bytes, not a multiple of " + std::to_string(width) + " (" +
                                dtype + ")");
  }
  const int64_t n = int64_t(bytes.size() / width);
  auto out = torch::empty({n}, torch::kInt32);
  auto* dst = out.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v = 0;
    for (size_t b = 0; b < width; ++b)
      v |= uint32_t(uint8_t(bytes[size_t(i) * width + b])) << (8 * b);
    if (v > uint32_t(INT32_MAX)) {
      throw std::invalid_argument("token file '" + path + "': token " + std::to_string(v) +
                                  " at index " + std::to_string(i) + " is out of range");
    }
    dst[i] = int32_t(v);
  }
  return out;
}

// Writes [N] ids as a token file of `dtype` (uint16 or uint32) at `path`, through a temporary
// renamed into place: a reader never sees half a file. An id the dtype cannot hold is an
// error naming it and its index.
inline void write_token_file(const std::filesystem::path& path, const torch::Tensor& ids_N,
                             const std::string& dtype) {
  if (dtype != "uint16" && dtype != "uint32") {
    throw std::invalid_argument("token file '" + path.string() +
                                "': token_dtype must be uint16 or uint32, got '" + dtype + "'");
  }
  const auto ids = ids_N.to(torch::kInt64).contiguous();
  const auto* src = ids.data_ptr<int64_t>();
  const size_t width = dtype == "uint16" ? 2 : 4;
  const int64_t limit = dtype == "uint16" ? 0xFFFF : 0xFFFFFFFFLL;
  std::string bytes(size_t(ids.numel()) * width, '\0');
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (src[i] < 0 || src[i] > limit) {
      throw std::invalid_argument("token file '" + path.string() + "': id " +
                                  std::to_string(src[i]) + " at index " + std::to_string(i) +
                                  " does not fit " + dtype);
    }
    for (size_t b = 0; b < width; ++b)
      bytes[size_t(i) * width + b] = char((uint64_t(src[i]) >> (8 * b)) & 0xFF);
  }
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    if (!out) throw std::runtime_error("cannot write token file " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

BTX_NAMESPACE_END
}  // namespace btx
