// SPDX-License-Identifier: MIT
// The pipeline's run: its resolved config, the run folder (btx::recipe::Run), the corpus
// read from the config's domains, the seed's spec (the demo Llama, or seed_checkpoint's
// family), and what the stages draw from them: one sampler per domain and one over the
// mixture, the MoE options of a router, Mix's options, and BTX's compute budget.
// open_run() checks everything that can be checked before any training.
#pragma once

#include <torch/torch.h>

#include <filesystem>
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
#include <btx/models/auto.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/evaluate.hpp>

#include "../common/checkpoint_tokenizer.hpp"
#include "../common/sentencepiece_codec.hpp"
#include "config.hpp"

namespace btx::pipeline {

struct PipelineRun {
  PipelineConfig config;
  recipe::Run run;
  Corpus corpus;
  ModelSpec seed_spec;
  TextCodec codec;                    // how the corpus's text became ids
  nlohmann::json tokenizer_manifest;  // what the run's tokenizer is and was trained on

  [[nodiscard]] std::vector<std::string> domain_names() const {
    std::vector<std::string> names;
    for (const auto& d : corpus.domains) names.push_back(d.name);
    return names;
  }
  // Experts of the mixed model in router order (recipe::mixed_expert_names): one per domain,
  // then the seed; blended or split as the config says.
  [[nodiscard]] std::vector<std::string> expert_names() const {
    return recipe::mixed_expert_names(domain_names(), {.experts_from = config.experts_from,
                                                       .chunks = config.split_chunks,
                                                       .seed_as_expert = config.seed_as_expert});
  }
  [[nodiscard]] int64_t num_experts() const { return int64_t(expert_names().size()); }
  // BTX's router first, then the extra ones to compare.
  [[nodiscard]] std::vector<std::string> routers() const {
    std::vector<std::string> r{config.router};
    r.insert(r.end(), config.extra_routers.begin(), config.extra_routers.end());
    return r;
  }

  // The MoE of sparse upcycling: one expert per domain (plus the seed's), each as wide as
  // the seed's FFN.
  [[nodiscard]] MoEConfig upcycle_options(const std::string& router) const {
    MoEConfig o;
    o.num_experts = int64_t(domain_names().size()) + (config.seed_as_expert ? 1 : 0);
    o.router = router;
    o.load_balance_alpha = config.load_balance_alpha;
    o.load_balance_form = parse_load_balance_form(config.load_balance_form);
    o.seed = config.seed;
    return o;
  }
  // BTX's MoE (mix, MoE stage, evaluation): as upcycling's, or split into narrower experts.
  [[nodiscard]] MoEConfig moe_options(const std::string& router) const {
    MoEConfig o = upcycle_options(router);
    o.num_experts = num_experts();
    if (config.experts_from == "split") {
      o.expert_size = seed_spec.shape.intermediate_size / config.split_chunks;
    }
    return o;
  }
  [[nodiscard]] recipe::MixOptions mix_options() const {
    recipe::MixOptions m;
    m.router = config.router;
    m.router_init = config.router_init;
    m.experts_from = config.experts_from;
    m.chunks = config.split_chunks;
    m.averaging = config.averaging;
    m.density = config.averaging_density;
    m.lambda = config.averaging_lambda;
    m.seed_as_expert = config.seed_as_expert;
    m.seed_as_shared_expert = config.seed_as_shared_expert;
    m.moe = moe_options(config.router);
    m.router_seed = config.seed;
    if (config.router_init == "hidden") {
      // Row j: expert j's mean FFN input on its own domain's text (the seed: on all
      // domains), so a token that looks like domain j starts out routed to expert j.
      for (const auto& d : corpus.domains) {
        m.router_samples.push_back(d.train_tokens.slice(0, 0, 8 * config.seq_len)
                                       .view({8, config.seq_len})
                                       .to(torch::kInt64));
      }
    }
    return m;
  }

  [[nodiscard]] WindowSampler mixture_sampler(uint64_t stream) const {
    std::vector<torch::Tensor> sources;
    for (const auto& d : corpus.domains) sources.push_back(d.train_tokens);
    return WindowSampler(sources, {}, config.seq_len, config.seed * 1000 + stream, domain_names());
  }
  [[nodiscard]] WindowSampler domain_sampler(size_t domain, uint64_t stream) const {
    return WindowSampler({corpus.domains.at(domain).train_tokens}, {}, config.seq_len,
                         config.seed * 1000 + stream, {corpus.domains.at(domain).name});
  }
  [[nodiscard]] int64_t tokens_per_step() const { return config.batch_size * config.seq_len; }

  // The learning curves' held-out loss: the first curve_windows held-out windows of every
  // domain (a subset of the report's eval_windows), evaluated where the model trains.
  [[nodiscard]] recipe::StageOptions with_curves(recipe::StageOptions options) const {
    if (config.curve_every <= 0) return options;
    options.held_out_every = config.curve_every;
    std::vector<std::pair<std::string, torch::Tensor>> held_out;  // shares the tokens' storage
    for (const auto& d : corpus.domains) held_out.emplace_back(d.name, d.eval_tokens);
    options.held_out = [held_out, seq_len = config.seq_len,
                        windows = config.curve_windows](const CausalLM& model) {
      const auto device = model.module().parameters().front().device();
      const LogitsFn logits = [&](const torch::Tensor& ids) {
        return model.forward(ids.to(device));
      };
      nlohmann::json out = {{"loss", nlohmann::json::object()}};
      double sum = 0;
      for (const auto& [name, tokens] : held_out) {
        const double l = evaluate_loss(logits, tokens, seq_len, windows).loss;
        out["loss"][name] = l;
        sum += l;
      }
      out["avg"] = sum / double(held_out.size());
      return out;
    };
    return options;
  }

  // BTX's compute after the seed: the experts' recorded FLOPs plus the planned finetune
  // with BTX's router (the baselines run beside the finetune, so it is not done yet).
  [[nodiscard]] double btx_budget_flops() const {
    const double finetune = recipe::planned_flops(
        config.finetune_stage.steps, tokens_per_step(),
        recipe::flops_per_token(seed_spec, config.seq_len, moe_options(config.router)));
    return recipe::btx_budget_flops(recipe::expert_infos(run), finetune);
  }
};

// The seed's spec: seed_checkpoint's (any registered family, dense), else the demo Llama.
inline ModelSpec seed_spec_of(const PipelineConfig& config) {
  if (config.seed_checkpoint.empty()) {
    LlamaConfig model = config.model;
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
    return tools::SentencePieceCodec::load(dir / "tokenizer.model");
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
  const auto dir = p.run.dir() / "data";
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

// Every data and config error surfaces here, before a stage folder exists.
inline PipelineRun open_run(const PipelineConfig& given) {
  PipelineConfig config = given;
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
  PipelineRun p{config,
                recipe::Run(config.run_dir, train_settings(config), "pipeline"),
                encode_corpus(text, codec),
                spec,
                codec,
                tokenizer};
  // The run's own tokenizer goes into every stage's checkpoint, so AutoTokenizer and the
  // model generate text from any of them.
  if (!tokenizer_files.empty()) p.run.with_model_files(tokenizer_files);
  if (config.allow_non_finite) p.run.with_non_finite(io::NonFinite::allow);
  for (size_t d = 0; d < p.corpus.domains.size(); ++d) (void)p.domain_sampler(d, 0);
  // A pretrained seed's tokenizer, chat template and generation files go into every stage.
  if (!config.seed_checkpoint.empty())
    p.run.with_model_files(hf::side_files_in(config.seed_checkpoint));
  if (p.corpus.vocab_size > spec.shape.vocab_size) {
    throw std::invalid_argument(
        "config: the data has token ids up to " + std::to_string(p.corpus.vocab_size - 1) +
        " but the seed's vocab_size is " + std::to_string(spec.shape.vocab_size));
  }
  // An unknown router or an impossible k fails here, before training.
  for (const auto& r : p.routers()) check_router(p.moe_options(r));
  if (config.moe_share > 0.0) {
    // The MoE stage gets moe_share of BTX's compute: finetune = share / (1 - share) x the
    // experts' planned compute (every domain's expert_stage.steps).
    const double experts = double(p.corpus.domains.size()) *
                           recipe::planned_flops(config.expert_stage.steps, p.tokens_per_step(),
                                                 recipe::flops_per_token(spec, config.seq_len));
    p.config.finetune_stage.steps = recipe::steps_for_budget(
        config.moe_share / (1.0 - config.moe_share) * experts,
        recipe::flops_per_token(spec, config.seq_len, p.moe_options(config.router)),
        p.tokens_per_step());
  }
  return p;
}

}  // namespace btx::pipeline
