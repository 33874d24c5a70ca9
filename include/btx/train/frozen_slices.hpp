// SPDX-License-Identifier: MIT
// Parameters frozen in part: rows [begin, end) along dim 0 of a tensor that otherwise
// trains, as the anchor expert and its router row inside a packed MoE layer (FlexOlmo's
// expert training, merge/anchored.hpp). A whole tensor is frozen with requires_grad(false);
// a slice cannot be, so two things keep it fixed:
//   - a gradient hook zeroes the slice's gradient, so it neither moves the step nor counts
//     in gradient clipping's norm, and Adam's moments for it stay zero;
//   - after every optimizer step the slice is put back, undoing decoupled weight decay,
//     which moves even entries without a gradient.
// The values put back are the ones the slice had when freeze() was called (a resumed run
// freezes again from its checkpoint, where the slice already holds them).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/train/hooks.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class FrozenSlices {
 public:
  // Freezes rows [begin, end) of `param` (a leaf that requires grad); `name` is for errors.
  void freeze(torch::Tensor param, int64_t begin, int64_t end, const std::string& name) {
    if (!param.defined() || param.dim() < 1 || !param.requires_grad()) {
      throw std::invalid_argument("btx::FrozenSlices: '" + name +
                                  "' is not a trainable tensor with rows");
    }
    if (begin < 0 || end <= begin || end > param.size(0)) {
      throw std::invalid_argument("btx::FrozenSlices: rows [" + std::to_string(begin) + ", " +
                                  std::to_string(end) + ") are outside '" + name + "' (" +
                                  std::to_string(param.size(0)) + " rows)");
    }
    param.register_hook([begin, end](torch::Tensor grad) {
      grad = grad.clone();
      grad.slice(0, begin, end).zero_();
      return grad;
    });
    slices_->push_back({param, begin, end, param.detach().slice(0, begin, end).clone()});
  }

  // Puts every frozen slice back to its frozen values.
  void restore() const {
    torch::NoGradGuard no_grad;
    for (const auto& s : *slices_) s.param.slice(0, s.begin, s.end).copy_(s.values);
  }

  // `hooks` with restore() after each optimizer step (after any after_step already there).
  [[nodiscard]] TrainHooks applied_to(TrainHooks hooks) const {
    hooks.after_step = [slices = *this, then = std::move(hooks.after_step)] {
      if (then) then();
      slices.restore();
    };
    return hooks;
  }

  [[nodiscard]] size_t size() const { return slices_->size(); }

 private:
  struct Slice {
    torch::Tensor param;
    int64_t begin, end;
    torch::Tensor values;
  };
  // Shared, so the copy a TrainHooks holds restores the same slices.
  std::shared_ptr<std::vector<Slice>> slices_ = std::make_shared<std::vector<Slice>>();
};

BTX_NAMESPACE_END
}  // namespace btx
