// SPDX-License-Identifier: MIT
// Reference Llama forward+backward throughput (tokens/s) on a small config.
#include <benchmark/benchmark.h>

#include <btx/models/llama/compat.hpp>
#include <btx/train/loss.hpp>

static void BM_LlamaTrainStep(benchmark::State& state) {
  torch::set_num_threads(1);
  btx::LlamaConfig config;
  config.vocab_size = 256;
  config.hidden_size = 128;
  config.intermediate_size = 352;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 4;
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(config);
  const int64_t T = state.range(0);
  auto ids = torch::randint(0, 256, {1, T + 1});
  for (auto _ : state) {
    model->zero_grad();
    auto loss = btx::next_token_loss(model->forward(ids.slice(1, 0, T)), ids.slice(1, 1, T + 1));
    loss.backward();
    benchmark::DoNotOptimize(loss.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * T);
}
BENCHMARK(BM_LlamaTrainStep)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond);
