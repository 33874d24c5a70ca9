// SPDX-License-Identifier: MIT
// btx-train's config: the checkpoint it starts from, the domains it trains on (documents in
// text, JSONL or Parquet files, or token files, each with a mixture weight), what trains,
// and how long and how fast. Every key declared once (schema()): reading, --help and the
// run's recorded config.json come from that declaration.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/schema.hpp>
#include <btx/data/corpus.hpp>
#include <btx/moe/trainable_parts.hpp>

#include "../common/domain_schema.hpp"

namespace btx::train_tool {

struct TrainConfig {
  std::string model;  // HF checkpoint folder (dense or MoE) of a registered family
  std::string run_dir = "runs/btx-train";
  std::string stage = "train";        // <run>/<stage>/model is the trained checkpoint
  std::vector<DomainSpec> domains;    // the training mixture
  std::string trains = "everything";  // btx::TrainedParts
  int64_t steps = 100;
  double lr = 1e-4;
  int64_t warmup = 10;
  std::string schedule = "cosine";  // cosine (to lr * lr_floor) | constant (after warmup)
  double lr_floor = 0.1;
  double weight_decay = 0.1;
  int64_t batch_size = 8;  // windows per optimizer step (over all ranks)
  int64_t seq_len = 256;
  uint64_t seed = 0;
  std::string precision = "fp32";        // fp32 | bf16-mixed | auto (bf16-mixed where it pays)
  int64_t threads = 0;                   // 0: OMP_NUM_THREADS, else the cores it may use
  std::string device = "cpu";            // cpu | cuda | cuda:N
  std::optional<double> aux_loss_alpha;  // an MoE's load-balancing alpha (null: the checkpoint's)
  int64_t log_every = 10;
  int64_t checkpoint_every = 0;   // training checkpoints (0: none); a rerun resumes
  int64_t held_out_every = 0;     // held-out loss per domain every N steps (0: start, end)
  int64_t held_out_windows = 8;   // held-out windows per domain each time
  int64_t routing_windows = 16;   // held-out windows per domain for the routing heatmaps
  std::string cache_dir;          // tokenised documents (default <run_dir>/token-cache)
  bool allow_non_finite = false;  // load a checkpoint with NaN/Inf
  int64_t dist_timeout_s = 600;   // collectives under torchrun/srun
  std::string sharding = "none";  // under torchrun/srun: none | optimizer | gradients | full
  int64_t micro_batches = 1;      // gradient accumulation: micro-batches per step
  bool activation_checkpointing = false;  // recompute each layer in backward
};

inline schema::Schema<TrainConfig> schema() {
  namespace s = btx::schema;
  using C = TrainConfig;
  return s::Schema<C>("the top level")
      .key("model", &C::model, "the HF checkpoint folder to train (dense or MoE)",
           s::non_empty<std::string>())
      .key("run_dir", &C::run_dir, "the run's folder", s::non_empty<std::string>())
      .key("stage", &C::stage, "the stage's name: <run_dir>/<stage>/model is the result",
           s::non_empty<std::string>())
      .list("domains", &C::domains, tools::domain_schema(/*documents=*/true),
            "the training mixture, one entry per domain")
      .key("trains", &C::trains,
           "what trains: everything | router | router_and_shared | "
           "experts_frozen | ffn",
           s::one_of(trained_parts_names()))
      .key("steps", &C::steps, "optimizer steps", s::positive<int64_t>())
      .key("lr", &C::lr, "peak learning rate", s::positive<double>())
      .key("warmup", &C::warmup, "linear warmup steps (at most half the run)",
           s::at_least<int64_t>(0))
      .key("schedule", &C::schedule, "cosine (to lr * lr_floor) | constant",
           s::one_of({"cosine", "constant"}))
      .key("lr_floor", &C::lr_floor, "cosine's final fraction of lr", s::in_range<double>(0, 1))
      .key("weight_decay", &C::weight_decay, "AdamW's decoupled weight decay",
           s::at_least<double>(0))
      .key("batch_size", &C::batch_size, "windows per optimizer step (all ranks together)",
           s::positive<int64_t>())
      .key("seq_len", &C::seq_len, "tokens per window", s::positive<int64_t>())
      .key("seed", &C::seed, "the data order's seed")
      .key("precision", &C::precision,
           "fp32 | bf16-mixed | auto (bf16-mixed on a CPU with native bf16 or on CUDA, else "
           "fp32)",
           s::one_of({"fp32", "bf16-mixed", "auto"}))
      .key("threads", &C::threads,
           "threads per process (0: OMP_NUM_THREADS if set, else the cores its affinity, "
           "cgroup and SLURM_CPUS_PER_TASK allow)",
           s::at_least<int64_t>(0))
      .key("device", &C::device, "cpu | cuda | cuda:N", s::non_empty<std::string>())
      .key("aux_loss_alpha", &C::aux_loss_alpha,
           "an MoE's load-balancing alpha (null: the checkpoint's router_aux_loss_coef)")
      .key("sharding", &C::sharding,
           "data parallelism under torchrun/srun: none (replicated), optimizer (ZeRO-1), "
           "gradients (ZeRO-2), full (ZeRO-3: parameters too)",
           s::one_of(std::vector<std::string>{"none", "optimizer", "gradients", "full"}))
      .key("micro_batches", &C::micro_batches,
           "each step's batch (each rank's rows) as this many micro-batches, one gradient "
           "reduction per step",
           s::positive<int64_t>())
      .key("activation_checkpointing", &C::activation_checkpointing,
           "recompute each layer in backward instead of keeping its activations")
      .key("log_every", &C::log_every, "progress and metrics interval", s::positive<int64_t>())
      .key("checkpoint_every", &C::checkpoint_every,
           "training checkpoints every N steps (0: none); a rerun resumes from the newest",
           s::at_least<int64_t>(0))
      .key("held_out_every", &C::held_out_every,
           "held-out loss per domain every N steps, a multiple of log_every (0: start and end)",
           s::at_least<int64_t>(0))
      .key("held_out_windows", &C::held_out_windows, "held-out windows per domain each time",
           s::positive<int64_t>())
      .key("routing_windows", &C::routing_windows,
           "held-out windows per domain behind an MoE's routing heatmaps", s::positive<int64_t>())
      .key("cache_dir", &C::cache_dir,
           "where tokenised documents are kept (default <run_dir>/token-cache)")
      .key("allow_non_finite", &C::allow_non_finite, "load a checkpoint holding NaN or Inf")
      .key("dist_timeout_s", &C::dist_timeout_s, "collective timeout under torchrun/srun",
           s::positive<int64_t>());
}

}  // namespace btx::train_tool
