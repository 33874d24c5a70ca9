// SPDX-License-Identifier: MIT
// The pipeline's run: its resolved config, the corpus read from the config's domains and
// its tokenizer, and the recipe::Recipe every stage draws on (recipe/recipe.hpp: the run
// folder, the domains' tokens, the seed's spec, the budgets, the MoE and merge choices,
// how each stage trains on its ranks).
// open_run() checks everything that can be checked before any training.
#pragma once

#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/data/corpus.hpp>
#include <btx/data/sampler.hpp>
#include <btx/data/token_file.hpp>
#include <btx/hf/side_files.hpp>
#include <btx/io/output_guard.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/machine_budget.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/recipe.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/evaluate.hpp>
#include <btx/train/held_out.hpp>
#include <btx/train/memory_estimate.hpp>

#include "../common/checkpoint_tokenizer.hpp"
#include "../common/sentencepiece_codec.hpp"
#include "config.hpp"

namespace btx::pipeline {

struct PipelineRun {
  PipelineConfig config;
  recipe::Recipe recipe;              // what every stage draws on (recipe/recipe.hpp)
  Corpus corpus;                      // the data: its domains, held-out math problems, files
  TextCodec codec;                    // how the corpus's text became ids
  nlohmann::json tokenizer_manifest;  // what the run's tokenizer is and was trained on

  [[nodiscard]] const recipe::Run& run() const { return recipe.run; }
  [[nodiscard]] std::vector<std::string> domain_names() const { return recipe.domain_names(); }
  [[nodiscard]] std::vector<std::string> expert_names() const { return recipe.expert_names(); }
  [[nodiscard]] std::vector<std::string> routers() const { return recipe.routers(); }
};

// The learning curves' held-out loss: the first curve_windows held-out windows of every
// domain (a subset of the report's eval_windows), evaluated where the model trains.
inline recipe::StageOptions with_curves(const PipelineConfig& config,
                                        const std::vector<Domain>& domains,
                                        recipe::StageOptions options) {
  if (config.curve_every <= 0) return options;
  options.held_out_every = config.curve_every;
  HeldOutSet held_out;  // shares the tokens' storage
  for (const auto& d : domains) held_out.emplace_back(d.name, d.eval_tokens);
  options.held_out = [held_out, seq_len = config.seq_len,
                      windows = config.curve_windows](const CausalLM& model) {
    return held_out_losses(model, held_out, seq_len, windows);
  };
  return options;
}

// How each stage of the run trains on its ranks: data-parallel over them, on the
// configured device and precision, with learning curves and (tests of isolated failures)
// the injected fault of expert fail_expert's rank fail_rank.
inline std::function<recipe::StageOptions(const std::string&, dist::Communicator&)>
stage_options_of(const PipelineConfig& config, const std::vector<Domain>& domains) {
  std::string failing;
  if (config.fail_expert >= 0 && size_t(config.fail_expert) < domains.size()) {
    failing = recipe::expert_stage(domains[size_t(config.fail_expert)].name);
  }
  return [config, domains, failing](const std::string& stage, dist::Communicator& ranks) {
    recipe::StageOptions options;
    options.hooks = recipe::stage_hooks(ranks, btx::placed(placement(config)));
    options.record["ranks"] = ranks.size();  // stage.json says how it was trained
    // Only the first attempt fails: a restarted job (max_restarts) then finishes.
    const char* restart = std::getenv("BTX_RESTART_COUNT");
    const bool first_attempt = restart == nullptr || std::string(restart) == "0";
    if (stage == failing && config.fail_rank == ranks.rank() && first_attempt) {
      options.on_step = [config, stage](int64_t step) {
        if (step != config.fail_step) return;
        std::fprintf(stderr, "[%s] fault injected at step %lld: %s\n", stage.c_str(),
                     static_cast<long long>(step), config.fail_signal.c_str());
        if (config.fail_signal == "kill") std::raise(SIGKILL);
        std::abort();
      };
    }
    return with_curves(config, domains, std::move(options));
  };
}

// The seed's spec: seed_checkpoint's (any registered family, dense), else the demo Llama.
inline ModelSpec seed_spec_of(const PipelineConfig& config) {
  if (config.seed_checkpoint.empty()) {
    DecoderConfig model = config.model;
    if (uses_sentencepiece(config)) model.vocab_size = config.tokenizer_vocab_size;
    return LlamaFamily::spec(model);
  }
  auto spec = read_model_spec(std::filesystem::path(config.seed_checkpoint) / "config.json");
  if (spec.moe) {
    throw std::invalid_argument("config: seed_checkpoint " + config.seed_checkpoint +
                                " is an MoE model; BTX branches from a dense seed");
  }
  return spec;
}

// The run's SentencePiece tokenizer in <run>/tokenizer/: trained on every text domain's
// training split on the run's first start, loaded by every later start and by its workers.
// A tokenizer trained on other text (the data changed under the run folder) is an error,
// not a silent retrain: the run's stages were trained with the old ids.
inline tools::SentencePieceCodec run_tokenizer(const PipelineConfig& config, const CorpusText& text,
                                               nlohmann::json& manifest) {
  const auto dir = std::filesystem::path(config.run_dir) / "tokenizer";
  std::vector<std::string_view> train;
  std::string all;
  for (const auto& d : text.domains) {
    train.emplace_back(d.train_text);
    all += d.train_text;
  }
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fnv1a64(all)));
  manifest = {{"kind", "sentencepiece"},
              {"model_type", "bpe"},
              {"vocab_size", config.tokenizer_vocab_size},
              {"trained_on", "the train split of every domain"},
              {"trained_on_bytes", all.size()},
              {"trained_on_fnv1a64", hash}};
  const auto record = dir / "btx_tokenizer.json";
  if (std::filesystem::exists(record)) {
    std::ifstream in(record);
    const auto previous = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (previous != manifest) {
      throw std::invalid_argument(
          "the run folder's tokenizer (" + record.string() +
          ") was trained on other text or "
          "with other settings than this config gives; start a new run_dir");
    }
    auto sp = tools::SentencePieceCodec::load(dir / "tokenizer.model");
    // A run begun before btx wrote tokenizer.json gets it now (same model, same ids).
    if (!std::filesystem::exists(dir / "tokenizer.json"))
      sp.write_hf_files(dir, {{"btx_tokenizer.json", manifest.dump(2) + "\n"}});
    return sp;
  }
  std::fprintf(stderr, "[tokenizer] training SentencePiece (%lld pieces) on %.1f MB of text\n",
               static_cast<long long>(config.tokenizer_vocab_size), double(all.size()) / 1e6);
  auto sp = tools::SentencePieceCodec::train(train, {.vocab_size = config.tokenizer_vocab_size});
  sp.write_hf_files(dir, {{"btx_tokenizer.json", manifest.dump(2) + "\n"}});
  return sp;
}

// The corpus as the models see it, in nanoGPT token files <run>/data/<domain>.{train,eval}.bin
// (uint16 when the vocabulary fits, else uint32): what a subword tokenizer made of the text,
// for inspection or for a later run's token_file domains. Bytes need no such record.
inline nlohmann::json write_corpus_tokens(const PipelineRun& p) {
  auto files = nlohmann::json::array();
  if (p.codec.is_bytes()) return files;
  const auto dir = p.run().dir() / "data";
  std::filesystem::create_directories(dir);
  const std::string dtype = p.corpus.vocab_size <= 65536 ? "uint16" : "uint32";
  for (const auto& d : p.corpus.domains) {
    for (const auto& [split, tokens] :
         {std::pair{"train", d.train_tokens}, {"eval", d.eval_tokens}}) {
      const auto file = dir / (d.name + "." + split + ".bin");
      write_token_file(file, tokens, dtype);
      files.push_back({{"domain", d.name},
                       {"split", split},
                       {"path", file.string()},
                       {"token_dtype", dtype},
                       {"tokens", tokens.numel()}});
    }
  }
  return files;
}

// The run folder must not be, or contain, one of the run's inputs (the seed, a domain's
// files): the stages write and replace folders in it, and a user's checkpoint or corpus is
// often their only copy. Refused naming both, before the run's lock or any stage exists.
inline void refuse_run_dir_over_inputs(const PipelineConfig& config) {
  std::vector<std::pair<std::string, std::filesystem::path>> inputs = {
      {"seed_checkpoint", config.seed_checkpoint}};
  for (const auto& e : config.experts)
    inputs.emplace_back("experts[] (" + e.domain + ")", e.checkpoint);
  for (size_t d = 0; d < config.domains.size(); ++d) {
    const auto& spec = config.domains[d];
    const std::string where = "domains[" + std::to_string(d) + "] (" + spec.name + ")";
    for (const auto& path : spec.paths) inputs.emplace_back(where + " path", path);
    inputs.emplace_back(where + " token_file", spec.token_file);
    inputs.emplace_back(where + " eval_token_file", spec.eval_token_file);
  }
  io::refuse_output_over_inputs(config.run_dir, "run_dir", inputs);
}

// Every data and config error surfaces here, before a stage folder exists.
inline PipelineRun open_run(const PipelineConfig& given) {
  PipelineConfig config = given;
  refuse_run_dir_over_inputs(config);
  const ModelSpec spec = seed_spec_of(config);
  validate(config, spec.shape);
  const CorpusText text = read_corpus_text(config.domains);
  TextCodec codec = TextCodec::bytes();
  nlohmann::json tokenizer = {{"kind", "bytes"}, {"vocab_size", ByteTokenizer::vocab_size}};
  std::vector<std::filesystem::path> tokenizer_files;
  if (uses_sentencepiece(config)) {
    config.tokenizer = "sentencepiece";  // what workers re-read from config.json
    config.model.vocab_size = config.tokenizer_vocab_size;
    codec = run_tokenizer(config, text, tokenizer).codec();
    for (const auto& name : tools::SentencePieceCodec::hf_file_names())
      tokenizer_files.push_back(std::filesystem::path(config.run_dir) / "tokenizer" / name);
  } else if (uses_seed_tokenizer(config)) {
    // The seed's own vocabulary: its tokenizer files already travel with every stage.
    config.tokenizer = "seed";
    const tools::CheckpointTokenizer seed_tokenizer(config.seed_checkpoint);
    codec = seed_tokenizer.codec();
    tokenizer = {{"kind", "seed"},
                 {"reader", seed_tokenizer.description()},
                 {"file", seed_tokenizer.file().string()},
                 {"vocab_size", codec.vocab_size}};
    if (!seed_tokenizer.note().empty()) tokenizer["note"] = seed_tokenizer.note();
  } else if (config.tokenizer == "auto") {
    config.tokenizer = "bytes";
  }
  recipe::Recipe r{.run = recipe::Run(config.run_dir, train_settings(config), "pipeline")};
  PipelineRun p{config, std::move(r), encode_corpus(text, codec), codec, tokenizer};
  auto& rec = p.recipe;
  rec.domains = p.corpus.domains;
  rec.seq_len = config.seq_len;
  rec.seed = config.seed;
  rec.seed_spec = spec;
  rec.seed_checkpoint = config.seed_checkpoint;
  rec.seed_stage = config.seed_stage;
  rec.expert_stage = config.expert_stage;
  rec.finetune_stage = config.finetune_stage;
  for (const auto& e : config.experts) {
    rec.external_experts[e.domain] = {e.checkpoint, e.flops};
    (void)recipe::check_external_expert(e.domain, spec, rec.external_experts[e.domain]);
  }
  rec.moe.router = config.router;
  rec.moe.load_balance_alpha = config.load_balance_alpha;
  rec.moe.load_balance_form = parse_load_balance_form(config.load_balance_form);
  rec.moe.seed = config.seed;
  for (const auto& name : config.extra_routers) rec.extra_routers.push_back(resolve_router(name));
  rec.mix = config.mix;
  rec.seed_as_expert = config.seed_as_expert;
  rec.seed_as_shared_expert = config.seed_as_shared_expert;
  rec.freeze_experts = config.freeze_experts;
  rec.baselines = config.baselines;
  rec.arms = config.arms;
  rec.topology = config.topology;
  rec.stage_jobs = config.stage_jobs;
  rec.max_restarts = config.max_restarts;
  rec.threads = config.threads;
  rec.useful_threads = useful_threads(training_flops_per_token(spec.shape, config.seq_len) *
                                      double(config.batch_size * config.seq_len));
  {
    // The largest worker: an MoE stage over every expert (top-k of the router), fp32 + AdamW.
    const int64_t experts = int64_t(rec.domains.size()) + (config.seed_as_expert ? 1 : 0);
    const int64_t ranks = std::max<int64_t>(1, config.topology.ranks_per_stage);
    rec.worker_bytes = training_memory_estimate(
        spec.shape, {.experts = experts, .active_experts = std::min<int64_t>(2, experts)},
        config.batch_size * config.seq_len / ranks);
  }
  rec.stage_options = stage_options_of(config, rec.domains);
  // The run's own tokenizer goes into every stage's checkpoint, so AutoTokenizer and the
  // model generate text from any of them.
  if (!tokenizer_files.empty()) rec.run.with_model_files(tokenizer_files);
  if (config.allow_non_finite) rec.run.with_non_finite(io::NonFinite::allow);
  for (size_t d = 0; d < rec.domains.size(); ++d) (void)rec.domain_sampler(d, 0);
  // A pretrained seed's tokenizer, chat template and generation files go into every stage.
  if (!config.seed_checkpoint.empty())
    rec.run.with_model_files(hf::side_files_in(config.seed_checkpoint));
  if (p.corpus.vocab_size > spec.shape.vocab_size) {
    throw std::invalid_argument(
        "config: the data has token ids up to " + std::to_string(p.corpus.vocab_size - 1) +
        " but the seed's vocab_size is " + std::to_string(spec.shape.vocab_size));
  }
  // An impossible k for the experts fails here, before training.
  for (const auto& router : rec.routers()) check_router(rec.moe_for(router));
  if (config.moe_share > 0.0) {
    rec.finetune_stage.steps = rec.moe_steps_for_share(config.moe_share);
    p.config.finetune_stage.steps = rec.finetune_stage.steps;
  }
  return p;
}

}  // namespace btx::pipeline
