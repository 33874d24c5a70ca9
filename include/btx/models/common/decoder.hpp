// SPDX-License-Identifier: MIT
// The pre-norm decoder the Llama-like families share (HF's LlamaForCausalLM architecture
// and parameter names; the attention variants of Mistral and Qwen are DecoderConfig
// fields). Each layer's feed-forward block sits in a replaceable slot (`mlp`, a torch AnyModule),
// so MoE layers can take its place: built in by a FeedForwardFactory, or swapped later
// by btx's model surgery. Its attention is a slot too (`self_attn`): grouped-query attention,
// or attention experts built by an AttentionFactory.
//
// Parameter names (equal to HF's state-dict keys):
//   model.embed_tokens.weight, model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight,
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, model.layers.{i}.mlp.*,
//   model.norm.weight, lm_head.weight (absent when tie_word_embeddings).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include <btx/core/kv_cache.hpp>
#include <btx/core/layer_stack.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/decoder_layers.hpp>
#include <btx/models/common/layers.hpp>
#include <btx/models/common/rotary.hpp>
#include <btx/models/common/weight_init.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Builds the feed-forward module of layer `layer`; it must map [..., H] -> [..., H].
using FeedForwardFactory = std::function<torch::nn::AnyModule(const DecoderConfig&, int64_t layer)>;

inline torch::nn::AnyModule dense_feed_forward(const DecoderConfig& config, int64_t /*layer*/) {
  return torch::nn::AnyModule(GatedMLP(config.hidden_size, config.intermediate_size));
}

// Builds the attention module of layer `layer`: forward(x_BSD, rope, cache_k, cache_v) ->
// [B, S, D], as GroupedQueryAttention (the default) or AttentionExperts.
using AttentionFactory = std::function<torch::nn::AnyModule(const DecoderConfig&, int64_t layer)>;

inline torch::nn::AnyModule dense_attention(const DecoderConfig& config, int64_t layer) {
  return torch::nn::AnyModule(GroupedQueryAttention(config, layer));
}

// --------------------------------------------------------------- decoder layer
class DecoderLayerImpl : public torch::nn::Cloneable<DecoderLayerImpl> {
 public:
  DecoderLayerImpl(const DecoderConfig& config, int64_t layer, FeedForwardFactory ffn,
                   AttentionFactory attention = {})
      : config_(config),
        layer_(layer),
        ffn_factory_(std::move(ffn)),
        attention_factory_(std::move(attention)) {
    reset();
  }
  void reset() override {
    // reset() runs in the constructor (no block yet) and inside clone(), where the copy
    // arrives holding the original's block. Cloning that block keeps a block swapped in
    // by set_mlp() or surgery, which the factory would rebuild as the original kind.
    const bool in_clone = !mlp.is_empty();
    const auto norm = [this] { return RMSNorm(config_.hidden_size, config_.rms_norm_eps); };
    if (!config_.post_norms) input_layernorm = register_module("input_layernorm", norm());
    if (in_clone) {
      self_attn = self_attn.clone();
    } else {
      self_attn = attention_factory_ ? attention_factory_(config_, layer_)
                                     : dense_attention(config_, layer_);
    }
    register_module("self_attn", self_attn.ptr());
    post_attention_layernorm = register_module("post_attention_layernorm", norm());
    if (config_.post_norms)
      post_feedforward_layernorm = register_module("post_feedforward_layernorm", norm());
    if (in_clone) {
      mlp = mlp.clone();
    } else {
      mlp = ffn_factory_ ? ffn_factory_(config_, layer_) : dense_feed_forward(config_, layer_);
    }
    register_module("mlp", mlp.ptr());
  }

  // Swaps the feed-forward block, keeping the parameter prefix `mlp.`.
  void set_mlp(torch::nn::AnyModule module) {
    replace_module("mlp", module.ptr());
    mlp = std::move(module);
  }

  // x_BSD [B, S, D]. `mlp_input`, when given, receives the FFN's input (the normed
  // hidden state; the residual stream with post_norms), which router initialisation from
  // hidden states needs.
  torch::Tensor forward(const torch::Tensor& x_BSD, const RotaryTables& rope,
                        torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr,
                        torch::Tensor* mlp_input = nullptr) {
    const auto scaled = [this](torch::Tensor branch) {
      return config_.residual_multiplier == 1.0 ? branch : branch * config_.residual_multiplier;
    };
    if (config_.post_norms) {  // OLMo2: x + norm(attn(x)), then h + norm(mlp(h))
      auto h = x_BSD + scaled(post_attention_layernorm(
                           self_attn.forward<torch::Tensor>(x_BSD, rope, cache_k, cache_v)));
      if (mlp_input != nullptr) *mlp_input = h.detach();
      return h + scaled(post_feedforward_layernorm(mlp.forward<torch::Tensor>(h)));
    }
    auto h = x_BSD + scaled(self_attn.forward<torch::Tensor>(input_layernorm(x_BSD), rope, cache_k,
                                                             cache_v));
    auto normed = post_attention_layernorm(h);
    if (mlp_input != nullptr) *mlp_input = normed.detach();
    return h + scaled(mlp.forward<torch::Tensor>(normed));
  }

  // input_layernorm: pre-norm layers; post_feedforward_layernorm: post_norms layers.
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr},
      post_feedforward_layernorm{nullptr};
  torch::nn::AnyModule self_attn;  // GroupedQueryAttention, or AttentionExperts
  torch::nn::AnyModule mlp;

 private:
  DecoderConfig config_;
  int64_t layer_;
  FeedForwardFactory ffn_factory_;
  AttentionFactory attention_factory_;
};
TORCH_MODULE(DecoderLayer);

// ------------------------------------------------------------------ the trunk
class DecoderModelImpl : public torch::nn::Cloneable<DecoderModelImpl>, public LayerStack {
 public:
  DecoderModelImpl(const DecoderConfig& config, FeedForwardFactory ffn,
                   AttentionFactory attention = {})
      : config_(config), ffn_factory_(std::move(ffn)), attention_factory_(std::move(attention)) {
    config_.validate();
    reset();
  }
  void reset() override {
    embed_tokens = register_module("embed_tokens",
                                   torch::nn::Embedding(config_.vocab_size, config_.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      layers->push_back(DecoderLayer(config_, i, ffn_factory_, attention_factory_));
    }
    norm = register_module("norm", RMSNorm(config_.hidden_size, config_.rms_norm_eps));
  }

  // ids_BS [B, S] int64 -> final normed hidden states [B, S, D].
  torch::Tensor forward(const torch::Tensor& ids_BS, KVCache* cache = nullptr,
                        std::vector<torch::Tensor>* mlp_inputs = nullptr) {
    TORCH_CHECK(ids_BS.dim() == 2, "btx: the decoder expects token ids [batch, time], got ",
                ids_BS.sizes());
    const int64_t offset = cache != nullptr ? cache->length() : 0;
    const int64_t S = ids_BS.size(1);
    TORCH_CHECK(offset + S <= config_.max_position_embeddings, "sequence of ", offset + S,
                " tokens exceeds max_position_embeddings=", config_.max_position_embeddings);
    if (cache != nullptr && cache->keys.size() != layers->size()) *cache = KVCache(layers->size());
    auto h = embed_tokens(ids_BS);
    if (config_.embedding_multiplier != 1.0) h = h * config_.embedding_multiplier;
    auto rope = rotary_tables(config_.resolved_head_dim(), config_.rope_theta, offset, S,
                              h.device(), h.scalar_type());
    if (mlp_inputs != nullptr) mlp_inputs->assign(layers->size(), torch::Tensor());
    const bool through_runner = runner_.runner && cache == nullptr && mlp_inputs == nullptr;
    for (size_t i = 0; i < layers->size(); ++i) {
      if (through_runner) {
        // By value: a runner may call the layer again in backward (recompute).
        auto layer = layers->ptr<DecoderLayerImpl>(i);
        h = runner_.runner(
            int64_t(i),
            [layer, rope](const torch::Tensor& x) {
              return layer->forward(x, rope, nullptr, nullptr, nullptr);
            },
            h);
        continue;
      }
      h = layers->ptr<DecoderLayerImpl>(i)->forward(
          h, rope, cache != nullptr ? &cache->keys[i] : nullptr,
          cache != nullptr ? &cache->values[i] : nullptr,
          mlp_inputs != nullptr ? &(*mlp_inputs)[i] : nullptr);
    }
    return norm(h);
  }

  // LayerStack: the decoder layers, for activation checkpointing and sharded parameters.
  [[nodiscard]] int64_t stacked_layers() const override { return int64_t(layers->size()); }
  [[nodiscard]] std::shared_ptr<torch::nn::Module> stacked_layer(int64_t i) const override {
    return layers->ptr(size_t(i));
  }
  [[nodiscard]] const LayerRunner& layer_runner() const override { return runner_.runner; }
  void set_layer_runner(LayerRunner runner) override { runner_.runner = std::move(runner); }

  [[nodiscard]] DecoderLayerImpl& layer(size_t i) { return *layers->ptr<DecoderLayerImpl>(i); }

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  DecoderConfig config_;
  FeedForwardFactory ffn_factory_;
  AttentionFactory attention_factory_;
  LayerRunnerSlot runner_;
};
TORCH_MODULE(DecoderModel);

// --------------------------------------------------------- the causal LM head
class DecoderForCausalLMImpl : public torch::nn::Cloneable<DecoderForCausalLMImpl> {
 public:
  explicit DecoderForCausalLMImpl(const DecoderConfig& config, FeedForwardFactory ffn = {},
                                  AttentionFactory attention = {})
      : config_(config), ffn_factory_(std::move(ffn)), attention_factory_(std::move(attention)) {
    config_.validate();
    reset();
  }
  void reset() override {
    model = register_module("model", DecoderModel(config_, ffn_factory_, attention_factory_));
    if (!config_.tie_word_embeddings) {
      lm_head = register_module("lm_head", make_linear(config_.hidden_size, config_.vocab_size));
    } else {
      lm_head = nullptr;
    }
    init_weights();
  }

  // HF's _init_weights: normal(0, initializer_range) for every matrix, zeros for biases,
  // ones for norms.
  void init_weights() {
    if (SkipWeightInit::skipping()) return;  // a checkpoint overwrites every parameter
    torch::NoGradGuard no_grad;
    for (auto& p : named_parameters()) {
      if (p.value().dim() >= 2) {
        p.value().normal_(0.0, config_.initializer_range);
      } else if (p.key().ends_with(".bias")) {
        p.value().zero_();
      }
    }
  }

  // ids_BS [B, S] -> logits [B, S, V].
  torch::Tensor forward(const torch::Tensor& ids_BS, KVCache* cache = nullptr) {
    return logits(model->forward(ids_BS, cache));
  }
  torch::Tensor logits(const torch::Tensor& hidden_BSD) {
    auto logits_BSV = config_.tie_word_embeddings
                          ? torch::nn::functional::linear(hidden_BSD, model->embed_tokens->weight)
                          : lm_head(hidden_BSD);
    return config_.logits_divisor == 1.0 ? logits_BSV : logits_BSV / config_.logits_divisor;
  }
  // The input of every layer's FFN block, [B, S, D] per layer (router init from hidden
  // states); no LM head is run.
  std::vector<torch::Tensor> ffn_inputs(const torch::Tensor& ids_BS) {
    std::vector<torch::Tensor> inputs;
    model->forward(ids_BS, nullptr, &inputs);
    return inputs;
  }

  [[nodiscard]] const DecoderConfig& config() const { return config_; }
  [[nodiscard]] const FeedForwardFactory& feed_forward_factory() const { return ffn_factory_; }
  [[nodiscard]] const AttentionFactory& attention_factory() const { return attention_factory_; }

  DecoderModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};

 private:
  DecoderConfig config_;
  FeedForwardFactory ffn_factory_;
  AttentionFactory attention_factory_;
};
TORCH_MODULE(DecoderForCausalLM);

BTX_NAMESPACE_END
}  // namespace btx
