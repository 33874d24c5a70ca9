// SPDX-License-Identifier: MIT
// SafetensorsFile: a memory-mapped, fully validated safetensors file. tensor(name) gives a
// zero-copy view (kept alive by the mapping) when the data is aligned, a copy otherwise,
// and touches only that tensor's pages, so a streaming merge can read one tensor at a time.
#pragma once

#include <torch/torch.h>

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <btx/io/detail/file_range.hpp>
#include <btx/io/detail/safetensors_header.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little,
              "btx's safetensors I/O assumes a little-endian host");

namespace detail {

// A read-only file mapped copy-on-write: in-place ops on a view never reach the file.
class Mapping {
 public:
  explicit Mapping(const std::filesystem::path& file) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw FormatError("cannot open safetensors file " + file.string() + ": " +
                        std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw FormatError("safetensors file " + file.string() + " is not a regular file");
    }
    size_ = uint64_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw FormatError("cannot mmap safetensors file " + file.string() + ": " +
                          std::strerror(err));
      }
      data_ = static_cast<uint8_t*>(p);
    }
    ::close(fd);  // the mapping stays valid after close
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  [[nodiscard]] uint8_t* data() const { return data_; }
  [[nodiscard]] uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace detail

class SafetensorsFile {
 public:
  // Maps and validates `file`; throws FormatError naming the file (and tensor) otherwise.
  explicit SafetensorsFile(std::filesystem::path file)
      : path_(std::move(file)), map_(std::make_shared<detail::Mapping>(path_)) {
    const std::string where = "safetensors file " + path_.string();
    if (map_->size() < 8) {
      throw FormatError(where + " is truncated: " + std::to_string(map_->size()) +
                        " bytes, less than the 8-byte header length");
    }
    uint64_t n = 0;
    std::memcpy(&n, map_->data(), 8);
    if (n > kMaxHeaderBytes) {
      throw FormatError(where + ": header length " + std::to_string(n) +
                        " exceeds the 100,000,000-byte limit");
    }
    if (n > map_->size() - 8) {
      throw FormatError(where + " is truncated: header length " + std::to_string(n) + " but only " +
                        std::to_string(map_->size() - 8) + " bytes follow");
    }
    header_ = parse_safetensors_header(
        std::string_view(reinterpret_cast<const char*>(map_->data()) + 8, n), map_->size(),
        path_.string());
    for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
  }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  // Where tensor `name`'s bytes lie in the file (absolute offsets).
  [[nodiscard]] FileRange range(const std::string& name) const {
    const auto& t = info(name);
    return {path_, header_.data_start + t.begin, t.end - t.begin};
  }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const {
    return header_.metadata;
  }
  [[nodiscard]] const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  // Where the data section starts (tensor offsets are relative to it).
  [[nodiscard]] uint64_t data_start() const { return header_.data_start; }
  [[nodiscard]] bool contains(const std::string& name) const { return index_.count(name) != 0; }
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, i] : index_) out.push_back(name);
    return out;
  }
  [[nodiscard]] const TensorInfo& info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
      throw FormatError("tensor \"" + name + "\" not found in safetensors file " + path_.string());
    }
    return header_.tensors[it->second];
  }

  // A CPU tensor viewing the mapped bytes (aligned) or a copy (unaligned). Writing to a
  // view changes only this process's copy-on-write pages, never the file.
  [[nodiscard]] torch::Tensor tensor(const std::string& name) const {
    const auto& t = info(name);
    const auto options = torch::TensorOptions().dtype(t.dtype.type);
    if (t.end == t.begin) return torch::empty(t.shape, options);
    uint8_t* src = map_->data() + header_.data_start + t.begin;
    if (reinterpret_cast<uintptr_t>(src) % t.dtype.size == 0) {
      auto keep = map_;
      return torch::from_blob(
          src, t.shape, [keep](void*) mutable { keep.reset(); }, options);
    }
    auto out = torch::empty(t.shape, options);
    std::memcpy(out.data_ptr(), src, t.end - t.begin);
    return out;
  }

  // Every tensor, by name (views where aligned).
  [[nodiscard]] std::map<std::string, torch::Tensor> load_all() const {
    std::map<std::string, torch::Tensor> out;
    for (const auto& t : header_.tensors) out.emplace(t.name, tensor(t.name));
    return out;
  }

 private:
  std::filesystem::path path_;
  std::shared_ptr<detail::Mapping> map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// Reads every tensor of one safetensors file.
inline std::map<std::string, torch::Tensor> load_safetensors(const std::filesystem::path& file) {
  return SafetensorsFile(file).load_all();
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
