// SPDX-License-Identifier: MIT
// btx-interop: the C++ side of the Python interop tests (tests/python/test_interop.py).
//   btx-interop logits CKPT_DIR IDS.safetensors OUT.safetensors   HF checkpoint -> logits
//   btx-interop save-llama OUT_DIR SEED TIED MAX_SHARD_BYTES      random tiny Llama -> HF folder
//   btx-interop copy IN.safetensors OUT.safetensors               btx reader -> btx writer
#include <torch/torch.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

#include <btx/hf/llama_checkpoint.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>

namespace {

int usage() {
  std::cerr << "usage: btx-interop logits CKPT_DIR IDS.safetensors OUT.safetensors\n"
               "       btx-interop save-llama OUT_DIR SEED TIED(0|1) MAX_SHARD_BYTES\n"
               "       btx-interop copy IN.safetensors OUT.safetensors\n";
  return 2;
}

// The tests' tiny Llama: hidden 32, 2 layers, vocab 64, GQA 4:2.
btx::LlamaConfig tiny_config(bool tied) {
  btx::LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "logits" && argc == 5) {
      auto model = btx::hf::load_llama(argv[2]);
      model->eval();
      auto ids = btx::io::SafetensorsFile(argv[3]).tensor("ids").to(torch::kInt64);
      torch::NoGradGuard no_grad;
      btx::io::save_safetensors(argv[4], {{"logits", model->forward(ids).contiguous()}});
      return 0;
    }
    if (cmd == "save-llama" && argc == 6) {
      torch::manual_seed(std::stoll(argv[3]));
      const auto config = tiny_config(std::string(argv[4]) == "1");
      btx::LlamaForCausalLM model(config);
      btx::hf::SaveOptions opts;
      opts.max_shard_bytes = std::stoull(argv[5]);
      btx::hf::save_hf_checkpoint(*model, config, argv[2], opts);
      return 0;
    }
    if (cmd == "copy" && argc == 4) {
      btx::io::save_safetensors(argv[3], btx::io::load_safetensors(argv[2]));
      return 0;
    }
    return usage();
  } catch (const std::exception& e) {
    std::cerr << "btx-interop: " << e.what() << "\n";
    return 1;
  }
}
