// SPDX-License-Identifier: MIT
// MoEConfig: the one description of a model's MoE layers, both what a checkpoint records
// (config.json's expert count, top-k, renormalisation, aux-loss weight, expert widths) and
// what a layer is built from (the router and its own options, the aux-loss form, the
// expert kernel). The router is a RouterChoice: a registered name (btx::router_names())
// with the options its registration owns (top-k's k and renormalize, Switch's
// capacity_factor, Sample Top-1's temperature, ...); btx::resolve_router() looks the name
// up once and keeps the registration with the choice. Light on purpose: model specs carry
// it everywhere, the router registry (moe/router_registry.hpp) is included only where
// layers are built or the router is resolved.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class RegisteredRouter;  // moe/router_spec.hpp

// Which u_i enters L_LB = alpha * E * sum_i u_i * p_i (p_i = batch mean of softmax_i).
enum class LoadBalanceForm {
  btx,     // u_i = batch mean of the routed weight g_i(x) (BTX paper, differentiable)
  switch_  // u_i = (assignments routed to i) / T, as in Switch Transformer and HF Mixtral
};

inline LoadBalanceForm parse_load_balance_form(const std::string& name) {
  if (name == "btx") return LoadBalanceForm::btx;
  if (name == "switch" || name == "mixtral") return LoadBalanceForm::switch_;
  throw std::invalid_argument("btx: unknown load-balancing form '" + name +
                              "'; valid: btx, switch (alias mixtral)");
}
inline std::string to_string(LoadBalanceForm f) {
  return f == LoadBalanceForm::btx ? "btx" : "switch";
}

struct AuxLossOptions {
  double load_balance_alpha = 0.01;  // alpha; 0 disables load balancing
  LoadBalanceForm load_balance_form = LoadBalanceForm::btx;
  double z_loss_coef = 0.0;  // coefficient of mean_t logsumexp(logits_t)^2; 0 disables

  [[nodiscard]] bool enabled() const { return load_balance_alpha != 0.0 || z_loss_coef != 0.0; }
};

// How packed experts run their sorted blocks.
enum class ExpertKernel {
  automatic,  // grouped GEMMs where supported (and on CUDA, aligned), else the loop
  grouped,    // grouped GEMMs; refused where unsupported
  loop        // one matmul chain per expert (every device and dtype)
};

inline ExpertKernel parse_expert_kernel(const std::string& name) {
  if (name == "auto" || name == "automatic") return ExpertKernel::automatic;
  if (name == "grouped") return ExpertKernel::grouped;
  if (name == "loop") return ExpertKernel::loop;
  throw std::invalid_argument("expert kernel '" + name + "' is not one of auto, grouped, loop");
}

// A router by name with its own options. Built from a name alone ("top2", "topk:3",
// "switch") it is resolved where it is first used; btx::resolve_router(name, options)
// resolves it at once (unknown names and bad options fail there, naming them) and the
// registration then travels with the choice, so it is never looked up again.
struct RouterChoice {
  RouterChoice() = default;
  RouterChoice(const char* router) : name(router) {}             // NOLINT: implicit
  RouterChoice(std::string router) : name(std::move(router)) {}  // NOLINT: implicit
  RouterChoice(std::string router, nlohmann::json router_options)
      : name(std::move(router)), options(std::move(router_options)) {}

  std::string name = "top2";
  // The registration's own keys (e.g. {"capacity_factor": 2.0}); resolved: every key with
  // its value, defaults filled in.
  nlohmann::json options = nlohmann::json::object();
  std::shared_ptr<const RegisteredRouter> registration;  // set by resolve_router

  // An option as the registration reads it, or `fallback` when the router has no such key.
  template <class V>
  [[nodiscard]] V option_or(const std::string& key, V fallback) const {
    return options.is_object() && options.contains(key) ? options.at(key).get<V>() : fallback;
  }
};

struct MoEConfig {
  int64_t num_experts = 4;  // E (BTX: 3 domain experts + the seed as generalist)
  RouterChoice router;      // how tokens are routed (default: top2, Mixtral's)
  // F of each routed expert; 0: the dense FFN's (split experts are narrower).
  int64_t expert_size = 0;
  // An always-on shared expert of this F beside the routed ones, its output gated by
  // sigmoid(shared_expert_gate x) (Qwen2-MoE; moe/shared_expert.hpp); empty: none. A family
  // whose MoE architecture always has one (Qwen2-MoE) may hold 0: a zero-width one.
  std::optional<int64_t> shared_expert_size;
  // The shared expert's output gated by sigmoid(shared_expert_gate x) (Qwen2-MoE) or added as
  // it is (GLM-4-MoE, GraniteMoEShared).
  bool shared_expert_gated = true;
  // Leading layers that stay dense FFNs of the dense width (DeepSeek-V3's and GLM-4-MoE's
  // first_k_dense_replace); 0: every layer is MoE.
  int64_t dense_layers = 0;
  double load_balance_alpha = 0.01;  // alpha of L_LB (paper: 0.01; config.json's aux coef)
  LoadBalanceForm load_balance_form = LoadBalanceForm::btx;
  double z_loss_coef = 0.0;  // router z-loss coefficient; 0 disables it
  uint64_t seed = 0;         // stochastic routers' noise; layer l uses seed + l
  int64_t hidden_size = 0;   // D, needed only when upcycling modules of unknown width
  ExpertKernel expert_kernel = ExpertKernel::automatic;  // packed experts: grouped GEMMs or loop

  [[nodiscard]] AuxLossOptions aux() const {
    return AuxLossOptions{load_balance_alpha, load_balance_form, z_loss_coef};
  }
  // Whether the top-k weights are renormalised to sum to 1 (config.json's norm_topk_prob;
  // Mixtral always, Qwen-MoE optionally): the router's `renormalize` option, else true.
  [[nodiscard]] bool renormalizes_top_k() const { return router.option_or("renormalize", true); }
};

BTX_NAMESPACE_END
}  // namespace btx
