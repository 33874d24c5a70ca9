// SPDX-License-Identifier: MIT
// The Llama names of the shared decoder's building blocks: its SwiGLU block (the part BTX
// turns into experts) and its grouped-query attention.
#pragma once

#include <btx/models/common/decoder_layers.hpp>
#include <btx/models/llama/config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

using LlamaMLP = GatedMLP;
using LlamaMLPImpl = GatedMLPImpl;
using LlamaAttention = GroupedQueryAttention;
using LlamaAttentionImpl = GroupedQueryAttentionImpl;

BTX_NAMESPACE_END
}  // namespace btx
