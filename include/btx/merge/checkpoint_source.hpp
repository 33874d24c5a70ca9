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
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <btx/io/checkpoint_reader.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

namespace detail {
// Reads exactly n bytes at `offset` of `file` into `dst`; throws naming the file.
inline void pread_exact(const std::filesystem::path& file, void* dst, uint64_t n, uint64_t offset) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw io::FormatError("cannot open " + file.string() + ": " + std::strerror(errno));
  }
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, std::min<uint64_t>(n, 1ull << 30), off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      ::close(fd);
      throw io::FormatError("reading " + file.string() + " failed" +
                            (r == 0 ? std::string(": unexpected end of file (truncated?)")
                                    : ": " + std::string(std::strerror(err))));
    }
    p += r;
    n -= uint64_t(r);
    offset += uint64_t(r);
  }
  ::close(fd);
}
}  // namespace detail

// Every tensor of one checkpoint folder (model.safetensors or an index and its shards,
// validated by io::CheckpointReader when constructed). load(name) reads that tensor's bytes
// with pread into fresh memory rather than viewing the memory map: the pages of tensors
// already merged are then page cache, not this process's resident memory, so a streaming
// merge's peak RSS stays near the tensors it holds at once. on(device) makes a source
// whose tensors arrive on that device, so a merge computes there (btx-merge's `device`).
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
    return {name, info.shape, info.dtype.type};
  }
  [[nodiscard]] torch::Tensor load(const std::string& name) const {
    const auto& file = reader_->file_of(name);
    const auto& info = file.info(name);
    // Read into host memory (pread needs it), then moved to the compute device.
    auto out = torch::empty(info.shape, torch::dtype(info.dtype.type).device(torch::kCPU));
    if (info.end == info.begin) return out.to(device_);
    uint64_t header = 0;
    detail::pread_exact(file.path(), &header, 8, 0);
    detail::pread_exact(file.path(), out.data_ptr(), info.end - info.begin,
                        8 + header + info.begin);
    return out.to(device_);
  }
  // This source with its tensors loaded onto `device`.
  [[nodiscard]] CheckpointSource on(torch::Device device) const {
    CheckpointSource copy = *this;
    copy.device_ = device;
    return copy;
  }
  [[nodiscard]] const io::CheckpointReader& reader() const { return *reader_; }
  [[nodiscard]] std::filesystem::path dir() const { return reader_->dir(); }

 private:
  std::shared_ptr<const io::CheckpointReader> reader_;
  std::string label_;
  torch::Device device_ = torch::kCPU;
};
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
