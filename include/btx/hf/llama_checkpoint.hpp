// SPDX-License-Identifier: MIT
// Hugging Face checkpoint folders <-> btx models. Loading is generic over named_parameters()
// (dense Llama, or any model following the MoE naming contract, whose packed [E, ...]
// experts are stacked from Mixtral's per-expert tensors); it checks every tensor before
// copying any. Saving writes config.json + safetensors through an AtomicDir.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/hf/config_json.hpp>
#include <btx/hf/mixtral_names.hpp>
#include <btx/io/atomic_dir.hpp>
#include <btx/io/checkpoint_reader.hpp>
#include <btx/io/sharded_writer.hpp>
#include <btx/models/llama.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

namespace detail {

// One HF tensor's place in a btx parameter.
struct Placement {
  std::string hf_name;
  std::string param;
  std::optional<int64_t> expert;
  std::vector<int64_t> shape;  // the HF tensor's shape
};

// Every HF tensor a module's parameters map to, in parameter order.
inline std::vector<Placement> placements(const torch::nn::Module& model) {
  std::vector<Placement> out;
  for (const auto& p : model.named_parameters()) {
    const auto& t = p.value();
    const bool packed = is_btx_moe_name(p.key()) && p.key().find(".experts.") != std::string::npos;
    if (packed && t.dim() < 1) {
      throw std::invalid_argument("MoE parameter " + p.key() + " must be packed [E, ...]");
    }
    const auto names = btx_to_hf_names(p.key(), packed ? t.size(0) : 0);
    for (size_t j = 0; j < names.size(); ++j) {
      out.push_back({names[j], p.key(), packed ? std::optional<int64_t>(int64_t(j)) : std::nullopt,
                     packed ? t.sizes().slice(1).vec() : t.sizes().vec()});
    }
  }
  return out;
}

// Tensors a checkpoint may carry that no btx parameter needs.
inline bool is_harmless_extra(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace detail

// Copies a checkpoint's tensors into `model`'s parameters by mapped names, converting to
// each parameter's dtype and device. Missing tensors, wrong shapes and unexpected tensors
// throw io::FormatError naming the tensor and file; nothing is copied unless all match.
inline void load_hf_weights(torch::nn::Module& model, const io::CheckpointReader& ckpt) {
  const auto plan = detail::placements(model);
  std::set<std::string> used;
  for (const auto& pl : plan) {
    if (!ckpt.contains(pl.hf_name)) {
      throw io::FormatError("checkpoint " + ckpt.dir().string() + " lacks tensor \"" + pl.hf_name +
                            "\" (for btx parameter " + pl.param + ")");
    }
    const auto& info = ckpt.info(pl.hf_name);
    if (info.shape != pl.shape) {
      throw io::FormatError("tensor \"" + pl.hf_name + "\" in " +
                            ckpt.file_of(pl.hf_name).path().string() + " has shape " +
                            c10::str(torch::IntArrayRef(info.shape)) + " but the model expects " +
                            c10::str(torch::IntArrayRef(pl.shape)) + " (config mismatch?)");
    }
    used.insert(pl.hf_name);
  }
  auto params = model.named_parameters();
  for (const auto& name : ckpt.names()) {
    if (used.count(name) || detail::is_harmless_extra(name)) continue;
    // A tied checkpoint may still store lm_head as a copy of the embedding.
    if (name == "lm_head.weight" && params.contains("model.embed_tokens.weight") &&
        ckpt.contains("model.embed_tokens.weight") &&
        torch::equal(ckpt.tensor(name), ckpt.tensor("model.embed_tokens.weight"))) {
      continue;
    }
    throw io::FormatError("unexpected tensor \"" + name + "\" in " +
                          ckpt.file_of(name).path().string() +
                          ": the model has no parameter for it (architecture or config mismatch)");
  }
  torch::NoGradGuard no_grad;
  for (const auto& pl : plan) {
    auto& p = params[pl.param];
    auto src = ckpt.tensor(pl.hf_name);
    if (pl.expert) {
      p[*pl.expert].copy_(src);
    } else {
      p.copy_(src);
    }
  }
}

inline void load_hf_weights(torch::nn::Module& model, const std::filesystem::path& dir) {
  load_hf_weights(model, io::CheckpointReader(dir));
}

// Loads a dense Llama-family checkpoint folder (config.json + safetensors) as `dtype`.
inline LlamaForCausalLM load_llama(const std::filesystem::path& dir,
                                   torch::Dtype dtype = torch::kFloat32) {
  const auto config = read_config_json(dir / "config.json");
  if (config.moe) {
    throw std::runtime_error((dir / "config.json").string() +
                             " describes a MixtralForCausalLM: build the MoE model with btx's "
                             "moe_feed_forward and call btx::hf::load_hf_weights");
  }
  LlamaForCausalLM model(config.llama);
  model->to(dtype);
  load_hf_weights(*model, dir);
  return model;
}

struct SaveOptions {
  std::optional<torch::Dtype> dtype;  // storage dtype; default: the first parameter's dtype
  std::optional<MoEConfig> moe;       // required iff the model has MoE-contract parameters
  uint64_t max_shard_bytes = io::kDefaultMaxShardBytes;
  bool overwrite = false;  // replace a non-empty `dir`
};

// Saves `model` (parameters named as LlamaForCausalLM, MoE slots per the naming contract)
// as a transformers checkpoint: Llama when dense, Mixtral (classic names) otherwise.
inline void save_hf_checkpoint(const torch::nn::Module& model, const LlamaConfig& config,
                               const std::filesystem::path& dir, const SaveOptions& options = {}) {
  config.validate();
  const auto plan = detail::placements(model);
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
  if (experts && *experts != options.moe->num_local_experts) {
    throw std::invalid_argument("model has " + std::to_string(*experts) +
                                " experts but SaveOptions.moe.num_local_experts=" +
                                std::to_string(options.moe->num_local_experts));
  }
  if (config.tie_word_embeddings == params.contains("lm_head.weight")) {
    throw std::invalid_argument("config.tie_word_embeddings disagrees with the model's lm_head");
  }
  const auto config_json = options.moe
                               ? mixtral_config_json(config, *options.moe, dtype_name(dtype))
                               : llama_config_json(config, dtype_name(dtype));
  std::vector<io::TensorDecl> decls;
  for (const auto& pl : plan) decls.push_back({pl.hf_name, dtype, pl.shape});

  io::AtomicDir out(dir, options.overwrite);
  {
    std::ofstream f(out.path() / "config.json");
    f << config_json.dump(2) << "\n";
    if (!f) throw std::runtime_error("cannot write " + (out.path() / "config.json").string());
  }
  io::ShardedStreamWriter writer(out.path(), decls, options.max_shard_bytes);
  for (const auto& pl : plan) {
    const auto& p = params[pl.param];
    writer.write(pl.hf_name, pl.expert ? p[*pl.expert] : p);
  }
  writer.finish();
  out.commit();
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
