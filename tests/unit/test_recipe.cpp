// SPDX-License-Identifier: MIT
// The BTX recipe as library code (btx/recipe/): stage records (fresh, resumable, done;
// stage.json only once a stage is finished), lineage records, compute accounting and
// budget matching, Mix's experts per token from the router, and worker dispatch.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/io/safetensors_reader.hpp>
#include <btx/merge/branch.hpp>
#include <btx/merge/upcycle_model.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/recipe/worker_dispatch.hpp>
#include <btx/recipe/workers.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
namespace recipe = btx::recipe;
using btx::test::has;
using btx::test::scratch_dir;
using btx::test::tiny_config;

namespace {

btx::CausalLM tiny_seed(uint64_t seed = 0) {
  torch::manual_seed(seed);
  return btx::make_model(btx::LlamaFamily::spec(tiny_config()));
}

btx::WindowSampler recipe_sampler(uint64_t seed = 0) {
  return btx::WindowSampler({torch::randint(0, 64, {512}, torch::kInt32)}, {}, 8, seed);
}

std::string recipe_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("recipe run: a stage goes fresh, resumable, done, mark_done renames stage.json in last") {
  const recipe::Run run(scratch_dir("recipe-run"));
  CHECK(run.state("seed") == recipe::StageState::fresh);
  fs::create_directories(run.checkpoint_dir("seed"));
  std::ofstream(run.checkpoint_dir("seed") / "latest") << "step-000002\n";
  CHECK(run.state("seed") == recipe::StageState::resumable);
  CHECK_FALSE(run.skip_if_done("seed"));
  CHECK(has(recipe_error_of([&] { (void)run.record("seed"); }), "is not finished"));

  run.mark_done("seed", {{"flops", 12.5}});
  CHECK(run.state("seed") == recipe::StageState::done);
  CHECK(run.skip_if_done("seed"));
  CHECK(run.record("seed") == nlohmann::json{{"stage", "seed"}, {"flops", 12.5}});
  CHECK_FALSE(fs::exists(run.stage_dir("seed") / "stage.json.tmp"));
  CHECK_FALSE(fs::exists(run.checkpoint_dir("seed")));  // a finished stage never resumes

  CHECK(
      has(recipe_error_of([&] { run.mark_done("bad", nlohmann::json::array()); }), "JSON object"));
  CHECK_FALSE(fs::exists(run.record_path("bad")));
  CHECK(has(recipe_error_of([&] { (void)run.stage_dir("../x"); }), "plain folder name"));
  CHECK(has(recipe_error_of([&] { (void)run.stage_dir(""); }), "plain folder name"));
}

TEST_CASE("recipe train_stage: no stage.json while training, a killed stage resumes, done skips") {
  const recipe::Run run(scratch_dir("recipe-train"),
                        {.batch_size = 2, .log_every = 2, .checkpoint_every = 2});
  const auto sampler = recipe_sampler();
  const recipe::StageBudget budget{.steps = 6, .lr = 1e-3, .warmup = 1};
  auto model = tiny_seed();
  recipe::StageOptions crash;
  int64_t checked = 0;
  crash.on_step = [&](int64_t step) {
    CHECK_FALSE(fs::exists(run.record_path("seed")));  // never before the stage is finished
    ++checked;
    if (step == 3) throw std::runtime_error("injected crash");
  };
  CHECK_THROWS_WITH(recipe::train_stage(run, "seed", model, sampler, budget, crash),
                    "injected crash");
  CHECK(checked == 4);
  CHECK(run.state("seed") == recipe::StageState::resumable);

  auto resumed = tiny_seed(1);
  const auto record = recipe::train_stage(run, "seed", resumed, sampler, budget);
  CHECK(run.state("seed") == recipe::StageState::done);
  CHECK(record.at("resumed_from_step") == 2);
  CHECK(record.at("steps") == 6);
  CHECK(record.at("tokens") == 6 * 2 * 8);
  CHECK(record.at("flops").get<double>() ==
        doctest::Approx(6 * 2 * 8 * btx::training_flops_per_token(tiny_config(), 8)));
  CHECK(fs::exists(run.model_dir("seed") / "config.json"));

  // Finished: a third call trains nothing and hands back the saved weights.
  auto fresh = tiny_seed(2);
  recipe::StageOptions must_not_train;
  must_not_train.on_step = [](int64_t) { FAIL("a finished stage trained again"); };
  CHECK(recipe::train_stage(run, "seed", fresh, sampler, budget, must_not_train) == record);
  CHECK(btx::merge::weights_fingerprint(fresh.module()) ==
        btx::merge::weights_fingerprint(resumed.module()));
}

TEST_CASE("recipe lineage: Branch and expert records survive a JSON round trip") {
  btx::merge::ExpertInfo info{"code", "code", "seed", "0123456789abcdef", 1, 5000, 20, {}};
  info.flops = 1.5e12;
  const auto back =
      nlohmann::json::parse(nlohmann::json(info).dump()).get<btx::merge::ExpertInfo>();
  CHECK(back == info);
  // Records written before "flops" existed still read, with 0.
  const auto old =
      nlohmann::json{{"name", "math"}, {"domain", "math"}}.get<btx::merge::ExpertInfo>();
  CHECK(old.flops == 0.0);
  CHECK_THROWS_AS(nlohmann::json({{"name", "x"}, {"domain", "x"}, {"flops", -1.0}})
                      .get<btx::merge::ExpertInfo>(),
                  std::invalid_argument);

  recipe::BranchRecord record{"seed", "feedface", {info, back}};
  record.experts[1].name = "math";
  CHECK(nlohmann::json::parse(nlohmann::json(record).dump()).get<recipe::BranchRecord>() == record);
  CHECK(record.names() == std::vector<std::string>{"code", "math"});
  CHECK(has(recipe_error_of([&] { (void)record.expert("wiki"); }), "made no expert 'wiki'"));

  // An expert stage of an older run (no "expert" field) reads from its top-level fields.
  const recipe::Run run(scratch_dir("recipe-lineage"));
  run.mark_done(
      recipe::expert_stage("math"),
      {{"domain", "math"}, {"parent", "seed"}, {"steps", 7}, {"tokens", 70}, {"flops", 3.0}});
  const auto read = recipe::expert_info(run, "math");
  CHECK(read.name == "math");
  CHECK(read.parent == "seed");
  CHECK(read.steps_trained == 7);
  CHECK(read.tokens_trained == 70);
  CHECK(read.flops == 3.0);
}

TEST_CASE(
    "recipe branch stage: records each expert's parent fingerprint and refuses a changed seed") {
  const recipe::Run run(scratch_dir("recipe-branch"));
  const auto seed = tiny_seed();
  const auto experts = recipe::branch_stage(run, seed, {"math", "code"});
  const auto record = recipe::branch_record(run);
  const auto fingerprint = btx::merge::weights_fingerprint(seed.module());
  CHECK(record.parent == "seed");
  CHECK(record.parent_fingerprint == fingerprint);
  REQUIRE(record.experts.size() == 2);
  for (const auto& e : record.experts) CHECK(e.seed_hash == fingerprint);
  CHECK(record.experts[1].branch_index == 1);
  CHECK(experts[1].info == record.experts[1]);
  // A worker rebuilds its expert from the seed: same weights, own storage.
  const auto rebuilt = recipe::branched_expert(run, seed, "code");
  CHECK(btx::merge::weights_fingerprint(rebuilt.model.module()) == fingerprint);
  CHECK(rebuilt.model.ptr() != seed.ptr());

  const auto other = tiny_seed(7);
  CHECK(has(recipe_error_of([&] {
              (void)recipe::branch_stage(run, other, {"math", "code"});
            }),
            "changed since the Branch stage"));
  CHECK(has(recipe_error_of([&] { (void)recipe::branched_expert(run, other, "code"); }),
            "changed since the Branch stage"));
  CHECK(has(recipe_error_of([&] { (void)recipe::branch_stage(run, seed, {"math"}); }),
            "other experts"));
}

TEST_CASE("recipe compute: active experts come from the router, budgets match by hand") {
  btx::MoEConfig o;
  o.num_experts = 4;
  const auto k_of = [&](const std::string& router) {
    o.router = router;
    return recipe::active_experts(o);
  };
  CHECK(k_of("top1") == 1);
  CHECK(k_of("top2") == 2);
  CHECK(k_of("topk:3") == 3);
  CHECK(k_of("topk") == 2);  // its option k, 2 unless given
  o.router = {"topk", {{"k", 4}}};
  CHECK(recipe::active_experts(o) == 4);
  CHECK(k_of("switch") == 1);
  CHECK(k_of("sample_top1") == 1);
  CHECK(k_of("soft") == 4);

  // tiny_config: D=32, F=64, L=2. An MoE of E=4, k=2 adds per layer one more expert's FFN
  // (3*D*F = 6144) and a router (D*E = 128); x L=2, x2 (forward), x3 (training) = 75264.
  const auto dense = btx::LlamaFamily::spec(tiny_config());
  o.router = "top2";
  CHECK(recipe::flops_per_token(dense, 16, o) - recipe::flops_per_token(dense, 16) ==
        doctest::Approx(75264.0));
  CHECK(recipe::flops_per_token(recipe::moe_spec(dense, o), 16) ==
        doctest::Approx(recipe::flops_per_token(dense, 16, o)));

  std::vector<btx::merge::ExpertInfo> experts(2);
  experts[0].flops = 1e9;
  experts[1].flops = 2e9;
  const double finetune = recipe::planned_flops(10, 512, 6e5);  // 10 x 512 x 6e5 = 3.072e9
  CHECK(finetune == doctest::Approx(3.072e9));
  CHECK(recipe::btx_budget_flops(experts, finetune) == doctest::Approx(6.072e9));
  // 6.072e9 / (512 tokens x 1000 FLOPs) = 11859.375 -> 11859 steps.
  CHECK(recipe::steps_for_budget(6.072e9, 1000.0, 512) == 11859);
  CHECK(recipe::steps_for_budget(6.0e9, 1000.0, 512) == 11719);  // 11718.75 rounds up
  CHECK(recipe::steps_for_budget(1.0, 1e6, 10) == 1);            // never zero steps
  CHECK_THROWS_AS(recipe::steps_for_budget(1e9, 0.0, 512), std::invalid_argument);
  CHECK_THROWS_AS(recipe::btx_budget_flops({}, 1.0), std::invalid_argument);
}

namespace {
// A merge choice from btx-merge's key names (method, averaging, router_init, their options).
btx::merge::MergeChoice merge_choice(const nlohmann::json& keys) {
  return btx::merge::read_merge_choice(keys);
}
}  // namespace

TEST_CASE("recipe mix: experts per token in the written config come from the router") {
  const auto seed = tiny_seed();
  const auto experts = recipe::branch(seed, {"a", "b", "c"});
  for (const auto& [router, k] :
       std::vector<std::pair<std::string, int64_t>>{{"top1", 1}, {"topk:3", 3}, {"soft", 4}}) {
    CAPTURE(router);
    const recipe::Run run(scratch_dir("recipe-mix-" + std::to_string(k)));
    const auto mixed = recipe::mix_stage(run, experts, seed, {.moe = {.router = router}});
    CHECK(mixed.is_moe());
    const auto config = read_json(run.model_dir("mix") / "config.json");
    CHECK(config.at("num_experts_per_tok") == k);
    CHECK(config.at("num_local_experts") == 4);
    CHECK(run.record("mix").at("experts_per_token") == k);
    CHECK(run.record("mix").at("experts") == std::vector<std::string>{"a", "b", "c", "seed"});
    // A rerun loads the same model, routed by the same router.
    const auto again = recipe::mix_stage(run, experts, seed, {.moe = {.router = router}});
    auto ids = torch::randint(0, 64, {1, 6});
    CHECK(btx::test::max_abs_diff(again.forward(ids), mixed.forward(ids)) < 1e-6);
  }
  CHECK(has(
      recipe_error_of([&] {
        (void)recipe::mix(experts, seed, {.choice = merge_choice({{"router_init", "learned"}})});
      }),
      "router init 'learned' is not one of normal, zero, hidden"));
  CHECK(
      has(recipe_error_of([&] {
            (void)recipe::mix(experts, seed, {.choice = merge_choice({{"router_init", "hidden"}})});
          }),
          "one sample of token ids per expert"));
}

TEST_CASE("recipe workers: dispatch by kind, unknown kinds and options fail naming what exists") {
  std::vector<std::string> ran;
  recipe::WorkerTable table;
  table.add("expert", {"expert"}, [&](const recipe::WorkerArgs& a) {
    ran.push_back("expert " + std::to_string(a.index("expert", "SLURM_ARRAY_TASK_ID")));
  });
  table.add("dense", {}, [&](const recipe::WorkerArgs&) { ran.push_back("dense"); });
  CHECK(has(recipe_error_of([&] { table.add("dense", {}, [](const recipe::WorkerArgs&) {}); }),
            "registered twice"));

  const char* argv[] = {"prog", "--worker", "expert", "--expert", "1", "--run-dir", "/tmp/r"};
  const auto args = recipe::parse_worker_args(7, argv);
  REQUIRE(args.has_value());
  CHECK(args->kind == "expert");
  CHECK(args->run_dir == "/tmp/r");
  table.run(*args);
  CHECK(ran == std::vector<std::string>{"expert 1"});

  const char* plain[] = {"prog", "config.yaml", "--quick"};
  CHECK_FALSE(recipe::parse_worker_args(3, plain).has_value());
  const char* no_dir[] = {"prog", "--worker", "dense"};
  CHECK(
      has(recipe_error_of([&] { (void)recipe::parse_worker_args(3, no_dir); }), "needs --run-dir"));

  CHECK(recipe_error_of([&] {
          table.run({"finetune", "/tmp/r", {}});
        }) == "unknown worker 'finetune' (known: dense, expert)");
  CHECK(has(recipe_error_of([&] {
              table.run({"dense", "/tmp/r", {{"router", "top2"}}});
            }),
            "worker 'dense' takes no option --router (it takes none)"));
  const recipe::Run run(scratch_dir("recipe-dispatch"));
  CHECK(has(recipe_error_of([&] { (void)table.job(run, "x", "nope"); }), "unknown worker 'nope'"));

  // The job's command line is the one a Slurm array task or test_faults.py expects.
  const auto job = table.job(run, "expert-code", "expert", {{"expert", "1"}});
  CHECK(job.stage == "expert-code");
  CHECK(std::vector<std::string>(job.argv.begin() + 1, job.argv.end()) ==
        std::vector<std::string>{"--worker", "expert", "--expert", "1", "--run-dir",
                                 run.dir().string()});

  // Without --expert the index comes from SLURM_ARRAY_TASK_ID.
  ::setenv("SLURM_ARRAY_TASK_ID", "2", 1);
  table.run({"expert", "/tmp/r", {}});
  ::setenv("SLURM_ARRAY_TASK_ID", "two", 1);
  CHECK(has(recipe_error_of([&] { table.run({"expert", "/tmp/r", {}}); }), "non-negative integer"));
  ::unsetenv("SLURM_ARRAY_TASK_ID");
  CHECK(has(recipe_error_of([&] {
              table.run({"expert", "/tmp/r", {}});
            }),
            "needs --expert I or SLURM_ARRAY_TASK_ID"));
  CHECK(ran == std::vector<std::string>{"expert 1", "expert 2"});
}

TEST_CASE("recipe run_workers: a failed job is reported on its own and the others finish") {
  const recipe::Run run(scratch_dir("recipe-workers"));
  run.mark_done("old", {});
  const auto finish = [&](const std::string& stage) {
    return "echo '[" + stage + "] step 1/1' && echo '{}' > " + run.record_path(stage).string();
  };
  const auto report = recipe::run_workers(run,
                                          {{"good", {"/bin/sh", "-c", finish("good")}},
                                           {"crash", {"/bin/sh", "-c", "exit 3"}},
                                           {"lazy", {"/bin/sh", "-c", "true"}},
                                           {"old", {"/bin/sh", "-c", "exit 1"}}},
                                          {.poll = std::chrono::milliseconds(20)});
  CHECK_FALSE(report.ok());
  CHECK(report.finished == std::vector<std::string>{"good"});
  CHECK(report.skipped == std::vector<std::string>{"old"});
  REQUIRE(report.failed.size() == 2);
  CHECK(has(report.failed[0], "crash exited with code 3"));
  CHECK(has(report.failed[0], (run.stage_dir("crash") / "log.txt").string()));
  CHECK(has(report.failed[1], "lazy exited 0 without finishing its stage"));
  CHECK(recipe::last_progress_line(run.stage_dir("good") / "log.txt") == "[good] step 1/1");
}

TEST_CASE("recipe train_stage: freeze_experts trains routers and trunk, leaves the experts") {
  const recipe::Run run(scratch_dir("recipe-freeze"), {.batch_size = 2, .log_every = 2});
  const auto moe = btx::merge::upcycled(tiny_seed(), {.num_experts = 3, .router = "top2"});
  std::vector<torch::Tensor> experts_before, routers_before;
  for (const auto& [name, layer] : btx::moe_layers(moe.module())) {
    for (const auto& p : layer->expert_parameters()) experts_before.push_back(p.detach().clone());
  }
  for (const auto& p : moe.module().named_parameters()) {
    if (p.key().find("gate.") != std::string::npos)
      routers_before.push_back(p.value().detach().clone());
  }
  REQUIRE_FALSE(routers_before.empty());
  recipe::StageOptions frozen;
  frozen.freeze_experts = true;
  const auto record = recipe::train_stage(run, "btx-top2", moe, recipe_sampler(),
                                          {.steps = 3, .lr = 1e-2, .warmup = 1}, frozen);
  CHECK(record.at("frozen_experts") == true);
  size_t i = 0;
  for (const auto& [name, layer] : btx::moe_layers(moe.module())) {
    for (const auto& p : layer->expert_parameters()) CHECK(torch::equal(p, experts_before[i++]));
  }
  i = 0;
  bool router_moved = false;
  for (const auto& p : moe.module().named_parameters()) {
    if (p.key().find("gate.") != std::string::npos)
      router_moved |= !torch::equal(p.value(), routers_before[i++]);
  }
  CHECK(router_moved);
  // A dense model has no experts to freeze: refused, naming the stage.
  CHECK(has(recipe_error_of([&] {
              recipe::train_stage(run, "dense", tiny_seed(), recipe_sampler(), {.steps = 1},
                                  frozen);
            }),
            "stage 'dense' freezes experts, but its model is dense"));
}

namespace {

// Experts a, b, c branched from `seed`, layer 0's up_proj filled with 1, 2, 3.
constexpr const char* kUpProj = "model.layers.0.mlp.up_proj.weight";
std::vector<recipe::Expert> experts_with_marked_up_proj(const btx::CausalLM& seed) {
  auto experts = recipe::branch(seed, {"a", "b", "c"});
  torch::NoGradGuard no_grad;
  for (size_t j = 0; j < experts.size(); ++j) {
    experts[j].model.module().named_parameters()[kUpProj].fill_(double(j + 1));
  }
  return experts;
}

// Every tensor of stage `stage`'s checkpoint, as written.
std::map<std::string, torch::Tensor> stage_tensors(const recipe::Run& run,
                                                   const std::string& stage) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& f : fs::directory_iterator(run.model_dir(stage))) {
    if (f.path().extension() == ".safetensors") tensors.merge(btx::io::load_safetensors(f.path()));
  }
  return tensors;
}

}  // namespace

TEST_CASE("recipe mix: blending makes expert n of chunk n of every source's FFN") {
  const auto seed = tiny_seed();
  const auto experts = experts_with_marked_up_proj(seed);
  const recipe::Run run(scratch_dir("recipe-mix-blend"));
  (void)recipe::mix_stage(run, experts, seed, {.choice = merge_choice({{"method", "blend"}})});
  CHECK(run.record("mix").at("experts") ==
        std::vector<std::string>{"blend-0", "blend-1", "blend-2", "blend-3"});
  CHECK(run.record("mix").at("experts_from") == "blend");
  const auto tensors = stage_tensors(run, "mix");
  const auto seed_up = seed.module().named_parameters()[kUpProj];
  const int64_t I = seed_up.size(0), w = I / 4;
  for (int64_t n = 0; n < 4; ++n) {
    CAPTURE(n);
    const auto w3_FD =
        tensors.at("model.layers.0.block_sparse_moe.experts." + std::to_string(n) + ".w3.weight");
    REQUIRE(w3_FD.size(0) == I);
    // Rows [j*w, (j+1)*w): chunk n of source j (experts a, b, c filled with 1, 2, 3; the seed).
    for (int64_t j = 0; j < 3; ++j) {
      CHECK(torch::all(w3_FD.slice(0, j * w, (j + 1) * w) == double(j + 1)).item<bool>());
    }
    CHECK(torch::equal(w3_FD.slice(0, 3 * w, 4 * w), seed_up.slice(0, n * w, (n + 1) * w)));
  }
  CHECK(has(recipe_error_of([&] {
              (void)recipe::mix(
                  experts, seed,
                  {.choice = merge_choice({{"router_init", "hidden"}, {"method", "blend"}})});
            }),
            "does not make each expert from one source"));
}

TEST_CASE("recipe mix: splitting cuts every source's FFN into narrower experts") {
  const auto seed = tiny_seed();
  const auto experts = experts_with_marked_up_proj(seed);
  const recipe::MixOptions options{.choice = merge_choice({{"method", "split"}, {"chunks", 2}}),
                                   .moe = {.router = "topk:4"}};
  const recipe::Run run(scratch_dir("recipe-mix-split"));
  const auto mixed = recipe::mix_stage(run, experts, seed, options);
  CHECK(run.record("mix").at("experts") ==
        std::vector<std::string>{"a.0", "a.1", "b.0", "b.1", "c.0", "c.1", "seed.0", "seed.1"});
  const int64_t I = seed.spec().shape.intermediate_size, w = I / 2;
  const auto config = read_json(run.model_dir("mix") / "config.json");
  CHECK(config.at("num_local_experts") == 8);
  CHECK(config.at("num_experts_per_tok") == 4);
  CHECK(config.at("intermediate_size") == w);
  const auto tensors = stage_tensors(run, "mix");
  const auto seed_up = seed.module().named_parameters()[kUpProj];
  for (int64_t e = 0; e < 8; ++e) {
    CAPTURE(e);
    const auto w3_FD =
        tensors.at("model.layers.0.block_sparse_moe.experts." + std::to_string(e) + ".w3.weight");
    REQUIRE(w3_FD.size(0) == w);
    const int64_t source = e / 2, chunk = e % 2;
    if (source < 3) {
      CHECK(torch::all(w3_FD == double(source + 1)).item<bool>());
    } else {
      CHECK(torch::equal(w3_FD, seed_up.slice(0, chunk * w, (chunk + 1) * w)));
    }
  }
  // Top-4 of 8 half-width experts runs as much FFN per token as top-2 of 4 full ones.
  const auto moe = recipe::mixed_moe(options, 4, 8, I);
  CHECK(moe.expert_size == w);
  auto unsplit = moe;
  unsplit.num_experts = 4;
  unsplit.expert_size = 0;
  unsplit.router = "top2";
  CHECK(recipe::flops_per_token(seed.spec(), 16, moe) ==
        doctest::Approx(recipe::flops_per_token(seed.spec(), 16, unsplit)).epsilon(0.01));
  // A rerun loads the same split model.
  const auto again = recipe::mix_stage(run, experts, seed, options);
  auto ids = torch::randint(0, 64, {1, 6});
  CHECK(btx::test::max_abs_diff(again.forward(ids), mixed.forward(ids)) < 1e-6);
}
