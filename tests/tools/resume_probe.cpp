// SPDX-License-Identifier: MIT
// btx-resume-probe: trains a tiny Llama (dense, or MoE with the Sample Top-1 router so the
// router's generator matters) with checkpoints, for tests/python/test_resume.py, which
// SIGKILLs it mid-run and checks that the resumed run ends bit-identical.
//   btx-resume-probe dense|moe CKPT_DIR OUT_PREFIX [STEPS] [CHECKPOINT_EVERY] [SLEEP_MS]
// Writes OUT_PREFIX.safetensors (final parameters and buffers) and OUT_PREFIX.losses (the
// loss of every step as a hex float, resumed steps included).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <thread>

#include <btx/io/safetensors_writer.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

int main(int argc, char** argv) {
  if (argc < 4 || (std::string(argv[1]) != "dense" && std::string(argv[1]) != "moe")) {
    std::fprintf(stderr,
                 "usage: btx-resume-probe dense|moe CKPT_DIR OUT_PREFIX [STEPS] [EVERY] "
                 "[SLEEP_MS]\n");
    return 2;
  }
  try {
    torch::set_num_threads(1);
    torch::manual_seed(1234);
    const bool moe = std::string(argv[1]) == "moe";
    const std::string out = argv[3];
    const int64_t steps = argc > 4 ? std::stoll(argv[4]) : 40;
    const int64_t every = argc > 5 ? std::stoll(argv[5]) : 4;
    const int64_t sleep_ms = argc > 6 ? std::stoll(argv[6]) : 0;

    btx::LlamaConfig config = btx::test::tiny_config();
    config.max_position_embeddings = 64;
    btx::MoEConfig moe_options;
    moe_options.num_experts = 4;
    moe_options.router = "sample_top1";
    moe_options.seed = 7;
    auto model = moe ? btx::LlamaForCausalLM(config, btx::moe_feed_forward(moe_options))
                     : btx::LlamaForCausalLM(config);

    auto stream = torch::empty({4096}, torch::kInt32);
    for (int64_t i = 0; i < stream.numel(); ++i)
      stream.data_ptr<int32_t>()[i] = int32_t((i * 7 + i / 13) % 64);
    btx::WindowSampler sampler({stream}, {}, 16, 5);

    btx::TrainOptions options;
    options.stage = std::string("probe-") + argv[1];
    options.steps = steps;
    options.batch_size = 4;
    options.warmup_steps = 4;
    options.log_every = 5;
    options.checkpoint_dir = argv[2];
    options.checkpoint_every = every;
    options.on_step = [&](int64_t) {
      if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    };
    // Noise from torch's default generator enters the loss, so resuming must restore it.
    auto& embed = model->model->embed_tokens->weight;
    const auto aux = [&]() -> torch::Tensor {
      return btx::collect_aux_loss(*model) + 1e-3 * (torch::randn_like(embed) * embed).sum();
    };
    const auto summary = btx::train_causal_lm(model, sampler, options, aux);

    std::map<std::string, torch::Tensor> weights;
    for (const auto& p : model->named_parameters()) weights[p.key()] = p.value();
    for (const auto& b : model->named_buffers()) weights[b.key()] = b.value();
    btx::io::save_safetensors(out + ".safetensors", weights);
    std::FILE* f = std::fopen((out + ".losses").c_str(), "w");
    if (f == nullptr) throw std::runtime_error("cannot write " + out + ".losses");
    for (double l : summary.losses) std::fprintf(f, "%a\n", l);
    std::fclose(f);
    std::printf("resumed_from_step=%lld steps=%lld\n",
                static_cast<long long>(summary.resumed_from_step),
                static_cast<long long>(summary.steps));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-resume-probe: error: %s\n", e.what());
    return 1;
  }
}
