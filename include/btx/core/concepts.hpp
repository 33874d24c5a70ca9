// SPDX-License-Identifier: MIT
// The two policies an MoE layer is made of, as concepts built from small named
// requirements: a custom router or expert container that lacks one fails to compile with
// a note naming the requirement (e.g. `btx::has_route<MyRouter>` evaluated to false).
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <memory>
#include <vector>

#include <btx/core/routing.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// A LibTorch module (so its parameters are registered and named inside the MoE layer).
template <class M>
concept is_torch_module = std::derived_from<M, torch::nn::Module>;

// `clone()` -> a deep copy (std::shared_ptr<torch::nn::Module>): the MoE layer's clone()
// copies its router and experts with it. Every module has a clone() that throws unless
// the class derives from torch::nn::Cloneable<M>, so that derivation is what is checked.
template <class M>
concept is_cloneable_module = std::derived_from<M, torch::nn::Cloneable<M>> &&
    requires(const M& m) {
  { m.clone() } -> std::same_as<std::shared_ptr<torch::nn::Module>>;
};

// `num_experts()` -> E.
template <class M>
concept has_num_experts = requires(const M& m) {
  { m.num_experts() } -> std::convertible_to<int64_t>;
};

// `hidden_size()` -> D, checked against the other policy when the layer is built.
template <class M>
concept has_hidden_size = requires(const M& m) {
  { m.hidden_size() } -> std::convertible_to<int64_t>;
};

// `route(x_TD)` exists ...
template <class R>
concept has_route = requires(R& r, const torch::Tensor& x_TD) {
  r.route(x_TD);
};

// ... and returns a btx::RoutingResult.
template <class R>
concept routes_to_result = requires(R& r, const torch::Tensor& x_TD) {
  { r.route(x_TD) } -> std::same_as<RoutingResult>;
};

// Maps hidden states x[T, D] to expert indices [T, K], combine weights [T, K], the full
// logits/probabilities [T, E] and (capacity routers) the dropped assignments.
// (is_cloneable_module comes last so a router lacking route() is reported as has_route.)
template <class R>
concept Router = is_torch_module<R> && has_num_experts<R> && has_hidden_size<R> && has_route<R> &&
    routes_to_result<R> && is_cloneable_module<R>;

// `run_expert(e, x_ND)` runs expert e on a contiguous block of N tokens -> [N, D].
template <class X>
concept runs_expert_block = requires(X& x, int64_t e, const torch::Tensor& x_ND) {
  { x.run_expert(e, x_ND) } -> std::same_as<torch::Tensor>;
};

// `parameters()` -> the experts' tensors (every LibTorch module has it).
template <class X>
concept has_parameters = requires(const X& x) {
  { x.parameters() } -> std::convertible_to<std::vector<torch::Tensor>>;
};

// Optional fast path: `run_sorted(x_ND, counts)` runs every expert on its block of the
// tokens sorted by expert (counts[e] rows each, in expert order) in one call.
template <class X>
concept runs_sorted_blocks = requires(X& x, const torch::Tensor& x_ND,
                                      const std::vector<int64_t>& counts) {
  { x.run_sorted(x_ND, counts) } -> std::same_as<torch::Tensor>;
};

// Optional, for expert parallelism: `keep_experts(first, count)` drops every expert but
// [first, first + count) in place. Such a container stacks its experts along dim 0 of
// every parameter (as PackedSwiGLU does), so gathering the ranks' shards of each
// parameter along dim 0 makes the whole container again.
template <class X>
concept keeps_expert_range = requires(X& x, int64_t first, int64_t count) {
  x.keep_experts(first, count);
};

template <class X>
concept ExpertContainer = is_torch_module<X> && has_num_experts<X> && has_hidden_size<X> &&
    runs_expert_block<X> && has_parameters<X> && is_cloneable_module<X>;

BTX_NAMESPACE_END
}  // namespace btx
