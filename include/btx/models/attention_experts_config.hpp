// SPDX-License-Identifier: MIT
// config.json of a model with attention experts (models/common/attention_experts.hpp),
// which no transformers architecture has. btx writes its family's own config (dense or MoE)
// with model_type "btx_attention_experts", so transformers refuses the folder by name
// instead of loading a model without its attention, and keeps what it needs beside it:
//   "btx_base_model_type": the family's model_type ("mixtral", "qwen3_moe", ...)
//   "btx_attention_experts": {"num_experts": E, "router": "soft", "router_options": {...}}
// btx reads such a folder back as the family's model with attention experts.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/moe_config.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

inline constexpr const char* kAttentionExpertsModelType = "btx_attention_experts";

// The family's config.json `config` made the config of the same model with `moe`'s
// attention experts.
inline nlohmann::ordered_json with_attention_experts(nlohmann::ordered_json config,
                                                     const MoEConfig& moe) {
  config["btx_base_model_type"] = config.at("model_type");
  config["model_type"] = kAttentionExpertsModelType;
  config["architectures"] = nlohmann::json::array({"BtxAttentionExpertsForCausalLM"});
  config["btx_attention_experts"] = {{"num_experts", moe.num_experts},
                                     {"router", moe.router.name},
                                     {"router_options", moe.router.options}};
  return config;
}

// For a config.json with attention experts: the family's own config (its model_type put
// back) and the attention experts' MoE config; std::nullopt for any other config.
inline std::optional<std::pair<nlohmann::json, MoEConfig>> split_attention_experts(
    const nlohmann::json& config, const std::string& where) {
  if (!config.is_object() || !config.contains("model_type") ||
      config.at("model_type") != kAttentionExpertsModelType) {
    return std::nullopt;
  }
  const auto field = [&](const char* key) -> const nlohmann::json& {
    if (!config.contains(key)) {
      throw std::runtime_error(where + ": model_type \"" + kAttentionExpertsModelType +
                               "\" needs the field \"" + key + "\"");
    }
    return config.at(key);
  };
  const auto& base = field("btx_base_model_type");
  const auto& experts = field("btx_attention_experts");
  if (!base.is_string() || !experts.is_object() || !experts.contains("num_experts") ||
      !experts.at("num_experts").is_number_integer() || !experts.contains("router") ||
      !experts.at("router").is_string()) {
    throw std::runtime_error(where +
                             ": btx_base_model_type must be a string and btx_attention_experts "
                             "{num_experts: integer, router: string, router_options: {...}}");
  }
  MoEConfig moe;
  moe.num_experts = experts.at("num_experts").get<int64_t>();
  if (moe.num_experts < 1) {
    throw std::runtime_error(where + ": btx_attention_experts.num_experts must be >= 1");
  }
  moe.load_balance_alpha = 0.0;
  moe.router = resolve_router(experts.at("router").get<std::string>(),
                              experts.value("router_options", nlohmann::json::object()));
  nlohmann::json family_config = config;
  family_config["model_type"] = base;
  family_config.erase("btx_base_model_type");
  family_config.erase("btx_attention_experts");
  return std::make_pair(std::move(family_config), std::move(moe));
}

BTX_NAMESPACE_END
}  // namespace btx
