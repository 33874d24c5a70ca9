// SPDX-License-Identifier: MIT
// A routing policy btx does not ship, written against the btx::Router concept: expert
// choice (Zhou et al. 2022), where each expert picks its top-C tokens instead of each
// token picking experts. One registration makes "expert_choice" a router name like the
// shipped ones, with its own option (capacity_factor) read and checked by its registration:
// the toy loop below builds its MoE layer from the name, and so does a Mixtral-like Llama
// through MoEConfig{.router = {"expert_choice", {{"capacity_factor", 2.0}}}}.
//   build/bin/btx-custom-router
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>

#include <btx/models/llama/compat.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/router_helpers.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/train/loss.hpp>

// A router is a Cloneable LibTorch module with num_experts(), hidden_size() and
// route(x_TD) -> btx::RoutingResult. Expert choice fits the [T, k] format with k = E:
// every token lists every expert, and the pairs an expert did not pick are `dropped`.
class ExpertChoice : public torch::nn::Cloneable<ExpertChoice> {
 public:
  ExpertChoice(int64_t hidden, int64_t experts, double capacity_factor = 2.0)
      : hidden_(hidden), experts_(experts), capacity_factor_(capacity_factor) {
    reset();
  }
  // `weight` [E, H], saved as `gate.weight` like the shipped routers'.
  void reset() override {
    weight = btx::make_router_weight(*this, experts_, hidden_, "ExpertChoice");
  }

  btx::RoutingResult route(const torch::Tensor& x_TD) {
    btx::RoutingResult r;
    const int64_t T = x_TD.size(0);
    // fp32 logits, a shape check and the NaN/Inf check, as in every shipped router.
    r.logits_TE = btx::router_logits(x_TD, weight, "ExpertChoice::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    // Each expert takes the C tokens with the highest affinity to it.
    const auto C = std::min<int64_t>(
        T, static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(T) /
                                          static_cast<double>(experts_))));
    auto picked_CE = std::get<1>(r.probs_TE.topk(C, /*dim=*/0));  // token ids per expert
    // Tensors the router makes itself go on the input's device (mask_options, every_expert_TE).
    auto chosen_TE =
        torch::zeros({T, experts_}, btx::mask_options(x_TD)).scatter_(0, picked_CE, true);
    r.indices_TK = btx::every_expert_TE(T, experts_, x_TD);
    r.dropped_TK = ~chosen_TE;
    r.weights_TK = r.probs_TE.masked_fill(r.dropped_TK, 0.0);
    return r;
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }

  torch::Tensor weight;  // [E, H]

 private:
  int64_t hidden_, experts_;
  double capacity_factor_;
};
static_assert(btx::Router<ExpertChoice>, "ExpertChoice must satisfy btx::Router");

// Its own options, declared once: configs set them beside the router's name, and the
// registration reads them (unknown keys, wrong types and bad values refused, naming them).
struct ExpertChoiceOptions {
  double capacity_factor = 2.0;
};
const btx::schema::Schema<ExpertChoiceOptions>& expert_choice_options() {
  static const auto s =
      btx::schema::Schema<ExpertChoiceOptions>("expert_choice options")
          .key("capacity_factor", &ExpertChoiceOptions::capacity_factor,
               "tokens per expert: ceil(capacity_factor * T / E)", btx::schema::positive<double>());
  return s;
}

// The one registration: from here on "expert_choice" works wherever btx takes a router
// name (moe_feed_forward, upcycled, upcycle, active_experts, the tools' configs, --help).
[[maybe_unused]] const bool kExpertChoiceRegistered = btx::register_router<ExpertChoice>({
    .name = "expert_choice",
    .describe = "each expert takes its ceil(capacity_factor * T / E) most affine tokens",
    .make =
        [](const btx::RouterBuild& b) {
          return std::make_shared<ExpertChoice>(b.hidden_size, b.num_experts,
                                                b.read(expert_choice_options()).capacity_factor);
        },
    // E experts take capacity_factor * T / E tokens each: capacity_factor per token.
    .active_experts =
        [](const btx::RouterBuild& b) {
          const double c = b.read(expert_choice_options()).capacity_factor;
          return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(c)), 1, b.num_experts);
        },
    .options = btx::router_options(expert_choice_options()),
});

int main() {
  torch::manual_seed(0);
  const int64_t H = 32, E = 4, T = 256;
  // Expert choice balances load by construction, so no load-balancing loss.
  const btx::MoEConfig options =
      btx::resolved({.num_experts = E,
                     .router = {"expert_choice", {{"capacity_factor", 2.0}}},
                     .load_balance_alpha = 0.0});
  std::cout << "routers:";
  for (const auto& name : btx::router_names()) std::cout << ' ' << name;
  std::cout << "\nexpert_choice runs " << btx::active_experts(options)
            << " experts per token (for FLOP counts)\n";

  // 1. One MoE layer by name (MoE<ExpertChoice, PackedSwiGLU>) learns a toy regression.
  torch::nn::AnyModule moe =
      btx::make_moe_layer(options, /*layer=*/0, std::make_shared<btx::PackedSwiGLU>(E, H, 64));
  const btx::MoELayerBase& layer = *btx::moe_layers(*moe.ptr()).front().second;
  auto teacher = torch::randn({H, H}) / std::sqrt(static_cast<double>(H));
  torch::optim::Adam opt(moe.ptr()->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0.0, loss_value = 0.0;
  for (int step = 0; step <= 300; ++step) {
    auto x = torch::randn({T, H});
    auto loss = (moe.forward(x) - torch::tanh(x.mm(teacher))).pow(2).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    loss_value = loss.item<double>();
    if (step == 0) first = loss_value;
    if (step % 100 == 0) {
      const auto& stats = layer.last_stats();
      std::cout << "step " << step << "  loss " << loss_value << "  tokens per expert";
      for (int64_t e = 0; e < E; ++e)
        std::cout << ' ' << stats.tokens_per_expert[e].item<int64_t>();
      std::cout << "  (pairs not picked: " << stats.dropped << ")\n";
    }
  }
  const bool learned = loss_value < 0.5 * first;
  std::cout << (learned ? "learned: loss fell by more than half\n" : "did not learn\n");

  // 2. A Mixtral-like Llama whose every MoE layer routes by expert choice.
  btx::LlamaConfig config;
  config.vocab_size = 64;
  config.hidden_size = H;
  config.intermediate_size = 64;
  btx::LlamaForCausalLM model(config, btx::moe_feed_forward(options));
  auto ids = torch::randint(0, config.vocab_size, {2, 16});
  auto lm_loss = btx::next_token_loss(model->forward(ids.slice(1, 0, 15)), ids.slice(1, 1));
  std::cout << "Llama with " << btx::moe_layers(*model).size() << " expert-choice MoE layers: loss "
            << lm_loss.item<double>() << " (gate "
            << model->named_parameters()["model.layers.0.mlp.gate.weight"].sizes() << ")\n";
  return learned && std::isfinite(lm_loss.item<double>()) ? 0 : 1;
}
