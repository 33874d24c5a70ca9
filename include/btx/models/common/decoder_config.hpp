// SPDX-License-Identifier: MIT
// DecoderConfig: the fields of Hugging Face's LlamaConfig that shape the shared decoder,
// plus the attention variants of the families built on it (q/k/v and o biases, per-head
// q/k RMSNorm, a sliding window on some or all layers), with validation that names the
// offending field instead of failing deep in a matmul.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <btx/core/model_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct DecoderConfig {
  int64_t vocab_size = 256;                // tokens in the vocabulary (bytes by default)
  int64_t hidden_size = 64;                // model width H
  int64_t intermediate_size = 176;         // SwiGLU inner width I
  int64_t num_hidden_layers = 2;           // decoder layers
  int64_t num_attention_heads = 4;         // query heads nH
  int64_t num_key_value_heads = 4;         // key/value heads nKV (GQA when < nH)
  std::optional<int64_t> head_dim;         // hd; HF's default is hidden_size / nH
  double rms_norm_eps = 1e-5;              // RMSNorm epsilon
  double rope_theta = 10000.0;             // RoPE base
  int64_t max_position_embeddings = 2048;  // longest sequence the model accepts
  bool tie_word_embeddings = false;        // lm_head shares embed_tokens.weight
  double initializer_range = 0.02;         // std of the normal init for Linear/Embedding
  // Attention variants (all off: Llama).
  bool qkv_bias = false;             // q/k/v projections carry a bias (Qwen2)
  bool o_bias = false;               // o_proj carries a bias (Qwen3's attention_bias)
  bool qk_norm = false;              // RMSNorm over each head's q and k before RoPE (Qwen3)
  int64_t sliding_window = 0;        // W > 0: a query sees its last W positions; 0: all
  std::vector<bool> sliding_layers;  // layers the window applies to; empty: every layer
  // Layer variants (all off: Llama's pre-norm layer).
  // Norms on each branch's output before the residual add (post_attention_layernorm,
  // post_feedforward_layernorm) instead of on its input (OLMo2, OLMo3, FlexOlmo).
  bool post_norms = false;
  // The q/k norm over all heads' features at once ([nH * hd], [nKV * hd]; OLMo2), not per head.
  bool qk_norm_full_width = false;
  double embedding_multiplier = 1.0;      // embeddings scaled by it (Granite)
  double residual_multiplier = 1.0;       // each branch's output scaled before the add (Granite)
  std::optional<double> attention_scale;  // softmax scale; empty: 1/sqrt(hd) (Granite sets it)
  double logits_divisor = 1.0;            // logits divided by it (Granite's logits_scaling)

  // The window of layer `layer` (0: full causal attention).
  [[nodiscard]] int64_t window_of_layer(int64_t layer) const {
    if (sliding_window <= 0) return 0;
    if (sliding_layers.empty()) return sliding_window;
    return layer < int64_t(sliding_layers.size()) && sliding_layers[size_t(layer)] ? sliding_window
                                                                                   : 0;
  }

  // The family-agnostic numbers (FLOP accounting, merge checks) take a DecoderConfig as is.
  operator ArchShape() const {  // NOLINT(google-explicit-constructor): a view, not a conversion
    return ArchShape{
        vocab_size,          hidden_size,         intermediate_size,   num_hidden_layers,
        num_attention_heads, num_key_value_heads, resolved_head_dim(), max_position_embeddings,
        tie_word_embeddings};
  }

  [[nodiscard]] int64_t resolved_head_dim() const {
    return head_dim.value_or(num_attention_heads > 0 ? hidden_size / num_attention_heads : 0);
  }

  // Parameters of the dense model; saturates at INT64_MAX rather than overflowing.
  [[nodiscard]] int64_t num_parameters() const {
    const auto mul = [](int64_t a, int64_t b) -> int64_t {
      if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) {
        return std::numeric_limits<int64_t>::max();
      }
      return a * b;
    };
    const auto add = [](int64_t a, int64_t b) -> int64_t {
      return a > std::numeric_limits<int64_t>::max() - b ? std::numeric_limits<int64_t>::max()
                                                         : a + b;
    };
    const int64_t hd = resolved_head_dim();
    int64_t attn = add(mul(mul(2, num_attention_heads), mul(hd, hidden_size)),
                       mul(mul(2, num_key_value_heads), mul(hd, hidden_size)));
    int64_t mlp = mul(3, mul(hidden_size, intermediate_size));
    if (qkv_bias) attn = add(attn, mul(add(num_attention_heads, mul(2, num_key_value_heads)), hd));
    if (o_bias) attn = add(attn, hidden_size);
    if (qk_norm) {
      attn = add(attn, qk_norm_full_width ? mul(add(num_attention_heads, num_key_value_heads), hd)
                                          : mul(2, hd));
    }
    int64_t layer = add(add(attn, mlp), mul(2, hidden_size));
    int64_t total = add(mul(num_hidden_layers, layer), mul(vocab_size, hidden_size));
    if (!tie_word_embeddings) total = add(total, mul(vocab_size, hidden_size));
    return add(total, hidden_size);
  }

  // Throws std::invalid_argument naming the first inconsistent field and its value.
  void validate() const {
    const auto positive = [](const char* field, int64_t v) {
      if (v <= 0) {
        throw std::invalid_argument("config." + std::string(field) + " must be > 0, got " +
                                    std::to_string(v));
      }
    };
    positive("vocab_size", vocab_size);
    positive("hidden_size", hidden_size);
    positive("intermediate_size", intermediate_size);
    positive("num_hidden_layers", num_hidden_layers);
    positive("num_attention_heads", num_attention_heads);
    positive("num_key_value_heads", num_key_value_heads);
    positive("max_position_embeddings", max_position_embeddings);
    if (head_dim) {
      positive("head_dim", *head_dim);
    } else if (hidden_size % num_attention_heads != 0) {
      throw std::invalid_argument(
          "config.num_attention_heads=" + std::to_string(num_attention_heads) +
          " does not divide hidden_size=" + std::to_string(hidden_size) +
          " (set head_dim explicitly or choose a divisor)");
    }
    if (num_attention_heads % num_key_value_heads != 0) {
      throw std::invalid_argument(
          "config.num_key_value_heads=" + std::to_string(num_key_value_heads) +
          " does not divide num_attention_heads=" + std::to_string(num_attention_heads));
    }
    if (resolved_head_dim() % 2 != 0) {
      throw std::invalid_argument("config.head_dim=" + std::to_string(resolved_head_dim()) +
                                  " must be even for rotary embeddings");
    }
    if (!(rms_norm_eps > 0.0)) {
      throw std::invalid_argument("config.rms_norm_eps must be > 0, got " +
                                  std::to_string(rms_norm_eps));
    }
    if (!(rope_theta > 1.0)) {
      throw std::invalid_argument("config.rope_theta must be > 1, got " +
                                  std::to_string(rope_theta));
    }
    if (sliding_window < 0) {
      throw std::invalid_argument("config.sliding_window must be >= 0 (0: off), got " +
                                  std::to_string(sliding_window));
    }
    if (!sliding_layers.empty() && int64_t(sliding_layers.size()) != num_hidden_layers) {
      throw std::invalid_argument(
          "config.sliding_layers has " + std::to_string(sliding_layers.size()) +
          " entries for num_hidden_layers=" + std::to_string(num_hidden_layers));
    }
    for (const auto& [field, v] :
         {std::pair<const char*, double>{"embedding_multiplier", embedding_multiplier},
          {"residual_multiplier", residual_multiplier},
          {"logits_divisor", logits_divisor},
          {"attention_scale", attention_scale.value_or(1.0)}}) {
      if (!(v > 0.0) || !std::isfinite(v)) {
        throw std::invalid_argument("config." + std::string(field) +
                                    " must be finite and > 0, got " + std::to_string(v));
      }
    }
    if (!(initializer_range >= 0.0)) {
      throw std::invalid_argument("config.initializer_range must be >= 0, got " +
                                  std::to_string(initializer_range));
    }
    // fp32 weights plus as much again for gradients must fit in physical memory.
    const int64_t params = num_parameters();
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_size = ::sysconf(_SC_PAGESIZE);
    const double memory = pages > 0 && page_size > 0 ? double(pages) * double(page_size) : 1e15;
    if (double(params) * 8.0 > memory) {
      throw std::invalid_argument(
          "the config describes " + std::to_string(params) + " parameters (hidden_size=" +
          std::to_string(hidden_size) + ", intermediate_size=" + std::to_string(intermediate_size) +
          ", num_hidden_layers=" + std::to_string(num_hidden_layers) +
          ", vocab_size=" + std::to_string(vocab_size) +
          "): their fp32 weights and gradients would not fit in this machine's memory");
    }
  }
};

BTX_NAMESPACE_END
}  // namespace btx
