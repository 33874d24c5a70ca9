// SPDX-License-Identifier: MIT
// Sparse upcycling of a built model, any family: a new MoE model of the same family whose
// every non-FFN tensor is the dense model's and whose E experts per layer are copies of
// its FFN. It runs the same Upcycle plan btx-merge streams from checkpoints, so weights
// in memory and on disk are upcycled by one code path; routers keep their fresh init.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/plan.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/models/auto.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

inline CausalLM upcycled(const CausalLM& dense, const MoEConfig& options) {
  if (dense.is_moe()) {
    throw std::invalid_argument("btx::merge::upcycled: the model is already an MoE");
  }
  const auto& family = family_of(dense.spec());
  ModelSpec spec = dense.spec();
  spec.moe = resolved(options);  // its router looked up once, for every layer
  CausalLM moe = family.make_moe(spec);
  const auto params = dense.parameters();
  if (!params.empty()) moe.to(params.front().device(), params.front().scalar_type());

  Upcycle<> up;
  up.num_experts = options.num_experts;
  up.experts_per_token = active_experts(*spec.moe);
  std::vector<StateDictSource> source{source_of(dense.module(), "dense")};
  StateDict tensors = materialize(up.plan(source));
  // The routers keep the MoE model's own initialisation (its router type decides it).
  for (const auto& p : moe.named_parameters()) {
    if (family.ffn.is_router(p.key())) tensors[p.key()] = p.value().detach().clone();
  }
  load_state_dict(moe.module(), tensors);
  return moe;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
