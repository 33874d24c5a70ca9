// SPDX-License-Identifier: MIT
// btx-merge's MoE edits of anchored experts (FlexOlmo, merge/anchored.hpp):
//   flexolmo        experts[] (MoEs of two over the dense base_model, each trained beside
//                   its frozen FFN) -> one MoE [base FFN, e_1 .. e_N], routed top-k
//   remove_experts  base_model (such an MoE) without the experts at `remove` (opt-out)
//   add_experts     base_model with experts[] appended (opt-in)
// Every input is loaded and checked (the anchor's FFN and every shared tensor equal in all
// of them, naming the tensor otherwise) before anything is written; the output folder
// appears complete (config.json, safetensors, base_model's tokenizer files, btx_merge.json)
// or not at all. Tensors are kept in the base's storage dtype.
#include "moe_edit.hpp"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/dtype.hpp>
#include <btx/hf/side_files.hpp>
#include <btx/merge/anchored.hpp>
#include <btx/merge/anchored_merge.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/registry.hpp>

namespace btx::merge_tool {

namespace fs = std::filesystem;

namespace {

CausalLM load(const fs::path& dir, const MergeConfig& c) {
  if (!fs::is_directory(dir) || !fs::exists(dir / "config.json")) {
    throw std::runtime_error("checkpoint folder " + dir.string() +
                             " does not exist or has no "
                             "config.json");
  }
  return load_causal_lm(dir, torch::kFloat32, {}, torch::kCPU,
                        c.allow_non_finite ? io::NonFinite::allow : io::NonFinite::refuse);
}

}  // namespace

int run_moe_edit(const MergeConfig& c, const fs::path& out_dir, bool force) {
  const fs::path base_dir = c.base_model;
  const CausalLM base = load(base_dir, c);
  std::vector<CausalLM> experts;
  for (const auto& e : c.experts) experts.push_back(load(e.source_model, c));
  nlohmann::json record = {
      {"tool", "btx-merge"}, {"operation", c.operation}, {"base_model", c.base_model}};
  CausalLM out;
  if (c.operation == "flexolmo") {
    if (base.is_moe()) {
      throw std::runtime_error("operation flexolmo: base_model " + base_dir.string() +
                               " is an MoE; it must be the dense anchor the experts trained "
                               "beside");
    }
    for (size_t j = 0; j < experts.size(); ++j) {
      merge::check_anchor(base, experts[j],
                          "experts[" + std::to_string(j) + "] (" + c.experts[j].source_model + ")");
    }
    MoEConfig moe = *experts.front().spec().moe;
    moe.router =
        resolve_router("topk:" + std::to_string(c.experts_per_token), {{"renormalize", true}});
    moe.load_balance_alpha = c.router_aux_loss_coef;
    if (size_t(c.experts_per_token) > experts.size() + 1) {
      throw std::runtime_error("experts_per_token " + std::to_string(c.experts_per_token) +
                               " is more than the " + std::to_string(experts.size() + 1) +
                               " experts (the anchor and experts[])");
    }
    out = merge::concat_anchored(experts, moe);
  } else if (c.operation == "remove_experts") {
    out = merge::remove_experts(base, c.remove);
    record["removed"] = c.remove;
  } else if (c.operation == "add_experts") {
    out = base;
    for (size_t j = 0; j < experts.size(); ++j) {
      try {
        out = merge::add_anchored(out, experts[j]);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error("experts[" + std::to_string(j) + "] (" +
                                 c.experts[j].source_model + "): " + e.what());
      }
    }
  } else {
    throw std::logic_error("btx-merge: operation '" + c.operation + "' is not an MoE edit");
  }
  auto sources = nlohmann::json::array();
  for (const auto& e : c.experts) sources.push_back(e.source_model);
  record["experts"] = sources;
  record["num_experts"] = out.spec().moe->num_experts;
  record["experts_per_token"] = active_experts(*out.spec().moe);

  // btx_merge.json travels with the tokenizer files into the folder as it is written.
  const fs::path staging =
      fs::absolute(out_dir).parent_path() / (".btx-merge-record." + std::to_string(::getpid()));
  fs::create_directories(staging);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{staging};
  std::ofstream(staging / "btx_merge.json") << record.dump(2) << "\n";
  const fs::path tokenizer_dir = c.tokenizer_source.empty() || c.tokenizer_source == "base"
                                     ? base_dir
                                     : fs::path(c.tokenizer_source);
  hf::SaveOptions options;
  options.overwrite = force;
  options.dtype = dtype_from_name(base.spec().dtype);
  options.copy_files = hf::side_files_in(tokenizer_dir);
  options.copy_files.push_back(staging / "btx_merge.json");
  options.max_shard_bytes = c.max_shard_size;
  const auto stats = save_hf_checkpoint(out, out_dir, options);
  std::fprintf(stderr, "btx-merge: %s: %lld experts, top-%lld; wrote %s (%zu tensors)\n",
               c.operation.c_str(), static_cast<long long>(out.spec().moe->num_experts),
               static_cast<long long>(active_experts(*out.spec().moe)), out_dir.string().c_str(),
               stats.tensors);
  return 0;
}

}  // namespace btx::merge_tool
