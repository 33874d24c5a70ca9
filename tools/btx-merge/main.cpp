// SPDX-License-Identifier: MIT
// build/bin/btx-merge CONFIG.yaml OUT_DIR: N HF dense checkpoints of one family -> one MoE
// checkpoint of that family (merge_main.cpp). --help lists every key.
#include "merge_main.hpp"

int main(int argc, char** argv) {
  return btx::merge_tool::main(argc, argv);
}
