// SPDX-License-Identifier: MIT
// What family-agnostic code knows about a model: its family's registry name, the
// family's own config as Hugging Face config.json fields, the architecture numbers that
// compute and merge accounting need (ArchShape), and the MoE fields when the model is one.
// Each model family reads and writes the full config; everything else reads only this.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include <btx/core/moe_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The numbers of a decoder-only transformer that do not depend on its family.
struct ArchShape {
  int64_t vocab_size = 0;               // V
  int64_t hidden_size = 0;              // D
  int64_t intermediate_size = 0;        // F of the dense FFN
  int64_t num_hidden_layers = 0;        // L
  int64_t num_attention_heads = 0;      // H
  int64_t num_key_value_heads = 0;      // G
  int64_t head_dim = 0;                 // A
  int64_t max_position_embeddings = 0;  // longest sequence
  bool tie_word_embeddings = false;     // the LM head reuses the embedding
  bool operator==(const ArchShape&) const = default;
};

struct ModelSpec {
  std::string family;            // registry name of the model family ("llama", ...)
  nlohmann::json config;         // the family's dense config, as config.json fields
  ArchShape shape;               // read from `config` by the family
  std::optional<MoEConfig> moe;  // set for an MoE model (its family's MoE architecture)
  // Attention experts in every layer (BAM; btx's own architecture, no transformers one:
  // models/attention_experts_config.hpp). Families on the shared decoder build them.
  std::optional<MoEConfig> attention_moe;
  std::string dtype = "float32";  // storage dtype recorded in config.json
};

// Where two dense specs describe different models: "family: a vs b" or the first field of
// the family's parsed config that differs ("intermediate_size: 128 vs 96"); empty when
// they are one architecture. How a checkpoint is stored or was written (dtype, names,
// versions) is not architecture.
inline std::string architecture_difference(const ModelSpec& a, const ModelSpec& b) {
  if (a.family != b.family) return "family: " + a.family + " vs " + b.family;
  const auto storage = [](const std::string& key) {
    return key == "dtype" || key == "torch_dtype" || key == "transformers_version" ||
           key == "_name_or_path" || key == "use_cache";
  };
  for (const auto& [key, value] : a.config.items()) {
    if (storage(key)) continue;
    if (!b.config.contains(key)) return key + ": " + value.dump() + " vs (absent)";
    if (b.config[key] != value) return key + ": " + value.dump() + " vs " + b.config[key].dump();
  }
  for (const auto& [key, value] : b.config.items()) {
    if (!storage(key) && !a.config.contains(key)) return key + ": (absent) vs " + value.dump();
  }
  return {};
}

BTX_NAMESPACE_END
}  // namespace btx
