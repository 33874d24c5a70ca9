// SPDX-License-Identifier: MIT
// CheckpointReader: the tensors of a Hugging Face checkpoint folder (model.safetensors, or
// model.safetensors.index.json and its shards), read one at a time by name. The index is
// untrusted input: shard names that leave the folder, missing shards, tensors listed
// twice, or tensors absent from their shard are refused.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <btx/io/detail/safetensors_header.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

namespace detail {

// `dir / name`, refusing names that resolve (symlinks included) outside `dir`.
inline std::filesystem::path shard_path(const std::filesystem::path& dir, const std::string& name,
                                        const std::string& index, const std::string& tensor) {
  const std::string where =
      "index " + index + " maps tensor \"" + tensor + "\" to \"" + name + "\"";
  const std::filesystem::path rel(name);
  if (name.empty() || rel.is_absolute() || rel.has_root_name() || rel.has_root_directory()) {
    throw FormatError(where + ": shard names must be relative file names inside the folder");
  }
  for (const auto& part : rel) {
    if (part == "..") throw FormatError(where + ": '..' escapes the checkpoint folder");
  }
  const auto root = std::filesystem::weakly_canonical(dir);
  const auto full = std::filesystem::weakly_canonical(dir / rel);
  const auto end = std::mismatch(root.begin(), root.end(), full.begin(), full.end()).first;
  if (end != root.end() || full == root) {
    throw FormatError(where + ": it resolves to " + full.string() +
                      ", outside the checkpoint folder " + root.string());
  }
  return full;
}

inline std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw FormatError("cannot read " + file.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace detail

class CheckpointReader {
 public:
  explicit CheckpointReader(std::filesystem::path dir) : dir_(std::move(dir)) {
    const auto single = dir_ / "model.safetensors";
    const auto index = dir_ / "model.safetensors.index.json";
    if (std::filesystem::is_regular_file(single)) {
      files_.push_back(std::make_shared<SafetensorsFile>(single));
      for (const auto& t : files_[0]->tensors()) where_[t.name] = 0;
    } else if (std::filesystem::is_regular_file(index)) {
      read_index(index);
    } else {
      throw FormatError("no model.safetensors or model.safetensors.index.json in " + dir_.string());
    }
  }

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] bool contains(const std::string& name) const { return where_.count(name) != 0; }
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, f] : where_) out.push_back(name);
    return out;
  }
  // The file holding `name`; throws FormatError if the checkpoint lacks it.
  [[nodiscard]] const SafetensorsFile& file_of(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) {
      throw FormatError("tensor \"" + name + "\" not found in checkpoint " + dir_.string());
    }
    return *files_[it->second];
  }
  [[nodiscard]] const TensorInfo& info(const std::string& name) const {
    return file_of(name).info(name);
  }
  // A CPU tensor (a view of the mapped file where aligned); other tensors stay unread.
  [[nodiscard]] torch::Tensor tensor(const std::string& name) const {
    return file_of(name).tensor(name);
  }

 private:
  void read_index(const std::filesystem::path& index) {
    const std::string idx = index.string();
    auto doc = detail::parse_json_strict(detail::read_text(index), "index " + idx);
    if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
      throw FormatError("index " + idx + " has no \"weight_map\" object");
    }
    std::map<std::filesystem::path, size_t> opened;
    for (const auto& [tensor, shard] : doc["weight_map"].items()) {
      if (!shard.is_string()) {
        throw FormatError("index " + idx + ": tensor \"" + tensor + "\" maps to a non-string");
      }
      const auto name = shard.get<std::string>();
      const auto path = detail::shard_path(dir_, name, idx, tensor);
      auto it = opened.find(path);
      if (it == opened.end()) {
        if (!std::filesystem::is_regular_file(path)) {
          throw FormatError("shard " + path.string() + " (holding tensor \"" + tensor +
                            "\" per index " + idx + ") is missing");
        }
        files_.push_back(std::make_shared<SafetensorsFile>(path));
        it = opened.emplace(path, files_.size() - 1).first;
      }
      if (!files_[it->second]->contains(tensor)) {
        throw FormatError("index " + idx + " maps tensor \"" + tensor + "\" to " + path.string() +
                          ", which does not contain it");
      }
      where_[tensor] = it->second;
    }
    // A tensor stored in two shards is ambiguous even if the index names only one.
    std::map<std::string, std::string> seen;
    for (const auto& f : files_) {
      for (const auto& t : f->tensors()) {
        auto [it, fresh] = seen.emplace(t.name, f->path().string());
        if (!fresh) {
          throw FormatError("tensor \"" + t.name + "\" is stored twice: in " + it->second +
                            " and " + f->path().string());
        }
      }
    }
  }

  std::filesystem::path dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
