// SPDX-License-Identifier: MIT
// Streams a merge Plan into a Hugging Face checkpoint folder of the sources' family (its
// MoE architecture for an MoE plan, its dense one otherwise) through btx's one HF writer
// (hf::write_hf_folder): every tensor is declared up front, then computed and written one
// at a time, packed [E, ...] experts split per expert as the family names them. Peak memory
// stays near the largest output tensor plus the source tensors it needs.
//
//   auto plan = btx::merge::BtxMix<>{}.plan(btx::merge::checkpoint_sources(dirs));
//   auto config = btx::merge::hf_config_for(plan, btx::read_model_spec(dirs[0] / "config.json"),
//                                           "bfloat16");
//   btx::merge::write_plan(plan, config, "out", {.dtype = torch::kBFloat16});
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/hf/checkpoint.hpp>
#include <btx/io/sharded_writer.hpp>
#include <btx/merge/manifest.hpp>
#include <btx/merge/moe_plan.hpp>
#include <btx/merge/plan.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/common/hf_decoder_config.hpp>
#include <btx/models/family.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

using hf::WriteProgress;
using hf::WriteStats;

struct WritePlanOptions {
  std::optional<torch::ScalarType> dtype;  // storage dtype; default: each output's own
  uint64_t max_shard_bytes = io::kDefaultMaxShardBytes;
  bool overwrite = false;                         // replace a non-empty target folder
  std::vector<std::filesystem::path> copy_files;  // copied in unchanged (tokenizer files, ...)
  std::string manifest_file = "btx_merge.json";   // plan.manifest(); empty: not written
  std::function<void(const WriteProgress&)> progress;
  std::optional<hf::ExpertLayout> expert_layout;  // hf::WriteOptions::expert_layout
  size_t write_threads = 1;                       // hf::WriteOptions::write_threads
  bool durable = true;                            // hf::WriteOptions::durable
  bool direct_io = true;                          // hf::WriteOptions::direct_io
  // hf::WriteOptions::closing_text_files: e.g. a model card reporting the checks and the
  // sources' hashes, which are computed beside the merge.
  std::function<std::vector<std::pair<std::string, std::string>>()> closing_text_files;
};

inline std::vector<io::TensorDecl> plan_decls(const Plan& plan) {
  std::vector<io::TensorDecl> out;
  for (const auto& s : plan.outputs()) out.push_back({s.name, s.dtype, s.shape});
  return out;
}

// The family whose config.json this is (the registry decides by model_type).
inline const FamilyEntry& family_of_config(const nlohmann::ordered_json& config_json) {
  return family_for_config(nlohmann::json::parse(config_json.dump()), "config.json");
}

// Every HF tensor the plan's outputs become, in plan order (experts in expert order).
inline std::vector<io::TensorDecl> hf_decls(const Plan& plan, const FamilyEntry& family,
                                            std::optional<torch::ScalarType> dtype = {},
                                            std::optional<hf::ExpertLayout> layout = {}) {
  return hf::hf_decls(plan_decls(plan), family.name_map(), dtype, layout);
}

// config.json for the plan's result: the family's MoE architecture when the manifest has
// experts (their count and intermediate size from the manifest, top-k its
// experts_per_token), its dense one otherwise. `base` is the sources' shared architecture.
inline nlohmann::ordered_json hf_config_for(const Plan& plan, ModelSpec base,
                                            const std::string& dtype,
                                            double router_aux_loss_coef = 0.02) {
  const auto& m = plan.manifest();
  const auto& family = family_of(base);
  base.moe.reset();
  if (m.num_experts == 0) return family.config_json(base, dtype);
  if (m.experts_per_token < 1 || m.experts_per_token > m.num_experts) {
    throw std::invalid_argument("btx::merge: " + m.method + " plan suggests " +
                                std::to_string(m.experts_per_token) + " experts per token for " +
                                std::to_string(m.num_experts) +
                                " experts; experts_per_token must be in [1, num_experts]");
  }
  base.moe = hf::top_k_moe_config(m.num_experts, m.experts_per_token, /*norm_topk_prob=*/true,
                                  router_aux_loss_coef);
  if (family.merge_router) base.moe->router = family.merge_router(m.experts_per_token);
  base.moe->expert_size = m.moe_intermediate_size;
  base.moe->shared_expert_size = m.shared_expert_intermediate_size;
  base.moe->shared_expert_gated = family.moe_shared_expert_gated;
  if (m.options.contains("dense_layers"))
    base.moe->dense_layers = m.options.at("dense_layers").get<int64_t>();
  return family.config_json(base, dtype);
}

// The shared expert a merge into `family`'s MoE architecture gets: `asked` when the
// architecture has the slot (a zero-width one when nothing was asked), none when it has
// not; asking for one where there is no slot throws, naming the architecture.
inline SharedExpertChoice shared_expert_for(const FamilyEntry& family, SharedExpertChoice asked) {
  using From = SharedExpertChoice::From;
  asked.gated = family.moe_shared_expert_gated;
  if (family.moe_has_shared_expert) {
    if (asked.from != From::none) return asked;
    auto zero = SharedExpertChoice::zero_width();
    zero.gated = asked.gated;
    return zero;
  }
  if (asked.filled() && !family.moe_may_have_shared_expert) {
    throw std::invalid_argument("btx::merge: " + family.moe_model_type + " (family " + family.name +
                                ") has no shared expert; merge without one");
  }
  if (asked.filled()) return asked;
  return {};
}

// Writes config.json, the manifest, copy_files and every output of `plan` into `dir`
// through an atomic folder: `dir` appears only when everything was written, and a throw
// (from the plan, a source or the disk) leaves nothing behind. Tensors are named as the
// family config_json declares.
inline WriteStats write_plan(const Plan& plan, const nlohmann::ordered_json& config_json,
                             const std::filesystem::path& dir,
                             const WritePlanOptions& options = {}) {
  const auto& family = family_of_config(config_json);
  hf::WriteOptions w;
  w.dtype = options.dtype;
  w.max_shard_bytes = options.max_shard_bytes;
  w.overwrite = options.overwrite;
  w.progress = options.progress;
  w.write_threads = options.write_threads;
  w.expert_layout = options.expert_layout;
  w.durable = options.durable;
  w.direct_io = options.direct_io;
  w.closing_text_files = options.closing_text_files;
  for (const auto& f : options.copy_files) {
    const auto name = f.filename();
    if (name == "config.json" || name == options.manifest_file) {
      throw std::invalid_argument("btx::merge::write_plan: copy_files would overwrite " +
                                  name.string());
    }
  }
  w.copy_files = options.copy_files;
  if (!options.manifest_file.empty()) {
    nlohmann::json manifest = plan.manifest();
    w.text_files.push_back({options.manifest_file, manifest.dump(2) + "\n"});
  }
  // Outputs that are source bytes unchanged (a BTX mix's experts) go file to file.
  w.locate = [&plan](const std::string& name) { return plan.file_ranges(name); };
  return hf::write_hf_folder(
      dir, config_json, plan_decls(plan),
      // Computed wherever the sources are (a GPU with btx-merge's `device`), written from the CPU.
      [&plan](const std::string& name) { return plan.compute(name).cpu(); }, family.name_map(), w);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
