// SPDX-License-Identifier: MIT
// build/bin/btx-recipe RUN_DIR
// The BTX recipe in a user's own program: a tiny Llama of its own and two synthetic token
// streams go through the recipe's stage graph (recipe/btx_stages.hpp: the seed, Branch, an
// expert per domain, MiX, the MoE stage and the baselines at equal compute), every stage in
// this process, into RUN_DIR. Every stage is a folder with an HF checkpoint and stage.json,
// so a second run skips what is finished and a killed one resumes from its checkpoints.
#include <torch/torch.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <btx/models/llama/family.hpp>
#include <btx/recipe/btx_stages.hpp>
#include <btx/recipe/driver.hpp>
#include <btx/train/evaluate.hpp>

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

}  // namespace

int main(int argc, char** argv) {
  std::string run_dir;
  CLI::App app{
      "btx-recipe: the BTX recipe's stage graph on a tiny model and two synthetic domains, "
      "in this process; a rerun skips finished stages.",
      "btx-recipe"};
  app.add_option("RUN_DIR", run_dir, "the run's folder")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    namespace recipe = btx::recipe;
    btx::use_threads(btx::process_threads().threads);  // OMP_NUM_THREADS, else every core allowed
    torch::manual_seed(0);
    recipe::Recipe r{
        .run = recipe::Run(run_dir, {.batch_size = 8, .log_every = 10, .checkpoint_every = 10})};
    const auto lock = r.run.lock();  // one program per run folder
    for (const std::string domain : {"count", "echo"}) {
      const uint64_t k = r.domains.size();
      r.domains.push_back({domain, synthetic_stream(domain, 1 << 14, 1 + k),
                           synthetic_stream(domain, 4096, 1000 + k)});
    }
    r.seq_len = 32;
    // The user's own model: a tiny Llama (any registered family goes the same way).
    btx::DecoderConfig config;
    config.vocab_size = 32;
    config.hidden_size = 32;
    config.intermediate_size = 64;
    config.max_position_embeddings = 64;
    r.seed_spec = btx::LlamaFamily::spec(config);
    r.seed_stage = r.expert_stage = r.finetune_stage = {.steps = 20, .lr = 3e-3, .warmup = 2};
    r.moe.router = "top2";  // the seed joins as generalist; MiX as the paper: btx, uniform

    // Every stage of the graph, phase by phase, here.
    recipe::run_in_process(recipe::btx_graph(), r);

    // Every arm of the comparison on each domain's held-out stream.
    std::printf("held-out loss (nats/token), BTX budget %.3g FLOPs:\n", r.btx_budget_flops());
    const auto& graph = recipe::btx_graph();
    for (const auto& [d, i] : graph.instances(r.domain_names(), r.routers(), r.selection())) {
      if (!d.arm) continue;
      btx::LogitsFn logits;
      if (d.logits) {
        logits = d.logits(r, i, torch::kCPU);
      } else {
        const auto model = d.load ? d.load(r, i) : recipe::load_stage_model(r.run, i.stage);
        model.eval();
        logits = [model](const torch::Tensor& ids) { return model.forward(ids); };
      }
      std::printf("%-18s", recipe::instance_name(d.arm->label, i.domain, i.router).c_str());
      for (const auto& domain : r.domains) {
        const auto loss = btx::evaluate_loss(logits, domain.eval_tokens, r.seq_len, 16);
        std::printf("  %s %.3f", domain.name.c_str(), loss.loss);
      }
      std::printf("\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-recipe: error: %s\n", e.what());
    return 1;
  }
}
