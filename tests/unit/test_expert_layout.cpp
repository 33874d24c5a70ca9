// SPDX-License-Identifier: MIT
// Expert layouts on disk: every built-in MoE family writes its experts per expert (its
// default) or packed (transformers 5's experts.gate_up_proj [E, 2F, D] and
// experts.down_proj [E, D, F]) and reads either back into equal weights; a checkpoint
// that has neither names both tensors it looked for.
#include <doctest/doctest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <btx/io/safetensors_reader.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/registry.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::test::scratch_dir;
using btx::test::tiny_config;

namespace {

btx::CausalLM tiny_moe(const std::string& family, uint64_t seed) {
  auto c = tiny_config();
  const btx::MoEConfig moe{.num_experts = 3, .router = "top2"};
  torch::manual_seed(seed);
  if (family == "qwen3") {
    c.qk_norm = true;
    return btx::make_model(btx::Qwen3Family::spec(c, moe));
  }
  if (family == "qwen2") {
    c.qkv_bias = true;
    return btx::make_model(btx::Qwen2Family::spec(c, moe));
  }
  return btx::make_model(btx::LlamaFamily::spec(c, moe));
}

// Every tensor name and shape in a checkpoint folder.
std::map<std::string, std::vector<int64_t>> tensors_in(const fs::path& dir) {
  std::map<std::string, std::vector<int64_t>> out;
  btx::io::CheckpointReader ckpt(dir);
  for (const auto& name : ckpt.names()) out[name] = ckpt.info(name).shape;
  return out;
}

}  // namespace

TEST_CASE("expert layout: every MoE family writes per-expert or packed and reads both back") {
  for (const std::string family : {"llama", "qwen3", "qwen2"}) {
    CAPTURE(family);
    auto lm = tiny_moe(family, 5);
    const auto c = tiny_config();
    const int64_t E = 3, F = c.intermediate_size, D = c.hidden_size;
    for (const auto layout : {btx::hf::ExpertLayout::per_expert, btx::hf::ExpertLayout::packed}) {
      CAPTURE(btx::hf::to_string(layout));
      const auto dir = scratch_dir("layout_" + family + "_" + btx::hf::to_string(layout));
      btx::hf::SaveOptions options;
      options.overwrite = true;
      options.expert_layout = layout;
      btx::save_hf_checkpoint(lm, dir, options);
      const auto names = tensors_in(dir);
      const std::string moe =
          family == "llama" ? "model.layers.0.block_sparse_moe." : "model.layers.0.mlp.";
      if (layout == btx::hf::ExpertLayout::packed) {
        REQUIRE(names.count("model.layers.0.mlp.experts.gate_up_proj"));
        const std::vector<int64_t> gate_up_shape{E, 2 * F, D}, down_shape{E, D, F};
        CHECK(names.at("model.layers.0.mlp.experts.gate_up_proj") == gate_up_shape);
        CHECK(names.at("model.layers.0.mlp.experts.down_proj") == down_shape);
        CHECK(names.count("model.layers.0.mlp.gate.weight"));
        CHECK(!names.count(moe + "experts.0." + (family == "llama" ? "w1" : "gate_proj") +
                           ".weight"));
      } else {
        CHECK(
            names.count(moe + "experts.2." + (family == "llama" ? "w2" : "down_proj") + ".weight"));
        CHECK(!names.count("model.layers.0.mlp.experts.gate_up_proj"));
      }
      // The packed file's gate_up_proj is gate then up, expert by expert.
      if (layout == btx::hf::ExpertLayout::packed) {
        btx::io::CheckpointReader ckpt(dir);
        const auto gate_up = ckpt.tensor("model.layers.1.mlp.experts.gate_up_proj");
        const auto params = lm.named_parameters();
        CHECK(
            torch::equal(gate_up.narrow(1, 0, F), params["model.layers.1.mlp.experts.gate_proj"]));
        CHECK(torch::equal(gate_up.narrow(1, F, F), params["model.layers.1.mlp.experts.up_proj"]));
      }
      auto back = btx::load_causal_lm(dir);
      const auto want = lm.named_parameters();
      const auto got = back.named_parameters();
      REQUIRE(got.size() == want.size());
      for (const auto& p : want) CHECK_MESSAGE(torch::equal(got[p.key()], p.value()), p.key());
    }
  }
}

TEST_CASE("expert layout: a checkpoint without its experts names both layouts' tensors") {
  auto lm = tiny_moe("qwen3", 6);
  const auto dir = scratch_dir("layout_missing");
  btx::hf::SaveOptions options;
  options.overwrite = true;
  options.expert_layout = btx::hf::ExpertLayout::packed;
  btx::save_hf_checkpoint(lm, dir, options);
  // Built with narrower experts than the file has: gate_up_proj's shape does not fit.
  auto spec = lm.spec();
  spec.moe->expert_size = tiny_config().intermediate_size / 2;
  auto wider = btx::make_model(spec);
  CHECK_THROWS_WITH_AS(btx::hf::load_hf_weights(wider.module(), btx::io::CheckpointReader(dir),
                                                btx::families().get("qwen3").name_map()),
                       doctest::Contains("model.layers.0.mlp.experts.gate_up_proj"),
                       btx::io::FormatError);
  // A folder whose experts are neither per expert nor packed.
  const auto bare = scratch_dir("layout_bare");
  {
    std::map<std::string, torch::Tensor> kept;
    btx::io::CheckpointReader ckpt(dir);
    for (const auto& name : ckpt.names())
      if (name.find("experts.gate_up_proj") == std::string::npos)
        kept.emplace(name, ckpt.tensor(name).clone());
    btx::io::save_sharded(bare, kept);
  }
  CHECK_THROWS_WITH_AS(
      btx::hf::load_hf_weights(lm.module(), btx::io::CheckpointReader(bare),
                               btx::families().get("qwen3").name_map()),
      doctest::Contains("lacks tensor \"model.layers.0.mlp.experts.0.gate_proj.weight\", nor "
                        "\"model.layers.0.mlp.experts.gate_up_proj\" (packed experts)"),
      btx::io::FormatError);
}

TEST_CASE("expert layout: names parse, and a layout a family lacks is refused") {
  CHECK(btx::hf::parse_expert_layout("packed") == btx::hf::ExpertLayout::packed);
  CHECK_THROWS_WITH_AS(btx::hf::parse_expert_layout("stacked"),
                       doctest::Contains("not one of per_expert, packed"), std::invalid_argument);
  btx::hf::NameMap only_packed = btx::families().get("qwen3").name_map();
  only_packed.namings = {only_packed.layouts()[1]};
  CHECK_THROWS_WITH_AS((void)only_packed.layout(btx::hf::ExpertLayout::per_expert),
                       doctest::Contains("it has: packed"), std::invalid_argument);
}
