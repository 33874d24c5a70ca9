// SPDX-License-Identifier: MIT
// LlamaConfig: the shared decoder's config with every attention variant off (no biases,
// no q/k norm, no sliding window), which is HF's LlamaConfig.
#pragma once

#include <btx/models/common/decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

using LlamaConfig = DecoderConfig;

BTX_NAMESPACE_END
}  // namespace btx
