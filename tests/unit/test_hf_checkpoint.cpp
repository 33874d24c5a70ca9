// SPDX-License-Identifier: MIT
// HF checkpoints: dense save -> load round trips (tied, sharded, bf16), refusal of missing,
// mis-shaped and unexpected tensors, and the generic MoE path with a stand-in module that
// registers parameters under the MoE naming contract.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/models/llama/compat.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::test::has;
using btx::test::max_abs_diff;
using btx::test::scratch_dir;
using btx::test::tiny_config;

namespace {

// Stand-in for btx's MoE block: the contract's names (gate.weight, experts.{gate,up,down}_proj)
// and a soft mixture so logits depend on every expert weight.
struct FakeExpertsImpl : torch::nn::Module {
  FakeExpertsImpl(int64_t E, int64_t H, int64_t I) {
    gate_proj = register_parameter("gate_proj", torch::randn({E, I, H}) * 0.1);
    up_proj = register_parameter("up_proj", torch::randn({E, I, H}) * 0.1);
    down_proj = register_parameter("down_proj", torch::randn({E, H, I}) * 0.1);
  }
  torch::Tensor gate_proj, up_proj, down_proj;
};
TORCH_MODULE(FakeExperts);

struct FakeMoEImpl : torch::nn::Module {
  FakeMoEImpl(int64_t E, int64_t H, int64_t I) {
    gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(H, E).bias(false)));
    experts = register_module("experts", FakeExperts(E, H, I));
  }
  torch::Tensor forward(const torch::Tensor& x_BTH) {
    auto w_BTE = torch::softmax(gate(x_BTH), -1);
    auto g_BTEI = torch::einsum("bth,eih->btei", {x_BTH, experts->gate_proj});
    auto u_BTEI = torch::einsum("bth,eih->btei", {x_BTH, experts->up_proj});
    auto y_BTEH =
        torch::einsum("btei,ehi->bteh", {torch::silu(g_BTEI) * u_BTEI, experts->down_proj});
    return (y_BTEH * w_BTE.unsqueeze(-1)).sum(2);
  }
  torch::nn::Linear gate{nullptr};
  FakeExperts experts{nullptr};
};
TORCH_MODULE(FakeMoE);

constexpr int64_t kExperts = 3;

btx::LlamaForCausalLM fake_moe_model() {
  return btx::LlamaForCausalLM(tiny_config(), [](const btx::LlamaConfig& c, int64_t) {
    return torch::nn::AnyModule(FakeMoE(kExperts, c.hidden_size, c.intermediate_size));
  });
}

std::string load_error(torch::nn::Module& model, const fs::path& dir) {
  try {
    // Bare safetensors folders (no config.json): name tensors as the Llama family does.
    btx::hf::load_hf_weights(model, btx::io::CheckpointReader(dir), btx::hf::llama_name_map());
  } catch (const btx::io::FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("hf checkpoint: a dense model saved by btx loads back with equal logits") {
  auto root = scratch_dir("dense");
  for (bool tied : {false, true}) {
    auto config = tiny_config();
    config.tie_word_embeddings = tied;
    torch::manual_seed(3);
    btx::LlamaForCausalLM model(config);
    const auto dir = root / (tied ? "tied" : "untied");
    btx::hf::save_hf_checkpoint(*model, config, dir);
    CHECK(fs::exists(dir / "config.json"));
    CHECK(fs::exists(dir / "model.safetensors"));
    auto loaded = btx::hf::load_llama(dir);
    auto ids = torch::randint(0, 64, {2, 9});
    torch::NoGradGuard no_grad;
    CHECK(max_abs_diff(model->forward(ids), loaded->forward(ids)) == 0.0);
    CHECK(btx::io::SafetensorsFile(dir / "model.safetensors").contains("lm_head.weight") == !tied);
  }
}

TEST_CASE("hf checkpoint: sharded bf16 save loads into an fp32 model") {
  auto dir = scratch_dir("sharded") / "ckpt";
  torch::manual_seed(4);
  btx::LlamaForCausalLM model(tiny_config());
  btx::hf::SaveOptions opts;
  opts.dtype = torch::kBFloat16;
  opts.max_shard_bytes = 8192;
  btx::hf::save_hf_checkpoint(*model, tiny_config(), dir, opts);
  CHECK(fs::exists(dir / "model.safetensors.index.json"));
  CHECK(btx::hf::read_config_json(dir / "config.json").dtype == "bfloat16");
  auto loaded = btx::hf::load_llama(dir);
  auto w = loaded->named_parameters()["model.layers.1.mlp.up_proj.weight"];
  CHECK((w.scalar_type() == torch::kFloat32));
  CHECK(torch::equal(w, model->named_parameters()["model.layers.1.mlp.up_proj.weight"]
                            .to(torch::kBFloat16)
                            .to(torch::kFloat32)));
}

TEST_CASE("hf checkpoint: missing, mis-shaped and unexpected tensors are named, model untouched") {
  auto root = scratch_dir("bad");
  torch::manual_seed(5);
  btx::LlamaForCausalLM source(tiny_config());
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : source->named_parameters()) tensors[p.key()] = p.value();

  btx::LlamaForCausalLM target(tiny_config());
  const auto before = target->named_parameters()["model.norm.weight"].clone();

  auto missing = tensors;
  missing.erase("model.layers.1.self_attn.v_proj.weight");
  fs::create_directories(root / "missing");
  btx::io::save_safetensors(root / "missing" / "model.safetensors", missing);
  auto e = load_error(*target, root / "missing");
  CHECK(has(e, "lacks tensor \"model.layers.1.self_attn.v_proj.weight\""));
  CHECK(has(e, "missing"));

  auto shaped = tensors;
  shaped["model.layers.0.mlp.down_proj.weight"] = torch::zeros({32, 63});
  fs::create_directories(root / "shape");
  btx::io::save_safetensors(root / "shape" / "model.safetensors", shaped);
  e = load_error(*target, root / "shape");
  CHECK(has(e, "\"model.layers.0.mlp.down_proj.weight\""));
  CHECK(has(e, "model.safetensors"));
  CHECK(has(e, "[32, 63]"));

  auto extra = tensors;
  extra["model.layers.0.self_attn.q_proj.bias"] = torch::zeros({32});
  extra["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch::zeros({4});  // harmless
  fs::create_directories(root / "extra");
  btx::io::save_safetensors(root / "extra" / "model.safetensors", extra);
  e = load_error(*target, root / "extra");
  CHECK(has(e, "unexpected tensor \"model.layers.0.self_attn.q_proj.bias\""));

  CHECK(torch::equal(target->named_parameters()["model.norm.weight"], before));
}

TEST_CASE("hf checkpoint: saving refuses a non-empty folder and inconsistent options") {
  auto root = scratch_dir("refuse");
  btx::LlamaForCausalLM model(tiny_config());
  btx::hf::save_hf_checkpoint(*model, tiny_config(), root / "a");
  CHECK_THROWS_WITH_AS(btx::hf::save_hf_checkpoint(*model, tiny_config(), root / "a"),
                       doctest::Contains("not empty"), std::runtime_error);
  btx::hf::SaveOptions overwrite;
  overwrite.overwrite = true;
  btx::hf::save_hf_checkpoint(*model, tiny_config(), root / "a", overwrite);
  btx::hf::SaveOptions moe;
  moe.moe = btx::MoEConfig{.num_experts = 4, .load_balance_alpha = 0.01};
  CHECK_THROWS_AS(btx::hf::save_hf_checkpoint(*model, tiny_config(), root / "b", moe),
                  std::invalid_argument);
  CHECK_FALSE(fs::exists(root / "b"));
}

TEST_CASE("hf checkpoint: an MoE-contract model saves as classic Mixtral and loads back") {
  auto dir = scratch_dir("moe") / "ckpt";
  torch::manual_seed(6);
  auto model = fake_moe_model();
  btx::hf::SaveOptions opts;
  opts.moe = btx::MoEConfig{.num_experts = kExperts, .load_balance_alpha = 0.02};
  CHECK_THROWS_WITH_AS(btx::hf::save_hf_checkpoint(*model, tiny_config(), dir),
                       doctest::Contains("SaveOptions.moe"), std::invalid_argument);
  opts.max_shard_bytes = 20000;
  btx::hf::save_hf_checkpoint(*model, tiny_config(), dir, opts);

  auto config = btx::hf::read_config_json(dir / "config.json");
  REQUIRE(config.moe.has_value());
  CHECK(config.moe->num_experts == kExperts);
  btx::io::CheckpointReader ckpt(dir);
  auto params = model->named_parameters();
  CHECK(torch::equal(ckpt.tensor("model.layers.1.block_sparse_moe.gate.weight"),
                     params["model.layers.1.mlp.gate.weight"]));
  CHECK(torch::equal(ckpt.tensor("model.layers.1.block_sparse_moe.experts.2.w1.weight"),
                     params["model.layers.1.mlp.experts.gate_proj"][2]));
  CHECK(torch::equal(ckpt.tensor("model.layers.0.block_sparse_moe.experts.1.w3.weight"),
                     params["model.layers.0.mlp.experts.up_proj"][1]));
  CHECK(torch::equal(ckpt.tensor("model.layers.0.block_sparse_moe.experts.0.w2.weight"),
                     params["model.layers.0.mlp.experts.down_proj"][0]));
  CHECK_FALSE(ckpt.contains("model.layers.0.mlp.gate_proj.weight"));

  torch::manual_seed(7);
  auto fresh = fake_moe_model();
  btx::hf::load_hf_weights(*fresh, dir);
  auto ids = torch::randint(0, 64, {2, 5});
  torch::NoGradGuard no_grad;
  CHECK(max_abs_diff(model->forward(ids), fresh->forward(ids)) == 0.0);

  // A dense model cannot swallow a Mixtral checkpoint: names are reported, not guessed.
  btx::LlamaForCausalLM dense(tiny_config());
  CHECK(has(load_error(*dense, dir), "lacks tensor \"model.layers.0.mlp.gate_proj.weight\""));
  CHECK_THROWS_WITH_AS(btx::hf::load_llama(dir), doctest::Contains("MixtralForCausalLM"),
                       std::runtime_error);
}
