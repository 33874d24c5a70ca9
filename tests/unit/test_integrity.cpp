// SPDX-License-Identifier: MIT
// Nothing lost, nothing poisoned: NaN/Inf refused where btx reads weights to build
// something (io/finite_check.hpp), temporaries of dead writers collected and live ones
// kept (io/stale_temporaries.hpp), one holder per run folder and stage
// (io/folder_lock.hpp), and a finished stage whose model changed is redone.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <spawn.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <btx/io/atomic_dir.hpp>
#include <btx/io/detail/file_hash.hpp>
#include <btx/io/detail/folder_lock.hpp>
#include <btx/io/detail/stale_temporaries.hpp>
#include <btx/io/finite_check.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/merge/checkpoint_source.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/model_card.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/recipe/adopt.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_model.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::test::has;
using btx::test::scratch_dir;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// The PID of a process that has exited and been reaped.
int64_t dead_pid() {
  pid_t pid = 0;
  char arg0[] = "true";
  char* argv[] = {arg0, nullptr};
  REQUIRE(posix_spawnp(&pid, "true", nullptr, nullptr, argv, environ) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return pid;
}

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// A tiny Llama saved as a HF checkpoint in `dir`, with `poison` (when given) set to NaN at
// element [1, 2] of that tensor.
fs::path tiny_checkpoint(const fs::path& dir, const std::string& poison = "") {
  torch::manual_seed(3);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::hf::save_hf_checkpoint(*model, btx::test::tiny_config(), dir);
  if (!poison.empty()) {
    const auto file = dir / "model.safetensors";
    auto tensors = btx::io::load_safetensors(file);
    for (auto& [k, v] : tensors) v = v.clone();
    tensors.at(poison)[1][2] = NAN;
    fs::remove(file);
    btx::io::save_safetensors(file, tensors);
  }
  return dir;
}

}  // namespace

TEST_CASE("finite check: names the first NaN or Inf by tensor, file and index, per dtype") {
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kHalf, torch::kFloat64}) {
    CAPTURE(dtype);
    auto t = torch::randn({4, 5}).to(dtype);
    CHECK_NOTHROW(btx::io::check_finite(t, "w", "f.safetensors"));
    t[1][2] = NAN;
    t[3][0] = -INFINITY;
    const auto e = error_of([&] { btx::io::check_finite(t, "w", "f.safetensors"); });
    CHECK(has(e, "tensor \"w\" in f.safetensors holds NaN at [1, 2]"));
    CHECK(has(e, "2 of 20 elements"));
    CHECK_NOTHROW(btx::io::check_finite(t, "w", "f", btx::io::NonFinite::allow));
    t[1][2] = 0.0;
    CHECK(has(error_of([&] { btx::io::check_finite(t, "w", "f"); }), "-Inf at [3, 0]"));
    // A strided view goes through tensor ops and finds the same element.
    CHECK(has(error_of([&] { btx::io::check_finite(t.t(), "w", "f"); }), "-Inf at [0, 3]"));
  }
  CHECK_NOTHROW(btx::io::check_finite(torch::arange(10), "ids", "f"));  // integers: always
}

TEST_CASE("finite check: load_causal_lm and merge sources refuse a NaN, allowing is explicit") {
  const auto root = scratch_dir("integrity-finite");
  const auto good = tiny_checkpoint(root / "good");
  const auto bad = tiny_checkpoint(root / "bad", "model.layers.1.mlp.up_proj.weight");
  const std::string where =
      "tensor \"model.layers.1.mlp.up_proj.weight\" in " + (bad / "model.safetensors").string();

  auto e = error_of([&] { (void)btx::load_causal_lm(bad); });
  CHECK(has(e, where + " holds NaN at [1, 2]"));
  CHECK_NOTHROW(
      (void)btx::load_causal_lm(bad, torch::kFloat32, {}, torch::kCPU, btx::io::NonFinite::allow));

  // The FFN is copied into the Mixtral unread (file_range), the trunk is averaged: both
  // paths check.
  const auto sources = btx::merge::checkpoint_sources({good, bad});
  e = error_of([&] { (void)sources[1].file_range("model.layers.1.mlp.up_proj.weight"); });
  CHECK(has(e, where + " holds NaN at [1, 2]"));
  e = error_of([&] { (void)btx::merge::materialize(btx::merge::BtxMix<>{}.plan(sources)); });
  CHECK(has(e, where));
  std::vector<btx::merge::CheckpointSource> allowed;
  for (const auto& s : sources) allowed.push_back(s.with_non_finite(btx::io::NonFinite::allow));
  const auto mixed = btx::merge::materialize(btx::merge::BtxMix<>{}.plan(allowed));
  CHECK(mixed.size() > 0);
  fs::remove_all(root);
}

TEST_CASE("stale temporaries: a dead writer's are collected, a live one's are kept") {
  const auto root = scratch_dir("integrity-stale");
  const auto target = root / "out";
  const int64_t dead = dead_pid();
  const auto name = [&](const std::string& marker, int64_t pid, const std::string& rest) {
    return root / ("out" + marker + std::to_string(pid) + rest);
  };
  const auto stale = name(".tmp-", dead, "-aaaa");
  const auto stale_file = name(".tmp-", dead, "");  // a safetensors writer's
  const auto live_parent = name(".tmp-", int64_t(getppid()), "-bbbb");
  const auto live_self = name(".tmp-", int64_t(getpid()), "-cccc");
  const auto locked = name(".tmp-", dead, "-dddd");  // a writer on another host: its lock
  const auto other = root / ("outer.tmp-" + std::to_string(dead) + "-eeee");  // not out's
  for (const auto& d : {stale, live_parent, live_self, locked, other}) write_file(d / "x", "1");
  write_file(stale_file, "partial");
  const int fd = ::open(locked.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX) == 0);

  {
    btx::io::AtomicDir out(target);  // collects first
    write_file(out.path() / "model.txt", "new");
    out.commit();
  }
  CHECK_FALSE(fs::exists(stale));
  CHECK_FALSE(fs::exists(stale_file));
  CHECK(fs::exists(live_parent));
  CHECK(fs::exists(live_self));
  CHECK(fs::exists(locked));
  CHECK(fs::exists(other));
  ::close(fd);  // the other host's writer died: its lock is gone
  CHECK(btx::io::collect_stale_temporaries(target).size() == 1);
  CHECK_FALSE(fs::exists(locked));

  SUBCASE("a writer killed between moving the old output aside and renaming the new one") {
    fs::rename(target, name(".old-", dead, "-ffff"));
    write_file(name(".tmp-", dead, "-gggg") / "model.txt", "newer, maybe partial");
    const auto got = btx::io::collect_stale_temporaries(target);
    CHECK(got.size() == 2);
    // The old output, the only complete one, is put back; the temp is removed.
    std::ifstream in(target / "model.txt");
    std::string text;
    std::getline(in, text);
    CHECK(text == "new");
    CHECK_FALSE(fs::exists(name(".tmp-", dead, "-gggg")));
  }
  fs::remove_all(root);
}

TEST_CASE("folder lock: a second holder is refused naming the first, released on close") {
  const auto root = scratch_dir("integrity-lock");
  const btx::recipe::Run run(root / "run");
  {
    const auto lock = run.lock();
    CHECK(lock.held());
    const auto e = error_of([&] { (void)run.lock(); });
    CHECK(has(e, "run folder " + (root / "run").string() + " is in use by process " +
                     std::to_string(getpid()) + " on host "));
    const auto stage = run.claim("expert-a");
    CHECK(has(error_of([&] { (void)run.claim("expert-a"); }), "stage 'expert-a' of run folder"));
    CHECK_NOTHROW((void)run.claim("expert-b"));                   // another stage: free
    CHECK_FALSE(run.claim("expert-a", /*writer=*/false).held());  // a non-writing rank
  }
  CHECK_NOTHROW((void)run.lock());  // released with its holder
  fs::remove_all(root);
}

TEST_CASE("stage integrity: a finished stage whose model changed is redone, not trusted") {
  const auto root = scratch_dir("integrity-stage");
  const fs::path run_dir = root / "run";
  torch::manual_seed(0);
  const auto lm = btx::make_model(btx::LlamaFamily::spec(btx::test::tiny_config()));
  {
    const btx::recipe::Run run(run_dir);
    btx::recipe::save_stage_model(run, "seed", lm);
    run.mark_done("seed", {});
    CHECK(run.done("seed"));
  }
  const auto model = btx::recipe::Run(run_dir).model_dir("seed") / "model.safetensors";
  const auto bytes = fs::file_size(model);
  const auto damage = [&](const std::function<void()>& f) {
    fs::copy_file(model, root / "backup", fs::copy_options::overwrite_existing);
    f();
    const btx::recipe::Run fresh(run_dir);  // a new process's view
    CHECK(fresh.state("seed") == btx::recipe::StageState::fresh);
    fs::copy_file(root / "backup", model, fs::copy_options::overwrite_existing);
    CHECK(btx::recipe::Run(run_dir).done("seed"));
  };
  SUBCASE("truncated") {
    damage([&] { fs::resize_file(model, bytes / 2); });
  }
  SUBCASE("one byte flipped") {
    damage([&] {
      std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(std::streamoff(bytes - 3));
      const char c = char(f.get());
      f.seekp(std::streamoff(bytes - 3));
      f.put(char(c ^ 0x01));
    });
  }
  SUBCASE("deleted") {
    damage([&] { fs::remove(model); });
  }
  fs::remove_all(root);
}

TEST_CASE("finite check riding the hash pass: every element, one split between pieces too") {
  const auto root = scratch_dir("integrity-scan");
  fs::create_directories(root);
  // A header whose length leaves the data section at an odd offset, so fp32 elements
  // straddle the hash pass's 256 KiB pieces; element k straddles the first boundary.
  const int64_t n = 200000;
  std::string header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(n) +
                       "],\"data_offsets\":[0," + std::to_string(4 * n) + "]}}";
  while ((8 + header.size()) % 4 != 1) header += ' ';
  const uint64_t data_start = 8 + header.size();
  const int64_t k = int64_t((262144 - data_start) / 4);
  REQUIRE(data_start + 4 * uint64_t(k) < 262144);
  REQUIRE(data_start + 4 * uint64_t(k) + 4 > 262144);
  const auto write = [&](int64_t bad) {
    auto values = torch::ones({n});
    if (bad >= 0) values[bad] = INFINITY;
    std::ofstream out(root / "model.safetensors", std::ios::binary | std::ios::trunc);
    const uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header;
    out.write(static_cast<const char*>(values.data_ptr()), 4 * n);
  };
  write_file(root / "config.json", "{}");
  for (const int64_t bad : {k, int64_t(0), n - 1, int64_t(131072)}) {
    CAPTURE(bad);
    write(bad);
    const auto e = error_of([&] { (void)btx::merge::source_file_hashes(root); });
    CHECK(has(e, "tensor \"w\" in " + (root / "model.safetensors").string() + " holds +Inf at [" +
                     std::to_string(bad) + "]"));
    const auto allowed = btx::merge::source_file_hashes(root, btx::io::NonFinite::allow);
    CHECK(allowed.at("model.safetensors") == btx::io::xxh3_128_file(root / "model.safetensors"));
  }
  write(-1);
  CHECK(btx::merge::source_file_hashes(root).at("model.safetensors") ==
        btx::io::xxh3_128_file(root / "model.safetensors"));
  fs::remove_all(root);
}

TEST_CASE("adopt stage: another run's intact stage is shared by hard links, a damaged one not") {
  const auto root = scratch_dir("adopt-stage");
  torch::manual_seed(0);
  const auto lm = btx::make_model(btx::LlamaFamily::spec(btx::test::tiny_config()));
  const btx::recipe::Run from(root / "a"), to(root / "b"), other(root / "c");
  btx::recipe::save_stage_model(from, "seed", lm);
  from.mark_done("seed", {{"flops", 1.5}});
  fs::create_directories(from.checkpoint_dir("seed") / "step-1");  // left out: finished
  CHECK(btx::recipe::adopt_stage(from, to, "seed"));
  CHECK(to.done("seed"));
  CHECK(to.record("seed")["flops"] == 1.5);
  CHECK_FALSE(fs::exists(to.checkpoint_dir("seed")));
  const auto shard = [](const btx::recipe::Run& r) {
    return r.model_dir("seed") / "model.safetensors";
  };
  CHECK(fs::equivalent(shard(from), shard(to)));                  // one file, two names
  CHECK_FALSE(btx::recipe::adopt_stage(from, to, "seed"));        // already there: left alone
  CHECK_FALSE(btx::recipe::adopt_stage(from, other, "experts"));  // not finished at the source
  fs::resize_file(shard(from), fs::file_size(shard(from)) / 2);   // damaged (and so is b's)
  CHECK_FALSE(btx::recipe::adopt_stage(btx::recipe::Run(root / "a"), other, "seed"));
  CHECK_FALSE(fs::exists(other.stage_dir("seed")));
  fs::remove_all(root);
}
