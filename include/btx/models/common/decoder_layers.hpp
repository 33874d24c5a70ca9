// SPDX-License-Identifier: MIT
// Building blocks of the shared decoder: the gated feed-forward block (the part BTX turns
// into experts) and grouped-query attention with an optional KV cache, q/k/v and o biases,
// per-head q/k RMSNorm and a sliding window, as DecoderConfig asks.
// Parameter names equal HF's state-dict keys (q_proj, q_norm, gate_proj, ...).
#pragma once

#include <torch/torch.h>

#include <optional>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/kv_cache.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/layers.hpp>
#include <btx/models/common/rotary.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// ----------------------------------------------------------------- SwiGLU block
// down(act(gate(x)) * up(x)); x [..., D] -> [..., D] through F. act is SiLU in every
// shipped family; a family may choose another gate activation.
class GatedMLPImpl : public torch::nn::Cloneable<GatedMLPImpl>, public GatedFfnSource {
 public:
  GatedMLPImpl(int64_t hidden, int64_t intermediate,
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
TORCH_MODULE(GatedMLP);

// ------------------------------------------------------------------ attention
// Key j is visible to query i (absolute positions) iff j <= i and, with a window W,
// i - j < W (transformers' sliding-window mask: W keys, the query's own included).
inline torch::Tensor visible_keys_SP(int64_t S, int64_t P, int64_t window,
                                     const torch::TensorOptions& options) {
  auto qi_S1 = torch::arange(P - S, P, options.dtype(torch::kLong)).unsqueeze(1);
  auto kj_1P = torch::arange(P, options.dtype(torch::kLong)).unsqueeze(0);
  auto visible = kj_1P <= qi_S1;
  if (window > 0) visible = visible & (qi_S1 - kj_1P < window);
  return visible;
}

// Causal (optionally windowed) attention of projected heads: RoPE on q and k, the cache's
// keys/values prepended (and the new ones appended to it), SDPA with grouped-query heads.
// q_BSHA [B, S, H, A], k_BSGA / v_BSGA [B, S, G, A] -> [B, S, H * A], before o_proj.
// `scale`: the softmax scale, 1/sqrt(A) when empty.
inline torch::Tensor attend(const torch::Tensor& q_BSHA, const torch::Tensor& k_BSGA,
                            const torch::Tensor& v_BSGA, const RotaryTables& rope, int64_t window,
                            torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr,
                            std::optional<double> scale = std::nullopt) {
  const int64_t B = q_BSHA.size(0), S = q_BSHA.size(1), H = q_BSHA.size(2), A = q_BSHA.size(3);
  const int64_t G = k_BSGA.size(2);
  auto q_BHSA = apply_rotary(q_BSHA.transpose(1, 2), rope);
  auto k_BGPA = apply_rotary(k_BSGA.transpose(1, 2), rope);
  auto v_BGPA = v_BSGA.transpose(1, 2);
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
  if (P == S && (window == 0 || window >= S)) {
    causal = S > 1;  // SDPA's own causal mask: the window hides nothing here
  } else if (S > 1 || window > 0) {
    // Bottom-right aligned: query i sits at absolute position P - S + i.
    mask = visible_keys_SP(S, P, window, q_BSHA.options());
  }
  auto out_BHSA = at::scaled_dot_product_attention(q_BHSA, k_BGPA, v_BGPA, mask,
                                                   /*dropout_p=*/0.0, causal, scale,
                                                   /*enable_gqa=*/G != H);
  return out_BHSA.transpose(1, 2).reshape({B, S, H * A});
}

class GroupedQueryAttentionImpl : public torch::nn::Cloneable<GroupedQueryAttentionImpl> {
 public:
  GroupedQueryAttentionImpl(const DecoderConfig& config, int64_t layer)
      : config_(config), window_(config.window_of_layer(layer)) {
    reset();
  }
  void reset() override {
    const int64_t h = config_.hidden_size, hd = config_.resolved_head_dim();
    const auto linear = [](int64_t in, int64_t out, bool bias) {
      return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
    };
    q_proj =
        register_module("q_proj", linear(h, config_.num_attention_heads * hd, config_.qkv_bias));
    k_proj =
        register_module("k_proj", linear(h, config_.num_key_value_heads * hd, config_.qkv_bias));
    v_proj =
        register_module("v_proj", linear(h, config_.num_key_value_heads * hd, config_.qkv_bias));
    o_proj = register_module("o_proj", linear(config_.num_attention_heads * hd, h, config_.o_bias));
    if (config_.qk_norm) {  // per head, or over every head's features (OLMo2)
      const bool wide = config_.qk_norm_full_width;
      q_norm = register_module(
          "q_norm", RMSNorm(wide ? config_.num_attention_heads * hd : hd, config_.rms_norm_eps));
      k_norm = register_module(
          "k_norm", RMSNorm(wide ? config_.num_key_value_heads * hd : hd, config_.rms_norm_eps));
    }
  }

  // x_BSD: [B, S, D]. With a cache, keys/values of earlier positions are prepended and
  // the new ones appended to `cache_k`/`cache_v` ([B, G, P, A]).
  torch::Tensor forward(const torch::Tensor& x_BSD, const RotaryTables& rope,
                        torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr) {
    const int64_t B = x_BSD.size(0), S = x_BSD.size(1), A = config_.resolved_head_dim();
    const int64_t H = config_.num_attention_heads, G = config_.num_key_value_heads;
    auto q_BSF = q_proj(x_BSD);
    auto k_BSF = k_proj(x_BSD);
    if (config_.qk_norm && config_.qk_norm_full_width) {  // over all H * A features (OLMo2)
      q_BSF = q_norm(q_BSF);
      k_BSF = k_norm(k_BSF);
    }
    auto q_BSHA = q_BSF.view({B, S, H, A});
    auto k_BSGA = k_BSF.view({B, S, G, A});
    if (config_.qk_norm && !config_.qk_norm_full_width) {  // each head's A, before RoPE (Qwen3)
      q_BSHA = q_norm(q_BSHA);
      k_BSGA = k_norm(k_BSGA);
    }
    auto v_BSGA = v_proj(x_BSD).view({B, S, G, A});
    return o_proj(
        attend(q_BSHA, k_BSGA, v_BSGA, rope, window_, cache_k, cache_v, config_.attention_scale));
  }

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // only with config.qk_norm

 private:
  DecoderConfig config_;
  int64_t window_;  // 0: full causal attention
};
TORCH_MODULE(GroupedQueryAttention);

BTX_NAMESPACE_END
}  // namespace btx
