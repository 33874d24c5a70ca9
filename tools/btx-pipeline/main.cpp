// SPDX-License-Identifier: MIT
// build/bin/btx-pipeline [CONFIG.yaml|json] [--quick] [--run-dir DIR] [--until PHASE]
// The Branch-Train-MiX pipeline end to end, with its baselines at equal compute and a
// report (pipeline_main.cpp). Run with --help for everything.
#include "pipeline_main.hpp"

int main(int argc, char** argv) {
  return btx::pipeline::main(argc, argv);
}
