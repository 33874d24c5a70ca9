// SPDX-License-Identifier: MIT
// Branch: N independent deep copies of a seed model, one per domain, each tagged with
// an ExpertInfo recording its lineage (parent name and a fingerprint of the seed weights).
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/hash.hpp>
#include <btx/merge/averaging.hpp>
#include <btx/merge/expert_info.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// A torch ModuleHolder (any family's model) whose module is a Cloneable.
template <class M>
concept holds_a_module = requires {
  typename M::ContainedType;
}
&&std::derived_from<typename M::ContainedType, torch::nn::Module>;
template <class M>
concept deep_copies_itself = requires(const M& m) {
  { m->clone() } -> std::convertible_to<std::shared_ptr<torch::nn::Module>>;
};
template <class M>
concept CloneableModule = holds_a_module<M> && deep_copies_itself<M>;

// A deep copy: new parameters, same values, same device.
template <CloneableModule M>
M deep_copy(const M& module) {
  auto copy = std::dynamic_pointer_cast<typename M::ContainedType>(module->clone());
  if (!copy) throw std::logic_error("btx::merge::deep_copy: clone() returned another type");
  return M(std::move(copy));
}

// FNV-1a (64 bit) over every parameter and buffer: names, dtypes, shapes and bytes. Equal
// weights give equal fingerprints; any change to any value changes it (almost surely).
inline std::string weights_fingerprint(const torch::nn::Module& module) {
  Fnv1a64 h;
  const auto mix = [&h](const void* data, size_t n) { h.add(data, n); };
  const auto add = [&](const std::string& name, const torch::Tensor& t) {
    mix(name.data(), name.size());
    const auto dtype = static_cast<int>(t.scalar_type());
    mix(&dtype, sizeof dtype);
    for (int64_t s : t.sizes()) mix(&s, sizeof s);
    const auto c = t.detach().cpu().contiguous();
    mix(c.data_ptr(), c.nbytes());
  };
  for (const auto& p : module.named_parameters(true)) add(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) add(b.key(), b.value());
  return h.hex();
}

template <class M>
struct Branched {
  M model;
  ExpertInfo info;
};

namespace detail {
// Throws unless `domains` is a non-empty list of unique, non-empty names.
inline void check_branch_domains(const std::vector<std::string>& domains) {
  if (domains.empty()) throw std::invalid_argument("btx::merge::branch: no domains given");
  for (size_t j = 0; j < domains.size(); ++j) {
    if (domains[j].empty()) {
      throw std::invalid_argument("btx::merge::branch: domain " + std::to_string(j) +
                                  " has an empty name");
    }
    for (size_t k = 0; k < j; ++k) {
      if (domains[k] == domains[j]) {
        throw std::invalid_argument("btx::merge::branch: domain '" + domains[j] +
                                    "' is given twice; expert names must be unique");
      }
    }
  }
}
// Expert j's lineage: named domains[j], branched from `seed_name` whose weights hash to `hash`.
inline ExpertInfo branch_info(const std::vector<std::string>& domains, size_t j,
                              const std::string& seed_name, const std::string& hash) {
  ExpertInfo info;
  info.name = domains[j];
  info.domain = domains[j];
  info.parent = seed_name;
  info.seed_hash = hash;
  info.branch_index = int64_t(j);
  return info;
}
}  // namespace detail

// One deep copy of `seed` per domain; expert j is named domains[j], parent `seed_name`.
template <CloneableModule M>
std::vector<Branched<M>> branch(const M& seed, const std::vector<std::string>& domains,
                                const std::string& seed_name = "seed") {
  detail::check_branch_domains(domains);
  const std::string hash = weights_fingerprint(*seed);
  std::vector<Branched<M>> out;
  for (size_t j = 0; j < domains.size(); ++j) {
    out.push_back({deep_copy(seed), detail::branch_info(domains, j, seed_name, hash)});
  }
  return out;
}

// The same for a family-agnostic model handle: CausalLM::clone() is the deep copy.
inline std::vector<Branched<CausalLM>> branch(const CausalLM& seed,
                                              const std::vector<std::string>& domains,
                                              const std::string& seed_name = "seed") {
  detail::check_branch_domains(domains);
  const std::string hash = weights_fingerprint(seed.module());
  std::vector<Branched<CausalLM>> out;
  for (size_t j = 0; j < domains.size(); ++j) {
    out.push_back({seed.clone(), detail::branch_info(domains, j, seed_name, hash)});
  }
  return out;
}

// Averaging weights proportional to each expert's tokens_trained (validated when used).
inline WeightedMean weighted_by_tokens(const std::vector<ExpertInfo>& experts) {
  WeightedMean w;
  for (const auto& e : experts) w.raw.push_back(double(e.tokens_trained));
  return w;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
