// SPDX-License-Identifier: MIT
// What btx's layers ask of the ranks they train with, abstract so that the MoE layer and
// the trainer depend on no communication library: btx/parallel/communicator.hpp implements
// it over a c10d process group. A layer that sees only its rank's shard of a batch uses it
// to compute what one process would compute on the whole batch (global load-balancing
// statistics), and an expert-parallel layer to send tokens to the rank that holds their
// expert. Every call is a collective: each rank of the group makes the same calls in the
// same order, and a failed peer surfaces as an exception naming it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class Collectives {
 public:
  virtual ~Collectives() = default;

  [[nodiscard]] virtual int64_t rank() const = 0;
  [[nodiscard]] virtual int64_t size() const = 0;
  // A name for errors and logs, e.g. "world" or "world/group1".
  [[nodiscard]] virtual std::string group_name() const = 0;

  // `t` summed over the group's ranks, in place. `what` names the data in errors.
  virtual void all_reduce_sum(torch::Tensor& t, const std::string& what) = 0;

  // Rows of `input_N...` to every rank: the first send_rows[0] rows go to rank 0, the next
  // send_rows[1] to rank 1, ...; returns the rows received, recv_rows[g] from rank g, in
  // rank order. recv_rows must be what the peers send (exchange the counts first). Not
  // differentiable (btx/moe/expert_parallel.hpp wraps it for autograd).
  [[nodiscard]] virtual torch::Tensor all_to_all(const torch::Tensor& input_N,
                                                 const std::vector<int64_t>& send_rows,
                                                 const std::vector<int64_t>& recv_rows,
                                                 const std::string& what) = 0;

 protected:
  Collectives() = default;
  Collectives(const Collectives&) = default;
  Collectives(Collectives&&) = default;
  Collectives& operator=(const Collectives&) = default;
  Collectives& operator=(Collectives&&) = default;
};

BTX_NAMESPACE_END
}  // namespace btx
