// SPDX-License-Identifier: MIT
// Replays the fuzzers' seed corpora and every input a fuzzer ever crashed on
// (tests/fuzz/regressions/<target>/) through the same bodies as the libFuzzer targets:
// each must be refused with the documented error or read consistently, never crash.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../fuzz/fuzz_targets.hpp"
#include "../fuzz/fuzz_tool_targets.hpp"

namespace {

namespace fs = std::filesystem;

// The corpus and regression files of one fuzz target, sorted for stable output.
std::vector<fs::path> inputs_of(const std::string& target) {
  std::vector<fs::path> out;
  for (const char* kind : {"corpus", "regressions"}) {
    const auto dir = fs::path(BTX_SOURCE_DIR) / "tests" / "fuzz" / kind / target;
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_regular_file()) out.push_back(e.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string bytes_of(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <class Body>
void replay(const std::string& target, Body body) {
  const auto files = inputs_of(target);
  REQUIRE_FALSE(files.empty());  // the seed corpus is committed
  for (const auto& f : files) {
    INFO("input " << f.string());
    const auto bytes = bytes_of(f);
    CHECK_NOTHROW(body(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  }
}

}  // namespace

TEST_CASE("fuzz inputs: safetensors seeds and past crashes are refused or read consistently") {
  replay("safetensors", btx::fuzz::safetensors_bytes);
}

TEST_CASE("fuzz inputs: index seeds and past crashes never read a shard outside the folder") {
  replay("index", btx::fuzz::index_bytes);
}

TEST_CASE("fuzz inputs: config seeds and past crashes are refused or round-trip") {
  replay("config", btx::fuzz::config_bytes);
}

TEST_CASE("fuzz inputs: YAML and JSON config seeds and past crashes are refused or round-trip") {
  replay("yaml", btx::fuzz::yaml_bytes);
}

TEST_CASE("fuzz inputs: btx-pipeline config seeds and past crashes are refused or read back") {
  replay("pipeline_config", btx::fuzz::pipeline_config_bytes);
}

TEST_CASE("fuzz inputs: btx-merge config seeds and past crashes are refused or keep promises") {
  replay("merge_config", btx::fuzz::merge_config_bytes);
}

TEST_CASE("fuzz inputs: the index seeds reach both outcomes (reads and refusals)") {
  // Pins that the corpus exercises the traversal checks rather than failing earlier.
  const auto dir = fs::path(BTX_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / "index";
  const btx::fuzz::IndexFolder folder;
  const auto opens = [&](const char* seed) {
    const auto bytes = bytes_of(dir / seed);
    // run() swallows refusals; reopen to see which outcome it was.
    folder.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    try {
      btx::io::CheckpointReader reader(folder.dir());
      return true;
    } catch (const btx::io::FormatError&) {
      return false;
    }
  };
  CHECK(opens("two_shards"));
  CHECK(opens("subdir"));
  CHECK_FALSE(opens("dotdot"));
  CHECK_FALSE(opens("symlink_escape"));
  CHECK_FALSE(opens("symlink_dir"));
  CHECK_FALSE(opens("absolute"));
  CHECK_FALSE(opens("duplicate_tensor"));
}

TEST_CASE("fuzz inputs: the tools' config seeds reach both outcomes (accepted and refused)") {
  // The promises on an accepted config (round trips, invariants) need accepted seeds.
  const auto dir = fs::path(BTX_SOURCE_DIR) / "tests" / "fuzz" / "corpus";
  const auto accepted = [&](const char* target, const char* seed, auto check) {
    try {
      check(btx::tools::parse_config_text(bytes_of(dir / target / seed), seed,
                                          btx::fuzz::fuzz_yaml_limits()));
      return true;
    } catch (const std::invalid_argument&) {
      return false;
    }
  };
  namespace bp = btx::pipeline;
  const auto pipeline = [&](const char* seed) {
    return accepted("pipeline_config", seed, [](const nlohmann::json& j) {
      const auto c = bp::apply_config(bp::default_config(), j);
      bp::validate(c, btx::fuzz::pipeline_seed_shape(c));
    });
  };
  const auto merge = [&](const char* seed) {
    return accepted("merge_config", seed,
                    [](const nlohmann::json& j) { (void)btx::merge_tool::parse_merge_config(j); });
  };
  const auto yaml = [&](const char* seed) {
    return accepted("yaml", seed, [](const nlohmann::json&) {});
  };
  CHECK(pipeline("full"));
  CHECK(pipeline("faults"));
  CHECK(pipeline("seed_checkpoint"));
  CHECK_FALSE(pipeline("typo"));
  CHECK_FALSE(pipeline("vocab_mismatch"));
  CHECK(merge("random_top2"));
  CHECK(merge("hidden_text_json"));
  CHECK(merge("shared_expert"));
  CHECK_FALSE(merge("bad_density"));
  CHECK_FALSE(merge("no_base"));
  CHECK(yaml("mergekit_moe"));
  CHECK(yaml("anchors"));
  CHECK_FALSE(yaml("alias_bomb"));  // 10^10 values (the tools' limit, 10^6, takes seconds)
  CHECK_FALSE(yaml("unclosed"));
}
