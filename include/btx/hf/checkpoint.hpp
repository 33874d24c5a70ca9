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
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/core/sublayer_naming.hpp>
#include <btx/hf/detail/placements.hpp>
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
  std::vector<detail::Placement> plan;
  for (const auto& t : detail::parameter_decls(model)) {
    auto found = detail::found_placements(t, names, ckpt);
    plan.insert(plan.end(), found.begin(), found.end());
  }
  std::set<std::string> used;
  for (const auto& pl : plan) {
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
    auto src = pl.piece_of(ckpt.tensor(pl.hf_name));
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
  std::optional<torch::Dtype> dtype;          // storage dtype; default: the first parameter's dtype
  std::optional<MoEConfig> moe;               // required iff the model has MoE-contract parameters
  std::optional<ExpertLayout> expert_layout;  // per_expert or packed; default: the family's
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
  // How MoE experts are stored (NameMap::layout): per expert or packed; empty: the family's
  // default (per expert where transformers' save_pretrained writes that by default).
  std::optional<ExpertLayout> expert_layout;
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

// Every HF tensor `tensors` (btx names) become in `layout` (the family's default when
// empty), in order of first appearance (experts in expert order), each stored as its btx
// tensor's dtype unless `dtype` says otherwise.
inline std::vector<io::TensorDecl> hf_decls(const std::vector<io::TensorDecl>& tensors,
                                            const NameMap& names,
                                            std::optional<torch::ScalarType> dtype = {},
                                            std::optional<ExpertLayout> layout = {}) {
  const auto naming = names.layout(layout);
  std::vector<io::TensorDecl> out;
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    for (const auto& pl : detail::placements(t, names, naming)) {
      if (seen.insert(pl.hf_name).second)
        out.push_back({pl.hf_name, dtype.value_or(t.dtype), pl.shape});
    }
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
  const auto decls = hf_decls(tensors, names, options.dtype, options.expert_layout);
  const auto naming = names.layout(options.expert_layout);
  std::vector<std::vector<detail::Placement>> placed;
  for (const auto& t : tensors) placed.push_back(detail::placements(t, names, naming));
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
  for (const auto& d : decls) largest = std::max(largest, io::tensor_bytes(d));  // fused ones
  io::WriteQueue queue(options.write_threads, largest);  // after `writer`: joined before it dies
  WriteStats stats;
  WriteProgress p;
  p.count = tensors.size();
  p.bytes_total = total;
  const auto report = [&](const std::string& name) {
    ++p.index;
    p.name = name;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (options.progress) options.progress(p);
  };
  for (const auto& group : detail::write_groups(placed)) {
    const auto& first = placed[group.front()];
    const bool whole = group.size() == 1 && std::all_of(first.begin(), first.end(),
                                                        [](auto& pl) { return pl.parts == 1; });
    if (whole) {
      const auto& s = tensors[group.front()];
      const auto dtype = options.dtype.value_or(s.dtype);
      const auto ranges =
          options.locate && dtype == s.dtype ? options.locate(s.name) : std::nullopt;
      if (ranges && ranges->size() == first.size()) {
        for (size_t e = 0; e < first.size(); ++e) {
          queue.submit(0, [&writer, name = first[e].hf_name, range = (*ranges)[e]] {
            writer.copy(name, range);
          });
          p.bytes_done += (*ranges)[e].bytes;
        }
      } else {
        // Converted here, so the queue holds the bytes it writes and nothing else.
        torch::Tensor t = produce(s.name).detach().to(torch::kCPU, dtype).contiguous();
        const uint64_t bytes = uint64_t(t.numel()) * c10::elementSize(dtype);
        queue.submit(bytes, [&writer, pls = first, t = std::move(t)] {
          for (const auto& pl : pls) writer.write(pl.hf_name, pl.expert ? t[*pl.expert] : t);
        });
        p.bytes_done += bytes;
      }
      stats.tensors += first.size();
      report(s.name);
      continue;
    }
    // Tensors fused on disk: each HF tensor is its pieces concatenated in part order.
    std::map<std::string, std::vector<std::pair<detail::Placement, torch::Tensor>>> parts;
    std::vector<std::string> order;
    for (size_t i : group) {
      const auto dtype = options.dtype.value_or(tensors[i].dtype);
      torch::Tensor t = produce(tensors[i].name).detach().to(torch::kCPU, dtype);
      for (const auto& pl : placed[i]) {
        if (!parts.count(pl.hf_name)) order.push_back(pl.hf_name);
        parts[pl.hf_name].push_back({pl, pl.expert ? t[*pl.expert] : t});
      }
    }
    for (const auto& name : order) {
      auto& pieces = parts[name];
      std::sort(pieces.begin(), pieces.end(),
                [](const auto& a, const auto& b) { return a.first.part < b.first.part; });
      const auto& pl = pieces.front().first;
      if (int64_t(pieces.size()) != pl.parts) {
        throw std::logic_error("btx::hf: " + name + " has " + std::to_string(pieces.size()) +
                               " of its " + std::to_string(pl.parts) + " parts");
      }
      std::vector<torch::Tensor> chunks;
      for (const auto& [piece, t] : pieces) chunks.push_back(t);
      torch::Tensor fused = torch::cat(chunks, pl.dim).contiguous();
      const uint64_t bytes = uint64_t(fused.numel()) * fused.element_size();
      queue.submit(bytes, [&writer, name, t = std::move(fused)] { writer.write(name, t); });
      p.bytes_done += bytes;
      ++stats.tensors;
    }
    for (size_t i : group) report(tensors[i].name);
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
