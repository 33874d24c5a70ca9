// SPDX-License-Identifier: MIT
// btx-dist-bench: the measurements behind benchmarks/dist_bench.py (issue 11, item 6). Run
// under torchrun or with its variables set (or alone, for one independent worker).
//   btx-dist-bench allreduce [--max-mb M]    all-reduce time per message size on this
//                                            world, and (rank 0) the memcpy rate
//   btx-dist-bench train [--steps N] [--per-rank-batch B] [--no-overlap]
//                        [--die-rank R --die-step S] [--timeout-ms T]
//                                            a Llama trained data-parallel over the world
//                                            (world 1: an independent worker)
// Every result is one JSON line on stdout (rank 0; "train" prints every rank's line).
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/sampler.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/train/flops.hpp>
#include <btx/train/trainer.hpp>

#include "../tools/common/cli.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Args {
  std::string mode;
  int64_t steps = 30, per_rank_batch = 8, die_rank = -1, die_step = -1, timeout_ms = 60000;
  double max_mb = 64;
  bool overlap = true;
};

// All-reduce (sum) of fp32 messages from 4 KB to max_mb, median of several, beside the
// time of one memcpy of the same bytes (the physical limit of moving them on one host).
void allreduce(const Args& a, btx::dist::Communicator& comm) {
  for (double bytes = 4096; bytes <= a.max_mb * 1048576.0 + 1; bytes *= 4) {
    const int64_t n = int64_t(bytes / 4);
    auto t = torch::ones({n});
    const int reps = bytes >= 16 * 1048576.0 ? 5 : bytes >= 1048576.0 ? 10 : 50;
    std::vector<double> times, copies;
    for (int r = 0; r < reps + 2; ++r) {
      std::vector<torch::Tensor> one = {t};
      comm.barrier("allreduce bench");
      const auto t0 = Clock::now();
      comm.all_reduce(one, btx::dist::Reduce::sum, "bench");
      if (r >= 2) times.push_back(seconds_since(t0));
    }
    auto dst = torch::empty_like(t);
    for (int r = 0; r < reps + 2; ++r) {
      const auto t0 = Clock::now();
      dst.copy_(t);
      if (r >= 2) copies.push_back(seconds_since(t0));
    }
    // Slowest rank's median decides a collective's time.
    std::vector<torch::Tensor> slowest = {torch::tensor({median(times)}, torch::kFloat64)};
    comm.all_reduce(slowest, btx::dist::Reduce::max, "bench times");
    const double sec = slowest[0].item<double>();
    const double N = double(comm.size());
    if (comm.is_root()) {
      std::printf("%s\n", nlohmann::json{{"mode", "allreduce"},
                                         {"ranks", comm.size()},
                                         {"bytes", bytes},
                                         {"seconds", sec},
                                         {"algbw_GBps", bytes / sec / 1e9},
                                         {"busbw_GBps", 2 * (N - 1) / N * bytes / sec / 1e9},
                                         {"memcpy_GBps", bytes / median(copies) / 1e9}}
                              .dump()
                              .c_str());
      std::fflush(stdout);
    }
  }
}

// A byte-level Llama (hidden 256, 4 layers, ~3M parameters) trained on a fixed stream,
// data-parallel over the world; reports tokens/s per worker and the share of each step
// spent in the gradient hook (the all-reduce, or with overlap what is left of it).
void train(const Args& a, btx::dist::Communicator& comm) {
  btx::LlamaConfig config;
  config.vocab_size = 256;
  config.hidden_size = 256;
  config.intermediate_size = 688;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  config.max_position_embeddings = 256;
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(config);
  const int64_t S = 128;
  auto stream = torch::randint(0, 256, {1 << 18}, torch::kInt32);
  btx::WindowSampler sampler({stream}, {}, S, 3);

  btx::TrainOptions options;
  options.stage = "bench";
  options.steps = a.steps;
  options.batch_size = a.per_rank_batch * comm.size();
  options.log_every = a.steps;
  options.on_step = [&](int64_t step) {
    if (comm.rank() == a.die_rank && step == a.die_step) {
      std::printf("%s\n",
                  nlohmann::json{{"mode", "kill"},
                                 {"rank", comm.rank()},
                                 {"unix_s", std::chrono::duration<double>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count()}}
                      .dump()
                      .c_str());
      std::fflush(stdout);
      std::raise(SIGKILL);
    }
  };
  btx::TrainHooks hooks = btx::dist::data_parallel(comm, {}, {.overlap = a.overlap});
  double hook_s = 0.0, step_s = 0.0;
  int64_t timed = 0, current = 0;
  Clock::time_point step_start;
  const int64_t warmup = std::min<int64_t>(3, a.steps - 1);
  hooks.before_step = [&, inner = hooks.before_step](const std::string& stage, int64_t step) {
    if (step > warmup) {
      step_s += seconds_since(step_start);
      ++timed;
    }
    step_start = Clock::now();
    current = step;
    if (inner) inner(stage, step);
  };
  hooks.after_backward = [&, inner = hooks.after_backward](const std::vector<torch::Tensor>& p) {
    const auto t0 = Clock::now();
    if (inner) inner(p);
    if (current > warmup) hook_s += seconds_since(t0);
  };
  btx::train_causal_lm(model, sampler, options, std::move(hooks));
  const double step = step_s / double(std::max<int64_t>(timed, 1));
  int64_t grad_bytes = 0;
  for (const auto& p : model->parameters()) grad_bytes += p.numel() * int64_t(p.element_size());
  std::printf("%s\n",
              nlohmann::json{{"mode", "train"},
                             {"ranks", comm.size()},
                             {"rank", comm.rank()},
                             {"overlap", a.overlap},
                             {"steps_timed", timed},
                             {"step_s", step},
                             {"grad_hook_s", hook_s / double(std::max<int64_t>(timed, 1))},
                             {"tokens_per_s_per_worker", double(a.per_rank_batch * S) / step},
                             {"gradient_bytes", grad_bytes},
                             {"flops_per_token", btx::training_flops_per_token(config, S)}}
                  .dump()
                  .c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{
      "btx-dist-bench: the measurements behind benchmarks/dist_bench.py; run under "
      "torchrun (or alone, one independent worker).",
      "btx-dist-bench"};
  app.require_subcommand(1);
  app.fallthrough();  // --timeout-ms may follow the subcommand
  auto* allreduce_cmd = app.add_subcommand(
      "allreduce", "all-reduce time per message size on this world and the memcpy rate");
  allreduce_cmd->add_option("--max-mb", a.max_mb, "largest message (MB)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  auto* train_cmd = app.add_subcommand("train", "a Llama trained data-parallel over the world");
  train_cmd->add_option("--steps", a.steps)->capture_default_str()->check(CLI::PositiveNumber);
  train_cmd->add_option("--per-rank-batch", a.per_rank_batch)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bool no_overlap = false;
  train_cmd->add_flag("--no-overlap", no_overlap,
                      "all-reduce after the backward pass instead of during it");
  train_cmd->add_option("--die-rank", a.die_rank, "this rank exits at --die-step");
  train_cmd->add_option("--die-step", a.die_step);
  app.add_option("--timeout-ms", a.timeout_ms, "collective timeout")->capture_default_str();
  if (const auto status = btx::tools::parse_command_line(app, argc, argv)) return *status;
  a.mode = allreduce_cmd->parsed() ? "allreduce" : "train";
  a.overlap = !no_overlap;
  try {
    torch::set_num_threads(1);
    auto comm = btx::dist::Communicator::connect(btx::dist::dist_env_from_environment(),
                                                 std::chrono::milliseconds(a.timeout_ms));
    if (a.mode == "allreduce") {
      allreduce(a, comm);
    } else if (a.mode == "train") {
      train(a, comm);
    } else {
      throw std::invalid_argument("unknown mode " + a.mode);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-dist-bench: error: %s\n", e.what());
    return 1;
  }
}
