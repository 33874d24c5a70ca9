// SPDX-License-Identifier: MIT
// The config.json fields every family on the shared decoder reads and writes alike: sizes,
// norms, RoPE (theta at the top level or in rope_parameters/rope_scaling, default type
// only), the activation (silu only), tied embeddings and the storage dtype. A family adds
// its own fields (biases, q/k norm, windows, MoE) and its defaults where transformers'
// differ (rms_norm_eps, rope_theta, head_dim, max_position_embeddings).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include <btx/hf/config_json.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

// transformers' defaults for a key config.json leaves out.
struct DecoderDefaults {
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 2048;
  std::optional<int64_t> head_dim;  // empty: hidden_size / num_attention_heads
};

inline DecoderConfig read_decoder_fields(const ConfigFields& f, const DecoderDefaults& d) {
  const nlohmann::json& j = f.json();
  const std::string& where = f.where();
  DecoderConfig c;
  c.hidden_size = f.required_int("hidden_size");
  c.intermediate_size = f.required_int("intermediate_size");
  c.num_hidden_layers = f.required_int("num_hidden_layers");
  c.num_attention_heads = f.required_int("num_attention_heads");
  c.vocab_size = f.required_int("vocab_size");
  c.num_key_value_heads = f.optional_int("num_key_value_heads", c.num_attention_heads);
  c.head_dim =
      f.has("head_dim") ? std::optional<int64_t>(f.optional_int("head_dim", 0)) : d.head_dim;
  c.rms_norm_eps = f.optional_num("rms_norm_eps", d.rms_norm_eps);
  c.max_position_embeddings = f.optional_int("max_position_embeddings", d.max_position_embeddings);
  c.initializer_range = f.optional_num("initializer_range", 0.02);
  c.tie_word_embeddings = f.optional_bool("tie_word_embeddings", false);
  c.rope_theta = f.optional_num("rope_theta", d.rope_theta);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!f.has(key)) continue;
    const auto& rope = j[key];
    const std::string type = rope.is_object()
                                 ? rope.value("rope_type", rope.value("type", "default"))
                                 : std::string("?");
    if (type != "default") {
      throw detail::config_error(where, std::string("\"") + key + "\" with rope_type \"" + type +
                                            "\" is not supported (btx implements default RoPE)");
    }
    if (rope.contains("rope_theta")) c.rope_theta = rope["rope_theta"].get<double>();
  }
  const std::string act = f.optional_string("hidden_act", "silu");
  if (act != "silu") {
    throw detail::config_error(where,
                               "\"hidden_act\": \"" + act + "\" is not supported (silu only)");
  }
  return c;
}

// parse(j, where), with a JSON type error turned into one naming `where`.
template <class Parse>
auto parse_config_json(Parse&& parse, const nlohmann::json& j, const std::string& where) {
  try {
    return parse(j, where);
  } catch (const nlohmann::json::exception& e) {
    throw detail::config_error(where,
                               std::string("a field has the wrong JSON type (") + e.what() + ")");
  }
}

// Validates `c`, naming `where` in the error.
inline void validate_decoder(const DecoderConfig& c, const std::string& where) {
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw detail::config_error(where, e.what());
  }
}

// The keys every family writes alike (transformers 5 reads rope_parameters, 4 rope_theta).
inline nlohmann::ordered_json decoder_config_json(const DecoderConfig& c, const std::string& arch,
                                                  const std::string& model_type,
                                                  const std::string& dtype) {
  nlohmann::ordered_json j;
  j["architectures"] = {arch};
  j["model_type"] = model_type;
  j["attention_dropout"] = 0.0;
  j["dtype"] = dtype;
  j["head_dim"] = c.resolved_head_dim();
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = c.initializer_range;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_parameters"] = {{"rope_theta", c.rope_theta}, {"rope_type", "default"}};
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
