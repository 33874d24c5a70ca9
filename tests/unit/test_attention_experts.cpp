// SPDX-License-Identifier: MIT
// Attention experts (BAM): the layer equals a naive mixture of separate grouped-query
// attentions, forward and backward; a model of them decodes with a KV cache as without;
// copies of one model mixed with attention experts compute that model; the checkpoint is
// btx's own type (transformers has none) and loads back with the same logits; FLOPs count
// every attention expert.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/merge/attention_experts.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/common/attention_experts.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/models/registry.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/mix.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace fs = std::filesystem;

namespace {

btx::MoEConfig soft(int64_t experts) {
  btx::MoEConfig m;
  m.num_experts = experts;
  m.router = btx::resolve_router("soft", {});
  m.load_balance_alpha = 0;
  return m;
}

btx::CausalLM with_attention_experts(int64_t experts, uint64_t seed = 5) {
  torch::manual_seed(seed);
  auto spec = btx::LlamaFamily::spec(tiny_config());
  spec.attention_moe = soft(experts);
  return btx::make_model(spec);
}

}  // namespace

TEST_CASE("attention experts: forward and backward equal a naive mixture of attentions") {
  const auto config = tiny_config();
  torch::manual_seed(1);
  btx::AttentionExperts layer(config, 0, soft(3));
  const auto rope = btx::rotary_tables(config.resolved_head_dim(), config.rope_theta, 0, 10,
                                       torch::kCPU, torch::kFloat32);
  auto x = torch::randn({2, 10, config.hidden_size}).set_requires_grad(true);
  auto y = layer->forward(x, rope);

  // The reference: three separate attentions holding the experts' weights, weighted by the
  // softmax of the router's logits.
  auto x_ref = x.detach().clone().set_requires_grad(true);
  std::vector<btx::GroupedQueryAttention> attns;
  std::vector<torch::Tensor> q, k, v, o;
  for (int64_t e = 0; e < 3; ++e) {
    btx::GroupedQueryAttention a(config, 0);
    torch::NoGradGuard no_grad;
    a->q_proj->weight.copy_(layer->experts->q_proj[e]);
    a->k_proj->weight.copy_(layer->experts->k_proj[e]);
    a->v_proj->weight.copy_(layer->experts->v_proj[e]);
    a->o_proj->weight.copy_(layer->experts->o_proj[e]);
    attns.push_back(a);
  }
  const auto w_router = layer->gate->named_parameters()["weight"];
  const auto probs_BSE = torch::softmax(torch::matmul(x_ref, w_router.detach().t()), -1);
  torch::Tensor y_ref;
  for (int64_t e = 0; e < 3; ++e) {
    auto ye = attns[size_t(e)]->forward(x_ref, rope) * probs_BSE.select(2, e).unsqueeze(2);
    y_ref = y_ref.defined() ? y_ref + ye : ye;
  }
  CHECK(max_abs_diff(y, y_ref) < 1e-5);

  const auto upstream = torch::randn_like(y);
  (y * upstream).sum().backward();
  (y_ref * upstream).sum().backward();
  CHECK(max_abs_diff(x.grad(), x_ref.grad()) < 1e-5);
  for (int64_t e = 0; e < 3; ++e) {
    CHECK(max_abs_diff(layer->experts->q_proj.grad()[e], attns[size_t(e)]->q_proj->weight.grad()) <
          1e-5);
    CHECK(max_abs_diff(layer->experts->o_proj.grad()[e], attns[size_t(e)]->o_proj->weight.grad()) <
          1e-5);
  }
  CHECK(w_router.grad().defined());
  CHECK(w_router.grad().abs().sum().item<double>() > 0);
}

TEST_CASE("attention experts: decoding with a KV cache equals the full forward") {
  auto model = with_attention_experts(3);
  torch::NoGradGuard no_grad;
  model.eval();
  torch::manual_seed(2);
  const auto ids = torch::randint(0, tiny_config().vocab_size, {2, 9});
  const auto full = model.forward(ids);
  btx::KVCache cache;
  auto first = model.forward(ids.slice(1, 0, 6), &cache);
  CHECK(max_abs_diff(first, full.slice(1, 0, 6)) < 1e-5);
  for (int64_t t = 6; t < 9; ++t) {
    auto step = model.forward(ids.slice(1, t, t + 1), &cache);
    CHECK(max_abs_diff(step, full.slice(1, t, t + 1)) < 1e-5);
  }
}

TEST_CASE("attention experts: copies of one model's attention compute that model") {
  torch::manual_seed(3);
  const auto dense = btx::make_model(btx::LlamaFamily::spec(tiny_config()));
  const std::vector<btx::CausalLM> copies = {dense.clone(), dense.clone(), dense.clone()};
  std::vector<btx::recipe::Expert> experts;
  for (size_t j = 0; j < copies.size(); ++j) {
    experts.push_back({copies[j], {"e" + std::to_string(j)}});
  }
  btx::recipe::MixOptions options;
  options.seed_as_expert = false;
  options.moe.router = btx::resolve_router("top2", {});
  const auto mixed = btx::recipe::mix(experts, dense, options);
  const auto bam = btx::merge::attention_experts_from(mixed, copies, soft(3));
  CHECK(bam.spec().attention_moe->num_experts == 3);
  torch::NoGradGuard no_grad;
  torch::manual_seed(4);
  const auto ids = torch::randint(0, tiny_config().vocab_size, {2, 11});
  CHECK(max_abs_diff(bam.forward(ids), dense.forward(ids)) < 1e-4);
  CHECK_THROWS_AS(btx::merge::attention_experts_from(bam, copies, soft(3)), std::invalid_argument);
}

TEST_CASE("attention experts: btx's own checkpoint type, loaded back with the same logits") {
  const auto model = with_attention_experts(2);
  const fs::path dir =
      fs::temp_directory_path() / ("btx_attn_experts_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  btx::hf::SaveOptions options;
  (void)btx::save_hf_checkpoint(model, dir, options);
  const auto config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  CHECK(config.at("model_type") == "btx_attention_experts");
  CHECK(config.at("btx_base_model_type") == "llama");
  CHECK(config.at("btx_attention_experts").at("num_experts") == 2);
  const auto loaded = btx::load_causal_lm(dir);
  REQUIRE(loaded.spec().attention_moe.has_value());
  CHECK(loaded.spec().attention_moe->router.name == "soft");
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  const auto ids = torch::randint(0, tiny_config().vocab_size, {1, 8});
  CHECK(max_abs_diff(loaded.forward(ids), model.forward(ids)) == 0.0);
  fs::remove_all(dir);

  // A malformed config is refused naming the field.
  auto bad = config;
  bad.erase("btx_base_model_type");
  CHECK_THROWS_WITH_AS(btx::spec_from_json(bad, "cfg"), doctest::Contains("btx_base_model_type"),
                       std::runtime_error);
}

TEST_CASE("attention experts: every expert's attention counts in the FLOPs") {
  auto spec = btx::LlamaFamily::spec(tiny_config());
  const double dense = btx::recipe::flops_per_token(spec, 32);
  spec.attention_moe = soft(3);
  const double bam = btx::recipe::flops_per_token(spec, 32);
  const auto m = btx::matmul_params_per_token(spec.shape);
  const double attention_scores = 2.0 * double(spec.shape.num_hidden_layers) * 32.0 *
                                  double(spec.shape.num_attention_heads) *
                                  double(spec.shape.head_dim);
  const double extra = 3.0 * double(spec.shape.num_hidden_layers) *
                           (2.0 * (2.0 * m.attention + 3.0 * double(spec.shape.hidden_size))) +
                       3.0 * 2.0 * attention_scores;
  CHECK(bam - dense == doctest::Approx(extra));
}
