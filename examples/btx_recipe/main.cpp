// SPDX-License-Identifier: MIT
// build/bin/btx-recipe RUN_DIR
// The BTX recipe in a user's own program: a tiny Llama of its own and two synthetic token
// streams go through the paper's stages (Branch, Train, MiX, MoE-finetune) and the
// equal-compute baselines, all library calls, into RUN_DIR. Every stage is a folder with
// an HF checkpoint and stage.json, so a second run skips what is finished and a killed
// one resumes from its checkpoints.
#include <torch/torch.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <btx/models/auto.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/finetune.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/evaluate.hpp>

#include <CLI/CLI.hpp>

namespace {

// Domain "count": runs 0, 1, 2, ... up to a random stop. Domain "echo": a random word of
// tokens 16..31, said twice. `seed` picks the stream (train and held-out text differ).
torch::Tensor synthetic_stream(const std::string& domain, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  while (int64_t(ids.size()) < n) {
    const int len = 3 + int(rng() % 6);
    std::vector<int32_t> word;
    for (int i = 0; i < len; ++i)
      word.push_back(domain == "count" ? int32_t(i) : int32_t(16 + rng() % 16));
    ids.insert(ids.end(), word.begin(), word.end());
    if (domain == "echo") ids.insert(ids.end(), word.begin(), word.end());
  }
  ids.resize(size_t(n));
  return torch::tensor(ids, torch::kInt32);
}

// Held-out loss of a stage's model on each domain.
void report(const btx::recipe::Run& run, const std::vector<std::string>& stages,
            const std::vector<std::string>& domains, int64_t seq_len) {
  for (const auto& stage : stages) {
    const auto model = btx::recipe::load_stage_model(run, stage);
    model.eval();
    std::printf("%-12s", stage.c_str());
    for (size_t j = 0; j < domains.size(); ++j) {
      const auto held_out = synthetic_stream(domains[j], 4096, 1000 + j);
      const auto r = btx::evaluate_loss(
          [&](const torch::Tensor& ids) { return model.forward(ids); }, held_out, seq_len, 16);
      std::printf("  %s %.3f", domains[j].c_str(), r.loss);
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string run_dir;
  CLI::App app{
      "btx-recipe: the BTX recipe from the library's stage functions on a tiny model "
      "and two synthetic domains; a rerun skips finished stages.",
      "btx-recipe"};
  app.add_option("RUN_DIR", run_dir, "the run's folder")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    namespace recipe = btx::recipe;
    torch::set_num_threads(1);
    torch::manual_seed(0);
    const recipe::Run run(run_dir, {.batch_size = 8, .log_every = 10, .checkpoint_every = 10});
    const auto lock = run.lock();  // one program per run folder
    const std::vector<std::string> domains{"count", "echo"};
    const std::vector<torch::Tensor> streams{synthetic_stream("count", 1 << 14, 1),
                                             synthetic_stream("echo", 1 << 14, 2)};
    const int64_t S = 32;
    const btx::WindowSampler mixture(streams, {}, S, 0, domains);
    const recipe::StageBudget budget{.steps = 20, .lr = 3e-3, .warmup = 2};

    // The user's own model: a tiny Llama (any registered family goes the same way).
    btx::DecoderConfig config;
    config.vocab_size = 32;
    config.hidden_size = 32;
    config.intermediate_size = 64;
    config.max_position_embeddings = 64;
    const btx::CausalLM seed = btx::make_model(btx::LlamaFamily::spec(config));
    recipe::train_stage(run, "seed", seed, mixture, budget);

    // Branch, then Train: one copy of the seed per domain, trained on that domain alone.
    auto experts = recipe::branch_stage(run, seed, domains);
    for (size_t j = 0; j < experts.size(); ++j) {
      recipe::train_expert(run, experts[j], btx::WindowSampler({streams[j]}, {}, S, 1 + j), budget);
    }

    // MiX: the experts' FFNs (and the seed's) as the experts of one MoE; then MoE-finetune.
    recipe::MixOptions mix;  // top-2 routing, normal router init, the seed as generalist
    mix.router = "top2";
    const btx::CausalLM moe = recipe::mix_stage(run, experts, seed, mix);
    const auto finetuned =
        recipe::finetune(run, recipe::finetune_stage("top2"), moe, mixture, budget);

    // The baselines at BTX's compute: dense continued training, sparse upcycling, BTM merge.
    std::vector<btx::merge::ExpertInfo> lineage;
    for (const auto& e : experts) lineage.push_back(e.info);
    const double flops = recipe::btx_budget_flops(lineage, finetuned.at("flops").get<double>());
    recipe::dense_baseline(run, seed, mixture, budget, flops);
    recipe::upcycle_baseline(
        run, seed,
        mix.moe_options(int64_t(domains.size()) + 1, seed.spec().shape.intermediate_size), mixture,
        budget, flops);
    recipe::btm_merge(run, experts);

    std::printf("held-out loss (nats/token), BTX budget %.3g FLOPs:\n", flops);
    report(run,
           {"seed", "expert-count", "expert-echo", "btx-top2", "dense", "upcycle", "btm-merge"},
           domains, S);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-recipe: error: %s\n", e.what());
    return 1;
  }
}
