// SPDX-License-Identifier: MIT
// build/bin/btx-train-tiny-llama [steps]
// Trains the reference Llama on this file's own bytes and greedily continues a prompt:
// the smallest end-to-end use of btx's model, optimizer loop and generation.
#include <btx/btx.hpp>
#include <btx/train/loss.hpp>

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include <CLI/CLI.hpp>

int main(int argc, char** argv) {
  int steps = 200;
  CLI::App app{
      "btx-train-tiny-llama: trains a byte-level Llama on its own source and continues "
      "a prompt.",
      "btx-train-tiny-llama"};
  app.add_option("STEPS", steps, "training steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  CLI11_PARSE(app, argc, argv);
  std::ifstream in(__FILE__, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  // __FILE__ may be relative to the build folder (ccache's CCACHE_BASEDIR): then train on a
  // refrain, repeated to more than a batch row's bytes.
  while (text.size() < 256) text += "btx mixes experts. ";
  auto bytes =
      torch::from_blob(text.data(), {int64_t(text.size())}, torch::kUInt8).to(torch::kLong);

  btx::LlamaConfig config;  // byte vocabulary, 2 layers, width 64
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(config);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.1));
  const int64_t B = 8, T = 64;
  for (int step = 1; step <= steps; ++step) {
    auto starts = torch::randint(0, bytes.size(0) - T - 1, {B});
    std::vector<torch::Tensor> rows;
    for (int64_t b = 0; b < B; ++b)
      rows.push_back(bytes.slice(0, starts[b].item<int64_t>()).slice(0, 0, T + 1));
    auto batch = torch::stack(rows);
    opt.zero_grad();
    auto loss =
        btx::next_token_loss(model->forward(batch.slice(1, 0, T)), batch.slice(1, 1, T + 1));
    loss.backward();
    opt.step();
    if (step % 50 == 0 || step == 1)
      std::cerr << "step " << step << " loss " << loss.item<double>() << "\n";
  }
  const std::string prompt = "btx::";
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  auto out = btx::generate_greedy(
      model, ids, {.max_new_tokens = 40, .stop_token = std::nullopt, .use_cache = true});
  std::cout << prompt;
  for (auto t : out) std::cout << char(t);
  std::cout << "\n";
}
