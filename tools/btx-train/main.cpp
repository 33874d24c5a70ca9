// SPDX-License-Identifier: MIT
// build/bin/btx-train CONFIG.yaml: train an HF checkpoint (dense or MoE) on your own
// documents (train_main.cpp). --help lists every key.
#include "train_main.hpp"

int main(int argc, char** argv) {
  return btx::train_tool::main(argc, argv);
}
