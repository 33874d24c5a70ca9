// SPDX-License-Identifier: MIT
// Family-agnostic model I/O, the way transformers' Auto classes work: config.json's
// model_type picks the registered family, which builds the model and names its tensors.
//   auto lm = btx::load_causal_lm("ckpt/");            // any registered family, dense or MoE
//   btx::save_hf_checkpoint(lm, "out/", {.dtype = torch::kBFloat16});
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/causal_lm.hpp>
#include <btx/core/dtype.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/hf/checkpoint.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/io/checkpoint_reader.hpp>
#include <btx/models/attention_experts_config.hpp>
#include <btx/models/common/weight_init.hpp>
#include <btx/models/family.hpp>
#include <btx/models/registry.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The family a config.json object declares; the error lists the model types btx reads.
inline const FamilyEntry& family_for_config(const nlohmann::json& j, const std::string& where) {
  const std::string type = hf::declared_model_type(j, where);
  const FamilyEntry* family = families().for_model_type(type);
  if (family == nullptr) {
    throw std::runtime_error(where + ": model_type \"" + type + "\" is not supported (btx reads " +
                             families().model_types() + ")");
  }
  return *family;
}
inline const FamilyEntry& family_of(const ModelSpec& spec) {
  return families().get(spec.family);
}

inline ModelSpec spec_from_json(const nlohmann::json& j, const std::string& where) {
  if (auto split = split_attention_experts(j, where)) {
    ModelSpec spec = family_for_config(split->first, where).read_config(split->first, where);
    spec.attention_moe = std::move(split->second);
    return spec;
  }
  return family_for_config(j, where).read_config(j, where);
}
// The config.json of `spec` in its family's terms (btx's own type with attention experts).
inline nlohmann::ordered_json config_json_of(const ModelSpec& spec, const std::string& dtype) {
  auto j = family_of(spec).config_json(spec, dtype);
  return spec.attention_moe ? with_attention_experts(std::move(j), *spec.attention_moe) : j;
}
inline ModelSpec read_model_spec(const std::filesystem::path& config_file) {
  return spec_from_json(hf::read_json_file(config_file), config_file.string());
}

// `spec`'s dense model as family `target` writes it (a Llama seed as GLM-4-MoE's dense
// form): both must be families on the shared decoder; what `target`'s architecture cannot
// carry (a bias, a window, a norm it lacks) throws std::invalid_argument naming it.
inline ModelSpec convert_spec(const ModelSpec& spec, const FamilyEntry& target) {
  if (spec.family == target.name) return spec;
  const auto& source = family_of(spec);
  if (!source.decoder_of || !target.from_decoder) {
    throw std::invalid_argument("btx: a " + source.name + " model cannot be written as family " +
                                target.name + " (both must be families on the shared decoder)");
  }
  if (spec.moe || spec.attention_moe) {
    throw std::invalid_argument("btx: only dense models are written as another family");
  }
  try {
    return target.from_decoder(source.decoder_of(spec), spec.dtype);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("btx: this " + source.dense_model_type + " model cannot be " +
                                "written as " + target.moe_model_type + ": " + e.what());
  }
}

// A fresh model for `spec`: dense, or MoE as spec.moe says.
inline CausalLM make_model(const ModelSpec& spec) {
  return family_of(spec).make(spec);
}

// The MoE checkpoint `spec` (`what` names it) built with `moe`'s router and training
// settings instead of the ones it records (the router a file cannot name: Soft, Sample
// Top-1, ...); the expert count must match, the expert widths and the shared expert's gate
// stay the file's.
inline ModelSpec with_moe_config(ModelSpec spec, const MoEConfig& moe, const std::string& what) {
  if (!spec.moe) {
    throw std::invalid_argument("btx: " + what +
                                " holds a dense model, but an MoE config (router '" +
                                moe.router.name + "') was given");
  }
  if (spec.moe->num_experts != moe.num_experts) {
    throw std::invalid_argument(
        "btx: " + what + " holds an MoE of " + std::to_string(spec.moe->num_experts) +
        " experts, the MoE config asks for " + std::to_string(moe.num_experts));
  }
  MoEConfig built = moe;
  built.expert_size = spec.moe->expert_size;
  built.shared_expert_size = spec.moe->shared_expert_size;
  built.shared_expert_gated = spec.moe->shared_expert_gated;  // the file's, as its width
  spec.moe = resolved(std::move(built));
  return spec;
}

namespace hf {
// Loads a checkpoint folder into a built module, naming tensors as the folder's family.
inline void load_hf_weights(torch::nn::Module& model, const std::filesystem::path& dir,
                            io::NonFinite non_finite = io::NonFinite::refuse) {
  const auto& family = family_of(read_model_spec(dir / "config.json"));
  load_hf_weights(model, io::CheckpointReader(dir), family.name_map(), non_finite);
}
}  // namespace hf

// Builds the model config.json describes, converts it to `dtype`, places it on `device`
// and loads the weights there (every tensor checked before any is copied; each is copied
// from the mapped file straight onto the device). A NaN or Inf in the checkpoint is an
// io::NonFiniteError naming tensor, file and index unless `non_finite` allows it. `moe`,
// for an MoE checkpoint: build it with this MoE config instead of its own (with_moe_config).
inline CausalLM load_causal_lm(const std::filesystem::path& dir,
                               torch::Dtype dtype = torch::kFloat32,
                               const std::optional<MoEConfig>& moe = {},
                               torch::Device device = torch::kCPU,
                               io::NonFinite non_finite = io::NonFinite::refuse) {
  auto spec = read_model_spec(dir / "config.json");
  if (moe) spec = with_moe_config(std::move(spec), *moe, dir.string());
  const auto& family = family_of(spec);
  CausalLM lm = [&] {
    const SkipWeightInit loading;  // every parameter comes from the checkpoint (strictly)
    return family.make(spec);
  }();
  lm.to(device, dtype);
  hf::load_hf_weights(lm.module(), io::CheckpointReader(dir), family.name_map(), non_finite);
  return lm;
}

// Saves `lm` as a transformers checkpoint of its family (its MoE architecture when MoE).
inline hf::WriteStats save_hf_checkpoint(const CausalLM& lm, const std::filesystem::path& dir,
                                         const hf::SaveOptions& options = {}) {
  ModelSpec spec = lm.spec();
  if (options.moe) spec.moe = options.moe;
  const auto& family = family_of(spec);
  const auto params = lm.named_parameters();
  if (params.is_empty()) throw std::invalid_argument("save_hf_checkpoint: model has no parameters");
  const auto dtype = options.dtype.value_or(params[params.keys()[0]].scalar_type());
  bool has_experts = false;
  for (const auto& p : params) has_experts = has_experts || family.ffn.is_packed_experts(p.key());
  if (has_experts != spec.moe.has_value()) {
    throw std::invalid_argument(has_experts ? "model has MoE parameters but its spec has no MoE "
                                              "fields (SaveOptions.moe: experts, top-k, aux loss)"
                                            : "the spec has MoE fields but the model has no MoE "
                                              "parameters");
  }
  hf::WriteOptions w;
  w.dtype = dtype;
  w.max_shard_bytes = options.max_shard_bytes;
  w.overwrite = options.overwrite;
  w.copy_files = options.copy_files;
  w.text_files = options.text_files;
  w.expert_layout = options.expert_layout;
  auto config = config_json_of(spec, dtype_name(dtype));
  if (options.config_extra.is_object()) {
    for (const auto& [key, value] : options.config_extra.items()) config[key] = value;
  }
  return hf::save_module(lm.module(), config, dir, family.name_map(), w);
}

namespace hf {
using btx::load_causal_lm;
}  // namespace hf

BTX_NAMESPACE_END
}  // namespace btx
