// SPDX-License-Identifier: MIT
// A stage's model on disk: <run>/<stage>/model/, a Hugging Face checkpoint of the model's
// own family (its MoE architecture when MoE), so every stage's result loads in
// transformers as well as here. An MoE model is built for the recipe's router, which a
// checkpoint cannot name (Soft, Sample Top-1, ...), so loading one takes the MoEOptions.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/causal_lm.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/hf/checkpoint.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/common/weight_init.hpp>
#include <btx/moe/options.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/run.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// The MoE spec of `dense` routed by `options`: E experts, k = active_experts(options),
// load balancing weighted as options says.
inline ModelSpec moe_spec(const ModelSpec& dense, const MoEOptions& options) {
  ModelSpec spec = dense;
  const int64_t expert_width = options.expert_size > 0 ? options.expert_size
                               : dense.moe             ? dense.moe->expert_intermediate_size
                                                       : 0;
  spec.moe = MoEConfig{options.num_experts, active_experts(options), options.load_balance_alpha,
                       expert_width};
  spec.moe->norm_topk_prob = options.renormalize_top_k;
  spec.moe->shared_expert_intermediate_size = options.shared_expert_size;
  return spec;
}

// A fresh model: dense for a dense spec, or `dense` made into an MoE routed by `options`.
inline CausalLM make_stage_model(const ModelSpec& dense,
                                 const std::optional<MoEOptions>& options = {}) {
  if (!options) return make_model(dense);
  return make_model(moe_spec(dense, *options), *options);
}

// Writes `lm` to <run>/<stage>/model/ (replacing what an interrupted attempt left there).
inline void save_stage_model(const Run& run, const std::string& stage, const CausalLM& lm) {
  hf::SaveOptions options;
  options.overwrite = true;
  options.copy_files = run.model_files();
  (void)save_hf_checkpoint(lm, run.model_dir(stage), options);
}

// Loads the weights of <run>/<stage>/model/ into `lm` (every tensor checked first).
inline void load_stage_weights(const Run& run, const std::string& stage, const CausalLM& lm) {
  hf::load_hf_weights(lm.module(), run.model_dir(stage), run.non_finite());
}

// The model of stage `stage`. An MoE checkpoint is routed by `options` when given (its
// expert count must match), else as its HF architecture routes.
inline CausalLM load_stage_model(const Run& run, const std::string& stage,
                                 const std::optional<MoEOptions>& options = {}) {
  const auto dir = run.model_dir(stage);
  const auto config = dir / "config.json";
  if (!std::filesystem::exists(config)) {
    throw std::runtime_error("btx::recipe: stage '" + stage + "' has no model (no " +
                             config.string() + ")");
  }
  if (!options) return load_causal_lm(dir, torch::kFloat32, {}, torch::kCPU, run.non_finite());
  ModelSpec spec = read_model_spec(config);
  if (!spec.moe) {
    throw std::invalid_argument("btx::recipe: stage '" + stage +
                                "' holds a dense model, but MoE options (router '" +
                                options->router + "') were given");
  }
  if (spec.moe->num_local_experts != options->num_experts) {
    throw std::invalid_argument("btx::recipe: stage '" + stage + "' holds an MoE of " +
                                std::to_string(spec.moe->num_local_experts) +
                                " experts, the options ask for " +
                                std::to_string(options->num_experts));
  }
  spec.moe->num_experts_per_tok = active_experts(*options);  // this router's, not the file's
  CausalLM lm = [&] {
    const SkipWeightInit loading;  // every parameter comes from the checkpoint (strictly)
    return make_model(spec, *options);
  }();
  hf::load_hf_weights(lm.module(), dir, run.non_finite());
  return lm;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
