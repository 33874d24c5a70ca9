// SPDX-License-Identifier: MIT
// The reference Llama: shapes, causality, RoPE, GQA, gradients, learning, determinism,
// KV-cache generation and config validation.
#include <doctest/doctest.h>

#include <set>

#include <btx/models/common/generate.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/train/loss.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;

TEST_CASE("llama: logits have shape [batch, time, vocab]") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(tiny_config());
  auto logits = model->forward(torch::randint(0, 64, {3, 7}));
  CHECK(logits.sizes() == torch::IntArrayRef({3, 7, 64}));
  CHECK(torch::isfinite(logits).all().item<bool>());
}

TEST_CASE("llama: parameter names equal Hugging Face LlamaForCausalLM state-dict keys") {
  btx::LlamaForCausalLM model(tiny_config());
  std::set<std::string> names;
  for (const auto& p : model->named_parameters()) names.insert(p.key());
  std::set<std::string> expected = {"model.embed_tokens.weight", "model.norm.weight",
                                    "lm_head.weight"};
  for (int i = 0; i < 2; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    for (const char* s :
         {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
          "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
      expected.insert(l + s);
    }
  }
  CHECK(names == expected);
  CHECK(model->named_parameters()["model.layers.0.self_attn.k_proj.weight"].sizes() ==
        torch::IntArrayRef({16, 32}));  // nKV * hd = 2 * 8
}

TEST_CASE("llama: tied embeddings drop lm_head and reuse embed_tokens") {
  auto config = tiny_config();
  config.tie_word_embeddings = true;
  btx::LlamaForCausalLM model(config);
  CHECK(model->named_parameters().find("lm_head.weight") == nullptr);
  auto ids = torch::randint(0, 64, {1, 4});
  auto hidden = model->model->forward(ids);
  CHECK(max_abs_diff(model->forward(ids),
                     torch::matmul(hidden, model->model->embed_tokens->weight.t())) < 1e-5);
}

TEST_CASE("llama: changing a future token leaves earlier logits unchanged") {
  torch::manual_seed(1);
  btx::LlamaForCausalLM model(tiny_config());
  auto ids = torch::randint(0, 64, {2, 10});
  auto changed = ids.clone();
  changed.index_put_({torch::indexing::Slice(), 6},
                     (ids.index({torch::indexing::Slice(), 6}) + 1) % 64);
  auto a = model->forward(ids), b = model->forward(changed);
  using torch::indexing::Slice;
  CHECK(max_abs_diff(a.index({Slice(), Slice(0, 6)}), b.index({Slice(), Slice(0, 6)})) == 0.0);
  CHECK(max_abs_diff(a.index({Slice(), Slice(6)}), b.index({Slice(), Slice(6)})) > 1e-4);
}

TEST_CASE("rope: rotation keeps norms and makes scores depend on relative position only") {
  torch::manual_seed(2);
  const int64_t hd = 16;
  auto tables = btx::rotary_tables(hd, 10000.0, 0, 40, torch::kCPU, torch::kDouble);
  auto q = torch::randn({1, 1, 1, hd}, torch::kDouble),
       k = torch::randn({1, 1, 1, hd}, torch::kDouble);
  auto at = [&](const torch::Tensor& x, int64_t pos) {
    btx::RotaryTables one{tables.cos_SA.slice(0, pos, pos + 1),
                          tables.sin_SA.slice(0, pos, pos + 1)};
    return btx::apply_rotary(x, one);
  };
  // The tables are computed in fp32 as in HF, so equalities hold to ~1e-7.
  CHECK(max_abs_diff(at(q, 0), q) < 1e-12);  // position 0 is the identity
  CHECK(std::abs(at(q, 17).norm().item<double>() - q.norm().item<double>()) < 1e-6);
  auto score = [&](int64_t m, int64_t n) { return (at(q, m) * at(k, n)).sum().item<double>(); };
  CHECK(score(5, 2) == doctest::Approx(score(33, 30)).epsilon(1e-6));
  CHECK(std::abs(score(5, 2) - score(5, 4)) > 1e-6);
  // rotate-half pairs dimension i with i + hd/2 (HF), not 2i with 2i+1.
  auto e0 = torch::zeros({1, 1, 1, hd}, torch::kDouble);
  e0.index_put_({0, 0, 0, 0}, 1.0);
  auto r = at(e0, 1).flatten();
  CHECK(std::abs(r[hd / 2].item<double>()) > 0.5);
  CHECK(r[1].item<double>() == 0.0);
}

TEST_CASE("attention: grouped-query attention equals attention with repeated K/V") {
  torch::manual_seed(3);
  auto config = tiny_config();  // 4 query heads share 2 KV heads
  btx::LlamaAttention attn(config, /*layer=*/0);
  const int64_t B = 2, T = 6, hd = 8;
  auto x = torch::randn({B, T, 32});
  auto rope = btx::rotary_tables(hd, config.rope_theta, 0, T, torch::kCPU, torch::kFloat);
  auto out = attn->forward(x, rope);
  // Reference: explicit softmax attention with K/V heads repeated to 4.
  auto q = btx::apply_rotary(attn->q_proj(x).view({B, T, 4, hd}).transpose(1, 2), rope);
  auto k = btx::apply_rotary(attn->k_proj(x).view({B, T, 2, hd}).transpose(1, 2), rope);
  auto v = attn->v_proj(x).view({B, T, 2, hd}).transpose(1, 2);
  k = k.repeat_interleave(2, 1);
  v = v.repeat_interleave(2, 1);
  auto scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(hd));
  auto causal = torch::ones({T, T}, torch::kBool).tril();
  scores = scores.masked_fill(causal.logical_not(), -INFINITY);
  auto ref = attn->o_proj(torch::matmul(scores.softmax(-1), v).transpose(1, 2).reshape({B, T, 32}));
  CHECK(max_abs_diff(out, ref) < 1e-5);
}

TEST_CASE("llama: gradients reach every parameter") {
  torch::manual_seed(4);
  btx::LlamaForCausalLM model(tiny_config());
  auto ids = torch::randint(0, 64, {2, 9});
  auto loss = btx::next_token_loss(model->forward(ids.slice(1, 0, 8)), ids.slice(1, 1, 9));
  loss.backward();
  for (const auto& p : model->named_parameters()) {
    INFO(p.key());
    REQUIRE(p.value().grad().defined());
    CHECK(p.value().grad().abs().sum().item<double>() > 0.0);
  }
}

TEST_CASE("llama: a tiny model overfits a fixed batch") {
  torch::manual_seed(5);
  btx::LlamaForCausalLM model(tiny_config());
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3));
  auto ids = torch::randint(0, 64, {4, 17});
  auto inputs = ids.slice(1, 0, 16), targets = ids.slice(1, 1, 17);
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    auto loss = btx::next_token_loss(model->forward(inputs), targets);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  CHECK(first > 3.5);  // ~ln(64) at init
  CHECK(last < 0.3);
}

TEST_CASE("llama: a fixed seed gives identical weights and outputs") {
  auto run = [] {
    torch::manual_seed(42);
    btx::LlamaForCausalLM model(tiny_config());
    return model->forward(torch::arange(10).view({1, 10}));
  };
  CHECK(torch::equal(run(), run()));
}

TEST_CASE("generate: greedy decoding with a KV cache equals decoding without") {
  torch::manual_seed(6);
  btx::LlamaForCausalLM model(tiny_config());
  std::vector<int64_t> prompt = {1, 5, 9, 2};
  btx::GenerateOptions with_cache{
      .max_new_tokens = 12, .stop_token = std::nullopt, .use_cache = true};
  auto no_cache = with_cache;
  no_cache.use_cache = false;
  auto a = btx::generate_greedy(model, prompt, with_cache);
  CHECK(a.size() == 12);
  CHECK(a == btx::generate_greedy(model, prompt, no_cache));
  // Cached chunked prefill gives the same logits as one full pass.
  auto ids = torch::randint(0, 64, {1, 9});
  btx::KVCache cache;
  torch::NoGradGuard ng;
  auto first = model->forward(ids.slice(1, 0, 5), &cache);
  auto second = model->forward(ids.slice(1, 5, 9), &cache);
  CHECK(max_abs_diff(torch::cat({first, second}, 1), model->forward(ids)) < 1e-5);
}

TEST_CASE("decoder: a sliding window hides keys W or more positions back, cached or not") {
  auto config = tiny_config();
  config.num_hidden_layers = 3;
  config.sliding_window = 3;
  config.sliding_layers = {true, false, true};  // the window on some layers only
  CHECK(config.window_of_layer(0) == 3);
  CHECK(config.window_of_layer(1) == 0);
  torch::manual_seed(12);
  btx::DecoderForCausalLM windowed(config);
  auto full_config = config;
  full_config.sliding_window = 0;
  btx::DecoderForCausalLM full(full_config);
  torch::NoGradGuard ng;
  for (auto& p : full->named_parameters()) p.value().copy_(windowed->named_parameters()[p.key()]);
  auto ids = torch::randint(0, 64, {2, 10});
  const auto w = windowed->forward(ids), f = full->forward(ids);
  // Positions 0..2 see at most 3 keys anyway; later ones lose the keys before the window.
  CHECK(max_abs_diff(w.slice(1, 0, 3), f.slice(1, 0, 3)) < 1e-6);
  CHECK(max_abs_diff(w.slice(1, 3), f.slice(1, 3)) > 1e-4);
  // Changing a token 3 or more positions back changes nothing in a one-layer window model.
  auto one = config;
  one.num_hidden_layers = 1;
  one.sliding_layers.clear();
  btx::DecoderForCausalLM single(one);
  auto changed = ids.clone();
  changed.index_put_({torch::indexing::Slice(), 0}, (ids.select(1, 0) + 1) % 64);
  CHECK(max_abs_diff(single->forward(ids).slice(1, 3), single->forward(changed).slice(1, 3)) ==
        0.0);
  // The cache path (chunked prefill, then one token at a time) applies the same window.
  btx::KVCache cache;
  std::vector<torch::Tensor> parts = {windowed->forward(ids.slice(1, 0, 4), &cache)};
  for (int64_t t = 4; t < 10; ++t)
    parts.push_back(windowed->forward(ids.slice(1, t, t + 1), &cache));
  CHECK(max_abs_diff(torch::cat(parts, 1), w) < 1e-5);
  // Validation names the field.
  config.sliding_layers = {true};
  CHECK_THROWS_WITH_AS(config.validate(), doctest::Contains("sliding_layers"),
                       std::invalid_argument);
}

TEST_CASE("decoder: q/k/v and o biases and per-head q/k norms are parameters with HF's names") {
  auto config = tiny_config();
  config.qkv_bias = true;
  config.qk_norm = true;
  btx::DecoderForCausalLM model(config);
  const auto params = model->named_parameters();
  CHECK(params.contains("model.layers.0.self_attn.q_proj.bias"));
  CHECK(params.contains("model.layers.1.self_attn.v_proj.bias"));
  CHECK_FALSE(params.contains("model.layers.0.self_attn.o_proj.bias"));
  CHECK(params["model.layers.0.self_attn.q_norm.weight"].sizes() ==
        torch::IntArrayRef({config.resolved_head_dim()}));
  CHECK(params["model.layers.0.self_attn.k_norm.weight"].sizes() ==
        torch::IntArrayRef({config.resolved_head_dim()}));
  CHECK(params["model.layers.0.self_attn.q_proj.bias"].abs().sum().item<double>() == 0.0);
  int64_t count = 0;
  for (const auto& p : model->parameters()) count += p.numel();
  CHECK(count == config.num_parameters());
}

TEST_CASE("llama config: impossible values throw invalid_argument naming the field") {
  auto expect_error = [](btx::LlamaConfig c, const std::string& needle) {
    try {
      btx::LlamaForCausalLM model(c);
      FAIL("no exception for " << needle);
    } catch (const std::invalid_argument& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  auto c = tiny_config();
  c.num_attention_heads = 5;
  expect_error(c, "num_attention_heads=5");
  c = tiny_config();
  c.num_key_value_heads = 3;
  expect_error(c, "num_key_value_heads=3");
  c = tiny_config();
  c.hidden_size = 0;
  expect_error(c, "hidden_size");
  c = tiny_config();
  c.intermediate_size = -4;
  expect_error(c, "intermediate_size");
  c = tiny_config();
  c.head_dim = 7;
  expect_error(c, "head_dim=7");
  c = tiny_config();
  c.hidden_size = 1 << 20;
  c.intermediate_size = 1 << 22;
  c.num_hidden_layers = 4096;
  expect_error(c, "would not fit");
  c = tiny_config();
  c.rms_norm_eps = 0.0;
  expect_error(c, "rms_norm_eps");
}
