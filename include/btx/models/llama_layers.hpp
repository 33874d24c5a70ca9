// SPDX-License-Identifier: MIT
// Building blocks of the reference Llama: RMSNorm, the SwiGLU feed-forward block (the
// part BTX turns into experts) and grouped-query attention with an optional KV cache.
// Parameter names equal HF's state-dict keys (q_proj, gate_proj, ...).
#pragma once

#include <torch/torch.h>

#include <optional>

#include <btx/models/llama_config.hpp>
#include <btx/models/rotary.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// ------------------------------------------------------------------------- RMSNorm
class RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  RMSNormImpl(int64_t dim, double eps) : dim_(dim), eps_(eps) { reset(); }
  void reset() override { weight = register_parameter("weight", torch::ones({dim_})); }

  // Normalises in fp32 and casts back before the scale, like HF's LlamaRMSNorm.
  torch::Tensor forward(const torch::Tensor& x) {
    auto x32 = x.to(torch::kFloat32);
    auto inv_rms = torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
    return weight * (x32 * inv_rms).to(x.scalar_type());
  }

  torch::Tensor weight;

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

inline torch::nn::Linear make_linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// ----------------------------------------------------------------- SwiGLU block
// down(silu(gate(x)) * up(x)); x [..., H] -> [..., H] through I.
class LlamaMLPImpl : public torch::nn::Cloneable<LlamaMLPImpl> {
 public:
  LlamaMLPImpl(int64_t hidden, int64_t intermediate) : hidden_(hidden), inter_(intermediate) {
    reset();
  }
  void reset() override {
    gate_proj = register_module("gate_proj", make_linear(hidden_, inter_));
    up_proj = register_module("up_proj", make_linear(hidden_, inter_));
    down_proj = register_module("down_proj", make_linear(inter_, hidden_));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
  }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t intermediate_size() const { return inter_; }

  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  int64_t hidden_, inter_;
};
TORCH_MODULE(LlamaMLP);

// ------------------------------------------------------------------- KV cache
// Keys/values seen so far, per layer: [B, nKV, P, hd]. Empty tensors before the first step.
struct KVCache {
  std::vector<torch::Tensor> keys;
  std::vector<torch::Tensor> values;
  explicit KVCache(size_t layers = 0) : keys(layers), values(layers) {}
  [[nodiscard]] int64_t length() const {
    return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2);
  }
};

// ------------------------------------------------------------------ attention
class LlamaAttentionImpl : public torch::nn::Cloneable<LlamaAttentionImpl> {
 public:
  explicit LlamaAttentionImpl(const LlamaConfig& config) : config_(config) { reset(); }
  void reset() override {
    const int64_t h = config_.hidden_size, hd = config_.resolved_head_dim();
    q_proj = register_module("q_proj", make_linear(h, config_.num_attention_heads * hd));
    k_proj = register_module("k_proj", make_linear(h, config_.num_key_value_heads * hd));
    v_proj = register_module("v_proj", make_linear(h, config_.num_key_value_heads * hd));
    o_proj = register_module("o_proj", make_linear(config_.num_attention_heads * hd, h));
  }

  // x_BTD: [B, T, H]. With a cache, keys/values of earlier positions are prepended and
  // the new ones appended to `cache_k`/`cache_v`.
  torch::Tensor forward(const torch::Tensor& x_BTD, const RotaryTables& rope,
                        torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr) {
    const int64_t B = x_BTD.size(0), T = x_BTD.size(1), hd = config_.resolved_head_dim();
    const int64_t nH = config_.num_attention_heads, nKV = config_.num_key_value_heads;
    auto q_BNTd = q_proj(x_BTD).view({B, T, nH, hd}).transpose(1, 2);
    auto k_BKTd = k_proj(x_BTD).view({B, T, nKV, hd}).transpose(1, 2);
    auto v_BKTd = v_proj(x_BTD).view({B, T, nKV, hd}).transpose(1, 2);
    q_BNTd = apply_rotary(q_BNTd, rope);
    k_BKTd = apply_rotary(k_BKTd, rope);
    if (cache_k != nullptr && cache_v != nullptr) {
      if (cache_k->defined()) {
        k_BKTd = torch::cat({*cache_k, k_BKTd}, 2);
        v_BKTd = torch::cat({*cache_v, v_BKTd}, 2);
      }
      *cache_k = k_BKTd;
      *cache_v = v_BKTd;
    }
    const int64_t S = k_BKTd.size(2);  // keys visible: cached + new
    std::optional<torch::Tensor> mask;
    bool causal = false;
    if (S == T) {
      causal = T > 1;
    } else if (T > 1) {
      // Bottom-right aligned causal mask: query i sits at absolute position S - T + i.
      auto qi = torch::arange(T, x_BTD.options().dtype(torch::kLong)).unsqueeze(1);
      auto kj = torch::arange(S, x_BTD.options().dtype(torch::kLong)).unsqueeze(0);
      mask = kj <= qi + (S - T);
    }
    auto out_BNTd = at::scaled_dot_product_attention(
        q_BNTd, k_BKTd, v_BKTd, mask, /*dropout_p=*/0.0, causal, /*scale=*/std::nullopt,
        /*enable_gqa=*/nKV != nH);
    return o_proj(out_BNTd.transpose(1, 2).reshape({B, T, nH * hd}));
  }

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  LlamaConfig config_;
};
TORCH_MODULE(LlamaAttention);

BTX_NAMESPACE_END
}  // namespace btx
