// SPDX-License-Identifier: MIT
// The built-in model families: one registration line each. families() is the registry
// every tool consults (btx-merge, the pipeline, load_causal_lm); a user's own family is
// added with btx::register_family<MyFamily>() before first use.
#pragma once

#include <btx/models/family.hpp>
#include <btx/models/glm4_moe/family.hpp>
#include <btx/models/granite/family.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/models/olmo2/family.hpp>
#include <btx/models/qwen2/family.hpp>
#include <btx/models/qwen3/family.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

inline FamilyRegistry& families() {
  static const bool builtins = [] {
    register_family<LlamaFamily>();
    register_family<Qwen3Family>();
    register_family<Qwen2Family>();
    register_family<Glm4MoeFamily>();
    register_family<Olmo2Family>();
    register_family<GraniteFamily>();
    return true;
  }();
  (void)builtins;
  return family_registry();
}

BTX_NAMESPACE_END
}  // namespace btx
