// SPDX-License-Identifier: MIT
// MoE inside models: Mixtral-like Llama through the factory (names, routers chosen by
// name, clone), and sparse upcycling of the reference Llama and of a user's own model.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include <btx/merge/upcycle_model.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/moe/surgery.hpp>
#include <btx/train/loss.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;

TEST_CASE("moe llama: factory builds Mixtral-named parameters of the contract's shapes") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(tiny_config(), btx::moe_feed_forward({.num_experts = 4}));
  auto params = model->named_parameters();
  const std::string l = "model.layers.1.mlp.";
  REQUIRE(params.find(l + "gate.weight") != nullptr);
  CHECK(params[l + "gate.weight"].sizes() == torch::IntArrayRef({4, 32}));
  CHECK(params[l + "experts.gate_proj"].sizes() == torch::IntArrayRef({4, 64, 32}));
  CHECK(params[l + "experts.up_proj"].sizes() == torch::IntArrayRef({4, 64, 32}));
  CHECK(params[l + "experts.down_proj"].sizes() == torch::IntArrayRef({4, 32, 64}));
  CHECK(params.find(l + "gate_proj.weight") == nullptr);
  auto ids = torch::randint(0, 64, {2, 6});
  auto logits = model->forward(ids);
  CHECK(logits.sizes() == torch::IntArrayRef({2, 6, 64}));
  auto aux = btx::collect_aux_loss(*model);
  CHECK(aux.item<double>() > 0.0);
  CHECK(btx::moe_layers(*model).size() == 2);
  CHECK(btx::moe_layers(*model)[0].first == "model.layers.0.mlp");
}

TEST_CASE("moe llama: every router name builds and trains one step, and clone is deep") {
  for (const char* name : {"top1", "top2", "topk", "topk:3", "switch", "sample_top1", "soft"}) {
    CAPTURE(name);
    torch::manual_seed(1);
    btx::LlamaForCausalLM model(tiny_config(),
                                btx::moe_feed_forward({.num_experts = 4, .router = name}));
    auto ids = torch::randint(0, 64, {2, 8});
    auto logits = model->forward(ids.slice(1, 0, 7));
    auto loss = btx::next_token_loss(logits, ids.slice(1, 1)) + btx::collect_aux_loss(*model);
    loss.backward();
    CHECK(model->named_parameters()["model.layers.0.mlp.experts.down_proj"].grad().defined());
    model->eval();
    auto copy = std::dynamic_pointer_cast<btx::LlamaForCausalLMImpl>(model->clone());
    REQUIRE(copy);
    copy->eval();
    CHECK(max_abs_diff(copy->forward(ids), model->forward(ids)) == 0.0);
  }
}

TEST_CASE("moe llama: sample top-1 can route the first layer softly, as in the BTX paper") {
  btx::LlamaForCausalLM model(
      tiny_config(),
      btx::moe_feed_forward({.router = {"sample_top1", {{"soft_first_layer", true}}}, .seed = 3}));
  using SoftLayer = btx::MoEImpl<btx::Soft, btx::PackedSwiGLU>;
  using SampleLayer = btx::MoEImpl<btx::SampleTop1, btx::PackedSwiGLU>;
  CHECK(dynamic_cast<SoftLayer*>(model->model->layer(0).mlp.ptr().get()) != nullptr);
  CHECK(dynamic_cast<SampleLayer*>(model->model->layer(1).mlp.ptr().get()) != nullptr);
}

TEST_CASE("moe llama: unknown router names and bad options are rejected up front") {
  auto msg = [](btx::MoEConfig o) {
    try {
      btx::moe_feed_forward(o);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  CHECK(msg({.router = "top3x"}).find("valid: top1, top2") != std::string::npos);
  CHECK(msg({.num_experts = 2, .router = "topk:3"}).find("k=3") != std::string::npos);
  CHECK(msg({.router = "topk:"}).find("positive integer") != std::string::npos);
  CHECK(msg({.num_experts = 0}).find("num_experts") != std::string::npos);
  CHECK(msg({.router = {"switch", {{"capacity_factor", -1}}}}).find("capacity_factor") !=
        std::string::npos);
}

TEST_CASE("moe upcycling: upcycled Llama equals the dense model and clones") {
  torch::manual_seed(2);
  btx::LlamaForCausalLM dense(tiny_config());
  auto ids = torch::randint(0, 64, {2, 9});
  auto expected = dense->forward(ids);
  for (const char* router : {"top2", "switch", "soft"}) {
    CAPTURE(router);
    auto moe =
        btx::merge::upcycled(btx::LlamaFamily::wrap(dense),
                             {.num_experts = 3,
                              .router = std::string(router) == "switch"
                                            ? btx::RouterChoice(router, {{"capacity_factor", 3}})
                                            : btx::RouterChoice(router)});
    CHECK(moe.is_moe());
    CHECK(max_abs_diff(moe.forward(ids), expected) < 1e-5);
    auto copy = moe.clone();
    CHECK(max_abs_diff(copy.as<btx::LlamaForCausalLM>()->forward(ids), expected) < 1e-5);
  }
}

TEST_CASE("moe upcycling: surgery on the reference Llama keeps outputs and names") {
  torch::manual_seed(3);
  btx::LlamaForCausalLM model(tiny_config());
  auto ids = torch::randint(0, 64, {1, 7});
  auto expected = model->forward(ids);
  auto replaced = btx::upcycle(*model, btx::ffn_slot(&btx::LlamaDecoderLayerImpl::mlp, "mlp"),
                               {.num_experts = 4, .router = "top2"});
  CHECK(replaced == std::vector<std::string>{"model.layers.0.mlp", "model.layers.1.mlp"});
  CHECK(max_abs_diff(model->forward(ids), expected) < 1e-5);
  auto params = model->named_parameters();
  CHECK(params.find("model.layers.0.mlp.experts.gate_proj") != nullptr);
  CHECK(params.find("model.layers.0.mlp.gate.weight") != nullptr);
  CHECK(params.find("model.layers.0.mlp.gate_proj.weight") == nullptr);
  // clone() after surgery is deep and keeps the MoE blocks (reset() in the copy must not
  // rebuild the dense block from the model's factory).
  auto copy = std::dynamic_pointer_cast<btx::LlamaForCausalLMImpl>(model->clone());
  REQUIRE(copy);
  CHECK(max_abs_diff(copy->forward(ids), expected) < 1e-5);
  auto copied = copy->named_parameters();
  CHECK(copied.size() == params.size());
  torch::NoGradGuard no_grad;
  copied["model.layers.1.mlp.experts.up_proj"].add_(1.0);
  CHECK(max_abs_diff(model->forward(ids), expected) < 1e-5);
  CHECK(max_abs_diff(copy->forward(ids), expected) > 1e-3);
}

namespace {

// A user's model written without btx: blocks with a residual FFN held in an AnyModule.
struct UserFFNImpl : torch::nn::Cloneable<UserFFNImpl> {
  UserFFNImpl() { reset(); }
  void reset() override {
    up = register_module("up", torch::nn::Linear(12, 20));
    down = register_module("down", torch::nn::Linear(20, 12));
  }
  torch::Tensor forward(const torch::Tensor& x) { return down(torch::gelu(up(x))); }
  torch::nn::Linear up{nullptr}, down{nullptr};
};
TORCH_MODULE(UserFFN);

struct UserBlockImpl : torch::nn::Module {
  UserBlockImpl() {
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({12})));
    ffn = torch::nn::AnyModule(UserFFN());
    register_module("ffn", ffn.ptr());
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + ffn.forward(norm(x)); }
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::AnyModule ffn;
};
TORCH_MODULE(UserBlock);

struct UserNetImpl : torch::nn::Module {
  UserNetImpl() {
    blocks =
        register_module("blocks", torch::nn::ModuleList(UserBlock(), UserBlock(), UserBlock()));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (size_t i = 0; i < blocks->size(); ++i) x = blocks->ptr<UserBlockImpl>(i)->forward(x);
    return x;
  }
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(UserNet);

}  // namespace

TEST_CASE("moe upcycling: surgery on a user's own model, with a name filter") {
  torch::manual_seed(4);
  UserNet net;
  auto x = torch::randn({2, 5, 12});
  auto expected = net->forward(x);
  auto replaced =
      btx::upcycle(*net,
                   btx::ffn_slot(&UserBlockImpl::ffn, "ffn",
                                 [](const std::string& name) { return name != "blocks.1.ffn"; }),
                   {.num_experts = 3, .router = "top2", .hidden_size = 12});
  CHECK(replaced == std::vector<std::string>{"blocks.0.ffn", "blocks.2.ffn"});
  CHECK(max_abs_diff(net->forward(x), expected) < 1e-5);
  auto params = net->named_parameters();
  CHECK(params.find("blocks.0.ffn.gate.weight") != nullptr);
  CHECK(params.find("blocks.0.ffn.experts.2.up.weight") != nullptr);
  CHECK(params.find("blocks.1.ffn.up.weight") != nullptr);  // filtered out: still dense
  // The experts are independent copies: training one changes nothing in the others.
  {
    torch::NoGradGuard no_grad;
    params["blocks.0.ffn.experts.0.up.weight"].add_(1.0);
  }
  CHECK(max_abs_diff(params["blocks.0.ffn.experts.1.up.weight"],
                     params["blocks.2.ffn.experts.1.up.weight"]) > 0.0);  // different blocks
  CHECK(max_abs_diff(params["blocks.0.ffn.experts.1.up.weight"] + 1.0,
                     params["blocks.0.ffn.experts.0.up.weight"]) < 1e-6);
  auto out = net->forward(x);  // before collect_aux_loss: `a + b` has no evaluation order
  auto loss = out.pow(2).mean() + btx::collect_aux_loss(*net);
  loss.backward();
  CHECK(params["blocks.0.ffn.gate.weight"].grad().defined());
}

TEST_CASE("moe upcycling: user blocks need hidden_size, and a selector must match") {
  UserNet net;
  CHECK_THROWS_WITH_AS(btx::upcycle(*net, btx::ffn_slot(&UserBlockImpl::ffn, "ffn"), {}),
                       doctest::Contains("hidden_size"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::upcycle(*net, btx::ffn_slot(&UserBlockImpl::ffn, "mlp"), {}),
                       doctest::Contains("is not a registered child"), std::invalid_argument);
  btx::LlamaForCausalLM llama(tiny_config());
  CHECK_THROWS_WITH_AS(btx::upcycle(*llama, btx::ffn_slot(&UserBlockImpl::ffn, "ffn"), {}),
                       doctest::Contains("matched no feed-forward block"), std::invalid_argument);
}
