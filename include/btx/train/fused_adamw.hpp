// SPDX-License-Identifier: MIT
// AdamW whose step is one fused kernel per (device, dtype) group of parameters
// (at::_fused_adamw_, what PyTorch's AdamW(fused=True) runs) instead of LibTorch's C++
// loop of six element-wise ops per parameter, each a pass over memory and some a
// temporary as large as the parameter. Same update, same state: it *is* a
// torch::optim::AdamW (AdamWParamState: exp_avg, exp_avg_sq, step), so checkpoints,
// resumption and everything that inspects the optimizer see no difference. amsgrad,
// sparse gradients and dtypes the kernel lacks take LibTorch's own step.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;

  torch::Tensor step(LossClosure closure = nullptr) override {
    if (!fusable()) return torch::optim::AdamW::step(std::move(closure));
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure != nullptr) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups()) {
      const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
      // The kernel takes tensors of one device and dtype per call.
      struct Lists {
        std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
      };
      std::map<std::pair<int64_t, int64_t>, Lists> by_kind;
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto& s = state_of(p);
        s.step(s.step() + 1);
        auto& l = by_kind[{int64_t(p.device().type()) * 256 + p.device().index(),
                           int64_t(p.scalar_type())}];
        l.params.push_back(p);
        l.grads.push_back(p.grad());
        l.exp_avgs.push_back(s.exp_avg());
        l.exp_avg_sqs.push_back(s.exp_avg_sq());
        // The kernel reads each parameter's step count (after this step) as a float scalar.
        l.steps.push_back(torch::full({}, double(s.step()), p.options().dtype(torch::kFloat32)));
      }
      for (auto& [kind, l] : by_kind) {
        (void)kind;
        at::_fused_adamw_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, {}, l.steps, o.lr(),
                          std::get<0>(o.betas()), std::get<1>(o.betas()), o.weight_decay(), o.eps(),
                          /*amsgrad=*/false, /*maximize=*/false);
      }
    }
    return loss;
  }

 private:
  // Whether every parameter with a gradient can take the fused step (dense gradients of a
  // floating dtype the kernel has, no amsgrad).
  bool fusable() {
    for (auto& group : param_groups()) {
      const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
      if (o.amsgrad()) return false;
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        if (p.grad().is_sparse()) return false;
        const auto t = p.scalar_type();
        if (t != torch::kFloat32 && t != torch::kBFloat16 && t != torch::kFloat16 &&
            t != torch::kFloat64) {
          return false;
        }
      }
    }
    return true;
  }

  // p's state, created as LibTorch's AdamW creates it (zeros, step 0) when p has none.
  torch::optim::AdamWParamState& state_of(const torch::Tensor& p) {
    auto& all = state();
    auto it = all.find(p.unsafeGetTensorImpl());
    if (it == all.end()) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->step(0);
      fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      it = all.emplace(p.unsafeGetTensorImpl(), std::move(fresh)).first;
    }
    return static_cast<torch::optim::AdamWParamState&>(*it->second);
  }
};

BTX_NAMESPACE_END
}  // namespace btx
