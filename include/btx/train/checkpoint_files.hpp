// SPDX-License-Identifier: MIT
// The files of training checkpoints (btx/train/checkpoint.hpp): step-NNNNNN folder names,
// durable small writes, and validated reads (sizes as recorded, finite values, names and
// shapes that fit the model).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <btx/io/atomic_dir.hpp>
#include <btx/io/detail/file_hash.hpp>
#include <btx/io/detail/stale_temporaries.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// A checkpoint folder that is damaged (unreadable, truncated, non-finite): loading falls
// back to the previous one. A checkpoint that does not fit the model is an error instead.
class CorruptCheckpoint : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

inline constexpr const char* kCheckpointFormat = "btx-train-checkpoint";

inline std::string step_folder_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

// Step number of a complete checkpoint folder name ("step-000123"), or -1.
inline int64_t step_of_folder(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5) return -1;
  const std::string digits = name.substr(5);
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

// Complete-looking checkpoint folders in `dir`, newest first.
inline std::vector<std::pair<int64_t, std::filesystem::path>> checkpoint_folders(
    const std::filesystem::path& dir) {
  std::vector<std::pair<int64_t, std::filesystem::path>> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const int64_t step = step_of_folder(entry.path().filename().string());
    if (step >= 0 && entry.is_directory()) out.emplace_back(step, entry.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

inline bool is_finite_tensor(const torch::Tensor& t) {
  if (!t.is_floating_point() && !t.is_complex()) return true;
  return t.numel() == 0 || torch::isfinite(t).all().item<bool>();
}

inline void write_text_durably(const std::filesystem::path& file, const std::string& text) {
  (void)io::collect_stale_temporaries(file);
  const auto tmp = file.string() + ".tmp-" + io::detail::random_suffix();
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  io::detail::fsync_path(tmp);
  std::filesystem::rename(tmp, file);
  io::detail::fsync_path(file.parent_path());
}

// The tensors of file `name` in `folder`: checks existence, size and finiteness. The
// file's safetensors metadata goes to `metadata` when given.
inline std::map<std::string, torch::Tensor> read_tensors(
    const std::filesystem::path& folder, const std::string& name, const nlohmann::json& state,
    std::map<std::string, std::string>* metadata = nullptr) {
  const auto file = folder / name;
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) throw CorruptCheckpoint("checkpoint file " + file.string() + " is missing");
  if (state.contains("files") && state["files"].contains(name) &&
      state["files"][name].get<uint64_t>() != size) {
    throw CorruptCheckpoint("checkpoint file " + file.string() + " has " + std::to_string(size) +
                            " bytes, state.json recorded " + state["files"][name].dump());
  }
  // A bit flip or an edit keeps the size: the recorded hash catches it (older checkpoints
  // recorded none).
  if (state.contains("hashes") && state["hashes"].contains(name)) {
    const std::string recorded = state["hashes"][name].get<std::string>();
    std::string now;
    try {
      now = io::xxh3_128_file(file);
    } catch (const io::FormatError& e) {
      throw CorruptCheckpoint(e.what());
    }
    if (now != recorded) {
      throw CorruptCheckpoint("checkpoint file " + file.string() + " has XXH3-128 " + now +
                              ", state.json recorded " + recorded + " (damaged after writing)");
    }
  }
  std::map<std::string, torch::Tensor> out;
  try {
    const io::SafetensorsFile tensors(file);
    for (auto& [k, v] : tensors.load_all()) out[k] = v.clone();
    if (metadata) *metadata = tensors.metadata();
  } catch (const io::FormatError& e) {
    throw CorruptCheckpoint(e.what());
  }
  for (const auto& [k, v] : out) {
    if (!is_finite_tensor(v)) {
      throw CorruptCheckpoint("tensor \"" + k + "\" in checkpoint file " + file.string() +
                              " contains NaN or Inf; a checkpoint never does, so it is damaged");
    }
  }
  return out;
}

// tensors.at(name), checked against the shape and dtype of `like` (unless undefined).
inline const torch::Tensor& expect(const std::map<std::string, torch::Tensor>& tensors,
                                   const std::string& name, const torch::Tensor& like,
                                   const std::filesystem::path& file) {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    throw std::runtime_error("tensor \"" + name + "\" is missing from checkpoint file " +
                             file.string() + "; was it written for a different model?");
  }
  if (like.defined() &&
      (it->second.sizes() != like.sizes() || it->second.scalar_type() != like.scalar_type())) {
    throw std::runtime_error("tensor \"" + name + "\" in checkpoint file " + file.string() +
                             " is " + c10::str(it->second.sizes()) + " " +
                             c10::toString(it->second.scalar_type()) + ", the model has " +
                             c10::str(like.sizes()) + " " + c10::toString(like.scalar_type()) +
                             "; was it written for a different model?");
  }
  return it->second;
}

}  // namespace detail

BTX_NAMESPACE_END
}  // namespace btx
