// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> DecoderConfig, for LlamaForCausalLM, MistralForCausalLM
// (a Llama with a sliding window on every layer) and their MoE form MixtralForCausalLM.
// Reading refuses, naming the field, anything btx's decoder cannot represent, and writing
// refuses what the target architecture cannot carry (a window in a Llama, biases in a
// Mistral or Mixtral), rather than a checkpoint that silently computes something else.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/model_spec.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/hf_decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

using btx::MoEConfig;

struct HFConfig {
  DecoderConfig decoder;
  std::optional<MoEConfig> moe;   // set for MixtralForCausalLM
  std::string dtype = "float32";  // torch_dtype / dtype: the checkpoint's storage dtype
};

namespace detail {
inline HFConfig parse_llama_config(const nlohmann::json& j, const std::string& where) {
  const ConfigFields f(j, where);
  const std::string model_type = declared_model_type(j, where);
  if (model_type != "llama" && model_type != "mistral" && model_type != "mixtral") {
    throw config_error(where, "model_type \"" + model_type +
                                  "\" is not supported (the Llama family reads llama, mistral "
                                  "and mixtral)");
  }
  const bool mixtral = model_type == "mixtral", mistral = model_type == "mistral";
  HFConfig out;
  auto& c = out.decoder;
  c = read_decoder_fields(f, {.rms_norm_eps = mixtral ? 1e-5 : 1e-6,
                              .rope_theta = mixtral ? 1e6 : 10000.0,
                              .max_position_embeddings = mixtral || mistral ? 131072 : 2048});
  if (model_type == "llama") {  // Llama's attention_bias: a bias on all four projections
    c.qkv_bias = c.o_bias = f.optional_bool("attention_bias", false);
  } else {  // every layer's window; transformers' Mistral defaults to 4096, Mixtral to none
    c.sliding_window =
        j.contains("sliding_window") ? f.optional_int("sliding_window", 0) : (mistral ? 4096 : 0);
  }
  f.refuse_true("mlp_bias", "btx's feed-forward blocks have no bias");
  out.dtype = f.dtype();
  if (mixtral) {
    const int64_t experts = f.required_int("num_local_experts");
    const int64_t k = f.required_int("num_experts_per_tok");
    if (k < 1 || k > experts) {
      throw config_error(where, "\"num_experts_per_tok\" must be in [1, num_local_experts]");
    }
    out.moe = top_k_moe_config(experts, k, /*norm_topk_prob=*/true,
                               f.optional_num("router_aux_loss_coef", 0.001));
  }
  validate_decoder(c, where);
  return out;
}
}  // namespace detail

// Parses a LlamaForCausalLM or MixtralForCausalLM config; `where` names the source.
// Throws std::runtime_error naming `where` and the offending field.
inline HFConfig config_from_json(const nlohmann::json& j,
                                 const std::string& where = "config.json") {
  return parse_config_json(detail::parse_llama_config, j, where);
}

inline HFConfig read_config_json(const std::filesystem::path& file) {
  return config_from_json(read_json_file(file), file.string());
}

namespace detail {
// Throws naming what `arch` cannot carry of `c`.
inline void check_representable(const DecoderConfig& c, const std::string& arch) {
  const bool windowed = c.sliding_window > 0;
  for (bool on : c.sliding_layers) {
    if (windowed && !on) {
      throw std::invalid_argument("btx: " + arch +
                                  " applies its sliding window to every layer; this model "
                                  "has layers without it");
    }
  }
  if (arch != "LlamaForCausalLM" && (c.qkv_bias || c.o_bias)) {
    throw std::invalid_argument("btx: " + arch + " has no attention biases; this model has them");
  }
  if (c.qkv_bias != c.o_bias) {
    throw std::invalid_argument("btx: " + arch + " biases all four attention projections or none");
  }
  if (c.qk_norm) throw std::invalid_argument("btx: " + arch + " has no q/k norms");
  refuse_layer_variants(c, arch);
}
}  // namespace detail

// The dense config.json transformers 5 loads for `c`: LlamaForCausalLM, or
// MistralForCausalLM when `c` has a sliding window (a Llama has none). `dtype` is a torch
// dtype name ("float32", "bfloat16", "float16").
inline nlohmann::ordered_json llama_config_json(const DecoderConfig& c,
                                                const std::string& dtype = "float32") {
  if (c.sliding_window > 0) {
    detail::check_representable(c, "MistralForCausalLM");
    auto j = decoder_config_json(c, "MistralForCausalLM", "mistral", dtype);
    j["sliding_window"] = c.sliding_window;
    return j;
  }
  detail::check_representable(c, "LlamaForCausalLM");
  auto j = decoder_config_json(c, "LlamaForCausalLM", "llama", dtype);
  j["attention_bias"] = c.qkv_bias;
  j["mlp_bias"] = false;
  return j;
}

// A MixtralForCausalLM config.json (classic per-expert layout on disk): `c` is the dense
// config, moe.expert_size (when set) the experts' F, written as Mixtral's intermediate_size.
inline nlohmann::ordered_json mixtral_config_json(const DecoderConfig& c, const MoEConfig& moe,
                                                  const std::string& dtype = "float32") {
  detail::check_representable(c, "MixtralForCausalLM");
  if (moe.shared_expert_size) {
    throw std::invalid_argument(
        "btx: MixtralForCausalLM has no shared expert (Qwen2-MoE has one); merge without "
        "shared_experts");
  }
  if (moe.dense_layers > 0) {
    throw std::invalid_argument("btx: MixtralForCausalLM makes every layer MoE; this model keeps " +
                                std::to_string(moe.dense_layers) +
                                " leading layers dense (Qwen-MoE and GLM-4-MoE can)");
  }
  if (!moe.renormalizes_top_k()) {
    throw std::invalid_argument(
        "btx: MixtralForCausalLM always renormalises its top-k weights (norm_topk_prob: false "
        "cannot be written)");
  }
  auto j = llama_config_json(c, dtype);
  j.erase("attention_bias");
  j.erase("mlp_bias");
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  // Mixtral has no width of its own for experts: its intermediate_size is each expert's F.
  if (moe.expert_size > 0) j["intermediate_size"] = moe.expert_size;
  j["num_local_experts"] = moe.num_experts;
  j["num_experts_per_tok"] = active_experts(moe);
  j["router_aux_loss_coef"] = moe.load_balance_alpha;
  j["router_jitter_noise"] = 0.0;
  j["output_router_logits"] = false;
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::ordered_json(c.sliding_window) : nullptr;
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
