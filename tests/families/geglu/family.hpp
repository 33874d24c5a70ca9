// SPDX-License-Identifier: MIT
// A second, minimal model family, used only by the tests: Llama with a GeGLU feed-forward
// (tanh-approximated GELU gate, as Gemma's). Everything it needs lives in this folder; it
// plugs into btx through the ModelFamily concept and one registration,
//   btx::register_family<btx::test::GegluFamily>();
// after which btx's family-agnostic code (checkpoint I/O, merging, upcycling, router init,
// BTM ensembling, load_causal_lm) handles it without naming it. It reuses the Llama
// family's modules and config parsing, differing only in the FFN activation and in its
// config.json model types, which is what a derived family (Mistral, say) looks like.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/gated_ffn.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/models/family.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/models/llama/hf_config.hpp>

namespace btx::test {

struct GegluFamily {
  static std::string name() { return "test_geglu"; }
  static std::string dense_model_type() { return "btx_geglu"; }
  static std::string moe_model_type() { return "btx_geglu_moe"; }
  static constexpr GateActivation kActivation = GateActivation::gelu_tanh;

  static ModelSpec read_config(const nlohmann::json& j, const std::string& where) {
    const std::string type = hf::declared_model_type(j);
    if (type != dense_model_type() && type != moe_model_type()) {
      throw std::runtime_error(where + ": model_type \"" + type + "\" is not a GeGLU model");
    }
    if (j.value("hidden_act", "") != gate_activation_name(kActivation)) {
      throw std::runtime_error(where + ": \"hidden_act\" must be \"" +
                               gate_activation_name(kActivation) + "\"");
    }
    // Apart from the activation it is a Llama / Mixtral config: let that parser check it.
    nlohmann::json as_llama = j;
    as_llama["model_type"] = type == moe_model_type() ? "mixtral" : "llama";
    as_llama["hidden_act"] = "silu";
    ModelSpec spec = LlamaFamily::read_config(as_llama, where);
    spec.family = name();
    return spec;
  }
  static nlohmann::ordered_json config_json(const ModelSpec& spec, const std::string& dtype) {
    auto j = LlamaFamily::config_json(spec, dtype);
    j["architectures"] = {spec.moe ? "BtxGegluMoeForCausalLM" : "BtxGegluForCausalLM"};
    j["model_type"] = spec.moe ? moe_model_type() : dense_model_type();
    j["hidden_act"] = gate_activation_name(kActivation);
    return j;
  }

  static CausalLM make_dense(const ModelSpec& spec) {
    ModelSpec dense = spec;
    dense.moe.reset();
    FeedForwardFactory ffn = [](const LlamaConfig& c, int64_t) {
      return torch::nn::AnyModule(LlamaMLP(c.hidden_size, c.intermediate_size, kActivation));
    };
    return CausalLM(LlamaForCausalLM(LlamaFamily::decoder_config(dense), ffn), dense);
  }
  static CausalLM make_moe(const ModelSpec& spec) {
    ModelSpec moe = spec;
    moe.moe = resolved(*spec.moe);
    return CausalLM(
        LlamaForCausalLM(LlamaFamily::decoder_config(moe), moe_feed_forward(*moe.moe, kActivation)),
        moe);
  }
  // A dense spec of this family from Llama-shaped numbers.
  static ModelSpec spec(const LlamaConfig& c) {
    ModelSpec s = LlamaFamily::spec(c);
    s.family = name();
    return s;
  }

  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    return LlamaFamily::hf_names(param, experts);
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) { return LlamaFamily::btx_slot(hf_name); }
  static SublayerNaming ffn_naming() { return LlamaFamily::ffn_naming(); }
};
static_assert(ModelFamily<GegluFamily>);

// Registers the family once per process (tests call it before use).
inline void register_geglu_family() {
  static const bool once = [] {
    (void)btx::families();  // built-ins first, so their model types are claimed
    return register_family<GegluFamily>();
  }();
  (void)once;
}

}  // namespace btx::test
