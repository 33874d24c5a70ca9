// SPDX-License-Identifier: MIT
// safetensors writers. SafetensorsStreamWriter declares names/dtypes/shapes first and then
// takes tensor data one at a time, in any order, so a merge holds ~one tensor in memory.
// Files are written to "<file>.tmp-<pid>" and renamed into place by finish(): a file that
// was not finished never appears at its path. A writer whose file will be fsynced writes
// it with O_DIRECT (DiskWrites::direct: io/direct_writer.hpp), or starts the disk on each
// tensor as it is written (DiskWrites::early: io/early_writeback.hpp).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <btx/io/detail/direct_writer.hpp>
#include <btx/io/detail/early_writeback.hpp>
#include <btx/io/detail/file_range.hpp>
#include <btx/io/detail/safetensors_header.hpp>
#include <btx/io/detail/stale_temporaries.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// One tensor a stream writer will receive.
struct TensorDecl {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
};

inline uint64_t tensor_bytes(const TensorDecl& d) {
  uint64_t n = dtype_from_torch(d.dtype).size;
  for (auto s : d.shape)
    n = detail::checked_mul(n, uint64_t(s), "tensor \"" + d.name + "\" is too large");
  return n;
}

// How a stream writer's bytes reach the disk. The bytes are the same in every mode.
enum class DiskWrites {
  page_cache,  // buffered writes, left to the kernel's writeback (fastest when not fsynced)
  early,       // buffered, each finished tensor started to disk at once (EarlyWriteback)
  direct,      // O_DIRECT (DirectFile): for a file that will be fsynced; `early` where the
               // filesystem refuses O_DIRECT
};

class SafetensorsStreamWriter {
 public:
  // `engine`: the direct writes' thread and buffers, shared by the shards of a checkpoint;
  // a writer in DiskWrites::direct without one makes its own.
  SafetensorsStreamWriter(std::filesystem::path file, std::vector<TensorDecl> decls,
                          const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                          DiskWrites disk = DiskWrites::page_cache,
                          std::shared_ptr<DirectWriteEngine> engine = {})
      : file_(std::move(file)),
        tmp_(file_.string() + ".tmp-" + std::to_string(::getpid())),
        decls_(std::move(decls)) {
    // Reference order: larger dtype alignment first, then by name.
    std::sort(decls_.begin(), decls_.end(), [](const TensorDecl& a, const TensorDecl& b) {
      const auto sa = dtype_from_torch(a.dtype).size, sb = dtype_from_torch(b.dtype).size;
      return sa != sb ? sa > sb : a.name < b.name;
    });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (size_t i = 0; i < decls_.size(); ++i) {
      const auto& d = decls_[i];
      if (d.name == "__metadata__" || !index_.emplace(d.name, i).second) {
        throw std::invalid_argument("cannot write tensor \"" + d.name + "\" to " + file_.string() +
                                    ": the name is reserved or repeated");
      }
      for (auto s : d.shape) {
        if (s < 0) {
          throw std::invalid_argument("tensor \"" + d.name + "\" for " + file_.string() +
                                      " has a negative dimension");
        }
      }
      const uint64_t n = tensor_bytes(d);
      header[d.name] = {{"dtype", dtype_from_torch(d.dtype).name},
                        {"shape", d.shape},
                        {"data_offsets", {offset, offset + n}}};
      offsets_.push_back(offset);
      offset += n;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // data section aligned to 8 bytes
    data_start_ = 8 + text.size();
    total_ = data_start_ + offset;
    written_.assign(decls_.size(), false);
    (void)collect_stale_temporaries(file_);  // what killed writers of this file left
    constexpr int kCreate = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
    if (disk == DiskWrites::direct) {
      fd_ = open_direct(tmp_, kCreate);
      if (fd_ < 0) disk = DiskWrites::early;  // a filesystem without (4096-aligned) O_DIRECT
    }
    if (disk != DiskWrites::direct) fd_ = ::open(tmp_.c_str(), kCreate, 0644);
    if (fd_ < 0) {
      throw std::runtime_error("cannot create " + tmp_.string() + ": " + std::strerror(errno));
    }
    (void)::flock(fd_, LOCK_EX);  // alive while it writes (stale_temporaries.hpp)
    try {
      std::string head(8, '\0');
      const uint64_t n = text.size();
      std::memcpy(head.data(), &n, 8);  // the format is little-endian, as every host btx runs on
      head += text;
      if (disk == DiskWrites::direct) {
        if (!engine) engine = std::make_shared<DirectWriteEngine>();
        direct_ = std::make_unique<DirectFile>(fd_, tmp_.string(), total_, std::move(engine));
        direct_->write(head.data(), head.size(), 0);
      } else {
        detail::pwrite_all(fd_, head.data(), head.size(), 0, tmp_.string());
      }
    } catch (...) {  // the destructor will not run for a throwing constructor
      direct_.reset();
      ::close(fd_);
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
      throw;
    }
    if (disk == DiskWrites::early) writeback_ = std::make_unique<EarlyWriteback>(fd_);
  }
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;
  ~SafetensorsStreamWriter() {
    writeback_.reset();  // their threads use fd_
    direct_.reset();
    if (fd_ >= 0) ::close(fd_);
    if (!finished_) {
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
    }
  }

  // Writes one declared tensor, converted to its declared dtype; the shape must match.
  // write() and copy() of different tensors may run on different threads at once.
  void write(const std::string& name, const torch::Tensor& tensor) {
    const size_t i = slot_of(name);
    const auto& d = decls_[i];
    if (tensor.sizes() != torch::IntArrayRef(d.shape)) {
      throw std::invalid_argument("tensor \"" + name + "\" for " + file_.string() + " has shape " +
                                  c10::str(tensor.sizes()) + ", declared " +
                                  c10::str(torch::IntArrayRef(d.shape)));
    }
    auto data = tensor.detach().to(torch::kCPU, d.dtype).contiguous();
    claim(i);
    if (direct_) return direct_->write(data.data_ptr(), tensor_bytes(d), data_start_ + offsets_[i]);
    detail::pwrite_all(fd_, data.data_ptr(), tensor_bytes(d), data_start_ + offsets_[i],
                       tmp_.string());
    if (writeback_) writeback_->push(data_start_ + offsets_[i], tensor_bytes(d));
  }

  // Writes one declared tensor as the bytes of `range` (a source file's tensor already in
  // the declared dtype and layout), copied file to file without passing through memory.
  void copy(const std::string& name, const FileRange& range) {
    const size_t i = slot_of(name);
    const auto& d = decls_[i];
    if (range.bytes != tensor_bytes(d)) {
      throw std::invalid_argument("tensor \"" + name + "\" for " + file_.string() + " needs " +
                                  std::to_string(tensor_bytes(d)) + " bytes, the copied range of " +
                                  range.file.string() + " has " + std::to_string(range.bytes));
    }
    claim(i);
    if (direct_) return direct_->copy(range, data_start_ + offsets_[i]);
    copy_range_into(range, fd_, data_start_ + offsets_[i],
                    "tensor \"" + name + "\" into " + tmp_.string());
    if (writeback_) writeback_->push(data_start_ + offsets_[i], range.bytes);
  }

  // Checks every tensor was written, fsyncs (unless !durable), and renames the file into
  // place. Call it after every write() and copy() has returned.
  void finish(bool durable = true) {
    for (size_t i = 0; i < decls_.size(); ++i) {
      if (!written_[i]) {
        throw std::runtime_error("tensor \"" + decls_[i].name + "\" was declared but never " +
                                 "written to " + file_.string());
      }
    }
    writeback_.reset();
    if (direct_) direct_->finish();  // the padded last block is cut off below
    if (::ftruncate(fd_, off_t(total_)) != 0 || (durable && ::fsync(fd_) != 0) ||
        ::close(fd_) != 0) {
      fd_ = -1;
      throw std::runtime_error("cannot finish " + tmp_.string() + ": " + std::strerror(errno));
    }
    fd_ = -1;
    check_as_read();
    std::filesystem::rename(tmp_, file_);
    finished_ = true;
  }

  [[nodiscard]] const std::vector<TensorDecl>& declared() const { return decls_; }
  [[nodiscard]] uint64_t file_size() const { return total_; }

 private:
  // The declared slot of `name`.
  size_t slot_of(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
      throw std::invalid_argument("tensor \"" + name + "\" was not declared for " + file_.string());
    }
    return it->second;
  }
  // Re-reads the finished file's header as every reader will (SafetensorsFile validates
  // it and the file size) and checks it declares exactly what was declared here.
  void check_as_read() const {
    const SafetensorsFile f(tmp_);
    const auto& got = f.tensors();
    bool same = got.size() == decls_.size();
    for (size_t i = 0; same && i < decls_.size(); ++i) {
      const auto& t = f.info(decls_[i].name);  // throws naming a missing tensor
      same = std::string(t.dtype.name) == dtype_from_torch(decls_[i].dtype).name &&
             t.shape == decls_[i].shape && t.begin == offsets_[i];
      if (!same) {
        throw std::runtime_error("btx::io: " + tmp_.string() + " declares tensor \"" +
                                 decls_[i].name + "\" otherwise than it was written");
      }
    }
    if (!same) {
      throw std::runtime_error("btx::io: " + tmp_.string() + " declares " +
                               std::to_string(got.size()) + " tensors, " +
                               std::to_string(decls_.size()) + " were written");
    }
  }
  // Marks slot i written; a second claim of one slot is an error.
  void claim(size_t i) {
    std::lock_guard lock(claim_mutex_);
    if (written_[i]) {
      throw std::invalid_argument("tensor \"" + decls_[i].name + "\" written twice to " +
                                  file_.string());
    }
    written_[i] = true;
  }

  std::filesystem::path file_, tmp_;
  std::vector<TensorDecl> decls_;
  std::map<std::string, size_t> index_;
  std::vector<uint64_t> offsets_;
  std::vector<bool> written_;  // guarded by claim_mutex_ (packed bits share bytes)
  std::mutex claim_mutex_;
  uint64_t data_start_ = 0, total_ = 0;
  int fd_ = -1;
  std::unique_ptr<EarlyWriteback> writeback_;  // set for DiskWrites::early
  std::unique_ptr<DirectFile> direct_;         // set for DiskWrites::direct
  bool finished_ = false;
};

inline TensorDecl declare(const std::string& name, const torch::Tensor& t) {
  return {name, t.scalar_type(), t.sizes().vec()};
}

// Writes `tensors` to `file` in one go (each keeps its own dtype).
inline void save_safetensors(const std::filesystem::path& file,
                             const std::map<std::string, torch::Tensor>& tensors,
                             const std::map<std::string, std::string>& metadata = {
                                 {"format", "pt"}}) {
  std::vector<TensorDecl> decls;
  for (const auto& [name, t] : tensors) decls.push_back(declare(name, t));
  SafetensorsStreamWriter writer(file, std::move(decls), metadata);
  for (const auto& [name, t] : tensors) writer.write(name, t);
  writer.finish();
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
