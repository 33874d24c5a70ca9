// SPDX-License-Identifier: MIT
// The ModelFamily seam: the registry, the CausalLM handle, the Llama family's name table
// round trip, and a second family (tests/families/geglu: Llama with a GeGLU FFN) that
// plugs in by one registration and then goes through btx's family-agnostic code --
// checkpoint save/load, BTX mix written by write_plan, upcycling, surgery, router init
// and BTM ensembling -- without any of it naming the family.
#include <doctest/doctest.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/merge/btm_ensemble.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/merge/upcycle_model.hpp>
#include <btx/merge/write_plan.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/common/weight_init.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/models/registry.hpp>
#include <btx/moe/surgery.hpp>

#include "../families/geglu/family.hpp"
#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
namespace merge = btx::merge;
using btx::test::GegluFamily;
using btx::test::max_abs_diff;
using btx::test::scratch_dir;
using btx::test::tiny_config;

namespace {

btx::CausalLM geglu_model(uint64_t seed) {
  btx::test::register_geglu_family();
  torch::manual_seed(seed);
  return btx::make_model(GegluFamily::spec(tiny_config()));
}

// A family lacking ffn_naming() is not a ModelFamily (the compile-fail test shows the
// compiler names the missing requirement).
struct NoFfnNaming : GegluFamily {
  static void ffn_naming() {}
};
static_assert(!btx::ModelFamily<NoFfnNaming>);
static_assert(!btx::family_locates_ffn<NoFfnNaming>);

}  // namespace

TEST_CASE("family: the registry finds families by name and by config.json model_type") {
  btx::test::register_geglu_family();
  auto& reg = btx::families();
  CHECK(reg.get("llama").moe_model_type == "mixtral");
  CHECK(reg.for_model_type("mixtral")->name == "llama");
  CHECK(reg.for_model_type("btx_geglu_moe")->name == "test_geglu");
  CHECK(reg.for_model_type("mistral")->name == "llama");  // Llama's other_model_types()
  CHECK(reg.for_model_type("qwen3_moe")->name == "qwen3");
  CHECK(reg.for_model_type("gemma") == nullptr);
  CHECK_THROWS_WITH_AS((void)reg.get("gemma"),
                       doctest::Contains("registered: glm4_moe, granite, llama, olmo2"),
                       std::invalid_argument);
  // A second family may not claim a model type that is taken.
  CHECK_THROWS_WITH_AS(btx::register_family<GegluFamily>(), doctest::Contains("already claimed"),
                       std::invalid_argument);
  // config.json with an unknown model_type: the error lists what btx reads.
  nlohmann::json j = {{"model_type", "gemma"}};
  CHECK_THROWS_WITH_AS(btx::spec_from_json(j, "x/config.json"),
                       doctest::Contains("\"gemma\" is not supported (btx reads btx_geglu"),
                       std::runtime_error);
}

TEST_CASE("family: Llama's two-way name table round-trips every dense and MoE tensor") {
  const auto& llama = btx::families().get("llama");
  for (const bool moe : {false, true}) {
    auto spec = btx::LlamaFamily::spec(tiny_config());
    if (moe) spec.moe = btx::MoEConfig{.num_experts = 3};
    auto lm = moe ? llama.make_moe(spec) : llama.make_dense(spec);
    size_t hf_tensors = 0;
    for (const auto& p : lm.named_parameters()) {
      const bool packed = llama.ffn.is_packed_experts(p.key());
      const auto names = llama.hf_names(p.key(), packed ? p.value().size(0) : 0);
      CHECK(names.size() == (packed ? 3u : 1u));
      for (size_t j = 0; j < names.size(); ++j) {
        const auto slot = llama.btx_slot(names[j]);
        CHECK(slot.param == p.key());
        CHECK(slot.expert == (packed ? std::optional<int64_t>(int64_t(j)) : std::nullopt));
      }
      hf_tensors += names.size();
    }
    CHECK(hf_tensors > 0);
  }
}

TEST_CASE("family: CausalLM clones deeply and refuses the wrong holder type") {
  auto lm = geglu_model(1);
  auto copy = lm.clone();
  auto ids = torch::randint(0, 64, {1, 6});
  CHECK(max_abs_diff(lm.forward(ids), copy.forward(ids)) == 0.0);
  {
    torch::NoGradGuard no_grad;
    copy.parameters().front().add_(1.0);
  }
  CHECK(max_abs_diff(lm.forward(ids), copy.forward(ids)) > 0.0);
  CHECK_NOTHROW(lm.as<btx::LlamaForCausalLM>());
  CHECK_THROWS_AS(lm.as<btx::LlamaMLP>(), std::invalid_argument);
  CHECK_THROWS_AS(btx::CausalLM().forward(ids), std::logic_error);
  CHECK(lm.ffn_inputs(ids).size() == 2u);
}

TEST_CASE("family: a GeGLU model really gates with GELU, not SiLU") {
  auto geglu = geglu_model(2);
  auto silu = btx::make_model(btx::LlamaFamily::spec(tiny_config()));
  merge::load_state_dict(silu.module(), merge::state_dict_of(geglu.module()));
  auto ids = torch::randint(0, 64, {2, 5});
  CHECK(max_abs_diff(geglu.forward(ids), silu.forward(ids)) > 1e-4);
}

TEST_CASE("family: a GeGLU checkpoint round-trips through the family-agnostic save and load") {
  const auto root = scratch_dir("family-geglu-io");
  auto lm = geglu_model(3);
  btx::save_hf_checkpoint(lm, root / "dense");
  const auto j = btx::hf::read_json_file(root / "dense" / "config.json");
  CHECK(j["model_type"] == "btx_geglu");
  CHECK(j["hidden_act"] == "gelu_pytorch_tanh");
  auto back = btx::load_causal_lm(root / "dense");
  CHECK(back.spec().family == "test_geglu");
  auto ids = torch::randint(0, 64, {2, 7});
  CHECK(max_abs_diff(back.forward(ids), lm.forward(ids)) == 0.0);
}

TEST_CASE("family: N copies of a GeGLU model mixed by write_plan load as an MoE equal to it") {
  const auto root = scratch_dir("family-geglu-mix");
  auto lm = geglu_model(4);
  std::vector<btx::CausalLM> copies{lm, lm, lm};
  auto sources = merge::sources_of(copies, {"a", "b", "c"});
  const auto plan = merge::BtxMix<>{}.plan(sources);
  const auto config = merge::hf_config_for(plan, lm.spec(), "float32");
  CHECK(config["model_type"] == "btx_geglu_moe");
  merge::write_plan(plan, config, root / "moe");
  auto moe = btx::load_causal_lm(root / "moe");
  CHECK(moe.is_moe());
  CHECK(moe.spec().moe->num_experts == 3);
  auto ids = torch::randint(0, 64, {2, 7});
  CHECK(max_abs_diff(moe.forward(ids), lm.forward(ids)) < 1e-5);
}

TEST_CASE("family: upcycling, surgery, router init and BTM ensembling take the GeGLU family") {
  auto lm = geglu_model(5);
  auto ids = torch::randint(0, 64, {2, 6});
  const auto expected = lm.forward(ids);
  auto up = merge::upcycled(lm, {.num_experts = 3});
  CHECK(up.spec().family == "test_geglu");
  CHECK(btx::active_experts(*up.spec().moe) == 2);  // top2, the default router
  CHECK(btx::active_experts(
            *merge::upcycled(lm, {.num_experts = 3, .router = "switch"}).spec().moe) == 1);
  CHECK(max_abs_diff(up.forward(ids), expected) < 1e-5);

  // Surgery packs the GeGLU block into experts that keep its activation.
  auto cut = lm.clone();
  auto holder = cut.as<btx::LlamaForCausalLM>();
  btx::upcycle(*holder, btx::ffn_slot(&btx::LlamaDecoderLayerImpl::mlp, "mlp"), {.num_experts = 2});
  CHECK(max_abs_diff(holder->forward(ids), expected) < 1e-5);

  const auto mean_LD = merge::mean_mlp_inputs(lm, {ids});
  CHECK(mean_LD.sizes() == torch::IntArrayRef({2, 32}));

  merge::BtmEnsemble ensemble(std::vector<btx::CausalLM>{lm, lm.clone()});
  const auto lp_BSV = ensemble.forward(ids);
  CHECK(max_abs_diff(lp_BSV, torch::log_softmax(expected, -1)) < 1e-5);
}

TEST_CASE("SkipWeightInit: loading skips the random init it would overwrite, and loads the same") {
  const auto root = scratch_dir("skip-weight-init");
  const auto spec = btx::LlamaFamily::spec(tiny_config());
  const auto lm = btx::make_model(spec);
  (void)btx::save_hf_checkpoint(lm, root / "dense");
  torch::manual_seed(3);
  const auto loaded = btx::load_causal_lm(root / "dense");
  const auto after_load = torch::rand({4});
  torch::manual_seed(3);
  (void)btx::make_model(spec);
  const auto after_make = torch::rand({4});
  // Building for a load no longer draws the init's normal numbers from the generator.
  CHECK(!torch::equal(after_load, after_make));
  const auto ids = torch::randint(0, 64, {2, 7});
  CHECK(max_abs_diff(loaded.forward(ids), lm.forward(ids)) == 0.0);
  CHECK(!btx::SkipWeightInit::skipping());
  {
    const btx::SkipWeightInit outer;
    { const btx::SkipWeightInit inner; }
    CHECK(btx::SkipWeightInit::skipping());  // the inner guard restores, not clears
  }
  CHECK(!btx::SkipWeightInit::skipping());
}
