// SPDX-License-Identifier: MIT
// btx-interop: the C++ side of the Python interop tests (tests/python/test_interop.py).
//   btx-interop logits CKPT_DIR IDS.safetensors OUT.safetensors   HF Llama/Mixtral -> logits
//   btx-interop save-llama OUT_DIR SEED TIED MAX_SHARD_BYTES      random tiny Llama -> HF folder
//   btx-interop copy IN.safetensors OUT.safetensors               btx reader -> btx writer
//   btx-interop save-moe OUT_DIR SEED EXPERTS TOP_K               MoE-contract model -> Mixtral
//   btx-interop load-moe CKPT_DIR OUT.safetensors                 Mixtral -> btx params (dumped)
//   btx-interop save-family-moe DENSE_CONFIG.json EXPERTS TOP_K SHARED_F SEED OUT_DIR
//                               IDS.safetensors OUT.safetensors
//                                  a random MoE of the dense config's family (an ungated
//                                  shared expert of width SHARED_F when > 0) saved as the
//                                  family's HF MoE; its logits on IDS
//   btx-interop train-bf16 OUT_DIR MOE(0|1) IDS.safetensors OUT.safetensors
//                                  a tiny Llama (or Mixtral) trained 20 steps in bf16 mixed
//                                  precision, saved in bf16; its bf16 logits on IDS
// `logits` builds the model config.json names (a Mixtral with btx's real MoE module); the
// save-moe/load-moe commands use a stand-in block with the MoE naming contract's parameters
// (btx's own MoE module is not needed to check names, shapes and expert packing).
#include <torch/torch.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>

#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/train/precision.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

namespace {

int usage() {
  std::cerr << "usage: btx-interop logits CKPT_DIR IDS.safetensors OUT.safetensors\n"
               "       btx-interop save-llama OUT_DIR SEED TIED(0|1) MAX_SHARD_BYTES\n"
               "       btx-interop copy IN.safetensors OUT.safetensors\n"
               "       btx-interop save-moe OUT_DIR SEED EXPERTS TOP_K\n"
               "       btx-interop load-moe CKPT_DIR OUT.safetensors\n"
               "       btx-interop save-family-moe DENSE_CONFIG.json EXPERTS TOP_K SHARED_F SEED "
               "OUT_DIR IDS.safetensors OUT.safetensors\n"
               "       btx-interop train-bf16 OUT_DIR MOE(0|1) IDS.safetensors OUT.safetensors\n";
  return 2;
}

// The tests' tiny Llama (hidden 32, 2 layers, vocab 64, GQA 4:2) with transformers'
// rms_norm_eps default, so the Python-made twins match it.
btx::LlamaConfig tiny_config(bool tied) {
  auto c = btx::test::tiny_config();
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  return c;
}

// Parameters named as the MoE contract: gate.weight [E, H], experts.{gate,up,down}_proj.
struct ContractExpertsImpl : torch::nn::Module {
  ContractExpertsImpl(int64_t E, int64_t H, int64_t I) {
    register_parameter("gate_proj", torch::randn({E, I, H}));
    register_parameter("up_proj", torch::randn({E, I, H}));
    register_parameter("down_proj", torch::randn({E, H, I}));
  }
};
TORCH_MODULE(ContractExperts);
struct ContractMoEImpl : torch::nn::Module {
  ContractMoEImpl(int64_t E, int64_t H, int64_t I) {
    register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(H, E).bias(false)));
    register_module("experts", ContractExperts(E, H, I));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x; }
};
TORCH_MODULE(ContractMoE);

btx::LlamaForCausalLM contract_moe_model(const btx::LlamaConfig& config, int64_t experts) {
  return btx::LlamaForCausalLM(config, [experts](const btx::LlamaConfig& c, int64_t) {
    return torch::nn::AnyModule(ContractMoE(experts, c.hidden_size, c.intermediate_size));
  });
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "logits" && argc == 5) {
      auto model = btx::hf::load_causal_lm(argv[2]);
      model->eval();
      auto ids = btx::io::SafetensorsFile(argv[3]).tensor("ids").to(torch::kInt64);
      torch::NoGradGuard no_grad;
      btx::io::save_safetensors(argv[4], {{"logits", model->forward(ids).contiguous()}});
      return 0;
    }
    if (cmd == "save-llama" && argc == 6) {
      torch::manual_seed(std::stoll(argv[3]));
      const auto config = tiny_config(std::string(argv[4]) == "1");
      btx::LlamaForCausalLM model(config);
      btx::hf::SaveOptions opts;
      opts.max_shard_bytes = std::stoull(argv[5]);
      btx::hf::save_hf_checkpoint(*model, config, argv[2], opts);
      return 0;
    }
    if (cmd == "copy" && argc == 4) {
      btx::io::save_safetensors(argv[3], btx::io::load_safetensors(argv[2]));
      return 0;
    }
    if (cmd == "save-moe" && argc == 6) {
      torch::manual_seed(std::stoll(argv[3]));
      const auto config = tiny_config(false);
      auto model = contract_moe_model(config, std::stoll(argv[4]));
      btx::hf::SaveOptions opts;
      opts.moe = btx::hf::top_k_moe_config(std::stoll(argv[4]), std::stoll(argv[5]),
                                           /*norm_topk_prob=*/true, 0.02);
      btx::hf::save_hf_checkpoint(*model, config, argv[2], opts);
      return 0;
    }
    if (cmd == "load-moe" && argc == 4) {
      const auto hf = btx::hf::read_config_json(std::filesystem::path(argv[2]) / "config.json");
      if (!hf.moe) throw std::runtime_error(std::string(argv[2]) + " is not a Mixtral checkpoint");
      auto model = contract_moe_model(hf.decoder, hf.moe->num_experts);
      btx::hf::load_hf_weights(*model, argv[2]);
      std::map<std::string, torch::Tensor> params;
      for (const auto& p : model->named_parameters()) params[p.key()] = p.value().detach();
      btx::io::save_safetensors(argv[3], params);
      return 0;
    }
    if (cmd == "save-family-moe" && argc == 10) {
      auto spec = btx::read_model_spec(argv[2]);
      const int64_t experts = std::stoll(argv[3]), shared = std::stoll(argv[5]);
      spec.moe = btx::hf::top_k_moe_config(experts, std::stoll(argv[4]),
                                           /*norm_topk_prob=*/true, 0.001);
      if (shared > 0) {
        spec.moe->shared_expert_size = shared;
        spec.moe->shared_expert_gated = false;
      }
      torch::manual_seed(std::stoll(argv[6]));
      auto model = btx::make_model(spec);
      {  // norms and biases away from ones and zeros, so a skipped one shows in the logits
        torch::NoGradGuard no_grad;
        for (auto& p : model.named_parameters()) {
          if (p.key().ends_with("norm.weight")) p.value().copy_(torch::rand_like(p.value()) + 0.5);
          if (p.key().ends_with(".bias")) p.value().copy_(torch::rand_like(p.value()) - 0.5);
        }
      }
      btx::save_hf_checkpoint(model, argv[7]);
      model->eval();
      auto ids = btx::io::SafetensorsFile(argv[8]).tensor("ids").to(torch::kInt64);
      torch::NoGradGuard no_grad;
      btx::io::save_safetensors(argv[9], {{"logits", model->forward(ids).contiguous()}});
      return 0;
    }
    if (cmd == "train-bf16" && argc == 6) {
      torch::manual_seed(5);
      const auto config = tiny_config(false);
      const bool moe = std::string(argv[3]) == "1";
      const auto mixtral = btx::hf::top_k_moe_config(4, 2, /*norm_topk_prob=*/true, 0.02);
      btx::LlamaForCausalLM model =
          moe ? btx::LlamaForCausalLM(config, btx::moe_feed_forward(mixtral))
              : btx::LlamaForCausalLM(config);
      auto stream = torch::randint(0, config.vocab_size, {4096}, torch::kInt32);
      btx::WindowSampler sampler({stream}, {}, 16, 1);
      btx::TrainHooks hooks = btx::placed({torch::kCPU, btx::Precision::bf16_mixed});
      if (moe) hooks.aux_loss = [&] { return btx::collect_aux_loss(*model); };
      btx::train_causal_lm(model, sampler, {.stage = "bf16", .steps = 20, .batch_size = 4}, hooks);
      btx::hf::SaveOptions opts;
      opts.dtype = torch::kBFloat16;
      if (moe) opts.moe = mixtral;
      btx::hf::save_hf_checkpoint(*model, config, argv[2], opts);
      model->to(torch::kBFloat16);
      model->eval();
      auto ids = btx::io::SafetensorsFile(argv[4]).tensor("ids").to(torch::kInt64);
      torch::NoGradGuard no_grad;
      btx::io::save_safetensors(argv[5], {{"logits", model->forward(ids).contiguous()}});
      return 0;
    }
    return usage();
  } catch (const std::exception& e) {
    std::cerr << "btx-interop: " << e.what() << "\n";
    return 1;
  }
}
