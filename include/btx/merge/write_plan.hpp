// SPDX-License-Identifier: MIT
// Streams a merge Plan into a Hugging Face checkpoint folder (Mixtral for an MoE plan, Llama
// for a dense one): every tensor is declared up front, then computed and written one at a
// time, packed [E, ...] experts split into Mixtral's per-expert w1/w2/w3 tensors as they go.
// Peak memory stays near the largest output tensor plus the source tensors it needs.
//
//   auto plan = btx::merge::BtxMix<>{}.plan(btx::merge::checkpoint_sources(dirs));
//   auto config = btx::merge::hf_config_for(plan, base_llama_config, "bfloat16");
//   btx::merge::write_plan(plan, config, "out", {.dtype = torch::kBFloat16});
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/hf/config_json.hpp>
#include <btx/hf/mixtral_names.hpp>
#include <btx/io/atomic_dir.hpp>
#include <btx/io/sharded_writer.hpp>
#include <btx/merge/manifest.hpp>
#include <btx/merge/plan.hpp>
#include <btx/models/llama_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// Reported after each plan output is written.
struct WriteProgress {
  size_t index = 0;  // outputs written so far (1..count)
  size_t count = 0;  // plan outputs in all
  std::string name;  // the output just written (btx name)
  uint64_t bytes_done = 0, bytes_total = 0;
  double seconds = 0.0;  // since write_plan started
};

struct WritePlanOptions {
  std::optional<torch::ScalarType> dtype;  // storage dtype; default: each output's own
  uint64_t max_shard_bytes = io::kDefaultMaxShardBytes;
  bool overwrite = false;                         // replace a non-empty target folder
  std::vector<std::filesystem::path> copy_files;  // copied in unchanged (tokenizer files, ...)
  std::string manifest_file = "btx_merge.json";   // plan.manifest(); empty: not written
  std::function<void(const WriteProgress&)> progress;
};

struct WriteStats {
  size_t tensors = 0;  // HF tensors written
  size_t shards = 0;
  uint64_t bytes = 0;  // tensor bytes written
  double seconds = 0.0;
};

inline torch::ScalarType dtype_from_hf_name(const std::string& name) {
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  if (name == "float64") return torch::kFloat64;
  throw std::invalid_argument("btx::merge: unknown dtype '" + name +
                              "'; use float32, float16 or bfloat16");
}

// True for a packed expert output [E, ...] (MoE contract) that becomes E HF tensors.
inline bool is_packed_experts(const std::string& btx_name) {
  return hf::is_btx_moe_name(btx_name) && btx_name.find(".experts.") != std::string::npos;
}

// Every HF tensor the plan's outputs become, in plan order (experts in expert order).
inline std::vector<io::TensorDecl> hf_decls(const Plan& plan,
                                            std::optional<torch::ScalarType> dtype = {}) {
  std::vector<io::TensorDecl> out;
  for (const auto& s : plan.outputs()) {
    const auto type = dtype.value_or(s.dtype);
    if (is_packed_experts(s.name)) {
      if (s.shape.empty()) throw std::logic_error("packed experts '" + s.name + "' without [E]");
      const std::vector<int64_t> inner(s.shape.begin() + 1, s.shape.end());
      for (const auto& n : hf::btx_to_hf_names(s.name, s.shape[0])) out.push_back({n, type, inner});
    } else {
      out.push_back({hf::btx_to_hf_names(s.name, 0).front(), type, s.shape});
    }
  }
  return out;
}

// config.json for the plan's result: MixtralForCausalLM when the manifest has experts (the
// experts' intermediate size and count from the manifest, top-k its experts_per_token),
// LlamaForCausalLM otherwise. `base` is the sources' shared architecture.
inline nlohmann::ordered_json hf_config_for(const Plan& plan, LlamaConfig base,
                                            const std::string& dtype,
                                            double router_aux_loss_coef = 0.02) {
  const auto& m = plan.manifest();
  if (m.num_experts == 0) return hf::llama_config_json(base, dtype);
  if (m.experts_per_token < 1 || m.experts_per_token > m.num_experts) {
    throw std::invalid_argument("btx::merge: " + m.method + " plan suggests " +
                                std::to_string(m.experts_per_token) + " experts per token for " +
                                std::to_string(m.num_experts) +
                                " experts; experts_per_token must be in [1, num_experts]");
  }
  base.intermediate_size = m.moe_intermediate_size;
  return hf::mixtral_config_json(
      base, hf::MoEConfig{m.num_experts, m.experts_per_token, router_aux_loss_coef}, dtype);
}

namespace detail {
inline void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream f(file, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + file.string());
}
}  // namespace detail

// Writes config.json, the manifest, copy_files and every output of `plan` into `dir`
// through an io::AtomicDir: `dir` appears only when everything was written, and a throw
// (from the plan, a source or the disk) leaves nothing behind.
inline WriteStats write_plan(const Plan& plan, const nlohmann::ordered_json& config_json,
                             const std::filesystem::path& dir,
                             const WritePlanOptions& options = {}) {
  const auto start = std::chrono::steady_clock::now();
  const auto decls = hf_decls(plan, options.dtype);
  uint64_t total = 0;
  for (const auto& d : decls) total += io::tensor_bytes(d);

  io::AtomicDir out(dir, options.overwrite);
  detail::write_text(out.path() / "config.json", config_json.dump(2) + "\n");
  if (!options.manifest_file.empty()) {
    nlohmann::json manifest = plan.manifest();
    detail::write_text(out.path() / options.manifest_file, manifest.dump(2) + "\n");
  }
  for (const auto& f : options.copy_files) {
    const auto name = f.filename();
    if (name == "config.json" || name == options.manifest_file) {
      throw std::invalid_argument("btx::merge::write_plan: copy_files would overwrite " +
                                  name.string());
    }
    std::filesystem::copy_file(f, out.path() / name);
  }

  io::ShardedStreamWriter writer(out.path(), decls, options.max_shard_bytes);
  WriteStats stats;
  WriteProgress p;
  p.count = plan.outputs().size();
  p.bytes_total = total;
  for (const auto& s : plan.outputs()) {
    torch::Tensor t = plan.compute(s.name);
    if (is_packed_experts(s.name)) {
      const auto names = hf::btx_to_hf_names(s.name, t.size(0));
      for (size_t e = 0; e < names.size(); ++e) writer.write(names[e], t[int64_t(e)]);
      stats.tensors += names.size();
    } else {
      writer.write(hf::btx_to_hf_names(s.name, 0).front(), t);
      stats.tensors += 1;
    }
    p.bytes_done += uint64_t(t.numel()) * c10::elementSize(options.dtype.value_or(s.dtype));
    t = torch::Tensor();  // release before the next output is computed
    ++p.index;
    p.name = s.name;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (options.progress) options.progress(p);
  }
  writer.finish();
  out.commit();
  stats.shards = writer.num_shards();
  stats.bytes = total;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
