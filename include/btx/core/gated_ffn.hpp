// SPDX-License-Identifier: MIT
// The dense feed-forward block BTX turns into experts: a gated FFN
//   y_TD = down_DF( act(gate_FD x_TD) * up_FD x_TD )
// with SiLU (SwiGLU: Llama, Mistral, Qwen) or tanh-approximated GELU (GeGLU: Gemma).
// A family's FFN module implements GatedFfnSource so MoE surgery can pack its weights into
// experts without knowing the family.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

enum class GateActivation { silu, gelu_tanh };

inline torch::Tensor apply_gate_activation(const torch::Tensor& x, GateActivation act) {
  return act == GateActivation::silu ? torch::silu(x) : torch::gelu(x, "tanh");
}

// The names HF config.json files use (`hidden_act`).
inline std::string gate_activation_name(GateActivation act) {
  return act == GateActivation::silu ? "silu" : "gelu_pytorch_tanh";
}
inline GateActivation gate_activation_from_name(const std::string& name) {
  if (name == "silu" || name == "swish") return GateActivation::silu;
  if (name == "gelu_pytorch_tanh") return GateActivation::gelu_tanh;
  throw std::invalid_argument("hidden_act \"" + name +
                              "\" is not supported (silu, gelu_pytorch_tanh)");
}

// A dense gated FFN whose weights MoE surgery may copy into packed experts.
class GatedFfnSource {
 public:
  virtual ~GatedFfnSource() = default;
  [[nodiscard]] virtual torch::Tensor gate_weight_FD() const = 0;
  [[nodiscard]] virtual torch::Tensor up_weight_FD() const = 0;
  [[nodiscard]] virtual torch::Tensor down_weight_DF() const = 0;
  [[nodiscard]] virtual GateActivation activation() const = 0;
};

BTX_NAMESPACE_END
}  // namespace btx
