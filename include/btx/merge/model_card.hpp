// SPDX-License-Identifier: MIT
// The model card of a merged checkpoint: what was merged (every source with the content
// hashes of its files), how (the method, router init, averaging policy, top-k, shared
// expert), which checks btx ran, and the configuration as given, so a reader of the hub
// page can trace and repeat the merge. btx_merge.json (the manifest) carries the same
// facts for programs.
//
//   merge::CardSource src{.label = "code", .path = "ckpt/code", .role = "expert 0"};
//   src.hashes = merge::source_file_hashes(src.path);
//   auto card = merge::merge_model_card(plan.manifest(), {src, ...}, info);
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <btx/hf/model_card.hpp>
#include <btx/io/detail/file_hash.hpp>
#include <btx/io/finite_check.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/merge/manifest.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// One checkpoint a merge read.
struct CardSource {
  std::string label;                          // as the manifest names it
  std::string path;                           // as the user gave it (a folder or hub id)
  std::string role;                           // "expert 0", "base", "shared expert", ...
  std::map<std::string, std::string> hashes;  // file name -> io::xxh3_128_file
};

// What the card says beyond the manifest.
struct CardInfo {
  std::string title;                     // usually the output folder's name
  std::string tool;                      // "btx-merge", "btx-pipeline stage mix", ...
  std::string model_type;                // the output's config.json model_type
  std::string dtype;                     // storage dtype
  std::optional<std::string> license;    // the base's, when its card declares one
  std::vector<std::string> base_models;  // front matter base_model (hub ids or paths)
  std::vector<std::string> checks;       // one sentence per check btx ran
  std::string config_text;               // the configuration as given (YAML or JSON)
  std::string config_language = "yaml";
  std::string side_files_from = "the base model";  // whose tokenizer/template files were kept
};

// XXH3-128 of every weight file and config.json in `dir` (file name -> hex). Each weight
// file's float tensors are checked for NaN and Inf in the same read (io::FiniteScan)
// unless `non_finite` allows them: io::NonFiniteError names tensor, file and index.
inline std::map<std::string, std::string> source_file_hashes(
    const std::filesystem::path& dir, io::NonFinite non_finite = io::NonFinite::refuse) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    const bool weights = e.path().extension() == ".safetensors";
    if (!e.is_regular_file() ||
        !(weights || name == "config.json" || name == "model.safetensors.index.json")) {
      continue;
    }
    if (weights && non_finite == io::NonFinite::refuse) {
      const io::SafetensorsFile file(e.path());
      io::FiniteScan scan(e.path(), file.tensors(), file.data_start());
      out[name] = io::xxh3_128_file(e.path(), std::ref(scan));
    } else {
      out[name] = io::xxh3_128_file(e.path());
    }
  }
  return out;
}

// One sentence on what `method` did (MixManifest::method as the mixers name it).
inline std::string method_description(const MixManifest& m) {
  const std::string e = std::to_string(m.num_experts);
  if (m.method == "btx_mix") {
    return "Branch-Train-MiX (Sukhbaatar et al., 2024), its MiX step: expert j of every MoE "
           "layer is source j's feed-forward block, unchanged; every other tensor is averaged "
           "across the sources; a new router is added (" +
           e + " experts).";
  }
  if (m.method == "split") {
    return "BTX with split experts: each source's feed-forward block is cut along its "
           "intermediate dimension into " +
           std::to_string(m.split_factor) +
           " experts (down_proj scaled so top-(split x k) equals the unsplit top-k); the rest "
           "is averaged (" +
           e + " experts).";
  }
  if (m.method == "blend") {
    return "BTX with blended experts: expert n is made of chunk n of every source's "
           "feed-forward block; the rest is averaged (" +
           e + " experts).";
  }
  if (m.method == "upcycle") {
    return "Sparse upcycling (Komatsuzaki et al., 2023): every expert is a copy of the base "
           "model's feed-forward block (" +
           e + " experts); the other tensors are the base's.";
  }
  if (m.method == "btm_merge") {
    return "Branch-Train-Merge's merged model: every tensor, feed-forward blocks included, is "
           "averaged across the sources into one dense model.";
  }
  return "Method " + m.method + ".";
}

inline hf::ModelCard merge_model_card(const MixManifest& m, const std::vector<CardSource>& sources,
                                      const CardInfo& info) {
  hf::ModelCard card;
  card.title = info.title;
  card.license = info.license;
  card.base_models = info.base_models;
  card.tags = {"btx", "merge"};
  if (m.num_experts > 0) card.tags.push_back("moe");
  if (!info.model_type.empty()) card.tags.push_back(info.model_type);
  card.summary = "Made by " + info.tool + " (btx " + std::string(BTX_VERSION_STRING) + "). " +
                 method_description(m);

  std::ostringstream model;
  model << "| | |\n|---|---|\n"
        << "| architecture (model_type) | " << hf::table_cell(info.model_type) << " |\n"
        << "| storage dtype | " << info.dtype << " |\n";
  if (m.num_experts > 0) {
    model << "| experts per MoE layer | " << m.num_experts << " |\n"
          << "| experts per token (top-k) | " << m.experts_per_token << " |\n"
          << "| expert intermediate size | " << m.moe_intermediate_size << " |\n";
    if (m.shared_expert_intermediate_size) {
      model << "| shared expert intermediate size | " << *m.shared_expert_intermediate_size
            << (*m.shared_expert_intermediate_size == 0 ? " (zero-width: adds nothing)" : "")
            << " |\n";
    }
  }
  card.sections.push_back({"Model", model.str()});

  std::ostringstream src;
  src << "Content hashes are XXH3-128 (`xxhsum -H2`) of each file.\n\n"
      << "| role | source | file | xxh3-128 |\n|---|---|---|---|\n";
  for (const auto& s : sources) {
    if (s.hashes.empty()) {
      src << "| " << hf::table_cell(s.role) << " | " << hf::table_cell(s.path) << " | | |\n";
    }
    for (const auto& [file, hash] : s.hashes) {
      src << "| " << hf::table_cell(s.role) << " | " << hf::table_cell(s.path) << " | "
          << hf::table_cell(file) << " | `" << hash << "` |\n";
    }
  }
  card.sections.push_back({"Sources", src.str()});

  std::ostringstream how;
  if (m.num_experts > 0) {
    how << "- Router initialisation: `" << m.router_init.dump() << "`\n";
  }
  how << "- Averaging of the non-expert tensors: `" << m.averaging.dump() << "`";
  if (!m.weights.empty()) {
    how << ", normalised weights";
    for (size_t j = 0; j < m.weights.size(); ++j) how << (j ? ", " : " ") << m.weights[j];
  }
  how << "\n";
  if (!m.base.empty()) how << "- Task vectors taken against: " << m.base << "\n";
  if (!m.experts.empty()) {
    how << "- Experts, in router order (source rows of each feed-forward block):\n";
    for (size_t e = 0; e < m.experts.size(); ++e)
      how << "  - " << e << ": `" << m.experts[e].dump() << "`\n";
  }
  card.sections.push_back({"How it was merged", how.str()});

  if (!info.checks.empty()) {
    std::ostringstream checks;
    for (const auto& c : info.checks) checks << "- " << c << "\n";
    card.sections.push_back({"Checks btx ran", checks.str()});
  }
  if (!info.config_text.empty()) {
    card.sections.push_back(
        {"Configuration", hf::code_block(info.config_text, info.config_language)});
  }
  card.sections.push_back(
      {"Files",
       "`btx_merge.json` records this merge for programs (the manifest above). "
       "Tokenizer, chat template and generation files are the base model's, byte for "
       "byte.\n"});
  return card;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
