// SPDX-License-Identifier: MIT
// The Llama names of btx 0.1, kept for code written against them: since the family moved
// onto the shared decoder, a Llama is a DecoderForCausalLM with a DecoderConfig, and these
// are names for those, plus the two Llama-only checkpoint helpers (save from a
// DecoderConfig, load a dense Llama folder). New code uses the shared names and the
// family-agnostic I/O of btx/models/auto.hpp.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/dtype.hpp>
#include <btx/hf/checkpoint.hpp>
#include <btx/io/checkpoint_reader.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/common/decoder.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/decoder_layers.hpp>
#include <btx/models/common/decoder_moe.hpp>
#include <btx/models/family.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/models/llama/hf_config.hpp>
#include <btx/models/llama/hf_names.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

using LlamaConfig = DecoderConfig;  // every attention variant off: HF's LlamaConfig
using LlamaMLP = GatedMLP;
using LlamaMLPImpl = GatedMLPImpl;
using LlamaAttention = GroupedQueryAttention;
using LlamaAttentionImpl = GroupedQueryAttentionImpl;
using LlamaDecoderLayer = DecoderLayer;
using LlamaDecoderLayerImpl = DecoderLayerImpl;
using LlamaModel = DecoderModel;
using LlamaModelImpl = DecoderModelImpl;
using LlamaForCausalLM = DecoderForCausalLM;
using LlamaForCausalLMImpl = DecoderForCausalLMImpl;

namespace hf {

inline const NameMap& llama_name_map() {
  static const NameMap names = family_entry<LlamaFamily>().name_map();
  return names;
}

// Saves `model` (parameters named as LlamaForCausalLM, MoE slots per the naming contract)
// as a transformers checkpoint: Llama when dense, Mixtral (classic names) otherwise.
inline WriteStats save_hf_checkpoint(const torch::nn::Module& model, const LlamaConfig& config,
                                     const std::filesystem::path& dir,
                                     const SaveOptions& options = {}) {
  config.validate();
  auto params = model.named_parameters();
  if (params.is_empty()) throw std::invalid_argument("save_hf_checkpoint: model has no parameters");
  const auto dtype = options.dtype.value_or(params[params.keys()[0]].scalar_type());
  std::optional<int64_t> experts;
  for (const auto& p : params) {
    if (is_btx_moe_name(p.key())) experts = p.value().size(0);
  }
  if (experts && !options.moe) {
    throw std::invalid_argument(
        "model has MoE parameters: SaveOptions.moe (top-k, aux loss) is "
        "needed to write a Mixtral config");
  }
  if (!experts && options.moe) {
    throw std::invalid_argument("SaveOptions.moe is set but the model has no MoE parameters");
  }
  if (experts && *experts != options.moe->num_experts) {
    throw std::invalid_argument(
        "model has " + std::to_string(*experts) +
        " experts but SaveOptions.moe.num_experts=" + std::to_string(options.moe->num_experts));
  }
  if (config.tie_word_embeddings == params.contains("lm_head.weight")) {
    throw std::invalid_argument("config.tie_word_embeddings disagrees with the model's lm_head");
  }
  const auto config_json = options.moe
                               ? mixtral_config_json(config, *options.moe, dtype_name(dtype))
                               : llama_config_json(config, dtype_name(dtype));
  WriteOptions w;
  w.dtype = dtype;
  w.max_shard_bytes = options.max_shard_bytes;
  w.overwrite = options.overwrite;
  w.copy_files = options.copy_files;
  return save_module(model, config_json, dir, llama_name_map(), w);
}

// Loads a dense Llama checkpoint folder (config.json + safetensors) as `dtype`.
inline LlamaForCausalLM load_llama(const std::filesystem::path& dir,
                                   torch::Dtype dtype = torch::kFloat32) {
  const auto config = read_config_json(dir / "config.json");
  if (config.moe) {
    throw std::runtime_error((dir / "config.json").string() +
                             " describes a MixtralForCausalLM: load it with "
                             "btx::load_causal_lm (btx/models/auto.hpp)");
  }
  LlamaForCausalLM model(config.decoder);
  model->to(dtype);
  load_hf_weights(*model, io::CheckpointReader(dir), llama_name_map());
  return model;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
