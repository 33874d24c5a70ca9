// SPDX-License-Identifier: MIT
// doctest entry point for btx-tests; torch runs single-threaded so results are exact
// and the two cores stay free for ctest's parallel jobs.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  doctest::Context context(argc, argv);
  return context.run();
}
