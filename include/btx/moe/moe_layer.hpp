// SPDX-License-Identifier: MIT
// btx::MoE<Router, Experts>: a Mixture-of-Experts feed-forward layer made of a router
// policy (child "gate") and an expert container (child "experts"). It maps [..., D] to
// [..., D], so it drops into a decoder layer's FFN slot; it records its auxiliary loss
// and routing statistics on every call. MoELayerBase lets code find MoE layers in any
// model without knowing their template arguments (btx::collect_aux_loss, moe_layers), and
// exposes what a parallelizer needs (btx/parallel/): the ranks whose shards of a batch
// make the global batch its aux loss is computed over (data parallelism), and the sharding
// of its experts over a group of ranks (expert parallelism).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/collectives.hpp>
#include <btx/core/concepts.hpp>
#include <btx/core/recompute.hpp>
#include <btx/core/routing.hpp>
#include <btx/moe/aux_loss.hpp>
#include <btx/moe/dispatch.hpp>
#include <btx/moe/expert_parallel.hpp>
#include <btx/moe/global_batch.hpp>
#include <btx/moe/shared_expert.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class MoELayerBase {
 public:
  virtual ~MoELayerBase() = default;
  // The last forward's aux loss (alpha * L_LB + z_coef * L_z); undefined when disabled.
  [[nodiscard]] virtual torch::Tensor aux_loss() const = 0;
  [[nodiscard]] virtual const RoutingStats& last_stats() const = 0;
  [[nodiscard]] virtual int64_t num_experts() const = 0;
  [[nodiscard]] virtual const AuxLossOptions& aux_options() const = 0;
  virtual void set_aux_options(const AuxLossOptions& options) = 0;

  // Data parallelism: `ranks` each forward a shard of one global batch, and this layer's
  // aux loss and statistics become the global batch's (moe/global_batch.hpp: one small
  // all-reduce per forward, so every rank must run every forward). nullptr: one process.
  virtual void set_batch_ranks(std::shared_ptr<Collectives> ranks) = 0;
  // Expert parallelism: keeps only this rank's E/G experts of `group` and, from then on,
  // sends tokens to the ranks holding their experts (moe/expert_parallel.hpp).
  virtual void shard_experts(std::shared_ptr<Collectives> group) = 0;
  // The whole layer again, its experts gathered from the group (a collective), e.g. to save.
  virtual void unshard_experts() = 0;
  // This rank's shard, or nullptr when every expert is here.
  [[nodiscard]] virtual const ExpertShard* expert_shard() const = 0;
  // The experts' parameters (after shard_experts, this rank's shard of each).
  [[nodiscard]] virtual std::vector<torch::Tensor> expert_parameters() const = 0;
  // Adds an always-on shared expert (moe/shared_expert.hpp) beside the routed ones, its
  // children named shared_expert and shared_expert_gate; once per layer. Its parameters
  // are replicated like the trunk's, not sharded with the experts.
  virtual void add_shared_expert(SharedExpertSlot shared) = 0;
  // The shared expert, or an empty slot.
  [[nodiscard]] virtual const SharedExpertSlot& shared_expert() const = 0;

 protected:
  MoELayerBase() = default;
  MoELayerBase(const MoELayerBase&) = default;
  MoELayerBase(MoELayerBase&&) = default;
  MoELayerBase& operator=(const MoELayerBase&) = default;
  MoELayerBase& operator=(MoELayerBase&&) = default;
};

template <Router R, ExpertContainer X>
class MoEImpl : public torch::nn::Cloneable<MoEImpl<R, X>>, public MoELayerBase {
 public:
  MoEImpl(std::shared_ptr<R> gate, std::shared_ptr<X> experts, AuxLossOptions aux = {})
      : gate_(std::move(gate)), experts_(std::move(experts)), aux_(aux) {
    if (!gate_ || !experts_) {
      throw std::invalid_argument("btx::MoE: router and experts must be non-null");
    }
    if (gate_->num_experts() != experts_->num_experts()) {
      throw std::invalid_argument(
          "btx::MoE: router has num_experts=" + std::to_string(gate_->num_experts()) +
          " but the expert container has " + std::to_string(experts_->num_experts()));
    }
    if (gate_->hidden_size() != experts_->hidden_size()) {
      throw std::invalid_argument(
          "btx::MoE: router hidden_size=" + std::to_string(gate_->hidden_size()) +
          " differs from the experts' hidden_size=" + std::to_string(experts_->hidden_size()));
    }
    register_children();
  }

  // Runs on the copy inside clone(): the copy gets its own router and experts.
  void reset() override {
    gate_ = std::dynamic_pointer_cast<R>(gate_->clone());
    experts_ = std::dynamic_pointer_cast<X>(experts_->clone());
    shared_ = shared_.clone();
    register_children();
  }

  // x [..., H] -> [..., H].
  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t H = gate_->hidden_size();
    if (x.dim() < 1 || x.size(-1) != H) {
      throw std::invalid_argument("btx::MoE: input " + c10::str(x.sizes()) +
                                  " does not end in hidden_size=" + std::to_string(H));
    }
    auto x_TD = x.reshape({-1, H});
    RoutingResult r = gate_->route(x_TD);
    DispatchOutput d =
        shard_ ? dispatch_combine(x_TD, r, shard_->total,
                                  [&](const torch::Tensor& x_ND, const std::vector<int64_t>& n_E) {
                                    return run_sharded_experts(*experts_, *shard_, x_ND, n_E);
                                  })
               : dispatch_combine(x_TD, r, *experts_);
    LayerRouting routing =
        batch_ranks_ ? global_routing(r, d.tokens_per_expert, d.dropped, aux_, *batch_ranks_)
                     : local_routing(r, d.tokens_per_expert, d.dropped, aux_);
    stats_ = std::move(routing.stats);
    aux_loss_ = std::move(routing.aux_loss);
    if (aux_loss_.defined()) keep_side_output(aux_loss_);
    if (shared_) return (d.y_TD + shared_.forward(x_TD)).view(x.sizes());
    return d.y_TD.view(x.sizes());
  }

  [[nodiscard]] torch::Tensor aux_loss() const override { return aux_loss_; }
  [[nodiscard]] const RoutingStats& last_stats() const override { return stats_; }
  [[nodiscard]] int64_t num_experts() const override { return gate_->num_experts(); }
  [[nodiscard]] int64_t hidden_size() const { return gate_->hidden_size(); }
  [[nodiscard]] const AuxLossOptions& aux_options() const override { return aux_; }
  void set_aux_options(const AuxLossOptions& options) override { aux_ = options; }

  void set_batch_ranks(std::shared_ptr<Collectives> ranks) override {
    batch_ranks_ = std::move(ranks);
  }
  void shard_experts(std::shared_ptr<Collectives> group) override {
    if constexpr (keeps_expert_range<X>) {
      if (shard_)
        throw std::logic_error("btx::MoE::shard_experts: the experts are already sharded");
      ExpertShard shard = ExpertShard::of(std::move(group), gate_->num_experts());
      experts_->keep_experts(shard.first, shard.count);
      shard_ = std::make_shared<ExpertShard>(std::move(shard));
    } else {
      (void)group;
      throw std::invalid_argument(
          "btx::MoE::shard_experts: this layer's expert container cannot be sharded "
          "(it needs keep_experts(first, count); PackedSwiGLU has it)");
    }
  }
  void unshard_experts() override {
    if (!shard_) return;
    torch::NoGradGuard no_grad;
    for (auto& p : experts_->parameters()) p.set_data(gather_expert_stack(*shard_, p));
    shard_.reset();
  }
  [[nodiscard]] const ExpertShard* expert_shard() const override { return shard_.get(); }
  [[nodiscard]] std::vector<torch::Tensor> expert_parameters() const override {
    return experts_->parameters();
  }

  void add_shared_expert(SharedExpertSlot shared) override {
    if (shared_) throw std::logic_error("btx::MoE::add_shared_expert: the layer has one already");
    if (!shared || shared.expert->hidden_size() != gate_->hidden_size()) {
      throw std::invalid_argument(
          "btx::MoE::add_shared_expert: needs a shared expert of "
          "hidden_size=" +
          std::to_string(gate_->hidden_size()));
    }
    shared_ = std::move(shared);
    const auto params = experts_->parameters();
    if (!params.empty()) {
      shared_.expert->to(params.front().device(), params.front().scalar_type());
      if (shared_.gated()) shared_.gate->to(params.front().device(), params.front().scalar_type());
    }
    register_shared();
  }
  [[nodiscard]] const SharedExpertSlot& shared_expert() const override { return shared_; }

  [[nodiscard]] R& gate() { return *gate_; }
  [[nodiscard]] X& experts() { return *experts_; }
  [[nodiscard]] std::shared_ptr<R> gate_ptr() const { return gate_; }
  [[nodiscard]] std::shared_ptr<X> experts_ptr() const { return experts_; }

 private:
  void register_children() {
    this->register_module("gate", gate_);
    this->register_module("experts", experts_);
    if (shared_) register_shared();
  }
  void register_shared() {
    this->register_module("shared_expert", shared_.expert);
    if (shared_.gated()) this->register_module("shared_expert_gate", shared_.gate);
  }

  std::shared_ptr<R> gate_;
  std::shared_ptr<X> experts_;
  SharedExpertSlot shared_;  // empty: routed experts only
  AuxLossOptions aux_;
  RoutingStats stats_;
  torch::Tensor aux_loss_;
  std::shared_ptr<Collectives> batch_ranks_;  // data parallelism (null: one process)
  std::shared_ptr<ExpertShard> shard_;        // expert parallelism (null: all experts here)
};

// The module holder (TORCH_MODULE cannot take a template).
template <Router R, ExpertContainer X>
class MoE : public torch::nn::ModuleHolder<MoEImpl<R, X>> {
 public:
  using torch::nn::ModuleHolder<MoEImpl<R, X>>::ModuleHolder;
  using Impl = MoEImpl<R, X>;
};

// Sum of every MoE layer's last aux loss in `model` (itself included); a zero scalar on
// the model's device when there is none, so `loss + btx::collect_aux_loss(*model)` always works.
inline torch::Tensor collect_aux_loss(torch::nn::Module& model) {
  torch::Tensor total;
  auto add = [&](torch::nn::Module& m) {
    if (auto* layer = dynamic_cast<MoELayerBase*>(&m)) {
      auto l = layer->aux_loss();
      if (l.defined()) total = total.defined() ? total + l : l;
    }
  };
  add(model);
  for (auto& m : model.modules(/*include_self=*/false)) add(*m);
  if (total.defined()) return total;
  const auto parameters = model.parameters();
  return torch::zeros({}, parameters.empty()
                              ? torch::TensorOptions()
                              : torch::TensorOptions().device(parameters.front().device()));
}

// Every MoE layer in `model` with its qualified name (e.g. "model.layers.0.mlp").
inline std::vector<std::pair<std::string, MoELayerBase*>> moe_layers(torch::nn::Module& model) {
  std::vector<std::pair<std::string, MoELayerBase*>> out;
  if (auto* self = dynamic_cast<MoELayerBase*>(&model)) out.emplace_back("", self);
  for (auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto* layer = dynamic_cast<MoELayerBase*>(item.value().get())) {
      out.emplace_back(item.key(), layer);
    }
  }
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
