// SPDX-License-Identifier: MIT
// Attention experts (BAM, Zhang et al. 2024): a decoder layer's attention as E experts,
// each a grouped-query attention of the layer's shape with its own q/k/v/o projections,
// and a router over them (any registered router; BAM's is soft: every expert, weighted by
// the softmax). Token t's output is sum_e w_te * attention_e(x)_t. Every expert computes
// keys and values for every token (a routed query attends over them all), so all E
// attentions run whatever the router: FLOPs count E attentions (recipe/compute.hpp).
// Parameters, packed like FFN experts (core/sublayer_naming.hpp's attention naming):
//   self_attn.experts.{q,k,v}_proj [E, W, D], self_attn.experts.o_proj [E, D, H*A],
//   self_attn.gate.weight [E, D]
// No transformers architecture has attention experts: checkpoints holding them are btx's
// own (models/attention_experts_config.hpp). Projection biases and q/k norms are refused.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/moe_config.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/decoder_layers.hpp>
#include <btx/models/common/rotary.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The experts' projections, packed along a leading expert dimension.
class PackedAttentionImpl : public torch::nn::Cloneable<PackedAttentionImpl> {
 public:
  PackedAttentionImpl(const DecoderConfig& config, int64_t num_experts)
      : config_(config), experts_(num_experts) {
    reset();
  }
  void reset() override {
    const int64_t D = config_.hidden_size, A = config_.resolved_head_dim();
    const int64_t H = config_.num_attention_heads, G = config_.num_key_value_heads;
    const auto init = [&](std::vector<int64_t> shape) {
      return torch::empty(shape).normal_(0.0, config_.initializer_range);
    };
    q_proj = register_parameter("q_proj", init({experts_, H * A, D}));
    k_proj = register_parameter("k_proj", init({experts_, G * A, D}));
    v_proj = register_parameter("v_proj", init({experts_, G * A, D}));
    o_proj = register_parameter("o_proj", init({experts_, D, H * A}));
  }
  [[nodiscard]] int64_t num_experts() const { return experts_; }

  torch::Tensor q_proj, k_proj, v_proj, o_proj;

 private:
  DecoderConfig config_;
  int64_t experts_;
};
TORCH_MODULE(PackedAttention);

class AttentionExpertsImpl : public torch::nn::Cloneable<AttentionExpertsImpl> {
 public:
  AttentionExpertsImpl(const DecoderConfig& config, int64_t layer, const MoEConfig& moe)
      : config_(config), layer_(layer), window_(config.window_of_layer(layer)), moe_(moe) {
    const std::string where = "btx: attention experts";
    if (config.qkv_bias || config.o_bias) {
      throw std::invalid_argument(where +
                                  " take no projection biases (attention_bias / "
                                  "qkv_bias); this model has them");
    }
    if (config.qk_norm) {
      throw std::invalid_argument(where + " take no per-head q/k norms; this model has them");
    }
    if (moe.num_experts < 1) {
      throw std::invalid_argument(where + ": num_experts must be >= 1");
    }
    moe_.router = resolve_router(moe_.router);
    reset();
  }
  void reset() override {
    registration_ = registration_of(moe_.router);
    gate = register_module("gate",
                           registration_->make_router(moe_, config_.hidden_size, uint64_t(layer_)));
    experts = register_module("experts", PackedAttention(config_, moe_.num_experts));
  }

  // x_BSD [B, S, D] -> [B, S, D]. With a cache, each expert's keys/values sit in
  // `cache_k`/`cache_v` stacked along the batch: [E * B, G, P, A].
  torch::Tensor forward(const torch::Tensor& x_BSD, const RotaryTables& rope,
                        torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr) {
    const int64_t B = x_BSD.size(0), S = x_BSD.size(1), D = x_BSD.size(2);
    const int64_t E = moe_.num_experts, A = config_.resolved_head_dim();
    const int64_t H = config_.num_attention_heads, G = config_.num_key_value_heads;
    const auto x_TD = x_BSD.reshape({B * S, D});
    const RoutingResult r = registration_->route(*gate, x_TD);
    // Each expert's weight per token; 0 where the router did not pick it.
    const auto w_TE = torch::zeros({B * S, E}, r.weights_TK.options())
                          .scatter_add(1, r.indices_TK, r.weights_TK)
                          .to(x_BSD.scalar_type());
    const bool cached = cache_k != nullptr && cache_v != nullptr;
    std::vector<torch::Tensor> keys, values;
    torch::Tensor y_BSD;
    for (int64_t e = 0; e < E; ++e) {
      namespace F = torch::nn::functional;
      auto q_BSHA = F::linear(x_BSD, experts->q_proj[e]).view({B, S, H, A});
      auto k_BSGA = F::linear(x_BSD, experts->k_proj[e]).view({B, S, G, A});
      auto v_BSGA = F::linear(x_BSD, experts->v_proj[e]).view({B, S, G, A});
      torch::Tensor ck, cv;
      if (cached && cache_k->defined()) {
        ck = cache_k->slice(0, e * B, (e + 1) * B);
        cv = cache_v->slice(0, e * B, (e + 1) * B);
      }
      auto out = F::linear(attend(q_BSHA, k_BSGA, v_BSGA, rope, window_, cached ? &ck : nullptr,
                                  cached ? &cv : nullptr, config_.attention_scale),
                           experts->o_proj[e]);
      if (cached) {
        keys.push_back(ck);
        values.push_back(cv);
      }
      auto weighted = out * w_TE.select(1, e).view({B, S, 1});
      y_BSD = y_BSD.defined() ? y_BSD + weighted : weighted;
    }
    if (cached) {
      *cache_k = torch::cat(keys, 0);
      *cache_v = torch::cat(values, 0);
    }
    last_weights_TE_ = w_TE.detach();
    return y_BSD;
  }

  [[nodiscard]] int64_t num_experts() const { return moe_.num_experts; }
  [[nodiscard]] const MoEConfig& moe() const { return moe_; }
  // Each token's weight on each expert in the last forward, [T, E] (routing analysis).
  [[nodiscard]] const torch::Tensor& last_weights_TE() const { return last_weights_TE_; }

  std::shared_ptr<torch::nn::Module> gate;
  PackedAttention experts{nullptr};

 private:
  DecoderConfig config_;
  int64_t layer_;
  int64_t window_;
  MoEConfig moe_;
  std::shared_ptr<const RegisteredRouter> registration_;
  torch::Tensor last_weights_TE_;
};
TORCH_MODULE(AttentionExperts);

BTX_NAMESPACE_END
}  // namespace btx
