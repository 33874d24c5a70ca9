// SPDX-License-Identifier: MIT
// btx-dist-probe: data- and expert-parallel training of a tiny Llama (dense or MoE) over
// c10d (Gloo), for tests/python/test_dist.py and benchmarks/dist_bench.py, launched as users
// launch btx (torchrun --no-python, Slurm, or plain processes with RANK, WORLD_SIZE,
// MASTER_ADDR and MASTER_PORT set).
//   btx-dist-probe train OUT_PREFIX [--steps N] [--batch B] [--ckpt DIR] [--moe]
//                  [--expert-parallel] [--no-overlap] [--die-rank R --die-step S]
//                  [--timeout-ms T] [--sharding none|optimizer|gradients|full]
//                  [--micro-batches M] [--checkpoint-activations]
//   btx-dist-probe layer              (the expert-parallel layer against the local one)
// train: each rank starts from its own random init (rank 0's is broadcast). Rank 0 writes
// OUT_PREFIX.safetensors (final parameters, experts gathered) and OUT_PREFIX.losses (the
// global batch's loss of every step as a hex float). DIE_RANK SIGKILLs itself before step
// DIE_STEP. layer: prints one "layer <case>: ..." line per case on each rank and exits 1
// when a difference exceeds 1e-5.
#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include <btx/io/safetensors_writer.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/routers/switch.hpp>
#include <btx/moe/routers/top_k.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/parallel/expert_parallel.hpp>
#include <btx/parallel/sharded_data_parallel.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

namespace {

struct Args {
  std::string mode, out, ckpt, sharding = "none";
  int64_t steps = 20, batch = 6, die_rank = -1, die_step = -1, timeout_ms = 20000;
  int64_t micro_batches = 1;
  bool moe = false, expert_parallel = false, overlap = true, checkpoint_activations = false;
};

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> rest(argv + 1, argv + argc);
  if (rest.empty()) throw std::invalid_argument("usage: btx-dist-probe train|layer ...");
  a.mode = rest[0];
  size_t i = 1;
  if (a.mode == "train") {
    if (rest.size() < 2) throw std::invalid_argument("train needs OUT_PREFIX");
    a.out = rest[1];
    i = 2;
  }
  for (; i < rest.size(); ++i) {
    const std::string& s = rest[i];
    const auto value = [&] {
      if (i + 1 >= rest.size()) throw std::invalid_argument("missing value after " + s);
      return rest[++i];
    };
    if (s == "--steps")
      a.steps = std::stoll(value());
    else if (s == "--batch")
      a.batch = std::stoll(value());
    else if (s == "--ckpt")
      a.ckpt = value();
    else if (s == "--die-rank")
      a.die_rank = std::stoll(value());
    else if (s == "--die-step")
      a.die_step = std::stoll(value());
    else if (s == "--timeout-ms")
      a.timeout_ms = std::stoll(value());
    else if (s == "--sharding")
      a.sharding = value();
    else if (s == "--micro-batches")
      a.micro_batches = std::stoll(value());
    else if (s == "--checkpoint-activations")
      a.checkpoint_activations = true;
    else if (s == "--moe")
      a.moe = true;
    else if (s == "--expert-parallel")
      a.moe = a.expert_parallel = true;
    else if (s == "--no-overlap")
      a.overlap = false;
    else
      throw std::invalid_argument("unknown option " + s);
  }
  return a;
}

int train(const Args& a, btx::dist::Communicator& comm) {
  torch::manual_seed(1000 + uint64_t(comm.rank()));  // different on purpose: broadcast fixes it
  btx::LlamaConfig config = btx::test::tiny_config();
  config.max_position_embeddings = 64;
  btx::LlamaForCausalLM model =
      a.moe ? btx::LlamaForCausalLM(
                  config, btx::moe_feed_forward(
                              {.num_experts = 4, .router = "top2", .load_balance_alpha = 0.05}))
            : btx::LlamaForCausalLM(config);
  if (a.expert_parallel) btx::dist::expert_parallel(*model, comm);

  auto stream = torch::empty({4096}, torch::kInt32);
  for (int64_t i = 0; i < stream.numel(); ++i)
    stream.data_ptr<int32_t>()[i] = int32_t((i * 7 + i / 13) % 64);
  btx::WindowSampler sampler({stream}, {}, 16, 5);

  btx::TrainOptions options;
  options.stage = "dp-probe";
  options.steps = a.steps;
  options.batch_size = a.batch;
  options.warmup_steps = 4;
  options.log_every = 5;
  options.checkpoint_dir = a.ckpt;
  options.checkpoint_every = 4;
  options.micro_batches = a.micro_batches;
  options.activation_checkpointing = a.checkpoint_activations;
  // Under torchrun --max-restarts only the first attempt dies: the restarted job finishes.
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  const bool first_attempt = restarts == nullptr || std::string(restarts) == "0";
  options.on_step = [&](int64_t step) {
    if (first_attempt && comm.rank() == a.die_rank && step == a.die_step) std::raise(SIGKILL);
  };
  btx::TrainHooks hooks;
  if (a.moe) hooks.aux_loss = [&] { return btx::collect_aux_loss(*model); };
  torch::manual_seed(1234);  // the same generator state on every rank from here on
  const auto summary = btx::train_causal_lm(
      model, sampler, options,
      btx::dist::sharded_data_parallel(
          comm, hooks,
          {.sharding = btx::dist::sharding_from_name(a.sharding), .overlap = a.overlap}));
  btx::dist::gather_experts(*model);
  if (comm.is_root()) {
    std::map<std::string, torch::Tensor> tensors;
    for (const auto& p : model->named_parameters()) tensors[p.key()] = p.value().detach();
    btx::io::save_safetensors(a.out + ".safetensors", tensors);
    std::FILE* f = std::fopen((a.out + ".losses").c_str(), "w");
    if (!f) throw std::runtime_error("cannot write " + a.out + ".losses");
    for (double l : summary.losses) std::fprintf(f, "%a\n", l);
    std::fclose(f);
  }
  comm.barrier("the end of training");
  return 0;
}

// One expert-parallel MoE layer against the same layer in one process, on every rank's
// rows: outputs, input gradients, router gradients (summed over ranks) and this rank's
// experts' gradients. The reference routes each rank's rows in a call of their own, as
// the expert-parallel ranks do, so capacity and drops are per call in both.
template <class MakeGate>
double check_layer(btx::dist::Communicator& comm, const std::string& name, MakeGate make_gate,
                   bool skewed) {
  const int64_t G = comm.size(), E = 2 * G, D = 16, F = 24, rows = 10;
  torch::manual_seed(7);  // the same layer and data on every rank
  auto gate = make_gate(D, E);
  using R = typename decltype(gate)::element_type;
  auto experts = std::make_shared<btx::PackedSwiGLU>(E, D, F);
  btx::MoE<R, btx::PackedSwiGLU> full(gate, experts);
  if (skewed) {  // only experts 0 and 1 (rank 0's) are ever chosen: other ranks get no rows
    torch::NoGradGuard no_grad;
    full->gate().weight.narrow(0, 2, E - 2).fill_(0);
    full->gate().weight.narrow(0, 0, 2).mul_(50);
  }
  const auto x_all = torch::randn({G * rows, D});
  const auto g_all = torch::randn({G * rows, D});

  // Reference: every rank's rows through the whole layer, one call per rank's rows.
  auto ref = std::dynamic_pointer_cast<typename decltype(full)::Impl>(full->clone());
  auto x_ref = x_all.clone().requires_grad_(true);
  torch::Tensor loss_ref = torch::zeros({});
  int64_t dropped_ref = 0;
  torch::Tensor y_ref_mine;
  for (int64_t s = 0; s < G; ++s) {
    auto y = ref->forward(x_ref.narrow(0, s * rows, rows));
    dropped_ref += s == comm.rank() ? ref->last_stats().dropped : 0;
    if (s == comm.rank()) y_ref_mine = y.detach();
    loss_ref = loss_ref + (y * g_all.narrow(0, s * rows, rows)).sum();
  }
  loss_ref.backward();

  // Expert-parallel: this rank's rows, this rank's experts.
  auto ep = std::dynamic_pointer_cast<typename decltype(full)::Impl>(full->clone());
  ep->shard_experts(std::make_shared<btx::dist::Communicator>(comm));
  auto x_mine = x_all.narrow(0, comm.rank() * rows, rows).clone().requires_grad_(true);
  auto y = ep->forward(x_mine);
  (y * g_all.narrow(0, comm.rank() * rows, rows)).sum().backward();
  std::vector<torch::Tensor> router_grad = {ep->gate().weight.grad().clone()};
  comm.all_reduce(router_grad, btx::dist::Reduce::sum, "router gradients");

  using btx::test::max_abs_diff;
  const auto* shard = ep->expert_shard();
  double worst = max_abs_diff(y, y_ref_mine);
  worst = std::max(worst,
                   max_abs_diff(x_mine.grad(), x_ref.grad().narrow(0, comm.rank() * rows, rows)));
  worst = std::max(worst, max_abs_diff(router_grad[0], ref->gate().weight.grad()));
  const auto ep_params = ep->expert_parameters();
  const auto ref_params = ref->expert_parameters();
  for (size_t i = 0; i < ep_params.size(); ++i) {
    worst = std::max(worst, max_abs_diff(ep_params[i].grad(), ref_params[i].grad().narrow(
                                                                  0, shard->first, shard->count)));
  }
  const bool drops_equal = ep->last_stats().dropped == dropped_ref;
  std::printf(
      "layer %s: rank %lld of %lld holds experts [%lld, %lld), max difference %.3g, "
      "dropped %lld (reference %lld)\n",
      name.c_str(), static_cast<long long>(comm.rank()), static_cast<long long>(G),
      static_cast<long long>(shard->first), static_cast<long long>(shard->first + shard->count),
      worst, static_cast<long long>(ep->last_stats().dropped), static_cast<long long>(dropped_ref));
  return drops_equal ? worst : 1.0;
}

int layer(btx::dist::Communicator& comm) {
  const auto top2 = [](int64_t D, int64_t E) { return std::make_shared<btx::TopK>(D, E, 2); };
  const auto switch_half = [](int64_t D, int64_t E) {
    return std::make_shared<btx::Switch>(D, E, 0.5);  // capacity for half the tokens: drops
  };
  double worst = 0.0;
  worst = std::max(worst, check_layer(comm, "top2", top2, false));
  worst = std::max(worst, check_layer(comm, "switch-capacity-0.5", switch_half, false));
  worst = std::max(worst, check_layer(comm, "top2-skewed", top2, true));
  std::fflush(stdout);
  return worst <= 1e-5 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    torch::set_num_threads(1);
    const Args a = parse(argc, argv);
    const auto env = btx::dist::dist_env_from_environment();
    auto comm = btx::dist::Communicator::connect(env, std::chrono::milliseconds(a.timeout_ms));
    if (a.mode == "train") return train(a, comm);
    if (a.mode == "layer") return layer(comm);
    throw std::invalid_argument("unknown mode " + a.mode);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-dist-probe: error: %s\n", e.what());
    return 1;
  }
}
