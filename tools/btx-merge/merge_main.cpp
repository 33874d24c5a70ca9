// SPDX-License-Identifier: MIT
// btx-merge CONFIG.yaml OUT_DIR as a library call (btx::merge_tool::main): N Hugging Face
// dense checkpoints of one model family -> one MoE checkpoint of that family (Llama ->
// Mixtral; mergekit-moe's role, with btx's merge methods, averagings and gate modes, any
// registered one), streamed tensor by tensor. The family comes from config.json's
// model_type. Every input is validated before anything is written; OUT_DIR appears only
// when complete. tools/btx-merge/main.cpp calls it, and so may a program that registers a
// merge method of its own first.
#include <torch/torch.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include <btx/core/device.hpp>
#include <btx/core/dtype.hpp>
#include <btx/data/byte_tokenizer.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/hf/model_card.hpp>
#include <btx/hf/side_files.hpp>
#include <btx/io/atomic_dir.hpp>
#include <btx/io/output_guard.hpp>
#include <btx/merge/any_averaging.hpp>
#include <btx/merge/checkpoint_source.hpp>
#include <btx/merge/merge_choice.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/model_card.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/trunk_merging.hpp>
#include <btx/merge/write_plan.hpp>
#include <btx/models/auto.hpp>

#include "../common/checkpoint_tokenizer.hpp"
#include "../common/cli.hpp"
#include "../common/yaml_json.hpp"
#include "config.hpp"
#include "merge_main.hpp"
#include "moe_edit.hpp"

namespace fs = std::filesystem;
using namespace btx;
using btx::merge_tool::MergeConfig;

namespace {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// config.json fields that may differ between sources.

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw InputError("cannot read " + p.string());
  return {std::istreambuf_iterator<char>(in), {}};
}

nlohmann::json read_json(const fs::path& p) {
  try {
    return nlohmann::json::parse(read_file(p));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(p.string() + " is not valid JSON: " + e.what());
  }
}

// The dtype a checkpoint's config.json says it stores (transformers 5 writes "dtype", 4
// "torch_dtype"); float32 when it says none btx knows.
torch::ScalarType config_dtype(const fs::path& dir) {
  const auto j = read_json(dir / "config.json");
  try {
    return btx::dtype_from_name(hf::ConfigFields(j, (dir / "config.json").string()).dtype());
  } catch (const std::invalid_argument&) {
    return torch::kFloat32;
  }
}

// Same architecture: each config.json parsed by its family (so bookkeeping fields such as
// token ids or a model name, and one field spelled two ways, do not count) describes the
// same dense model.
void check_same_model_family(const std::vector<fs::path>& dirs) {
  const fs::path& ref = dirs.front();
  const auto ref_spec = read_model_spec(ref / "config.json");
  for (const auto& d : dirs) {
    const auto spec = read_model_spec(d / "config.json");  // its family parses and validates
    if (spec.moe) {
      throw InputError(d.string() + " is an MoE checkpoint (" + spec.family +
                       " family); btx-merge mixes dense checkpoints");
    }
    if (const auto diff = architecture_difference(ref_spec, spec); !diff.empty()) {
      throw InputError("config.json of " + ref.string() + " and " + d.string() + " differ in " +
                       diff + "; merged models must share one architecture");
    }
  }
}

// Every source's tokenizer must mean what the first one's means (same ids, same special
// tokens) unless the config names the tokenizer to keep.
void check_same_tokenizer(const std::vector<fs::path>& dirs) {
  for (const auto& d : dirs) {
    if (const auto why = hf::tokenizer_difference(dirs.front(), d)) {
      throw InputError("tokenizers differ: " + *why +
                       "; merged models must share one tokenizer (or set tokenizer_source to "
                       "the folder whose tokenizer the merge keeps)");
    }
  }
}

// Prompts as the base model reads them: text through its own tokenizer (opened on first
// use), token-id lists as given, bytes when the base has no tokenizer files at all.
class PromptIds {
 public:
  PromptIds(fs::path base, int64_t vocab) : base_(std::move(base)), vocab_(vocab) {}

  // Each prompt of `prompts` (config key `where`) as [1, T] token ids.
  std::vector<torch::Tensor> operator()(const std::vector<nlohmann::json>& prompts,
                                        const std::string& where) {
    std::vector<std::string> texts;
    for (const auto& p : prompts)
      if (p.is_string()) texts.push_back(p.get<std::string>());
    const auto text_ids = encode(texts, where);
    std::vector<torch::Tensor> out;
    size_t next_text = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto& p = prompts[i];
      const std::string at = where + "[" + std::to_string(i) + "]";
      std::vector<int64_t> ids;
      if (p.is_string()) {
        ids = text_ids[next_text++];
      } else if (p.is_array()) {
        for (const auto& id : p) {
          if (!id.is_number_integer())
            throw InputError(at + ": token id " + id.dump() + " is not an integer");
          ids.push_back(id.get<int64_t>());
        }
      } else {
        throw InputError(at + ": must be a string or a list of token ids");
      }
      if (ids.empty()) throw InputError(at + " is empty");
      for (const int64_t id : ids) {
        if (id < 0 || id >= vocab_) {
          throw InputError(at + ": token id " + std::to_string(id) +
                           " is not in [0, vocab_size=" + std::to_string(vocab_) + ")");
        }
      }
      out.push_back(torch::tensor(ids, torch::kInt64).unsqueeze(0));
    }
    return out;
  }

 private:
  std::vector<std::vector<int64_t>> encode(const std::vector<std::string>& texts,
                                           const std::string& where) {
    if (texts.empty()) return {};
    if (!fs::exists(base_ / "tokenizer.json") && !fs::exists(base_ / "tokenizer.model")) {
      if (vocab_ < ByteTokenizer::vocab_size) {
        throw InputError(where + ": " + base_.string() +
                         " has no tokenizer, so text prompts are byte-tokenised (ids 0..255), "
                         "but its vocab_size is " +
                         std::to_string(vocab_) + "; give token ids");
      }
      std::vector<std::vector<int64_t>> out;
      for (const auto& t : texts) out.push_back(ByteTokenizer::encode(t));
      return out;
    }
    if (!tokenizer_) {
      try {
        tokenizer_.emplace(base_);
      } catch (const std::exception& e) {
        throw InputError(where + ": text prompts need base_model's tokenizer: " + e.what());
      }
      std::cerr << "btx-merge: prompts tokenised with " << base_.string() << "'s "
                << tokenizer_->description() << "\n";
      if (!tokenizer_->note().empty())
        std::cerr << "btx-merge: note: " << tokenizer_->note() << "\n";
    }
    return tokenizer_->encode(texts);
  }

  fs::path base_;
  int64_t vocab_;
  std::optional<tools::CheckpointTokenizer> tokenizer_;
};

// Shapes transformers loads but a popular client does not: said before the merge runs, so a
// user targeting it can change the config. llama.cpp's limits (src/llama-hparams.h,
// checked in tests/python/test_llama_cpp.py's notes at llama.cpp 0c1e57098):
// LLAMA_MAX_EXPERTS 1024 and LLAMA_MAX_LAYERS 512; beyond them it aborts on load.
void warn_about_client_limits(int64_t experts, int64_t layers) {
  constexpr int64_t kLlamaCppMaxExperts = 1024, kLlamaCppMaxLayers = 512;
  if (experts > kLlamaCppMaxExperts) {
    std::cerr << "btx-merge: warning: " << experts << " experts: llama.cpp loads at most "
              << kLlamaCppMaxExperts << " (LLAMA_MAX_EXPERTS) and will refuse this model\n";
  }
  if (layers > kLlamaCppMaxLayers) {
    std::cerr << "btx-merge: warning: " << layers << " layers: llama.cpp loads at most "
              << kLlamaCppMaxLayers << " (LLAMA_MAX_LAYERS) and will refuse this model\n";
  }
}

bool same_path(const fs::path& a, const fs::path& b) {
  return fs::weakly_canonical(a) == fs::weakly_canonical(b);
}

int run(const MergeConfig& c, const std::string& config_text, const fs::path& out_dir, bool force,
        size_t write_threads, bool durable, bool direct_io) {
  // Before anything: writing OUT_DIR replaces it, so it must spare every input.
  std::vector<std::pair<std::string, fs::path>> inputs = {{"base_model", c.base_model}};
  for (size_t e = 0; e < c.experts.size(); ++e) {
    inputs.emplace_back("experts[" + std::to_string(e) + "].source_model",
                        c.experts[e].source_model);
  }
  for (size_t i = 0; i < c.shared_experts.size(); ++i) {
    if (c.shared_experts[i] != "base")
      inputs.emplace_back("shared_experts[" + std::to_string(i) + "]", c.shared_experts[i]);
  }
  if (c.tokenizer_source != "base") inputs.emplace_back("tokenizer_source", c.tokenizer_source);
  io::refuse_output_over_inputs(out_dir, "OUT_DIR", inputs);
  if (!force && io::detail::exists_non_empty(out_dir)) {
    throw InputError("OUT_DIR " + out_dir.string() +
                     " exists and is not empty (--force replaces it)");
  }
  if (c.operation != "merge") return run_moe_edit(c, out_dir, force);
  const fs::path base = c.base_model;
  // ------------------------------------------------------------ the sources
  std::vector<fs::path> dirs;                                          // in expert order
  std::vector<std::vector<nlohmann::json>> prompts, negative_prompts;  // per source
  const auto& method = *c.merge.method.spec;
  if (method.copies_one_source) {
    for (const auto& e : c.experts) {
      if (!e.source_model.empty() && !same_path(e.source_model, base)) {
        throw InputError("method " + method.name + " copies base_model; experts' source_model " +
                         e.source_model + " is not base_model " + base.string());
      }
    }
    dirs.push_back(base);
  } else {
    if (c.include_base_as_expert) {
      dirs.push_back(base);
      // The base as an expert: every expert's prompts, no negatives.
      prompts.emplace_back();
      negative_prompts.emplace_back();
      for (const auto& e : c.experts)
        prompts.back().insert(prompts.back().end(), e.prompts.begin(), e.prompts.end());
    }
    for (const auto& e : c.experts) {
      dirs.push_back(e.source_model);
      prompts.push_back(e.prompts);
      negative_prompts.push_back(e.negative_prompts);
    }
  }
  std::vector<fs::path> all = {base};
  all.insert(all.end(), dirs.begin(), dirs.end());
  for (const auto& d : all) {
    if (!fs::is_directory(d))
      throw InputError("checkpoint folder " + d.string() + " does not exist");
    if (!fs::exists(d / "config.json")) throw InputError(d.string() + " has no config.json");
  }
  check_same_model_family(all);
  // The tokenizer, chat template and generation files the output carries, byte for byte.
  fs::path tokenizer_dir = base;
  if (c.tokenizer_source.empty() || c.tokenizer_source == "base") {
    check_same_tokenizer(all);
  } else {
    tokenizer_dir = c.tokenizer_source;
    if (!fs::is_directory(tokenizer_dir)) {
      throw InputError("config key 'tokenizer_source': " + tokenizer_dir.string() +
                       " is not a folder");
    }
  }
  // Content hashes of every source for the model card, computed while the merge runs.
  // Keyed by canonical folder, so a folder listed twice is hashed once.
  // The same read checks every source tensor for NaN and Inf (unless allowed), so the
  // merge's own reads and copies need not: a bad value fails the merge before its output
  // is committed (hashes.get() below), naming tensor, file and index.
  const auto non_finite = c.allow_non_finite ? io::NonFinite::allow : io::NonFinite::refuse;
  auto hashes = std::async(std::launch::async, [all, non_finite] {
    std::map<fs::path, std::map<std::string, std::string>> by_folder;
    for (const auto& d : all) {
      const auto key = fs::weakly_canonical(d);
      if (!by_folder.count(key)) by_folder[key] = merge::source_file_hashes(d, non_finite);
    }
    return by_folder;
  });
  const torch::Device device = parse_device(c.device);
  std::vector<merge::CheckpointSource> sources = merge::checkpoint_sources(dirs, device);
  for (auto& s : sources) s = s.with_non_finite(io::NonFinite::allow);  // checked above
  // Experts published in different dtypes (an fp32 and a bf16 finetune of one base) are
  // read cast to the output dtype (`dtype`, else base_model's), as mergekit does; sources
  // that agree are read as stored, so their bytes can still be copied unchanged.
  std::optional<torch::ScalarType> cast;
  {
    std::vector<merge::CheckpointSource> with_base = {merge::CheckpointSource(base)};
    with_base.insert(with_base.end(), sources.begin(), sources.end());
    const std::string disagreement = merge::dtype_disagreement(with_base);
    if (!disagreement.empty()) {
      cast = c.dtype.empty() ? config_dtype(base) : btx::dtype_from_name(c.dtype);
      std::cerr << "btx-merge: " << disagreement << "; every floating-point tensor is read as "
                << btx::dtype_name(*cast) << " (config key 'dtype'; default: base_model's)\n";
      for (auto& s : sources) s = s.cast_to(cast);
    }
  }
  {  // the base's tensors too, when it is not a source
    std::vector<merge::CheckpointSource> with_base = {merge::CheckpointSource(base).cast_to(cast)};
    with_base.insert(with_base.end(), sources.begin(), sources.end());
    (void)merge::validate_dense_sources(with_base);
  }
  const ModelSpec base_spec = read_model_spec(base / "config.json");

  // ------------------------------------------------------------ the policies
  // The method, averaging and gate mode the config names (merge/merge_choice.hpp), planned
  // over the sources; keep_base keeps base_model's tensors, which must be a source.
  merge::MergeContext ctx;
  ctx.experts_per_token = c.experts_per_token;
  ctx.copies = int64_t(c.experts.size());
  ctx.seed = c.seed;
  for (size_t j = 0; j < dirs.size() && !ctx.base_source; ++j) {
    if (same_path(dirs[j], base)) ctx.base_source = j;
  }
  if (c.merge.averaging.name() == "keep_base" && !ctx.base_source) {
    throw InputError(
        "config key 'averaging': keep_base needs base_model among the sources "
        "(set include_base_as_expert: true, or list it as an expert)");
  }
  const merge::CheckpointSource base_source =
      merge::CheckpointSource(base).on(device).with_non_finite(io::NonFinite::allow).cast_to(cast);
  // gate_mode hidden: the base model's mean FFN input on each expert's prompts (minus its
  // negative prompts), computed only when the plan asks for it.
  ctx.hidden_states = [&]() -> std::vector<torch::Tensor> {
    std::cerr << "btx-merge: gate_mode " << c.merge.router_init.name() << ": running "
              << base.string() << " on the prompts\n";
    auto model = load_causal_lm(base, torch::kFloat32, {}, torch::kCPU, io::NonFinite::allow);
    model.eval();
    PromptIds prompt_ids(base, base_spec.shape.vocab_size);
    std::vector<std::vector<torch::Tensor>> positive, negative;
    for (size_t j = 0; j < prompts.size(); ++j) {
      const bool base_expert = c.include_base_as_expert && j == 0;
      const std::string where =
          base_expert ? std::string("experts[*]")
                      : "experts[" + std::to_string(j - (c.include_base_as_expert ? 1 : 0)) + "]";
      positive.push_back(prompt_ids(prompts[j], where + ".positive_prompts"));
      negative.push_back(prompt_ids(negative_prompts[j], where + ".negative_prompts"));
    }
    return merge::hidden_router_init_from_prompts(model, positive, negative).per_source;
  };

  // ------------------------------------------------------- the shared expert
  // A source's FFN when shared_experts names one (base_model itself when it is not a
  // source); the family decides whether its MoE has the slot at all.
  // The output architecture: base_model's family's MoE, or the family `architecture` names,
  // which must be able to carry the sources' model.
  const FamilyEntry* out_family = &family_of(base_spec);
  ModelSpec out_spec = base_spec;
  if (!c.architecture.empty()) {
    out_family = families().for_model_type(c.architecture);
    if (out_family == nullptr) {
      throw InputError("config key 'architecture': model_type \"" + c.architecture +
                       "\" is not one btx writes (" + families().model_types() + ")");
    }
    try {
      out_spec = convert_spec(base_spec, *out_family);
    } catch (const std::invalid_argument& e) {
      throw InputError(std::string("config key 'architecture': ") + e.what());
    }
  }
  merge::SharedExpertChoice shared;
  for (size_t i = 0; i < c.shared_experts.size(); ++i) {
    const fs::path path = c.shared_experts[i];
    merge::SharedFfn ffn{true, 0};
    for (size_t j = 0; j < dirs.size(); ++j) {
      if (same_path(dirs[j], path)) {
        ffn = {false, j};
        break;
      }
    }
    if (ffn.base && !same_path(base, path)) {
      throw InputError("config key 'shared_experts[" + std::to_string(i) + "].source_model': " +
                       path.string() + " is neither base_model nor one of the experts");
    }
    if (i == 0) {
      shared = ffn.base ? merge::SharedExpertChoice::of_base()
                        : merge::SharedExpertChoice::of_source(ffn.source);
    } else {
      shared.also.push_back(ffn);
    }
  }
  try {
    shared = merge::shared_expert_for(*out_family, shared);
  } catch (const std::invalid_argument& e) {
    throw InputError(std::string("config key 'shared_experts': ") + e.what());
  }
  ctx.router_bias =
      out_family->merge_router && has_balancing_bias(out_family->merge_router(c.experts_per_token));
  ctx.dense_layers = c.dense_layers;
  ctx.shared = shared;
  const bool needs_base = c.merge.averaging.spec->needs_base || shared.uses_base();

  // ------------------------------------------------------- plan, then write
  const merge::Plan plan =
      merge::plan_merge(c.merge, sources, needs_base ? &base_source : nullptr, ctx);
  const auto dtype = c.dtype.empty() ? plan.outputs().front().dtype : btx::dtype_from_name(c.dtype);
  auto config_json =
      merge::hf_config_for(plan, out_spec, btx::dtype_name(dtype), c.router_aux_loss_coef);
  const auto token_ids = hf::token_ids_of(read_json(base / "config.json"));
  for (const auto& [key, value] : token_ids.items()) config_json[key] = value;

  merge::WritePlanOptions options;
  options.dtype = dtype;
  options.max_shard_bytes = c.max_shard_size;
  if (!c.expert_layout.empty()) options.expert_layout = hf::parse_expert_layout(c.expert_layout);
  options.overwrite = force;
  options.write_threads = write_threads;
  options.durable = durable;
  options.direct_io = direct_io;
  options.copy_files = hf::side_files_in(tokenizer_dir);
  options.closing_text_files = [&] {
    merge::CardInfo info;
    info.title = fs::absolute(out_dir).lexically_normal().filename().string();
    info.tool = "btx-merge";
    info.model_type = config_json.value("model_type", std::string());
    info.dtype = btx::dtype_name(dtype);
    info.license = hf::card_license(base);
    info.base_models = {c.base_model};
    info.config_text = config_text;
    info.side_files_from = tokenizer_dir.string();
    info.checks = {
        "Sources: every config.json describes the same dense architecture (all keys but "
        "dtype and bookkeeping equal), and every tensor has the same name, shape and dtype "
        "in every source" +
            (cast ? std::string(" once read as ") + btx::dtype_name(*cast) +
                        " (the sources store different floating-point dtypes)."
                  : std::string(".")),
        c.tokenizer_source.empty() || c.tokenizer_source == "base"
            ? std::string("Tokenizers: every source's tokenizer files give the same ids and "
                          "the same special tokens.")
            : "Tokenizers: not compared; tokenizer_source names " + c.tokenizer_source + ".",
        "Output: every safetensors file's header was read back after writing and declares "
        "exactly the tensors, dtypes and shapes planned; the folder appeared only when "
        "complete."};
    const auto by_folder = hashes.get();
    const auto hashes_of = [&](const fs::path& d) { return by_folder.at(fs::weakly_canonical(d)); };
    // One row per source in expert order, after the base's unless the base is expert 0.
    std::vector<merge::CardSource> cards;
    if (!c.include_base_as_expert)
      cards.push_back({base.string(), base.string(), "base", hashes_of(base)});
    for (size_t e = 0; e < dirs.size(); ++e) {
      const std::string role = c.include_base_as_expert && e == 0 ? "base, expert 0"
                               : method.copies_one_source         ? "copied by every expert"
                                                                  : "expert " + std::to_string(e);
      cards.push_back({dirs[e].string(), dirs[e].string(), role, hashes_of(dirs[e])});
      const bool listed = std::find(info.base_models.begin(), info.base_models.end(),
                                    dirs[e].string()) != info.base_models.end();
      if (!listed && !same_path(dirs[e], base)) info.base_models.push_back(dirs[e].string());
    }
    const auto card = merge::merge_model_card(plan.manifest(), cards, info);
    return std::vector<std::pair<std::string, std::string>>{{"README.md", card.render()}};
  };
  auto last = std::chrono::steady_clock::now() - std::chrono::seconds(10);
  options.progress = [&](const merge::WriteProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (p.index != p.count && now - last < std::chrono::milliseconds(500)) return;
    last = now;
    std::fprintf(stderr, "btx-merge: tensor %zu/%zu  %.1f/%.1f MB  %.1f MB/s  %s\n", p.index,
                 p.count, double(p.bytes_done) / 1e6, double(p.bytes_total) / 1e6,
                 double(p.bytes_done) / 1e6 / std::max(p.seconds, 1e-9), p.name.c_str());
  };
  std::cerr << "btx-merge: " << plan.manifest().method << ", " << sources.size() << " sources -> "
            << plan.manifest().num_experts << " experts, top-" << plan.manifest().experts_per_token
            << ", " << btx::dtype_name(dtype) << "\n";
  warn_about_client_limits(plan.manifest().num_experts, base_spec.shape.num_hidden_layers);
  const auto stats = merge::write_plan(plan, config_json, out_dir, options);
  std::fprintf(stderr, "btx-merge: wrote %s: %zu tensors in %zu shard(s), %.1f MB in %.1f s\n",
               out_dir.string().c_str(), stats.tensors, stats.shards, double(stats.bytes) / 1e6,
               stats.seconds);
  return 0;
}

}  // namespace

namespace btx::merge_tool {

int main(int argc, char** argv) {
  // Tensors of a few MB come and go while writer threads still hold the previous ones;
  // glibc's growing mmap threshold would serve them from the heap, which then fragments
  // (peak RSS doubled with one writer thread). A fixed threshold maps each one on its own
  // and returns it to the system when freed.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  std::string config_file, out_dir;
  bool force = false;
  size_t write_threads = 1;
  bool no_fsync = false, no_direct_io = false, allow_non_finite = false;
  CLI::App app{
      "btx-merge: mixes N Hugging Face dense checkpoints of one model family into one MoE\n"
      "checkpoint of that family (Llama -> Mixtral; config.json's model_type names the\n"
      "family): config.json, safetensors, the base model's tokenizer files, a model card\n"
      "(README.md) and btx_merge.json. Every input is checked first (architecture, tokenizer\n"
      "files, tensor names, shapes, dtypes); OUT_DIR appears only when complete.\n"
      "Exit 1 on bad input, 2 on bad usage.",
      "btx-merge"};
  app.footer(config_help());
  app.add_option("CONFIG", config_file, "the merge config (YAML or JSON; keys below)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("OUT_DIR", out_dir, "the output folder: must not exist or be empty")->required();
  app.add_flag("--force", force, "replace OUT_DIR when it exists and is not empty");
  app.add_option("--write-threads", write_threads,
                 "threads writing and copying tensors while the next one is computed "
                 "(0 writes each in turn)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_flag("--no-fsync", no_fsync,
               "do not wait for the disk before OUT_DIR appears (faster where the disk is "
               "slow; a machine crash may then lose the output's data)");
  app.add_flag("--no-direct-io", no_direct_io,
               "write through the page cache, each tensor started to disk as it is written, "
               "instead of with O_DIRECT (for a filesystem where direct writes are slow; "
               "one that refuses them gets page-cache writes anyway)");
  app.add_flag("--allow-non-finite", allow_non_finite,
               "take NaN and Inf in the sources (config key allow_non_finite) instead of "
               "refusing them");
  if (const auto status = btx::tools::parse_command_line(app, argc, argv)) return *status;
  int status = 1;
  try {
    auto config = merge_tool::parse_merge_config(tools::load_config_file(config_file));
    config.allow_non_finite = config.allow_non_finite || allow_non_finite;
    status = run(config, read_file(config_file), out_dir, force, write_threads, !no_fsync,
                 !no_direct_io);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-merge: error: %s\n", e.what());
  }
  tools::exit_now(status);
}

}  // namespace btx::merge_tool
