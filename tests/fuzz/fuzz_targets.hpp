// SPDX-License-Identifier: MIT
// The bodies of btx's fuzz targets, shared by the libFuzzer entry points (tests/fuzz/fuzz_*.cpp)
// and the unit test that replays the seed corpus and every saved crash (test_fuzz_inputs.cpp).
// Each target accepts any bytes: the reader may refuse them with its documented error, but
// must never crash, leak out another exception type, or break its own promises.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <sys/mman.h>
#include <unistd.h>

#include <btx/io/checkpoint_reader.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/models/llama/hf_config.hpp>

#include "fuzz_common.hpp"

namespace btx::fuzz {

// Reads every byte of `t` (CPU, any dtype) so the sanitizers see out-of-bounds data.
inline uint64_t touch(const torch::Tensor& t) {
  const auto c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  uint64_t sum = 0;
  for (int64_t i = 0; i < int64_t(c.nbytes()); ++i) sum += p[i];
  return sum;
}

// Every tensor of an opened file agrees with its header entry and can be read.
inline void check_file(const io::SafetensorsFile& file) {
  for (const auto& info : file.tensors()) {
    if (!file.contains(info.name)) broken("tensors() lists \"" + info.name + "\" but !contains");
    const auto t = file.tensor(info.name);
    if (t.sizes().vec() != info.shape) broken("tensor \"" + info.name + "\" has the wrong shape");
    if (uint64_t(t.nbytes()) != info.end - info.begin) {
      broken("tensor \"" + info.name + "\" has the wrong byte size");
    }
    (void)touch(t);
  }
  if (file.names().size() != file.tensors().size()) broken("names() and tensors() disagree");
  (void)file.metadata();
}

// Any bytes as a safetensors file (an in-memory file, reached through /proc/self/fd).
inline void safetensors_bytes(const uint8_t* data, size_t size) {
  const int fd = ::memfd_create("btx-fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) broken("memfd_create failed");
  for (size_t done = 0; done < size;) {
    const ssize_t w = ::write(fd, data + done, size - done);
    if (w <= 0) broken("write to memfd failed");
    done += size_t(w);
  }
  try {
    const io::SafetensorsFile file("/proc/self/fd/" + std::to_string(fd));
    check_file(file);
  } catch (const io::FormatError&) {
    // a refused file: the documented outcome for malformed input
  }
  ::close(fd);
}

// A checkpoint folder whose model.safetensors.index.json is the fuzzer's; the shards (and
// the traps around them) are fixed. The index may name any of:
//   a.safetensors {x, y}, b.safetensors {z}, sub/c.safetensors {w}, dup.safetensors {x},
//   empty.safetensors (0 bytes), escape.safetensors -> ../outside/o.safetensors {o},
//   up -> .. (a symlinked directory leaving the folder), sub (a directory).
class IndexFolder {
 public:
  IndexFolder() {
    namespace fs = std::filesystem;
    std::string tmpl = (fs::temp_directory_path() / "btx-fuzz-index-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) broken("mkdtemp failed");
    base_ = tmpl;
    dir_ = base_ / "ckpt";
    fs::create_directories(dir_ / "sub");
    fs::create_directories(base_ / "outside");
    const auto f32 = torch::arange(2, torch::kFloat32);
    io::save_safetensors(dir_ / "a.safetensors",
                         {{"x", f32}, {"y", torch::ones({1}, torch::kLong)}});
    io::save_safetensors(dir_ / "b.safetensors", {{"z", torch::ones({3}, torch::kBFloat16)}});
    io::save_safetensors(dir_ / "sub" / "c.safetensors", {{"w", f32}});
    io::save_safetensors(dir_ / "dup.safetensors", {{"x", f32}});
    io::save_safetensors(base_ / "outside" / "o.safetensors", {{"o", f32}});
    std::ofstream(dir_ / "empty.safetensors").flush();
    fs::create_symlink("../outside/o.safetensors", dir_ / "escape.safetensors");
    fs::create_directory_symlink("..", dir_ / "up");
    root_ = fs::weakly_canonical(dir_);
  }
  IndexFolder(const IndexFolder&) = delete;
  IndexFolder& operator=(const IndexFolder&) = delete;
  ~IndexFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(base_, ignored);
  }

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

  // Writes the index, opens the folder, and checks every tensor it lists.
  void run(const uint8_t* data, size_t size) const {
    {
      std::ofstream out(dir_ / "model.safetensors.index.json", std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
    }
    try {
      const io::CheckpointReader reader(dir_);
      for (const auto& name : reader.names()) {
        const auto& file = reader.file_of(name);
        const auto path = std::filesystem::weakly_canonical(file.path());
        if (path.parent_path() != root_ && path.parent_path() != root_ / "sub") {
          broken("tensor \"" + name + "\" was read from " + path.string() + ", outside " +
                 root_.string());
        }
        if (!file.contains(name)) broken("file_of(\"" + name + "\") lacks it");
        (void)touch(reader.tensor(name));
        (void)reader.info(name);
      }
    } catch (const io::FormatError&) {
      // refused index
    } catch (const std::filesystem::filesystem_error&) {
      // a shard name the OS refuses (too long, ...): named in the message
    }
  }

 private:
  std::filesystem::path base_, dir_, root_;
};

inline void index_bytes(const uint8_t* data, size_t size) {
  static const IndexFolder folder;
  folder.run(data, size);
}

// The fields btx reads back; a config written by btx must read back the same.
inline bool same_config(const hf::HFConfig& a, const hf::HFConfig& b) {
  const auto& x = a.decoder;
  const auto& y = b.decoder;
  const bool llama =
      x.vocab_size == y.vocab_size && x.hidden_size == y.hidden_size &&
      x.intermediate_size == y.intermediate_size && x.num_hidden_layers == y.num_hidden_layers &&
      x.num_attention_heads == y.num_attention_heads &&
      x.num_key_value_heads == y.num_key_value_heads &&
      x.resolved_head_dim() == y.resolved_head_dim() && x.rms_norm_eps == y.rms_norm_eps &&
      x.rope_theta == y.rope_theta && x.max_position_embeddings == y.max_position_embeddings &&
      x.tie_word_embeddings == y.tie_word_embeddings &&
      x.initializer_range == y.initializer_range && a.dtype == b.dtype;
  if (!llama || a.moe.has_value() != b.moe.has_value()) return false;
  return !a.moe || (a.moe->num_experts == b.moe->num_experts &&
                    active_experts(*a.moe) == active_experts(*b.moe) &&
                    a.moe->load_balance_alpha == b.moe->load_balance_alpha);
}

// Any bytes as config.json: refused with std::runtime_error, or read into a config that
// validates and survives a write/read round trip.
inline void config_bytes(const uint8_t* data, size_t size) {
  hf::HFConfig config;
  try {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    config = hf::config_from_json(io::detail::parse_json_strict(text, "config.json"));
  } catch (const std::runtime_error&) {
    return;
  }
  try {
    config.decoder.validate();
  } catch (const std::exception& e) {
    broken(std::string("an accepted config does not validate: ") + e.what());
  }
  const auto written = config.moe
                           ? hf::mixtral_config_json(config.decoder, *config.moe, config.dtype)
                           : hf::llama_config_json(config.decoder, config.dtype);
  hf::HFConfig again;
  try {
    again = hf::config_from_json(nlohmann::json::parse(written.dump()), "rewritten config.json");
  } catch (const std::exception& e) {
    broken(std::string("btx cannot read the config it wrote: ") + e.what());
  }
  if (!same_config(config, again)) broken("config changed in a write/read round trip");
}

}  // namespace btx::fuzz
