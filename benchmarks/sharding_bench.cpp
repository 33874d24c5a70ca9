// SPDX-License-Identifier: MIT
// btx-sharding-bench: one rank's memory and step time when training SmolLM2-135M's shape
// (random weights: memory and time do not depend on them) or its 4-expert top-2 MoE,
// data-parallel with a sharding mode, for benchmarks/sharding_bench.py. Run under torchrun
// (or alone: world 1).
//   btx-sharding-bench [--moe] [--sharding none|optimizer|gradients|full]
//                      [--checkpoint-activations] [--steps N] [--seq S] [--batch B]
// Prints one JSON line per rank: peak resident memory over the training steps (the peak is
// reset after the model is built and placed, so construction, which holds the whole model
// once on every rank, is not in it), resident memory before the model existed, and the
// median step time. glibc's malloc gets a fixed mmap threshold of 64 KB, so every tensor
// of any size is its own mapping, returned on free: resident memory then follows the
// tensors alive (glibc's default raises the threshold as large blocks are freed and keeps
// later ones in its heap, which would measure the allocator's retention instead).
#include <torch/torch.h>

#include <climits>  // first: a libc header defines __GLIBC__

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/sampler.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/sharded_data_parallel.hpp>
#include <btx/train/trainer.hpp>

namespace {

// kB of a /proc/self/status field (VmRSS, VmHWM).
int64_t status_kb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

// Resets VmHWM to the current resident size (Linux: clear_refs 5).
void reset_peak() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

btx::LlamaConfig smollm2_135m() {
  btx::LlamaConfig c;
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 30;
  c.num_attention_heads = 9;
  c.num_key_value_heads = 3;
  c.max_position_embeddings = 2048;
  c.rope_theta = 100000.0;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  try {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, 1 << 16);
#endif
    torch::set_num_threads(1);
    std::vector<std::string> args(argv + 1, argv + argc);
    bool moe = false, checkpoint = false;
    std::string sharding = "none";
    int64_t steps = 4, seq = 128, batch = 1;
    for (size_t i = 0; i < args.size(); ++i) {
      const auto next = [&] { return args.at(++i); };
      if (args[i] == "--moe")
        moe = true;
      else if (args[i] == "--checkpoint-activations")
        checkpoint = true;
      else if (args[i] == "--sharding")
        sharding = next();
      else if (args[i] == "--steps")
        steps = std::stoll(next());
      else if (args[i] == "--seq")
        seq = std::stoll(next());
      else if (args[i] == "--batch")
        batch = std::stoll(next());
      else
        throw std::invalid_argument("unknown option " + args[i]);
    }
    const int64_t rss_before_kb = status_kb("VmRSS");
    auto comm = btx::dist::Communicator::connect(btx::dist::dist_env_from_environment(),
                                                 std::chrono::minutes(10));
    torch::manual_seed(1);
    const auto config = smollm2_135m();
    btx::LlamaForCausalLM model =
        moe ? btx::LlamaForCausalLM(
                  config, btx::moe_feed_forward(
                              {.num_experts = 4, .router = "top2", .load_balance_alpha = 0.01}))
            : btx::LlamaForCausalLM(config);
    int64_t parameters = 0;
    for (const auto& p : model->parameters()) parameters += p.numel();
    auto stream = torch::randint(0, config.vocab_size, {1 << 20}, torch::kInt32);
    btx::WindowSampler sampler({stream}, {}, seq, 3);
    btx::TrainOptions o;
    o.stage = "sharding-bench";
    o.steps = steps;
    o.batch_size = batch * comm.size();
    o.warmup_steps = 1;
    o.log_every = steps;
    o.activation_checkpointing = checkpoint;
    std::vector<double> step_seconds;
    auto last = std::chrono::steady_clock::now();
    btx::TrainHooks hooks;
    if (moe) hooks.aux_loss = [&] { return btx::collect_aux_loss(*model); };
    hooks.before_step = [&](const std::string&, int64_t step) {
      const auto now = std::chrono::steady_clock::now();
      if (step == 0) reset_peak();  // the model is built, placed and sharded by now
      if (step > 0) step_seconds.push_back(std::chrono::duration<double>(now - last).count());
      last = now;
    };
    const auto summary = btx::train_causal_lm(
        model, sampler, o,
        btx::dist::sharded_data_parallel(comm, hooks,
                                         {.sharding = btx::dist::sharding_from_name(sharding)}));
    step_seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last).count());
    const int64_t peak_kb = status_kb("VmHWM");
    std::sort(step_seconds.begin(), step_seconds.end());
    nlohmann::json line = {{"rank", comm.rank()},
                           {"world", comm.size()},
                           {"model", moe ? "smollm2-135m-moe4-top2" : "smollm2-135m"},
                           {"parameters", parameters},
                           {"sharding", sharding},
                           {"activation_checkpointing", checkpoint},
                           {"seq", seq},
                           {"batch_per_rank", batch},
                           {"steps", steps},
                           {"peak_rss_mb", double(peak_kb) / 1024.0},
                           {"rss_before_model_mb", double(rss_before_kb) / 1024.0},
                           {"median_step_s", step_seconds[step_seconds.size() / 2]},
                           {"final_loss", summary.final_loss}};
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
    comm.barrier("the end");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-sharding-bench: error: %s\n", e.what());
    return 1;
  }
}
