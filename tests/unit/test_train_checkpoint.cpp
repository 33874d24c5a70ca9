// SPDX-License-Identifier: MIT
// Training checkpoints: folder layout and pruning, fallback over damaged checkpoints,
// refusal of non-finite tensors, model mismatches, skipped steps, router generators, and
// the state of each optimizer (AdamW, Adam, SGD; others refused by name).
// (Exact resume after SIGKILL: tests/python/test_resume.py.)
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/io/detail/file_hash.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/routers/sample_top1.hpp>
#include <btx/train/checkpoint.hpp>
#include <btx/train/hooks.hpp>
#include <btx/train/optimizer_state.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("btx-ckpt-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir;
}

btx::WindowSampler tiny_sampler() {
  auto stream = torch::arange(2048, torch::kInt32).remainder(61);
  return btx::WindowSampler({stream}, {}, 16, 3);
}

btx::TrainOptions tiny_options(const fs::path& dir, int64_t steps, int64_t every) {
  btx::TrainOptions o;
  o.steps = steps;
  o.batch_size = 2;
  o.warmup_steps = 2;
  o.log_every = 100;
  o.checkpoint_dir = dir.string();
  o.checkpoint_every = every;
  o.keep_checkpoints = 10;
  return o;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

bool same_tensors(const fs::path& a, const fs::path& b) {
  auto ta = btx::io::load_safetensors(a), tb = btx::io::load_safetensors(b);
  if (ta.size() != tb.size()) return false;
  for (const auto& [k, v] : ta) {
    if (!tb.count(k) || !torch::equal(v, tb.at(k))) return false;
  }
  return true;
}

bool model_matches(btx::LlamaForCausalLM& model, const fs::path& file) {
  auto t = btx::io::load_safetensors(file);
  for (const auto& p : model->named_parameters()) {
    if (!torch::equal(p.value(), t.at(p.key()))) return false;
  }
  return true;
}

torch::optim::AdamW make_opt(btx::LlamaForCausalLM& model) {
  return torch::optim::AdamW(model->parameters(), torch::optim::AdamWOptions(1e-3));
}

btx::TrainHooks sgd_hooks() {
  btx::TrainHooks h;
  h.optimizer = btx::sgd_factory(/*momentum=*/0.9);
  return h;
}

btx::TrainHooks adam_hooks() {
  btx::TrainHooks h;
  h.optimizer = [](std::vector<torch::Tensor> params, const btx::TrainOptions& o) {
    return std::make_unique<torch::optim::Adam>(std::move(params),
                                                torch::optim::AdamOptions(o.peak_lr).amsgrad(true));
  };
  return h;
}

// One optimizer step on a fixed batch, so `opt` has state for every parameter.
void one_step(btx::LlamaForCausalLM& model, torch::optim::Optimizer& opt) {
  auto ids = torch::arange(34).remainder(61).reshape({2, 17});
  opt.zero_grad();
  btx::next_token_loss(model->forward(ids.slice(1, 0, 16)), ids.slice(1, 1, 17)).backward();
  opt.step();
}

}  // namespace

TEST_CASE("checkpoint: folders step-N appear atomically, latest names the newest, old ones go") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("layout");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  auto o = tiny_options(dir, 7, 2);
  o.keep_checkpoints = 2;
  const auto first = btx::train_causal_lm(model, tiny_sampler(), o);
  CHECK(fs::is_directory(dir / "step-000006"));
  CHECK(fs::is_directory(dir / "step-000007"));  // the end always checkpoints
  CHECK_FALSE(fs::exists(dir / "step-000004"));
  CHECK(read_text(dir / "latest") == "step-000007\n");
  for (const auto* f :
       {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"})
    CHECK(fs::exists(dir / "step-000007" / f));
  CHECK(model_matches(model, dir / "step-000007" / "model.safetensors"));
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  CHECK(entries == 3);  // two checkpoints and `latest`, no temp leftovers

  // A rerun finds the finished run and trains nothing more.
  btx::LlamaForCausalLM again(btx::test::tiny_config());
  auto summary = btx::train_causal_lm(again, tiny_sampler(), o);
  CHECK(summary.resumed_from_step == 7);
  CHECK(summary.losses.size() == 7);
  // The wall time of the first run is carried over, not restarted at zero.
  CHECK(summary.seconds >= first.seconds * 0.5);
  CHECK(summary.seconds > 0.0);
  CHECK(model_matches(again, dir / "step-000007" / "model.safetensors"));
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: temp folders, a missing state.json or a truncated file fall back") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("partial");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::train_causal_lm(model, tiny_sampler(), tiny_options(dir, 4, 2));
  // Decoys newer than step 4: a writer's temp folder and a folder without state.json.
  fs::copy(dir / "step-000004", dir / "step-000006.tmp-1-deadbeef");
  fs::copy(dir / "step-000004", dir / "step-000008");
  fs::remove(dir / "step-000008" / "state.json");

  btx::LlamaForCausalLM fresh(btx::test::tiny_config());
  auto opt = make_opt(fresh);
  auto got = btx::resume_training_checkpoint(dir, *fresh, opt);
  REQUIRE(got.has_value());
  CHECK(got->first.filename() == "step-000004");
  CHECK(got->second.step == 4);
  CHECK(model_matches(fresh, dir / "step-000004" / "model.safetensors"));

  SUBCASE("a truncated tensor file: the previous checkpoint is loaded") {
    const auto file = dir / "step-000004" / "optimizer.safetensors";
    fs::resize_file(file, fs::file_size(file) / 2);
    btx::LlamaForCausalLM other(btx::test::tiny_config());
    auto opt2 = make_opt(other);
    auto prev = btx::resume_training_checkpoint(dir, *other, opt2);
    REQUIRE(prev.has_value());
    CHECK(prev->second.step == 2);
    CHECK(model_matches(other, dir / "step-000002" / "model.safetensors"));
    CHECK_THROWS_AS(btx::load_training_checkpoint(dir / "step-000004", *other, opt2),
                    btx::CorruptCheckpoint);
  }
  SUBCASE("NaN written into a checkpoint is refused, naming the tensor") {
    const auto file = dir / "step-000004" / "model.safetensors";
    auto t = btx::io::load_safetensors(file);
    for (auto& [k, v] : t) v = v.clone();
    t.at("model.norm.weight")[0] = NAN;
    fs::remove(file);
    btx::io::save_safetensors(file, t, {{"format", "btx-train-checkpoint"}});
    // The record updated too, as a writer that wrote the NaN itself would have.
    const auto state_file = dir / "step-000004" / "state.json";
    auto state = nlohmann::json::parse(std::ifstream(state_file));
    state["files"]["model.safetensors"] = fs::file_size(file);
    state["hashes"]["model.safetensors"] = btx::io::xxh3_128_file(file);
    std::ofstream(state_file) << state.dump();
    btx::LlamaForCausalLM other(btx::test::tiny_config());
    auto opt2 = make_opt(other);
    try {
      (void)btx::load_training_checkpoint(dir / "step-000004", *other, opt2);
      FAIL("no error");
    } catch (const btx::CorruptCheckpoint& e) {
      CHECK(std::string(e.what()).find("model.norm.weight") != std::string::npos);
    }
    CHECK(btx::resume_training_checkpoint(dir, *other, opt2)->second.step == 2);
  }
  SUBCASE("one flipped byte, same size: the recorded hash refuses it, the previous loads") {
    const auto file = dir / "step-000004" / "model.safetensors";
    {
      std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(-5, std::ios::end);
      const char c = char(f.get());
      f.seekp(-5, std::ios::end);
      f.put(char(c ^ 0x10));
    }
    btx::LlamaForCausalLM other(btx::test::tiny_config());
    auto opt2 = make_opt(other);
    CHECK_THROWS_WITH_AS(btx::load_training_checkpoint(dir / "step-000004", *other, opt2),
                         doctest::Contains("XXH3-128"), btx::CorruptCheckpoint);
    CHECK(btx::resume_training_checkpoint(dir, *other, opt2)->second.step == 2);
  }
  SUBCASE("a deleted file: the previous checkpoint loads") {
    fs::remove(dir / "step-000004" / "rng.safetensors");
    btx::LlamaForCausalLM other(btx::test::tiny_config());
    auto opt2 = make_opt(other);
    CHECK(btx::resume_training_checkpoint(dir, *other, opt2)->second.step == 2);
  }
  SUBCASE("nothing loadable at all is an error, not a silent fresh start") {
    fs::remove(dir / "step-000004" / "state.json");
    fs::remove(dir / "step-000002" / "rng.safetensors");
    btx::LlamaForCausalLM other(btx::test::tiny_config());
    auto opt2 = make_opt(other);
    CHECK_THROWS_WITH_AS(btx::resume_training_checkpoint(dir, *other, opt2),
                         doctest::Contains("can be loaded"), std::runtime_error);
  }
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: a different model is refused naming the tensor and the file") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("mismatch");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::train_causal_lm(model, tiny_sampler(), tiny_options(dir, 2, 2));
  auto wider = btx::test::tiny_config();
  wider.intermediate_size = 96;
  btx::LlamaForCausalLM other(wider);
  auto opt = make_opt(other);
  const std::string needle = "model.layers.0.mlp.down_proj.weight\" in checkpoint file " +
                             (dir / "step-000002" / "model.safetensors").string();
  try {
    (void)btx::resume_training_checkpoint(dir, *other, opt);
    FAIL("no error");
  } catch (const std::runtime_error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: saving refuses NaN/Inf and leaves the previous checkpoint current") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("refuse");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::train_causal_lm(model, tiny_sampler(), tiny_options(dir, 2, 2));
  auto opt = make_opt(model);
  {
    torch::NoGradGuard g;
    model->model->norm->weight[1] = INFINITY;
  }
  btx::TrainState state;
  state.step = state.next_batch = 3;
  state.losses = {1.0, 2.0, 3.0};
  CHECK_THROWS_WITH_AS(btx::save_training_checkpoint(dir, *model, opt, state),
                       doctest::Contains("model.norm.weight"), std::runtime_error);
  CHECK_FALSE(fs::exists(dir / "step-000003"));
  CHECK(read_text(dir / "latest") == "step-000002\n");
  fs::remove_all(dir);
}

TEST_CASE("trainer: a skipped non-finite step changes neither weights nor optimizer state") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("skip");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  int64_t call = 0;
  auto aux = [&]() -> torch::Tensor {
    return ++call == 3 ? torch::tensor(NAN) : torch::zeros({});  // step 3 is non-finite
  };
  auto summary = btx::train_causal_lm(model, tiny_sampler(), tiny_options(dir, 4, 1), aux);
  CHECK(summary.skipped_steps == 1);
  CHECK(std::isnan(summary.losses[2]));
  const auto s2 = dir / "step-000002", s3 = dir / "step-000003", s4 = dir / "step-000004";
  CHECK(same_tensors(s2 / "model.safetensors", s3 / "model.safetensors"));
  CHECK(same_tensors(s2 / "optimizer.safetensors", s3 / "optimizer.safetensors"));
  CHECK_FALSE(same_tensors(s3 / "optimizer.safetensors", s4 / "optimizer.safetensors"));
  const auto state3 = nlohmann::json::parse(read_text(s3 / "state.json"));
  CHECK(state3["skipped_steps"] == 1);
  CHECK(state3["losses"][2].is_null());
  fs::remove_all(dir);
}

TEST_CASE("sample_top1: seed and step travel through extra_state") {
  btx::SampleTop1 a(8, 4, {}, 5), b(8, 4, {}, 99);
  auto x = torch::randn({32, 8});
  for (int i = 0; i < 3; ++i) (void)a.route(x);
  b.load_extra_state(a.extra_state());
  CHECK(b.step() == 3);
  torch::NoGradGuard g;
  b.weight.copy_(a.weight);
  CHECK(b.seed() == 5);
  for (int i = 0; i < 3; ++i) CHECK(torch::equal(a.route(x).indices_TK, b.route(x).indices_TK));
  // A checkpoint from before the seed was saved: the step alone, the stream of b's own seed.
  btx::SampleTop1 c(8, 4, {}, 5);
  c.load_extra_state(
      {{"step", torch::tensor({int64_t(6)})}, {"generator", torch::zeros({5056}, torch::kUInt8)}});
  c.weight.copy_(a.weight);
  CHECK(c.step() == 6);
  CHECK(torch::equal(a.route(x).indices_TK, c.route(x).indices_TK));
}

TEST_CASE("checkpoint: AdamW state keeps its tensor names and carries no optimizer tag") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("adamw-format");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::train_causal_lm(model, tiny_sampler(), tiny_options(dir, 2, 2));
  const btx::io::SafetensorsFile file(dir / "step-000002" / "optimizer.safetensors");
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "btx-train-checkpoint"}});
  size_t params = 0;
  for (const auto& p : model->named_parameters()) {
    ++params;
    for (const auto* field : {".exp_avg", ".exp_avg_sq", ".step"})
      CHECK(file.contains(p.key() + field));
    CHECK_FALSE(file.contains(p.key() + ".max_exp_avg_sq"));
  }
  CHECK(file.names().size() == 3 * params);
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: an SGD run killed and resumed ends bit-identical to an unbroken one") {
  const auto unbroken_dir = fresh_dir("sgd-unbroken"), dir = fresh_dir("sgd-resumed");
  auto o = tiny_options(unbroken_dir, 6, 2);
  o.peak_lr = 0.05;
  torch::manual_seed(0);
  btx::LlamaForCausalLM unbroken(btx::test::tiny_config());
  const auto full = btx::train_causal_lm(unbroken, tiny_sampler(), o, sgd_hooks());

  o.checkpoint_dir = dir.string();
  o.on_step = [](int64_t step) {
    if (step == 3) throw std::runtime_error("killed at step 3");
  };
  torch::manual_seed(0);
  btx::LlamaForCausalLM killed(btx::test::tiny_config());
  CHECK_THROWS_WITH(btx::train_causal_lm(killed, tiny_sampler(), o, sgd_hooks()),
                    "killed at step 3");
  o.on_step = {};
  torch::manual_seed(99);  // other weights and generator: the checkpoint must restore both
  btx::LlamaForCausalLM resumed(btx::test::tiny_config());
  const auto rest = btx::train_causal_lm(resumed, tiny_sampler(), o, sgd_hooks());
  CHECK(rest.resumed_from_step == 2);
  CHECK(rest.losses == full.losses);
  CHECK(model_matches(resumed, unbroken_dir / "step-000006" / "model.safetensors"));

  const auto last = dir / "step-000006" / "optimizer.safetensors";
  CHECK(same_tensors(last, unbroken_dir / "step-000006" / "optimizer.safetensors"));
  const btx::io::SafetensorsFile file(last);
  CHECK(file.metadata().at("optimizer") == "sgd");
  CHECK(file.contains("model.norm.weight.momentum_buffer"));
  fs::remove_all(unbroken_dir);
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: Adam state round-trips, and no checkpoint resumes under another optimizer") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("adam");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::train_causal_lm(model, tiny_sampler(), tiny_options(dir, 2, 2), adam_hooks());
  const auto folder = dir / "step-000002";
  const btx::io::SafetensorsFile file(folder / "optimizer.safetensors");
  CHECK(file.metadata().at("optimizer") == "adam");
  CHECK(file.contains("model.norm.weight.max_exp_avg_sq"));  // amsgrad

  btx::LlamaForCausalLM other(btx::test::tiny_config());
  torch::optim::Adam adam(other->parameters(), torch::optim::AdamOptions(1e-3).amsgrad(true));
  CHECK(btx::load_training_checkpoint(folder, *other, adam).step == 2);
  const auto loaded = btx::optimizer_state_tensors(*other, adam);
  const auto saved = btx::io::load_safetensors(folder / "optimizer.safetensors");
  REQUIRE(loaded.size() == saved.size());
  for (const auto& [name, t] : saved) CHECK(torch::equal(loaded.at(name), t));

  auto adamw = make_opt(other);
  CHECK_THROWS_WITH_AS(btx::load_training_checkpoint(folder, *other, adamw),
                       doctest::Contains("holds adam optimizer state, but this run's optimizer "
                                         "is torch::optim::AdamW"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(btx::resume_training_checkpoint(dir, *other, adamw),
                       doctest::Contains("torch::optim::AdamW"), std::runtime_error);
  torch::optim::SGD sgd(other->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
  CHECK_THROWS_WITH_AS(btx::load_training_checkpoint(folder, *other, sgd),
                       doctest::Contains("torch::optim::SGD"), std::runtime_error);

  const auto adamw_dir = fresh_dir("adamw-under-adam");
  btx::train_causal_lm(model, tiny_sampler(), tiny_options(adamw_dir, 2, 2));
  CHECK_THROWS_WITH_AS(btx::load_training_checkpoint(adamw_dir / "step-000002", *other, adam),
                       doctest::Contains("holds adamw optimizer state"), std::runtime_error);
  fs::remove_all(dir);
  fs::remove_all(adamw_dir);
}

TEST_CASE("checkpoint: an optimizer btx does not know is refused by name, at save and up front") {
  torch::manual_seed(0);
  const auto dir = fresh_dir("rmsprop");
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  torch::optim::RMSprop rmsprop(model->parameters(), torch::optim::RMSpropOptions(1e-3));
  one_step(model, rmsprop);
  btx::TrainState state;
  state.step = state.next_batch = 1;
  state.losses = {1.0};
  try {
    btx::save_training_checkpoint(dir, *model, rmsprop, state);
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("optimizer torch::optim::RMSprop") != std::string::npos);
    CHECK(what.find("torch::optim::RMSpropParamState") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(dir / "step-000001"));

  // The trainer refuses it before the first step rather than at the first checkpoint.
  btx::TrainHooks hooks;
  hooks.optimizer = [](std::vector<torch::Tensor> params, const btx::TrainOptions& o) {
    return std::make_unique<torch::optim::RMSprop>(std::move(params),
                                                   torch::optim::RMSpropOptions(o.peak_lr));
  };
  auto o = tiny_options(dir, 2, 1);
  int64_t steps_run = 0;
  o.on_step = [&](int64_t) { ++steps_run; };
  CHECK_THROWS_WITH_AS(btx::train_causal_lm(model, tiny_sampler(), o, hooks),
                       doctest::Contains("torch::optim::RMSprop"), std::invalid_argument);
  CHECK(steps_run == 0);
  o.checkpoint_dir.clear();  // without checkpoints any optimizer trains
  CHECK(btx::train_causal_lm(model, tiny_sampler(), o, hooks).skipped_steps == 0);
  CHECK(steps_run == 2);
  fs::remove_all(dir);
}
