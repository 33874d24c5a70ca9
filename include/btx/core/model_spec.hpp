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

BTX_NAMESPACE_END
}  // namespace btx
