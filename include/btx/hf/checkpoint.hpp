// SPDX-License-Identifier: MIT
// Hugging Face checkpoint folders <-> btx modules, for any model family. A family supplies
// a NameMap (btx parameter -> HF tensor names; packed [E, ...] experts become E tensors);
// loading checks every tensor before copying any, and write_hf_folder is btx's one HF
// checkpoint writer: config.json, side files and streamed safetensors shards through an
// AtomicDir, so a target folder is either complete or absent. Tools that know no family
// (they read config.json to find it) use btx/models/auto.hpp instead.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/core/sublayer_naming.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/io/atomic_dir.hpp>
#include <btx/io/checkpoint_reader.hpp>
#include <btx/io/detail/write_queue.hpp>
#include <btx/io/finite_check.hpp>
#include <btx/io/sharded_writer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

namespace detail {

// One HF tensor's place in a btx parameter.
struct Placement {
  std::string hf_name;
  std::string param;
  std::optional<int64_t> expert;
  std::vector<int64_t> shape;  // the HF tensor's shape
};

// Every HF tensor the named tensors map to, in order.
inline std::vector<Placement> placements(const std::vector<io::TensorDecl>& tensors,
                                         const NameMap& names) {
  std::vector<Placement> out;
  for (const auto& t : tensors) {
    const bool packed = names.is_packed_experts(t.name);
    if (packed && t.shape.empty()) {
      throw std::invalid_argument("MoE parameter " + t.name + " must be packed [E, ...]");
    }
    const auto hf_names = names.to_hf(t.name, packed ? t.shape[0] : 0);
    if (!packed && hf_names.size() != 1) {
      throw std::logic_error("btx::hf: the name map gives " + std::to_string(hf_names.size()) +
                             " HF names for the unpacked tensor " + t.name);
    }
    for (size_t j = 0; j < hf_names.size(); ++j) {
      out.push_back({hf_names[j], t.name,
                     packed ? std::optional<int64_t>(int64_t(j)) : std::nullopt,
                     packed ? std::vector<int64_t>(t.shape.begin() + 1, t.shape.end()) : t.shape});
    }
  }
  return out;
}

inline std::vector<io::TensorDecl> parameter_decls(const torch::nn::Module& model) {
  std::vector<io::TensorDecl> out;
  for (const auto& p : model.named_parameters()) {
    out.push_back({p.key(), p.value().scalar_type(), p.value().sizes().vec()});
  }
  return out;
}

// Tensors a checkpoint may carry that no btx parameter needs.
inline bool is_harmless_extra(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream f(file, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + file.string());
}

}  // namespace detail

// Copies a checkpoint's tensors into `model`'s parameters by mapped names, converting to
// each parameter's dtype and device. Missing tensors, wrong shapes and unexpected tensors
// throw io::FormatError naming the tensor and file, a NaN or Inf io::NonFiniteError (unless
// `non_finite` allows it); nothing is copied unless all pass.
inline void load_hf_weights(torch::nn::Module& model, const io::CheckpointReader& ckpt,
                            const NameMap& names,
                            io::NonFinite non_finite = io::NonFinite::refuse) {
  const auto plan = detail::placements(detail::parameter_decls(model), names);
  std::set<std::string> used;
  for (const auto& pl : plan) {
    if (!ckpt.contains(pl.hf_name)) {
      throw io::FormatError("checkpoint " + ckpt.dir().string() + " lacks tensor \"" + pl.hf_name +
                            "\" (for btx parameter " + pl.param + ")");
    }
    const auto& info = ckpt.info(pl.hf_name);
    if (info.shape != pl.shape) {
      throw io::FormatError("tensor \"" + pl.hf_name + "\" in " +
                            ckpt.file_of(pl.hf_name).path().string() + " has shape " +
                            c10::str(torch::IntArrayRef(info.shape)) + " but the model expects " +
                            c10::str(torch::IntArrayRef(pl.shape)) + " (config mismatch?)");
    }
    if (!used.count(pl.hf_name)) {  // read once here, from the mapping the copy reuses
      io::check_finite(ckpt.tensor(pl.hf_name), pl.hf_name,
                       ckpt.file_of(pl.hf_name).path().string(), non_finite);
    }
    used.insert(pl.hf_name);
  }
  auto params = model.named_parameters();
  for (const auto& name : ckpt.names()) {
    if (used.count(name) || detail::is_harmless_extra(name)) continue;
    // A tied checkpoint may still store lm_head as a copy of the embedding.
    if (name == "lm_head.weight" && params.contains("model.embed_tokens.weight") &&
        ckpt.contains("model.embed_tokens.weight") &&
        torch::equal(ckpt.tensor(name), ckpt.tensor("model.embed_tokens.weight"))) {
      continue;
    }
    throw io::FormatError("unexpected tensor \"" + name + "\" in " +
                          ckpt.file_of(name).path().string() +
                          ": the model has no parameter for it (architecture or config mismatch)");
  }
  torch::NoGradGuard no_grad;
  for (const auto& pl : plan) {
    auto& p = params[pl.param];
    auto src = ckpt.tensor(pl.hf_name);
    if (pl.expert) {
      p[*pl.expert].copy_(src);
    } else {
      p.copy_(src);
    }
  }
}

// ------------------------------------------------------------------ writing
// How a model is saved: storage dtype, the MoE fields its config.json needs, sharding.
struct SaveOptions {
  std::optional<torch::Dtype> dtype;  // storage dtype; default: the first parameter's dtype
  std::optional<MoEConfig> moe;       // required iff the model has MoE-contract parameters
  uint64_t max_shard_bytes = io::kDefaultMaxShardBytes;
  bool overwrite = false;                         // replace a non-empty `dir`
  std::vector<std::filesystem::path> copy_files;  // copied in unchanged (tokenizer files, ...)
  std::vector<std::pair<std::string, std::string>> text_files;  // {file name, contents}
  nlohmann::ordered_json config_extra;  // keys set in config.json (e.g. hf::token_ids_of)
};
// Reported after each btx tensor is written.
struct WriteProgress {
  size_t index = 0;  // tensors written so far (1..count)
  size_t count = 0;  // tensors in all
  std::string name;  // the tensor just written (btx name)
  uint64_t bytes_done = 0, bytes_total = 0;
  double seconds = 0.0;  // since writing started
};

struct WriteOptions {
  std::optional<torch::ScalarType> dtype;  // storage dtype; default: each tensor's own
  uint64_t max_shard_bytes = io::kDefaultMaxShardBytes;
  bool overwrite = false;                         // replace a non-empty target folder
  std::vector<std::filesystem::path> copy_files;  // copied in unchanged (tokenizer files, ...)
  std::vector<std::pair<std::string, std::string>> text_files;  // {file name, contents}
  // Text files known only once every tensor is written (a model card that reports what was
  // checked, hashes computed beside the merge); called after the last shard is finished.
  std::function<std::vector<std::pair<std::string, std::string>>()> closing_text_files;
  std::function<void(const WriteProgress&)> progress;
  // Optional: the file ranges a btx tensor is an exact copy of, in its own dtype (one per
  // expert for packed experts, else one; std::nullopt: produce it). Those tensors are
  // copied file to file (copy_file_range) when they are stored in that dtype.
  std::function<std::optional<std::vector<io::FileRange>>(const std::string&)> locate;
  // Threads writing and copying tensors while the next one is produced (0: write each in
  // turn on the calling thread). Progress then counts tensors handed to them.
  size_t write_threads = 1;
  // false: no fsync before the folder is renamed into place. Faster where the disk is
  // slower than the merge; a crash of the machine (not of btx) may then lose the data.
  bool durable = true;
  // With `durable`: tensors go to the disk with O_DIRECT, not through the page cache
  // (io::DiskWrites::direct); false: buffered, each started to disk as it is written.
  bool direct_io = true;
};

struct WriteStats {
  size_t tensors = 0;  // HF tensors written
  size_t shards = 0;
  uint64_t bytes = 0;  // tensor bytes written
  double seconds = 0.0;
};

// Every HF tensor `tensors` (btx names) become, in order (experts in expert order).
inline std::vector<io::TensorDecl> hf_decls(const std::vector<io::TensorDecl>& tensors,
                                            const NameMap& names,
                                            std::optional<torch::ScalarType> dtype = {}) {
  std::vector<io::TensorDecl> out;
  std::vector<io::TensorDecl> typed = tensors;
  for (auto& t : typed) t.dtype = dtype.value_or(t.dtype);
  for (const auto& pl : detail::placements(typed, names)) {
    out.push_back({pl.hf_name, dtype.value_or(torch::kFloat32), pl.shape});
  }
  // placements() keeps the order; fill each HF tensor's dtype from its btx tensor.
  size_t k = 0;
  for (const auto& t : typed) {
    const size_t n = names.is_packed_experts(t.name) && !t.shape.empty() ? size_t(t.shape[0]) : 1;
    for (size_t j = 0; j < n; ++j) out[k++].dtype = t.dtype;
  }
  return out;
}

// Writes config.json, text_files, copy_files and every tensor of `tensors` (btx names,
// produced one at a time by `produce`, packed experts split per expert) into `dir`: the
// folder appears only when all of it was written, and a throw leaves nothing behind.
inline WriteStats write_hf_folder(const std::filesystem::path& dir,
                                  const nlohmann::ordered_json& config_json,
                                  const std::vector<io::TensorDecl>& tensors,
                                  const std::function<torch::Tensor(const std::string&)>& produce,
                                  const NameMap& names, const WriteOptions& options = {}) {
  const auto start = std::chrono::steady_clock::now();
  const auto decls = hf_decls(tensors, names, options.dtype);
  uint64_t total = 0;
  for (const auto& d : decls) total += io::tensor_bytes(d);

  io::AtomicDir out(dir, options.overwrite);
  detail::write_text(out.path() / "config.json", config_json.dump(2) + "\n");
  std::set<std::string> written = {"config.json"};
  for (const auto& [name, text] : options.text_files) {
    if (!written.insert(name).second) {
      throw std::invalid_argument("btx::hf::write_hf_folder: two files named " + name);
    }
    detail::write_text(out.path() / name, text);
  }
  for (const auto& f : options.copy_files) {
    const auto name = f.filename().string();
    if (!written.insert(name).second) {
      throw std::invalid_argument("btx::hf::write_hf_folder: copy_files would overwrite " + name);
    }
    // Folders too (transformers' additional_chat_templates/).
    std::filesystem::copy(f, out.path() / name, std::filesystem::copy_options::recursive);
  }

  // A durable folder's tensors reach the disk while the rest is computed.
  const auto disk = !options.durable    ? io::DiskWrites::page_cache
                    : options.direct_io ? io::DiskWrites::direct
                                        : io::DiskWrites::early;
  io::ShardedStreamWriter writer(out.path(), decls, options.max_shard_bytes, disk);
  // Writers run beside the producer: while tensor k+1 is computed, tensor k is written and
  // source ranges are copied. At most one computed tensor (the largest, at most) waits for
  // them, so peak memory is two tensors, not one per queued write.
  uint64_t largest = 0;
  for (const auto& s : tensors) {
    largest =
        std::max(largest, io::tensor_bytes({s.name, options.dtype.value_or(s.dtype), s.shape}));
  }
  io::WriteQueue queue(options.write_threads, largest);  // after `writer`: joined before it dies
  WriteStats stats;
  WriteProgress p;
  p.count = tensors.size();
  p.bytes_total = total;
  for (const auto& s : tensors) {
    const bool packed = names.is_packed_experts(s.name);
    const int64_t slices = packed && !s.shape.empty() ? s.shape[0] : 1;
    const auto hf_names = names.to_hf(s.name, slices);
    const auto dtype = options.dtype.value_or(s.dtype);
    const auto ranges = options.locate && dtype == s.dtype ? options.locate(s.name) : std::nullopt;
    if (ranges && ranges->size() == hf_names.size()) {
      for (size_t e = 0; e < hf_names.size(); ++e) {
        queue.submit(
            0, [&writer, name = hf_names[e], range = (*ranges)[e]] { writer.copy(name, range); });
        p.bytes_done += (*ranges)[e].bytes;
      }
    } else {
      // Converted here, so the queue holds the bytes it writes and nothing else.
      torch::Tensor t = produce(s.name).detach().to(torch::kCPU, dtype).contiguous();
      const uint64_t bytes = uint64_t(t.numel()) * c10::elementSize(dtype);
      queue.submit(bytes, [&writer, hf_names, packed, t = std::move(t)] {
        if (!packed) return writer.write(hf_names.front(), t);
        for (size_t e = 0; e < hf_names.size(); ++e) writer.write(hf_names[e], t[int64_t(e)]);
      });
      p.bytes_done += bytes;
    }
    stats.tensors += hf_names.size();
    ++p.index;
    p.name = s.name;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (options.progress) options.progress(p);
  }
  queue.drain();
  writer.finish(options.durable);
  if (options.closing_text_files) {
    for (const auto& [name, text] : options.closing_text_files()) {
      if (!written.insert(name).second) {
        throw std::invalid_argument("btx::hf::write_hf_folder: two files named " + name);
      }
      detail::write_text(out.path() / name, text);
    }
  }
  out.commit(options.durable);
  stats.shards = writer.num_shards();
  stats.bytes = total;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

// A module's parameters as an HF folder: checks that config_json and the module agree on
// MoE-ness, then streams every parameter through write_hf_folder.
inline WriteStats save_module(const torch::nn::Module& model,
                              const nlohmann::ordered_json& config_json,
                              const std::filesystem::path& dir, const NameMap& names,
                              WriteOptions options = {}) {
  auto params = model.named_parameters();
  if (params.is_empty()) throw std::invalid_argument("save_hf_checkpoint: model has no parameters");
  if (!options.dtype) options.dtype = params[params.keys()[0]].scalar_type();
  return write_hf_folder(
      dir, config_json, detail::parameter_decls(model),
      [&params](const std::string& name) { return params[name]; }, names, options);
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
