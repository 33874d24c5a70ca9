// SPDX-License-Identifier: MIT
// Must NOT compile: a router without route(). The test building this checks that the
// compiler's message names the missing requirement, btx::has_route.
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>

struct NoRoute : torch::nn::Module {
  [[nodiscard]] int64_t num_experts() const { return 2; }
  [[nodiscard]] int64_t hidden_size() const { return 4; }
};

btx::MoE<NoRoute, btx::PackedSwiGLU>* not_a_layer = nullptr;
