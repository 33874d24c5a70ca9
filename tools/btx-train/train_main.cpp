// SPDX-License-Identifier: MIT
// btx-train CONFIG.yaml [--run-dir DIR] [--check | --data-only | --show-documents N |
// --evaluate CHECKPOINT...]: trains any registered family's HF
// checkpoint, dense or MoE, on the user's own documents, with the recipe's stage machinery
// (recipe/train_stage.hpp: checkpoints and exact resume, metrics, data parallelism under
// torchrun or srun). What trains is chosen (moe/trainable_parts.hpp); the data are read as
// documents and tokenised once with the checkpoint's own tokenizer
// (data/document_corpus.hpp). The result, <run>/<stage>/model/, keeps the checkpoint's
// tokenizer and template files and carries a model card; <run>/<stage>/report.md has the
// held-out curves and, for an MoE, the routing per domain.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/device.hpp>
#include <btx/core/hash.hpp>
#include <btx/data/document_corpus.hpp>
#include <btx/data/sampler.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/hf/side_files.hpp>
#include <btx/io/output_guard.hpp>
#include <btx/models/auto.hpp>
#include <btx/moe/trainable_parts.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/dist_env.hpp>
#include <btx/parallel/machine_budget.hpp>
#include <btx/recipe/topology.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/allocator.hpp>
#include <btx/train/held_out.hpp>
#include <btx/train/precision.hpp>
#include <btx/train/routing_shares.hpp>

#include "../common/cli.hpp"
#include "../common/yaml_json.hpp"
#include "config.hpp"
#include "train_data.hpp"
#include "train_main.hpp"
#include "train_report.hpp"

namespace fs = std::filesystem;
namespace recipe = btx::recipe;

namespace btx::train_tool {
namespace {

constexpr const char* kAbout =
    "btx-train: train a Hugging Face checkpoint (dense or MoE) on your own documents.";

constexpr const char* kFooter = R"(
Example (router-only tuning of a merged MoE, then everything):
  model: merged-moe
  domains:
    - {name: math, paths: [math.jsonl], field: text}
    - {name: code, paths: [code/], extensions: [.py], weight: 2}
  trains: router
  steps: 200
Under torchrun or srun every rank trains a share of each batch (data parallel over c10d).
A rerun with the same run_dir resumes from the newest training checkpoint.

CONFIG keys (YAML or JSON; unknown keys are errors; the defaults):
)";

void validate(const TrainConfig& c) {
  if (c.domains.empty()) throw std::invalid_argument("config: no domains to train on");
  if (!fs::is_directory(c.model) || !fs::exists(fs::path(c.model) / "config.json")) {
    throw std::invalid_argument("config key 'model': " + c.model +
                                " is not a checkpoint folder with a config.json");
  }
  if (c.held_out_every % c.log_every != 0) {
    throw std::invalid_argument("config: held_out_every (" + std::to_string(c.held_out_every) +
                                ") must be a multiple of log_every (" +
                                std::to_string(c.log_every) + ")");
  }
  std::vector<std::pair<std::string, fs::path>> inputs = {{"model", c.model}};
  for (size_t d = 0; d < c.domains.size(); ++d) {
    const auto& spec = c.domains[d];
    const std::string where = "domains[" + std::to_string(d) + "] (" + spec.name + ")";
    for (const auto& p : spec.paths) inputs.emplace_back(where + " path", p);
    for (const auto& p : spec.eval_paths) inputs.emplace_back(where + " eval path", p);
    inputs.emplace_back(where + " token_file", spec.token_file);
    inputs.emplace_back(where + " eval_token_file", spec.eval_token_file);
  }
  io::refuse_output_over_inputs(c.run_dir, "run_dir", inputs);
  (void)parse_device(c.device);
}

int run(const TrainConfig& c) {
  auto world = dist::Communicator::connect(dist::dist_env_from_environment(),
                                           std::chrono::seconds(c.dist_timeout_s));
  if (c.batch_size % world.size() != 0) {
    throw std::invalid_argument("config: batch_size " + std::to_string(c.batch_size) +
                                " does not split over " + std::to_string(world.size()) + " ranks");
  }
  const bool writer = world.rank() == 0;
  torch::manual_seed(c.seed);
  const fs::path model_dir = c.model;
  const auto non_finite = c.allow_non_finite ? io::NonFinite::allow : io::NonFinite::refuse;
  CausalLM model = load_causal_lm(model_dir, torch::kFloat32, {}, torch::kCPU, non_finite);
  if (c.aux_loss_alpha) {
    for (const auto& [name, layer] : moe_layers(model.module())) {
      auto aux = layer->aux_options();
      aux.load_balance_alpha = *c.aux_loss_alpha;
      layer->set_aux_options(aux);
    }
  }
  const auto parts = parse_trained_parts(c.trains);
  const auto frozen = restrict_training(model.module(), parts);

  // Rank 0 tokenises (and fills the cache) first; the others then read the cache.
  Corpus corpus;
  if (writer) corpus = read_corpus(c, model.spec());
  if (world.size() > 1) world.barrier("token cache");
  if (!writer) corpus = read_corpus(c, model.spec());

  recipe::Run run(c.run_dir, {c.batch_size, c.log_every, c.checkpoint_every}, "btx-train");
  run.with_model_files(hf::side_files_in(model_dir));
  run.with_non_finite(non_finite);
  std::vector<torch::Tensor> sources;
  std::vector<double> weights;
  std::vector<std::string> names;
  HeldOutSet held_out;
  for (const auto& d : corpus.domains) {
    sources.push_back(d.train_tokens);
    weights.push_back(d.weight);
    names.push_back(d.name);
    held_out.emplace_back(d.name, d.eval_tokens);
  }
  const WindowSampler sampler(sources, weights, c.seq_len, c.seed, names);

  if (writer) {
    fs::create_directories(run.dir());
    std::ofstream(run.dir() / "config.json") << schema().write(c).dump(2) << "\n";
  }
  const auto claim = run.claim(c.stage, writer);
  if (run.skip_if_done(c.stage)) return 0;
  if (writer) {
    std::fprintf(stderr,
                 "[btx-train] %s: trains %s (%lld of %lld values), %zu domains, %lld ranks, "
                 "%s\n",
                 c.model.c_str(), c.trains.c_str(), static_cast<long long>(frozen.trainable_values),
                 static_cast<long long>(frozen.trainable_values + frozen.frozen_values),
                 corpus.domains.size(), static_cast<long long>(world.size()),
                 describe(process_threads(c.threads)).c_str());
  }
  const auto before = held_out_losses(model, held_out, c.seq_len, c.held_out_windows);

  recipe::StageOptions options;
  const auto device = parse_device(c.device);
  const auto precision = resolve_precision(c.precision, device);
  const Placement placement{device, precision.precision};
  if (writer && c.precision == "auto") {
    std::fprintf(stderr, "[btx-train] precision %s\n", precision.why.c_str());
  }
  options.hooks =
      recipe::stage_hooks(world, placed(placement), dist::sharding_from_name(c.sharding));
  options.micro_batches = c.micro_batches;
  options.activation_checkpointing = c.activation_checkpointing;
  options.held_out = [held_out, c](const CausalLM& m) {
    return held_out_losses(m, held_out, c.seq_len, c.held_out_windows);
  };
  options.held_out_every = c.held_out_every;
  options.record = {{"model", c.model},
                    {"trains", c.trains},
                    {"trainable_values", frozen.trainable_values},
                    {"frozen_values", frozen.frozen_values},
                    {"ranks", world.size()},
                    {"precision", precision_name(precision.precision)},
                    {"threads", torch::get_num_threads()}};
  recipe::StageBudget budget{c.steps, c.lr, c.warmup, c.schedule == "constant" ? 1.0 : c.lr_floor,
                             c.weight_decay};
  auto record = recipe::train(run, c.stage, model, sampler, budget, options);

  const auto after = held_out_losses(model, held_out, c.seq_len, c.held_out_windows);
  RoutingShares routing;
  if (model.is_moe()) routing = routing_shares(model, held_out, c.seq_len, c.routing_windows);
  if (!writer) return 0;
  record["held_out_before"] = before;
  record["held_out_after"] = after;
  const TrainedRun trained{c, corpus, record, before, after, routing};
  hf::SaveOptions save;
  save.overwrite = true;
  save.copy_files = run.model_files();
  save.text_files = {{"README.md", model_card(trained)}};
  save.config_extra = hf::token_ids_of(hf::read_json_file(model_dir / "config.json"));
  model.module().to(torch::kCPU);
  (void)save_hf_checkpoint(model, run.model_dir(c.stage), save);
  write_report(run.stage_dir(c.stage), trained);
  run.mark_done(c.stage, record);
  std::fprintf(stderr, "[btx-train] held-out loss %.4f -> %.4f; model in %s\n",
               before["avg"].get<double>(), after["avg"].get<double>(),
               run.model_dir(c.stage).c_str());
  return 0;
}

// --evaluate: each checkpoint's held-out loss per domain on the config's data (tokenised
// with the config's model's tokenizer, which every checkpoint must share), as JSON.
int evaluate_models(const TrainConfig& c, const std::vector<std::string>& models) {
  const auto spec = read_model_spec(fs::path(c.model) / "config.json");
  const Corpus corpus = read_corpus(c, spec);
  HeldOutSet held_out;
  for (const auto& d : corpus.domains) held_out.emplace_back(d.name, d.eval_tokens);
  const auto non_finite = c.allow_non_finite ? io::NonFinite::allow : io::NonFinite::refuse;
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& m : models) {
    const auto other = read_model_spec(fs::path(m) / "config.json");
    if (other.shape.vocab_size != spec.shape.vocab_size) {
      throw std::invalid_argument("--evaluate: " + m + " has vocab_size " +
                                  std::to_string(other.shape.vocab_size) + " but " + c.model +
                                  ", whose tokenizer reads the data, has " +
                                  std::to_string(spec.shape.vocab_size));
    }
    const CausalLM lm = load_causal_lm(m, torch::kFloat32, {}, torch::kCPU, non_finite);
    out[m] = held_out_losses(lm, held_out, c.seq_len, c.held_out_windows);
    std::fprintf(stderr, "[btx-train] %s: held-out loss %.4f\n", m.c_str(),
                 out[m]["avg"].get<double>());
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_file, run_dir;
  bool check = false, data_only = false;
  int64_t show = 0;
  std::vector<std::string> evaluate;
  CLI::App app{kAbout, "btx-train"};
  app.footer(std::string(kFooter) + schema().help(TrainConfig{}));
  app.add_option("CONFIG", config_file, "YAML or JSON config")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--run-dir", run_dir, "the run's folder (config key run_dir)");
  app.add_flag("--check", check, "validate the config and stop (reads no data, trains nothing)");
  app.add_flag("--data-only", data_only,
               "read, check and tokenise the data into the cache, print each domain's "
               "manifest and stop (trains nothing)");
  app.add_option("--show-documents", show,
                 "print the first N documents of each domain as JSON lines (the text as it "
                 "will be tokenised, chat rendered by the template, and its ids) and stop")
      ->check(CLI::PositiveNumber);
  app.add_option("--evaluate", evaluate,
                 "print each CHECKPOINT's held-out loss per domain (the config's data, read "
                 "with the config's model's tokenizer) as JSON, and stop (trains nothing)");
  if (const auto status = tools::parse_command_line(app, argc, argv)) return *status;
  try {
    auto config = schema().read(tools::load_config_file(config_file));
    if (!run_dir.empty()) config.run_dir = run_dir;
    validate(config);
    // Its threads once, before any work: every rank of a torchrun/srun job on its share.
    const auto threads = process_threads(config.threads);
    use_threads(threads.threads);
    (void)keep_freed_memory();  // each step reuses the last one's blocks
    if (check) {
      std::printf("config OK: %s trains %s on %zu domains in %s\n", config.model.c_str(),
                  config.trains.c_str(), config.domains.size(), config.run_dir.c_str());
      return 0;
    }
    if (show > 0) return show_documents(config, show);
    if (data_only) {
      const auto corpus =
          read_corpus(config, read_model_spec(fs::path(config.model) / "config.json"));
      std::printf("%s\n", corpus.manifest_json().dump(2).c_str());
      return 0;
    }
    if (!evaluate.empty()) return evaluate_models(config, evaluate);
    return run(config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-train: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace btx::train_tool
