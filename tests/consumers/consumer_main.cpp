// SPDX-License-Identifier: MIT
// A user's program: includes btx, builds a tiny Llama and runs it. The installed tree
// (find_package) is built against the umbrella header, every public header at once; the
// other two ways include only what they use: the umbrella costs a minute of compile per
// way, and the header checks already compile every header alone.
#ifdef BTX_CONSUMER_UMBRELLA
#include <btx/btx.hpp>
#else
#include <btx/models/llama/compat.hpp>
#endif

#include <iostream>

int main() {
  btx::LlamaConfig config;
  config.vocab_size = 32;
  config.hidden_size = 16;
  config.intermediate_size = 32;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  btx::LlamaForCausalLM model(config);
  auto logits = model->forward(torch::randint(0, 32, {1, 5}));
  if (logits.sizes() != torch::IntArrayRef({1, 5, 32})) return 1;
  std::cout << "btx consumer ok " << BTX_VERSION_STRING << "\n";
  return 0;
}
