// SPDX-License-Identifier: MIT
// A stage's model on disk: <run>/<stage>/model/, a Hugging Face checkpoint of the model's
// own family (its MoE architecture when MoE), so every stage's result loads in
// transformers as well as here. An MoE model is built for the recipe's router, which a
// checkpoint cannot name (Soft, Sample Top-1, ...), so loading one takes the MoEConfig.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/causal_lm.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/hf/checkpoint.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/common/weight_init.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/run.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// The spec of `dense` made into the MoE `moe` describes (its router resolved once here).
inline ModelSpec moe_spec(const ModelSpec& dense, const MoEConfig& moe) {
  ModelSpec spec = dense;
  spec.moe = resolved(moe);
  if (spec.moe->expert_size == 0 && dense.moe) spec.moe->expert_size = dense.moe->expert_size;
  return spec;
}

// A fresh model: dense for a dense spec, or `dense` made into the MoE `moe` describes.
inline CausalLM make_stage_model(const ModelSpec& dense, const std::optional<MoEConfig>& moe = {}) {
  return make_model(moe ? moe_spec(dense, *moe) : dense);
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

// The model of stage `stage`. An MoE checkpoint is built as `moe` says when given (its
// expert count must match), else as its HF architecture routes.
inline CausalLM load_stage_model(const Run& run, const std::string& stage,
                                 const std::optional<MoEConfig>& moe = {}) {
  const auto dir = run.model_dir(stage);
  const auto config = dir / "config.json";
  if (!std::filesystem::exists(config)) {
    throw std::runtime_error("btx::recipe: stage '" + stage + "' has no model (no " +
                             config.string() + ")");
  }
  if (!moe) return load_causal_lm(dir, torch::kFloat32, {}, torch::kCPU, run.non_finite());
  CausalLM lm = [&] {
    const SkipWeightInit loading;  // every parameter comes from the checkpoint (strictly)
    return make_model(with_moe_config(read_model_spec(config), *moe, "stage '" + stage + "'"));
  }();
  hf::load_hf_weights(lm.module(), dir, run.non_finite());
  return lm;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
