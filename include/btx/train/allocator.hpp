// SPDX-License-Identifier: MIT
// Keeps the memory a training step frees for the next step. glibc's malloc serves every
// block over its mmap threshold (at most 32 MB: activations, logits, expert gradients of a
// 135M model) with a fresh mmap and unmaps it on free, so each step faults in and zeroes
// its largest tensors anew: 7-12% of a SmolLM2-135M step on this project's CPU
// (perf: clear_page_erms, exc_page_fault; benchmarks/RESULTS.md). With mmap off and a high
// trim threshold the heap keeps those blocks and the next step reuses them; the peak RSS is
// what the step needs either way. A program calls this once at start (btx's programs do);
// malloc_trim(0) still hands free memory back when a phase ends. No-op off glibc.
#pragma once

#include <climits>  // first: a libc header defines __GLIBC__

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Returns whether the allocator was tuned (false off glibc, or if glibc refused).
inline bool keep_freed_memory() {
#if defined(__GLIBC__)
  const bool no_mmap = mallopt(M_MMAP_MAX, 0) == 1;
  const bool keep = mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  return no_mmap && keep;
#else
  return false;
#endif
}

BTX_NAMESPACE_END
}  // namespace btx
