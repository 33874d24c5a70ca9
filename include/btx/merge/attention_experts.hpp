// SPDX-License-Identifier: MIT
// BAM's mix (Branch-Attend-Mix, Zhang et al. 2024): besides BTX's FFN experts, each
// source's attention becomes an attention expert of the mixed model instead of being
// averaged away (models/common/attention_experts.hpp). attention_experts_from takes a
// mixed model (BTX's MiX: FFN experts, averaged trunk) and the sources it was mixed from,
// in its FFN experts' order, and returns the same model with every layer's attention made
// of the sources' attentions, routed by `moe` (BAM: soft). The attention router's rows
// start as the FFN router's (the same domain signal, read before the FFN rather than
// before attention) when the counts agree, else at zero (a uniform soft mixture).
#pragma once

#include <torch/torch.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/models/auto.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

inline CausalLM attention_experts_from(const CausalLM& mixed, const std::vector<CausalLM>& sources,
                                       MoEConfig moe) {
  const std::string where = "btx::merge::attention_experts_from";
  if (sources.empty()) throw std::invalid_argument(where + ": no sources");
  if (mixed.spec().attention_moe) {
    throw std::invalid_argument(where + ": the model has attention experts already");
  }
  const auto& family = family_of(mixed.spec());
  if (!family.attention) {
    throw std::invalid_argument(where + ": model family '" + family.name +
                                "' does not say where its attention sits");
  }
  const SublayerNaming& attn = *family.attention;
  const int64_t L = mixed.spec().shape.num_hidden_layers;
  for (size_t j = 0; j < sources.size(); ++j) {
    if (sources[j].spec().family != mixed.spec().family ||
        sources[j].spec().config != mixed.spec().config || sources[j].spec().attention_moe) {
      throw std::invalid_argument(where + ": source " + std::to_string(j) +
                                  " is not a model of the mixed model's architecture");
    }
  }
  moe.num_experts = int64_t(sources.size());
  moe.load_balance_alpha = 0.0;
  ModelSpec spec = mixed.spec();
  spec.attention_moe = resolved(moe);
  CausalLM out = family.make(spec);
  const auto params = mixed.parameters();
  if (!params.empty()) out.to(params.front().device(), params.front().scalar_type());

  std::vector<torch::OrderedDict<std::string, torch::Tensor>> source_params;
  for (const auto& s : sources) source_params.push_back(s.named_parameters());
  const auto mixed_params = mixed.named_parameters();
  const auto ffn_router = [&](int64_t l) -> const torch::Tensor* {
    return mixed.is_moe() ? mixed_params.find(family.ffn.router_name(l)) : nullptr;
  };
  torch::NoGradGuard no_grad;
  for (auto& p : out.named_parameters()) {
    const std::string& name = p.key();
    torch::Tensor value;
    for (int64_t l = 0; l < L && !value.defined(); ++l) {
      if (name == attn.router_name(l)) {
        const auto* rows = ffn_router(l);
        value = rows != nullptr && rows->size(0) == moe.num_experts ? *rows
                                                                    : torch::zeros_like(p.value());
      }
      for (const auto& proj : attn.projections) {
        if (name != attn.experts_name(l, proj)) continue;
        std::vector<torch::Tensor> stack;
        for (const auto& sp : source_params) {
          const auto* t = sp.find(attn.dense_name(l, proj));
          if (t == nullptr) {
            throw std::invalid_argument(where + ": a source has no '" + attn.dense_name(l, proj) +
                                        "'");
          }
          stack.push_back(*t);
        }
        value = torch::stack(stack);
      }
    }
    if (!value.defined()) {
      const auto* t = mixed_params.find(name);
      if (t == nullptr) throw std::logic_error(where + ": no value for '" + name + "'");
      value = *t;
    }
    if (value.sizes() != p.value().sizes()) {
      throw std::logic_error(where + ": '" + name + "' built as " + c10::str(value.sizes()) +
                             ", the model has " + c10::str(p.value().sizes()));
    }
    p.value().copy_(value);
  }
  return out;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
