// SPDX-License-Identifier: MIT
// Hugging Face checkpoint tensors in a folder: one model.safetensors, or shards
// model-0000K-of-0000N.safetensors of at most max_shard_bytes each plus
// model.safetensors.index.json. Streaming: declare every tensor, then write them one by one.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/io/safetensors_writer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;  // transformers' "5GB"

inline std::string shard_file_name(size_t k, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k, n);
  return buf;
}

class ShardedStreamWriter {
 public:
  // Plans shards in declaration order (as transformers does): a new shard starts when the
  // next tensor would push the current one past max_shard_bytes. A tensor larger than
  // the limit gets a shard of its own. `disk`: how the shards reach the disk
  // (SafetensorsStreamWriter's DiskWrites); direct shards share one engine, so its
  // buffers are held once, not once per shard.
  ShardedStreamWriter(std::filesystem::path dir, const std::vector<TensorDecl>& decls,
                      uint64_t max_shard_bytes = kDefaultMaxShardBytes,
                      DiskWrites disk = DiskWrites::page_cache)
      : dir_(std::move(dir)) {
    if (max_shard_bytes == 0) throw std::invalid_argument("max_shard_bytes must be > 0");
    std::vector<std::vector<TensorDecl>> shards(1);
    uint64_t current = 0;
    for (const auto& d : decls) {
      const uint64_t n = tensor_bytes(d);
      if (!shards.back().empty() && current + n > max_shard_bytes) {
        shards.emplace_back();
        current = 0;
      }
      shards.back().push_back(d);
      current += n;
      total_bytes_ += n;
    }
    const auto engine =
        disk == DiskWrites::direct ? std::make_shared<DirectWriteEngine>() : nullptr;
    for (size_t k = 0; k < shards.size(); ++k) {
      const std::string name =
          shards.size() == 1 ? "model.safetensors" : shard_file_name(k + 1, shards.size());
      for (const auto& d : shards[k]) {
        if (!shard_of_.emplace(d.name, k).second) {
          throw std::invalid_argument("tensor \"" + d.name + "\" declared twice for " +
                                      dir_.string());
        }
        weight_map_[d.name] = name;
      }
      writers_.push_back(std::make_unique<SafetensorsStreamWriter>(
          dir_ / name, shards[k], std::map<std::string, std::string>{{"format", "pt"}}, disk,
          engine));
    }
  }

  void write(const std::string& name, const torch::Tensor& tensor) {
    writer_of(name).write(name, tensor);
  }
  // The tensor as the bytes of `range`, copied file to file (SafetensorsStreamWriter::copy).
  void copy(const std::string& name, const FileRange& range) { writer_of(name).copy(name, range); }

  // Finishes every shard, then writes the index (only when there are several shards).
  void finish(bool durable = true) {
    for (auto& w : writers_) w->finish(durable);
    if (writers_.size() > 1) {
      nlohmann::ordered_json index;
      index["metadata"] = {{"total_size", total_bytes_}};
      index["weight_map"] = weight_map_;
      std::ofstream out(dir_ / "model.safetensors.index.json");
      out << index.dump(2) << "\n";
      if (!out) throw std::runtime_error("cannot write index in " + dir_.string());
    }
  }

  [[nodiscard]] size_t num_shards() const { return writers_.size(); }
  [[nodiscard]] const std::map<std::string, std::string>& weight_map() const { return weight_map_; }

 private:
  SafetensorsStreamWriter& writer_of(const std::string& name) {
    auto it = shard_of_.find(name);
    if (it == shard_of_.end()) {
      throw std::invalid_argument("tensor \"" + name + "\" was not declared for checkpoint " +
                                  dir_.string());
    }
    return *writers_[it->second];
  }

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsStreamWriter>> writers_;
  std::map<std::string, size_t> shard_of_;
  std::map<std::string, std::string> weight_map_;
  uint64_t total_bytes_ = 0;
};

// Writes `tensors` (name order) into `dir` as one file or shards + index.
inline void save_sharded(const std::filesystem::path& dir,
                         const std::map<std::string, torch::Tensor>& tensors,
                         uint64_t max_shard_bytes = kDefaultMaxShardBytes) {
  std::vector<TensorDecl> decls;
  for (const auto& [name, t] : tensors) decls.push_back(declare(name, t));
  ShardedStreamWriter writer(dir, decls, max_shard_bytes);
  for (const auto& [name, t] : tensors) writer.write(name, t);
  writer.finish();
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
