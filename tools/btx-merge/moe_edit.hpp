// SPDX-License-Identifier: MIT
// btx-merge's MoE edits of anchored experts (operation: flexolmo, remove_experts,
// add_experts; merge/anchored.hpp): whole models in memory, checked, written atomically.
#pragma once

#include <filesystem>
#include <string>

#include "config.hpp"

namespace btx::merge_tool {

// Runs an MoE edit (operation flexolmo, remove_experts or add_experts) into OUT_DIR, which
// run() has checked (empty or --force, sparing every input).
int run_moe_edit(const MergeConfig& c, const std::filesystem::path& out_dir, bool force);

}  // namespace btx::merge_tool
