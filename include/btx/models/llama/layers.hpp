// SPDX-License-Identifier: MIT
// Building blocks of the reference Llama: the SwiGLU feed-forward block (the part BTX
// turns into experts) and grouped-query attention with an optional KV cache.
// Parameter names equal HF's state-dict keys (q_proj, gate_proj, ...).
#pragma once

#include <torch/torch.h>

#include <optional>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/kv_cache.hpp>
#include <btx/models/common/layers.hpp>
#include <btx/models/common/rotary.hpp>
#include <btx/models/llama/config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// ----------------------------------------------------------------- SwiGLU block
// down(act(gate(x)) * up(x)); x [..., D] -> [..., D] through F. act is SiLU for Llama;
// a family derived from Llama may choose another gate activation.
class LlamaMLPImpl : public torch::nn::Cloneable<LlamaMLPImpl>, public GatedFfnSource {
 public:
  LlamaMLPImpl(int64_t hidden, int64_t intermediate,
               GateActivation activation = GateActivation::silu)
      : hidden_(hidden), inter_(intermediate), act_(activation) {
    reset();
  }
  void reset() override {
    gate_proj = register_module("gate_proj", make_linear(hidden_, inter_));
    up_proj = register_module("up_proj", make_linear(hidden_, inter_));
    down_proj = register_module("down_proj", make_linear(inter_, hidden_));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return down_proj(apply_gate_activation(gate_proj(x), act_) * up_proj(x));
  }
  [[nodiscard]] torch::Tensor gate_weight_FD() const override { return gate_proj->weight; }
  [[nodiscard]] torch::Tensor up_weight_FD() const override { return up_proj->weight; }
  [[nodiscard]] torch::Tensor down_weight_DF() const override { return down_proj->weight; }
  [[nodiscard]] GateActivation activation() const override { return act_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t intermediate_size() const { return inter_; }

  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  int64_t hidden_, inter_;
  GateActivation act_;
};
TORCH_MODULE(LlamaMLP);

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

  // x_BSD: [B, S, D]. With a cache, keys/values of earlier positions are prepended and
  // the new ones appended to `cache_k`/`cache_v` ([B, G, P, A]).
  torch::Tensor forward(const torch::Tensor& x_BSD, const RotaryTables& rope,
                        torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr) {
    const int64_t B = x_BSD.size(0), S = x_BSD.size(1), A = config_.resolved_head_dim();
    const int64_t H = config_.num_attention_heads, G = config_.num_key_value_heads;
    auto q_BHSA = q_proj(x_BSD).view({B, S, H, A}).transpose(1, 2);
    auto k_BGPA = k_proj(x_BSD).view({B, S, G, A}).transpose(1, 2);
    auto v_BGPA = v_proj(x_BSD).view({B, S, G, A}).transpose(1, 2);
    q_BHSA = apply_rotary(q_BHSA, rope);
    k_BGPA = apply_rotary(k_BGPA, rope);
    if (cache_k != nullptr && cache_v != nullptr) {
      if (cache_k->defined()) {
        k_BGPA = torch::cat({*cache_k, k_BGPA}, 2);
        v_BGPA = torch::cat({*cache_v, v_BGPA}, 2);
      }
      *cache_k = k_BGPA;
      *cache_v = v_BGPA;
    }
    const int64_t P = k_BGPA.size(2);  // keys visible: cached + new
    std::optional<torch::Tensor> mask;
    bool causal = false;
    if (P == S) {
      causal = S > 1;
    } else if (S > 1) {
      // Bottom-right aligned causal mask: query i sits at absolute position P - S + i.
      auto qi = torch::arange(S, x_BSD.options().dtype(torch::kLong)).unsqueeze(1);
      auto kj = torch::arange(P, x_BSD.options().dtype(torch::kLong)).unsqueeze(0);
      mask = kj <= qi + (P - S);
    }
    auto out_BHSA = at::scaled_dot_product_attention(
        q_BHSA, k_BGPA, v_BGPA, mask, /*dropout_p=*/0.0, causal, /*scale=*/std::nullopt,
        /*enable_gqa=*/G != H);
    return o_proj(out_BHSA.transpose(1, 2).reshape({B, S, H * A}));
  }

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  LlamaConfig config_;
};
TORCH_MODULE(LlamaAttention);

BTX_NAMESPACE_END
}  // namespace btx
