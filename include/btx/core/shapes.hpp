// SPDX-License-Identifier: MIT
// The shape legend: every tensor variable in btx carries a suffix naming its dimensions,
// one letter per dimension, and each letter means the same thing in every file:
//
//   B  batch (sequences)                  S  sequence position (time) within a sequence
//   T  tokens, flattened (B * S)          N  rows of a block (tokens given to one expert)
//   D  model (hidden) width               F  feed-forward inner width
//   E  experts                            K  assignments per token (the router's top-k)
//   V  vocabulary                         L  decoder layers
//   H  attention (query) heads            G  key/value heads (grouped-query attention)
//   A  head width (per-head dim)          P  cached key/value positions
//
// So `x_TD` is [tokens, model width], `w_EFD` a packed expert weight [E, F, D], `ids_BS`
// token ids [batch, sequence], `logits_BSV` the LM head's output.
#pragma once

#include <btx/version.hpp>
