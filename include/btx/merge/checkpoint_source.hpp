// SPDX-License-Identifier: MIT
// CheckpointSource: a TensorSource over a Hugging Face checkpoint folder on disk, so a merge
// Plan reads one tensor at a time instead of loading whole models. Copies share the reader.
//
//   std::vector<btx::merge::CheckpointSource> srcs = {CheckpointSource("a"), ...};
//   auto plan = btx::merge::BtxMix<>{}.plan(srcs);
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <btx/io/checkpoint_reader.hpp>
#include <btx/io/finite_check.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// Every tensor of one checkpoint folder (model.safetensors or an index and its shards,
// validated by io::CheckpointReader when constructed). load(name) reads that tensor's bytes
// with pread into fresh memory rather than viewing the memory map: the pages of tensors
// already merged are then page cache, not this process's resident memory, so a streaming
// merge's peak RSS stays near the tensors it holds at once. on(device) makes a source
// whose tensors arrive on that device, so a merge computes there (btx-merge's `device`).
// Every tensor read, and every tensor whose bytes a merge copies unread, is checked for
// NaN and Inf first (io::NonFiniteError names tensor, file and index) unless the source
// is made with_non_finite(io::NonFinite::allow).
class CheckpointSource {
 public:
  // label: how errors name this source (default: the folder path).
  explicit CheckpointSource(const std::filesystem::path& dir, std::string label = {})
      : reader_(std::make_shared<const io::CheckpointReader>(dir)),
        label_(label.empty() ? dir.string() : std::move(label)) {}
  CheckpointSource(std::shared_ptr<const io::CheckpointReader> reader, std::string label)
      : reader_(std::move(reader)), label_(std::move(label)) {
    if (!reader_) throw std::invalid_argument("btx::merge::CheckpointSource: null reader");
  }

  [[nodiscard]] std::string label() const { return label_; }
  [[nodiscard]] std::vector<std::string> names() const { return reader_->names(); }  // sorted
  [[nodiscard]] TensorSpec spec(const std::string& name) const {
    const auto& info = reader_->info(name);
    return {name, info.shape, dtype_of(info.dtype.type)};
  }
  [[nodiscard]] torch::Tensor load(const std::string& name) const {
    const auto& file = reader_->file_of(name);
    const auto& info = file.info(name);
    // Read into host memory (pread needs it), then moved to the compute device.
    auto out = torch::empty(info.shape, torch::dtype(info.dtype.type).device(torch::kCPU));
    if (info.end == info.begin) return out.to(device_, dtype_of(info.dtype.type));
    const auto range = file.range(name);
    io::read_exact(range.file, out.data_ptr(), range.bytes, range.offset);
    io::check_finite(out, name, file.path().string(), non_finite_);
    return out.to(device_, dtype_of(info.dtype.type));
  }
  // Where tensor `name`'s bytes lie in its file, for copies that skip memory (a merge
  // writing it unchanged). The bytes are read once for the finiteness check, in chunks
  // (the copy then finds them in the page cache), since the copy itself never sees them.
  [[nodiscard]] std::optional<io::FileRange> file_range(const std::string& name) const {
    const auto& info = reader_->info(name);
    if (dtype_of(info.dtype.type) != info.dtype.type) return std::nullopt;  // cast: not bytes
    const auto range = reader_->file_of(name).range(name);
    io::check_finite(range, info.dtype.type, info.shape, name, non_finite_);
    return range;
  }
  // This source, refusing (the default) or allowing NaN and Inf in what it reads.
  [[nodiscard]] CheckpointSource with_non_finite(io::NonFinite policy) const {
    CheckpointSource copy = *this;
    copy.non_finite_ = policy;
    return copy;
  }
  // This source with its tensors loaded onto `device`.
  [[nodiscard]] CheckpointSource on(torch::Device device) const {
    CheckpointSource copy = *this;
    copy.device_ = device;
    return copy;
  }
  // This source with its floating-point tensors cast to `dtype` (integer tensors as
  // stored): experts published in different dtypes (an fp32 and a bf16 finetune of one
  // base) merged in one, as mergekit does. nullopt: every tensor as stored.
  [[nodiscard]] CheckpointSource cast_to(std::optional<torch::ScalarType> dtype) const {
    CheckpointSource copy = *this;
    copy.cast_ = dtype;
    return copy;
  }
  [[nodiscard]] torch::Device device() const { return device_; }
  [[nodiscard]] const io::CheckpointReader& reader() const { return *reader_; }
  [[nodiscard]] std::filesystem::path dir() const { return reader_->dir(); }

 private:
  std::shared_ptr<const io::CheckpointReader> reader_;
  std::string label_;
  [[nodiscard]] torch::ScalarType dtype_of(torch::ScalarType stored) const {
    return cast_ && torch::isFloatingType(stored) ? *cast_ : stored;
  }

  torch::Device device_ = torch::kCPU;
  io::NonFinite non_finite_ = io::NonFinite::refuse;
  std::optional<torch::ScalarType> cast_;
};

// Where `sources` store one tensor in different floating-point dtypes: "tensor 'x' is
// Float in 'a' but BFloat16 in 'b'" for the first such tensor; empty when they agree
// tensor by tensor (a checkpoint may keep its norms in fp32 and the rest in bf16).
inline std::string dtype_disagreement(const std::vector<CheckpointSource>& sources) {
  if (sources.empty()) return {};
  const auto& first = sources.front();
  std::vector<std::vector<std::string>> names;  // sorted, listed once per source
  for (const auto& s : sources) names.push_back(s.names());
  for (const auto& name : names.front()) {
    const auto t0 = first.reader().info(name).dtype.type;
    if (!torch::isFloatingType(t0)) continue;
    for (size_t j = 1; j < sources.size(); ++j) {
      if (!std::binary_search(names[j].begin(), names[j].end(), name)) continue;
      const auto t = sources[j].reader().info(name).dtype.type;
      if (t != t0 && torch::isFloatingType(t)) {
        return "tensor '" + name + "' is " + c10::toString(t0) + " in '" + first.label() +
               "' but " + c10::toString(t) + " in '" + sources[j].label() + "'";
      }
    }
  }
  return {};
}
static_assert(TensorSource<CheckpointSource>);

// One source per folder, each labelled by its path, loading onto `device`.
inline std::vector<CheckpointSource> checkpoint_sources(
    const std::vector<std::filesystem::path>& dirs, torch::Device device = torch::kCPU) {
  std::vector<CheckpointSource> out;
  out.reserve(dirs.size());
  for (const auto& d : dirs) out.push_back(CheckpointSource(d).on(device));
  return out;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
