// SPDX-License-Identifier: MIT
// Must NOT compile: a model family that does not say where its FFN lives. The test
// building this checks that the compiler's message names the missing requirement,
// btx::family_locates_ffn.
#include <btx/models/family.hpp>
#include <btx/models/llama/family.hpp>

struct NoFfnNaming : btx::LlamaFamily {
  static void ffn_naming() {}
};

const bool registered = btx::register_family<NoFfnNaming>();
