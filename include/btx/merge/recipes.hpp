// SPDX-License-Identifier: MIT
// The recipes of btx's dense -> MoE methods (merge/moe_plan.hpp: which rows of which
// source's FFN each expert takes), shared by the mixer policies (merge/mixers.hpp) and the
// merge-method registry (merge/method_registry.hpp), so a method is written once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <btx/merge/moe_plan.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

namespace detail {
inline void check_divides(const std::string& method, int64_t I, int64_t parts, const char* what) {
  if (parts <= 0 || I % parts != 0) {
    throw std::invalid_argument(
        "btx::merge::" + method + ": " + what + "=" + std::to_string(parts) +
        " must divide intermediate_size=" + std::to_string(I) + " into equal chunks");
  }
}
}  // namespace detail

// The paper's MiX: expert j is source j's whole FFN (`width` = its F).
inline MoeRecipe btx_recipe(size_t sources, int64_t width, int64_t experts_per_token,
                            SharedExpertChoice shared = {}) {
  MoeRecipe r{"btx_mix", {}, 1, experts_per_token, 0.0, 0};
  for (size_t j = 0; j < sources; ++j) r.experts.push_back({{{j, 0, width}}});
  r.shared = shared;
  return r;
}

// Splitting: each source's FFN cut into `chunks` experts (expert j*C + c holds rows
// [c*F/C, (c+1)*F/C) of source j); `experts_per_token` counts unsplit experts, the plan
// suggests chunks times as many. rescale_down: each chunk's down_proj times C, so a
// source's C chunks under its unsplit router weight equal its FFN.
inline MoeRecipe split_recipe(size_t sources, int64_t width, int64_t chunks,
                              int64_t experts_per_token, bool rescale_down,
                              SharedExpertChoice shared = {}) {
  detail::check_divides("split", width, chunks, "chunks");
  const int64_t w = width / chunks;
  MoeRecipe r{"split", {}, chunks, chunks * experts_per_token, 0.0, 0};
  if (rescale_down) r.down_scale = double(chunks);
  for (size_t j = 0; j < sources; ++j) {
    for (int64_t c = 0; c < chunks; ++c) r.experts.push_back({{{j, c * w, (c + 1) * w}}});
  }
  r.shared = shared;
  return r;
}

// Blending: N experts, expert n the concatenation of chunk n of every source's FFN.
inline MoeRecipe blend_recipe(size_t sources, int64_t width, int64_t experts_per_token,
                              SharedExpertChoice shared = {}) {
  const int64_t n = int64_t(sources);
  detail::check_divides("blend", width, n, "number of sources");
  const int64_t w = width / n;
  MoeRecipe r{"blend", {}, n, experts_per_token, 0.0, 0};
  for (int64_t e = 0; e < n; ++e) {
    ExpertRecipe ex;
    for (size_t j = 0; j < sources; ++j) ex.pieces.push_back({j, e * w, (e + 1) * w});
    r.experts.push_back(std::move(ex));
  }
  r.shared = shared;
  return r;
}

// Sparse upcycling: `copies` experts, each source 0's FFN (optionally perturbed).
inline MoeRecipe upcycle_recipe(size_t sources, int64_t width, int64_t copies,
                                int64_t experts_per_token, double noise_std, uint64_t noise_seed,
                                SharedExpertChoice shared = {}) {
  if (sources != 1) {
    throw std::invalid_argument("btx::merge::Upcycle: needs exactly one source (the seed), got " +
                                std::to_string(sources));
  }
  if (copies <= 0) {
    throw std::invalid_argument("btx::merge::Upcycle: num_experts must be > 0, got " +
                                std::to_string(copies));
  }
  MoeRecipe r{"upcycle", {}, 1, experts_per_token, noise_std, noise_seed};
  for (int64_t e = 0; e < copies; ++e) r.experts.push_back({{{0, 0, width}}});
  r.shared = shared;
  return r;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
