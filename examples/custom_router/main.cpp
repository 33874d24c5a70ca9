// SPDX-License-Identifier: MIT
// A routing policy btx does not ship, written against the btx::Router concept: expert
// choice (Zhou et al. 2022), where each expert picks its top-C tokens instead of each
// token picking experts. It plugs into btx::MoE unchanged and trains in a toy loop.
//   build/bin/btx-custom-router
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>

// A router is any LibTorch module with num_experts(), hidden_size() and
// route(x_TD) -> btx::RoutingResult. Expert choice fits the [T, k] format with k = E:
// every token lists every expert, and the pairs an expert did not pick are `dropped`.
class ExpertChoice : public torch::nn::Cloneable<ExpertChoice> {
 public:
  ExpertChoice(int64_t hidden, int64_t experts, double capacity_factor = 2.0)
      : hidden_(hidden), experts_(experts), capacity_factor_(capacity_factor) {
    reset();
  }
  void reset() override {
    weight = register_parameter("weight", torch::randn({experts_, hidden_}) * 0.02);
  }

  btx::RoutingResult route(const torch::Tensor& x_TD) {
    btx::RoutingResult r;
    const int64_t T = x_TD.size(0);
    r.logits_TE = torch::mm(x_TD.to(torch::kFloat32), weight.t());
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    // Each expert takes the C tokens with the highest affinity to it.
    const auto C = std::min<int64_t>(
        T, static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(T) /
                                          static_cast<double>(experts_))));
    auto picked_CE = std::get<1>(r.probs_TE.topk(C, /*dim=*/0));  // token ids per expert
    auto chosen_TE = torch::zeros({T, experts_}, torch::kBool).scatter_(0, picked_CE, true);
    r.indices_TK = torch::arange(experts_).unsqueeze(0).expand({T, experts_});
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

int main() {
  torch::manual_seed(0);
  const int64_t H = 32, E = 4, T = 256;
  // Expert choice balances load by construction, so no load-balancing loss.
  btx::MoE<ExpertChoice, btx::PackedSwiGLU> moe(std::make_shared<ExpertChoice>(H, E),
                                                std::make_shared<btx::PackedSwiGLU>(E, H, 64),
                                                btx::AuxLossOptions{0.0});
  auto teacher = torch::randn({H, H}) / std::sqrt(static_cast<double>(H));
  torch::optim::Adam opt(moe->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0.0, loss_value = 0.0;
  for (int step = 0; step <= 300; ++step) {
    auto x = torch::randn({T, H});
    auto loss = (moe->forward(x) - torch::tanh(x.mm(teacher))).pow(2).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    loss_value = loss.item<double>();
    if (step == 0) first = loss_value;
    if (step % 100 == 0) {
      const auto& stats = moe->last_stats();
      std::cout << "step " << step << "  loss " << loss_value << "  tokens per expert";
      for (int64_t e = 0; e < E; ++e)
        std::cout << ' ' << stats.tokens_per_expert[e].item<int64_t>();
      std::cout << "  (pairs not picked: " << stats.dropped << ")\n";
    }
  }
  std::cout << (loss_value < 0.5 * first ? "learned: loss fell by more than half\n"
                                         : "did not learn\n");
  return loss_value < 0.5 * first ? 0 : 1;
}
