// SPDX-License-Identifier: MIT
// Expert parallelism inside one MoE layer: the E experts are split evenly over the G ranks
// of a group, each rank routes its own tokens, and the rows for experts held elsewhere
// travel there and back with two all-to-alls (their backward is the reverse exchange).
// The router, its drops and the combine are the same code as in one process, so routing,
// capacity and drop accounting do not change; only where an expert runs does.
//
// Every forward and backward of an expert-parallel layer is a collective over the group,
// so every rank must run it on every step, even with no tokens to send (the exchange then
// carries zero rows; a rank that receives none still runs an empty block, keeping its
// backward in step with the others).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/collectives.hpp>
#include <btx/core/concepts.hpp>
#include <btx/moe/dispatch.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Which experts of a layer this rank holds.
struct ExpertShard {
  std::shared_ptr<Collectives> group;  // the ranks the layer's experts are spread over
  int64_t first = 0;                   // global index of this rank's first expert
  int64_t count = 0;                   // experts held here (E / G)
  int64_t total = 0;                   // experts in the layer (E)

  // The shard of rank `rank` of a group of `ranks` over `experts` experts.
  static ExpertShard of(std::shared_ptr<Collectives> group, int64_t experts) {
    if (!group) throw std::invalid_argument("btx::ExpertShard: no group");
    const int64_t G = group->size();
    if (G < 1 || experts % G != 0) {
      throw std::invalid_argument("btx: expert parallelism needs the " + std::to_string(experts) +
                                  " experts to split evenly over the " + std::to_string(G) +
                                  " ranks of group '" + group->group_name() + "'");
    }
    const int64_t n = experts / G;
    return {group, group->rank() * n, n, experts};
  }
};

namespace detail {

// all_to_all of rows whose backward sends the gradients back the way the rows came.
struct ExchangeRows : torch::autograd::Function<ExchangeRows> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& rows,
                               Collectives* group, std::vector<int64_t> send,
                               std::vector<int64_t> recv, std::string what) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    ctx->saved_data["what"] = what;
    return group->all_to_all(rows, send, recv, what);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* group = reinterpret_cast<Collectives*>(ctx->saved_data["group"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    const auto what = ctx->saved_data["what"].toStringRef() + " (backward)";
    const auto grad = group->all_to_all(grads[0].contiguous(), recv, send, what);
    return {grad, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

inline std::vector<int64_t> block_sums(const int64_t* counts, int64_t blocks, int64_t width) {
  std::vector<int64_t> out(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b)
    out[size_t(b)] = std::accumulate(counts + b * width, counts + (b + 1) * width, int64_t{0});
  return out;
}

}  // namespace detail

// Runs `local` (this rank's shard of the experts) on every rank's rows for them. x_ND holds
// this rank's rows sorted by global expert, counts_E[e] for expert e; returns their outputs
// in the same order. Differentiable; a collective over shard.group.
template <ExpertContainer X>
torch::Tensor run_sharded_experts(X& local, const ExpertShard& shard, const torch::Tensor& x_ND,
                                  const std::vector<int64_t>& counts_E) {
  Collectives& group = *shard.group;
  const int64_t G = group.size(), El = shard.count;
  if (int64_t(counts_E.size()) != shard.total) {
    throw std::invalid_argument("btx: expert-parallel dispatch got " +
                                std::to_string(counts_E.size()) + " expert counts for " +
                                std::to_string(shard.total) + " experts");
  }
  // How many rows each rank sends each of this rank's experts: C_GL[s][l].
  const std::vector<int64_t> per_rank(size_t(G), El);
  const torch::Tensor C_GL = group.all_to_all(torch::tensor(counts_E, torch::kLong), per_rank,
                                              per_rank, "expert-parallel row counts");
  const int64_t* C = C_GL.data_ptr<int64_t>();
  const auto send = detail::block_sums(counts_E.data(), G, El);
  const auto recv = detail::block_sums(C, G, El);

  // Rows arrive grouped by source rank, then by expert; the experts want them by expert.
  const torch::Tensor x_recv =
      detail::ExchangeRows::apply(x_ND, &group, send, recv, "expert-parallel token rows");
  std::vector<int64_t> by_expert, local_counts(size_t(El), 0), source_start(size_t(G), 0);
  for (int64_t s = 1; s < G; ++s)
    source_start[size_t(s)] = source_start[size_t(s - 1)] + recv[size_t(s - 1)];
  for (int64_t l = 0; l < El; ++l) {
    for (int64_t s = 0; s < G; ++s) {
      int64_t start = source_start[size_t(s)];
      for (int64_t j = 0; j < l; ++j) start += C[s * El + j];
      for (int64_t i = 0; i < C[s * El + l]; ++i) by_expert.push_back(start + i);
      local_counts[size_t(l)] += C[s * El + l];
    }
  }
  torch::Tensor y_recv;
  if (by_expert.empty()) {
    // Nothing to compute, but the block still depends on the experts and the rows, so this
    // rank's backward reaches the reverse exchanges as every other rank's does.
    y_recv = local.run_expert(0, x_recv);
  } else {
    const auto order = torch::tensor(by_expert, torch::kLong).to(x_ND.device());
    const auto y_sorted = run_expert_blocks(local, x_recv.index_select(0, order), local_counts);
    y_recv = torch::empty_like(y_sorted).index_copy(0, order, y_sorted);
  }
  return detail::ExchangeRows::apply(y_recv, &group, recv, send, "expert-parallel expert outputs");
}

// The whole stack of each expert parameter of `shard`'s layer, gathered from every rank
// (a collective): rank g's shard of each parameter, in rank order along dim 0.
inline torch::Tensor gather_expert_stack(const ExpertShard& shard, const torch::Tensor& local) {
  Collectives& group = *shard.group;
  const int64_t G = group.size(), n = local.size(0);
  std::vector<torch::Tensor> copies(size_t(G), local.detach());
  const std::vector<int64_t> rows(size_t(G), n);
  return group.all_to_all(torch::cat(copies, 0), rows, rows, "expert weights (gather)");
}

BTX_NAMESPACE_END
}  // namespace btx
