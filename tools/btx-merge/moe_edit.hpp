// SPDX-License-Identifier: MIT
// btx-merge's MoE edits of anchored experts (operation: flexolmo, remove_experts,
// add_experts; merge/anchored.hpp): whole models in memory, checked, written atomically.
#pragma once

#include <filesystem>
#include <string>

#include "config.hpp"

namespace btx::merge_tool {

int run_moe_edit(const MergeConfig& c, const std::filesystem::path& out_dir, bool force);

}  // namespace btx::merge_tool
