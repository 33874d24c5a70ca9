// SPDX-License-Identifier: MIT
// SkipWeightInit: while one lives on this thread, models built here skip their random
// initialisation (as transformers' no_init_weights does when it loads a checkpoint). Loading
// overwrites every parameter and refuses a checkpoint that lacks one, so the init's random
// numbers were wasted: for SmolLM2-135M they were ~60% of the time to load it.
#pragma once

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class SkipWeightInit {
 public:
  SkipWeightInit() : previous_(active()) { active() = true; }
  ~SkipWeightInit() { active() = previous_; }
  SkipWeightInit(const SkipWeightInit&) = delete;
  SkipWeightInit& operator=(const SkipWeightInit&) = delete;

  // Whether a model built now should leave its parameters uninitialised.
  [[nodiscard]] static bool skipping() { return active(); }

 private:
  static bool& active() {
    thread_local bool skip = false;
    return skip;
  }
  bool previous_;
};

BTX_NAMESPACE_END
}  // namespace btx
