// SPDX-License-Identifier: MIT
// MoEOptions: everything that configures an MoE layer, with the router chosen at run time
// by name (as a pipeline config file names it), and with_router(), which builds the named
// router and hands it to a generic callable (so the layer's type follows the name).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <btx/moe/aux_loss.hpp>
#include <btx/moe/routers/sample_top1.hpp>
#include <btx/moe/routers/soft.hpp>
#include <btx/moe/routers/switch.hpp>
#include <btx/moe/routers/top_k.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

inline constexpr const char* kRouterNames =
    "top1, top2, topk (uses k), topk:K, switch, sample_top1, soft";

struct MoEOptions {
  int64_t num_experts = 4;           // E (BTX: 3 domain experts + the seed as generalist)
  std::string router = "top2";       // one of kRouterNames
  int64_t k = 2;                     // k for router "topk"
  double capacity_factor = 1.5;      // Switch only
  double load_balance_alpha = 0.01;  // alpha of L_LB (paper: 0.01); 0 disables it
  LoadBalanceForm load_balance_form = LoadBalanceForm::btx;
  double z_loss_coef = 0.0;              // router z-loss coefficient; 0 disables it
  TemperatureSchedule temperature = {};  // Sample Top-1: init 1, floor 0.5, rate 1e-4
  uint64_t seed = 0;                     // Sample Top-1 noise; layer l uses seed + l
  bool soft_first_layer = false;         // Sample Top-1 only: layer 0 routes softly (BTX paper)
  int64_t hidden_size = 0;               // H, needed only when upcycling modules of unknown width

  [[nodiscard]] AuxLossOptions aux() const {
    return AuxLossOptions{load_balance_alpha, load_balance_form, z_loss_coef};
  }
};

// Parses "topk:K" / "top1" / "top2" / "topk"; 0 when `name` is not a top-k router.
inline int64_t parse_top_k(const std::string& name, int64_t k) {
  if (name == "top1") return 1;
  if (name == "top2") return 2;
  if (name == "topk") return k;
  if (name.rfind("topk:", 0) == 0) {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument("btx: router '" + name +
                                  "' needs a positive integer after "
                                  "'topk:' (e.g. topk:2)");
    }
    return std::stoll(digits);
  }
  return 0;
}

// Builds the router `options.router` names for MoE layer `layer` (counted from 0) of
// hidden size H and calls
// fn(std::shared_ptr<RouterType>); returns what fn returns (every branch must agree).
template <class Fn>
auto with_router(const MoEOptions& options, int64_t hidden_size, uint64_t layer, Fn&& fn) {
  const int64_t E = options.num_experts;
  if (E <= 0) {
    throw std::invalid_argument("btx: MoEOptions.num_experts must be >= 1, got " +
                                std::to_string(E));
  }
  const std::string& name = options.router;
  if (const int64_t k = parse_top_k(name, options.k); k != 0) {
    if (k < 1 || k > E) {
      throw std::invalid_argument("btx: router '" + name + "' asks for k=" + std::to_string(k) +
                                  " but MoEOptions.num_experts=" + std::to_string(E) +
                                  "; k must be in [1, num_experts]");
    }
    return fn(std::make_shared<TopK>(hidden_size, E, k));
  }
  if (name == "switch") {
    return fn(std::make_shared<Switch>(hidden_size, E, options.capacity_factor));
  }
  if (name == "sample_top1") {
    if (options.soft_first_layer && layer == 0) return fn(std::make_shared<Soft>(hidden_size, E));
    return fn(
        std::make_shared<SampleTop1>(hidden_size, E, options.temperature, options.seed + layer));
  }
  if (name == "soft") return fn(std::make_shared<Soft>(hidden_size, E));
  throw std::invalid_argument("btx: unknown router '" + name +
                              "' in MoEOptions.router; valid: " + kRouterNames);
}

BTX_NAMESPACE_END
}  // namespace btx
