// SPDX-License-Identifier: MIT
// The reference Llama (HF LlamaForCausalLM): the shared decoder with a LlamaConfig. Each
// layer's feed-forward block sits in a replaceable slot (`mlp`), so MoE layers can take
// its place: built in by a FeedForwardFactory, or swapped later by btx's model surgery.
//
// Parameter names (equal to HF's state-dict keys):
//   model.embed_tokens.weight, model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight,
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, model.layers.{i}.mlp.*,
//   model.norm.weight, lm_head.weight (absent when tie_word_embeddings).
#pragma once

#include <btx/models/common/decoder.hpp>
#include <btx/models/llama/config.hpp>
#include <btx/models/llama/layers.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

using LlamaDecoderLayer = DecoderLayer;
using LlamaDecoderLayerImpl = DecoderLayerImpl;
using LlamaModel = DecoderModel;
using LlamaModelImpl = DecoderModelImpl;
using LlamaForCausalLM = DecoderForCausalLM;
using LlamaForCausalLMImpl = DecoderForCausalLMImpl;

BTX_NAMESPACE_END
}  // namespace btx
