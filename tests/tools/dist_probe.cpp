// SPDX-License-Identifier: MIT
// btx-dist-probe: data-parallel training of a tiny Llama over c10d (Gloo), for
// tests/python/test_dist.py, launched as users launch btx (torchrun --no-python, Slurm, or
// plain processes with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set).
//   btx-dist-probe OUT_PREFIX [STEPS] [GLOBAL_BATCH] [CKPT_DIR] [DIE_RANK] [DIE_STEP]
// Each rank starts from its own random init (rank 0's is broadcast). Rank 0 writes
// OUT_PREFIX.safetensors (final parameters) and OUT_PREFIX.losses (the global batch's loss
// of every step as a hex float). DIE_RANK SIGKILLs itself before step DIE_STEP.
#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include <btx/io/safetensors_writer.hpp>
#include <btx/models/llama/model.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: btx-dist-probe OUT_PREFIX [STEPS] [GLOBAL_BATCH] [CKPT_DIR] [DIE_RANK] "
                 "[DIE_STEP]\n");
    return 2;
  }
  try {
    torch::set_num_threads(1);
    const std::string out = argv[1];
    const int64_t steps = argc > 2 ? std::stoll(argv[2]) : 20;
    const int64_t batch = argc > 3 ? std::stoll(argv[3]) : 6;
    const std::string ckpt = argc > 4 && std::string(argv[4]) != "-" ? argv[4] : "";
    const int64_t die_rank = argc > 5 ? std::stoll(argv[5]) : -1;
    const int64_t die_step = argc > 6 ? std::stoll(argv[6]) : -1;

    const auto env = btx::dist::dist_env_from_environment();
    auto comm = btx::dist::Communicator::connect(env, std::chrono::seconds(20));
    torch::manual_seed(1000 + uint64_t(env.rank));  // different on purpose: broadcast fixes it
    btx::LlamaConfig config = btx::test::tiny_config();
    config.max_position_embeddings = 64;
    btx::LlamaForCausalLM model(config);

    auto stream = torch::empty({4096}, torch::kInt32);
    for (int64_t i = 0; i < stream.numel(); ++i)
      stream.data_ptr<int32_t>()[i] = int32_t((i * 7 + i / 13) % 64);
    btx::WindowSampler sampler({stream}, {}, 16, 5);

    btx::TrainOptions options;
    options.stage = "dp-probe";
    options.steps = steps;
    options.batch_size = batch;
    options.warmup_steps = 4;
    options.log_every = 5;
    options.checkpoint_dir = ckpt;
    options.checkpoint_every = 4;
    options.on_step = [&](int64_t step) {
      if (env.rank == die_rank && step == die_step) std::raise(SIGKILL);
    };
    torch::manual_seed(1234);  // the same generator state on every rank from here on
    const auto summary =
        btx::train_causal_lm(model, sampler, options, btx::dist::data_parallel(comm));
    if (comm.is_root()) {
      std::map<std::string, torch::Tensor> tensors;
      for (const auto& p : model->named_parameters()) tensors[p.key()] = p.value().detach();
      btx::io::save_safetensors(out + ".safetensors", tensors);
      std::FILE* f = std::fopen((out + ".losses").c_str(), "w");
      if (!f) throw std::runtime_error("cannot write " + out + ".losses");
      for (double l : summary.losses) std::fprintf(f, "%a\n", l);
      std::fclose(f);
    }
    comm.barrier("the end of training");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-dist-probe: error: %s\n", e.what());
    return 1;
  }
}
