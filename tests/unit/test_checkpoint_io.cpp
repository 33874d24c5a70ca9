// SPDX-License-Identifier: MIT
// Checkpoint folders: sharded writing + index, the folder reader's refusal of hostile or
// broken indexes, and AtomicDir's all-or-nothing output folders.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <btx/io/atomic_dir.hpp>
#include <btx/io/checkpoint_reader.hpp>
#include <btx/io/sharded_writer.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::io::FormatError;
using btx::test::has;
using btx::test::scratch_dir;

namespace {

std::map<std::string, torch::Tensor> some_tensors() {
  return {{"a.weight", torch::randn({16, 8})},
          {"b.weight", torch::randn({16, 8})},
          {"c.weight", torch::randn({4}).to(torch::kBFloat16)},
          {"d.weight", torch::arange(5, torch::kInt64)}};
}

void write_index(const fs::path& dir, const std::string& weight_map_json) {
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":0},"weight_map":)" << weight_map_json << "}";
}

std::string reader_error(const fs::path& dir) {
  try {
    btx::io::CheckpointReader r(dir);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors checkpoint: small tensors go to one model.safetensors without index") {
  auto dir = scratch_dir("single");
  auto tensors = some_tensors();
  btx::io::save_sharded(dir, tensors);
  CHECK(fs::exists(dir / "model.safetensors"));
  CHECK_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  btx::io::CheckpointReader r(dir);
  for (const auto& [name, t] : tensors) CHECK(torch::equal(r.tensor(name), t));
}

TEST_CASE("safetensors checkpoint: max shard size splits into model-0000K-of-0000N + index") {
  auto dir = scratch_dir("sharded");
  auto tensors = some_tensors();
  btx::io::save_sharded(dir, tensors, 600);  // a.weight and b.weight are 512 bytes each
  CHECK(fs::exists(dir / "model-00001-of-00002.safetensors"));
  CHECK(fs::exists(dir / "model-00002-of-00002.safetensors"));
  std::ifstream in(dir / "model.safetensors.index.json");
  auto index = nlohmann::json::parse(in);
  CHECK(index["metadata"]["total_size"].get<uint64_t>() == 512 + 512 + 8 + 40);
  CHECK(index["weight_map"]["a.weight"] == "model-00001-of-00002.safetensors");
  CHECK(index["weight_map"]["d.weight"] == "model-00002-of-00002.safetensors");
  btx::io::CheckpointReader r(dir);
  CHECK(r.names().size() == tensors.size());
  for (const auto& [name, t] : tensors) CHECK(torch::equal(r.tensor(name), t));
}

TEST_CASE("safetensors checkpoint: index shard names escaping the folder are refused") {
  auto root = scratch_dir("traversal");
  auto dir = root / "ckpt";
  fs::create_directories(dir);
  btx::io::save_safetensors(root / "x.safetensors", {{"w", torch::ones({2})}});
  write_index(dir, R"({"w":"../x.safetensors"})");
  auto e = reader_error(dir);
  CHECK(has(e, "\"w\""));
  CHECK(has(e, "../x.safetensors"));
  CHECK(has(e, "escapes"));

  write_index(dir, "{\"w\":\"" + (root / "x.safetensors").string() + "\"}");
  CHECK(has(reader_error(dir), "relative"));

  fs::create_symlink(root / "x.safetensors", dir / "link.safetensors");
  write_index(dir, R"({"w":"link.safetensors"})");
  auto s = reader_error(dir);
  CHECK(has(s, "outside the checkpoint folder"));
  CHECK(has(s, "\"w\""));
}

TEST_CASE("safetensors checkpoint: a missing shard is named with a tensor it should hold") {
  auto dir = scratch_dir("missing");
  write_index(dir, R"({"w":"model-00001-of-00002.safetensors"})");
  auto e = reader_error(dir);
  CHECK(has(e, "model-00001-of-00002.safetensors"));
  CHECK(has(e, "\"w\""));
  CHECK(has(e, "missing"));
}

TEST_CASE("safetensors checkpoint: tensors listed twice or absent from their shard are refused") {
  auto dir = scratch_dir("twice");
  btx::io::save_safetensors(dir / "s1.safetensors", {{"w", torch::ones({2})}});
  btx::io::save_safetensors(dir / "s2.safetensors",
                            {{"w", torch::ones({2})}, {"v", torch::ones({1})}});
  write_index(dir, R"({"w":"s1.safetensors","w":"s2.safetensors"})");
  CHECK(has(reader_error(dir), "duplicate key \"w\""));
  write_index(dir, R"({"w":"s1.safetensors","v":"s2.safetensors"})");
  CHECK(has(reader_error(dir), "\"w\" is stored twice"));
  write_index(dir, R"({"q":"s1.safetensors"})");
  CHECK(has(reader_error(dir), "\"q\""));
  CHECK(has(reader_error(dir), "does not contain it"));
}

TEST_CASE("safetensors checkpoint: an empty folder names the files it looked for") {
  auto dir = scratch_dir("empty");
  CHECK(has(reader_error(dir), "no model.safetensors or model.safetensors.index.json"));
}

TEST_CASE("atomic dir: nothing appears at the target until commit") {
  auto root = scratch_dir("atomic");
  {
    btx::io::AtomicDir out(root / "model");
    std::ofstream(out.path() / "config.json") << "{}";
    CHECK_FALSE(fs::exists(root / "model"));
  }  // not committed
  CHECK(fs::is_empty(root));
  {
    btx::io::AtomicDir out(root / "model");
    std::ofstream(out.path() / "config.json") << "{}";
    out.commit();
  }
  CHECK(fs::exists(root / "model" / "config.json"));
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 1);
}

TEST_CASE("atomic dir: refuses a non-empty target unless asked to overwrite") {
  auto root = scratch_dir("atomic_overwrite");
  fs::create_directories(root / "model");
  std::ofstream(root / "model" / "old.txt") << "old";
  CHECK_THROWS_WITH_AS(btx::io::AtomicDir(root / "model"), doctest::Contains("not empty"),
                       std::runtime_error);
  {
    btx::io::AtomicDir out(root / "model", /*overwrite=*/true);
    std::ofstream(out.path() / "new.txt") << "new";
    out.commit();
  }
  CHECK(fs::exists(root / "model" / "new.txt"));
  CHECK_FALSE(fs::exists(root / "model" / "old.txt"));
  CHECK(std::distance(fs::directory_iterator(root), fs::directory_iterator()) == 1);
}

TEST_CASE("atomic dir: an exception while writing leaves nothing at the target") {
  auto root = scratch_dir("atomic_throw");
  try {
    btx::io::AtomicDir out(root / "model");
    btx::io::save_sharded(out.path(), some_tensors(), 600);
    throw std::runtime_error("merge failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(fs::is_empty(root));
}
