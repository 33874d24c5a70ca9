// SPDX-License-Identifier: MIT
// What a checkpoint carries besides weights: content hashes of files (XXH3-128 as xxhsum
// prints it), which tokenizer differences matter, and the model card's Markdown pieces.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <btx/hf/model_card.hpp>
#include <btx/hf/side_files.hpp>
#include <btx/io/detail/file_hash.hpp>
#include <btx/merge/model_card.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::test::has;
using btx::test::scratch_dir;

namespace {
void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}
}  // namespace

TEST_CASE("file hash: XXH3-128 as xxhsum -H2 prints it, over files larger than one chunk") {
  const auto dir = scratch_dir("file-hash");
  write(dir / "empty", "");
  CHECK(btx::io::xxh3_128_file(dir / "empty") == "99aa06d3014798d86001c324468d497f");
  // 20 MB: read in three chunks, hashed as one buffer would be.
  std::string big(20u << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char((i * 2654435761u) >> 13);
  write(dir / "big", big);
  const XXH128_hash_t h = XXH3_128bits(big.data(), big.size());
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", (unsigned long long)h.high64,
                (unsigned long long)h.low64);
  CHECK(btx::io::xxh3_128_file(dir / "big") == hex);
  big[12345678] ^= 1;  // one bit anywhere changes it
  write(dir / "big2", big);
  CHECK(btx::io::xxh3_128_file(dir / "big2") != hex);
  CHECK_THROWS_WITH_AS(btx::io::xxh3_128_file(dir / "missing"), doctest::Contains("missing"),
                       btx::io::FormatError);
}

TEST_CASE("side files: tokenizer differences that change ids or special tokens are named") {
  const auto root = scratch_dir("side-files");
  const auto a = root / "a", b = root / "b";
  const std::string tokenizer =
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}, "added_tokens": [],
          "truncation": null, "padding": null})";
  for (const auto& d : {a, b}) {
    write(d / "tokenizer.json", tokenizer);
    write(d / "tokenizer_config.json", R"({"eos_token": "</s>", "model_max_length": 512})");
    write(d / "chat_template.jinja", d == a ? "A" : "B");
    write(d / "additional_chat_templates" / "tool.jinja", "T");
  }
  CHECK_FALSE(btx::hf::tokenizer_difference(a, b).has_value());  // templates do not count
  const auto files = btx::hf::side_files_in(a);
  CHECK(files.size() == 4);
  CHECK(files.back().filename() == "additional_chat_templates");

  // Runtime settings and model_max_length are not the vocabulary.
  write(b / "tokenizer.json",
        R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}, "added_tokens": [],
            "truncation": {"max_length": 8}, "padding": null})");
  write(b / "tokenizer_config.json",
        R"({"eos_token": {"content": "</s>"}, "model_max_length": 9})");
  CHECK_FALSE(btx::hf::tokenizer_difference(a, b).has_value());

  write(b / "tokenizer.json",
        R"({"model": {"type": "BPE", "vocab": {"a": 1, "b": 0}}, "added_tokens": []})");
  auto why = btx::hf::tokenizer_difference(a, b);
  REQUIRE(why.has_value());
  CHECK(has(*why, "tokenizer.json (its \"model\")"));
  CHECK(has(*why, a.string()));
  write(b / "tokenizer.json", tokenizer);

  write(b / "special_tokens_map.json", R"({"eos_token": "<|im_end|>"})");
  why = btx::hf::tokenizer_difference(a, b);
  REQUIRE(why.has_value());
  CHECK(has(*why, "special token eos_token"));
  CHECK(has(*why, "<|im_end|>"));
  fs::remove(b / "special_tokens_map.json");

  write(b / "tokenizer.model", "spm");
  why = btx::hf::tokenizer_difference(a, b);
  REQUIRE(why.has_value());
  CHECK(has(*why, "tokenizer.model is in " + b.string() + " but not in " + a.string()));
}

TEST_CASE("model card: front matter strings survive YAML, fences and cells escape") {
  btx::hf::ModelCard card;
  card.title = "t";
  card.license = "apache-2.0";
  card.base_models = {"org/a: b", "- c"};
  card.tags = {"moe"};
  const auto text = card.render();
  CHECK(has(text, "---\nlicense: \"apache-2.0\"\nbase_model:\n- \"org/a: b\"\n- \"- c\"\n"));
  CHECK(has(text, "library_name: \"transformers\"\n---\n\n# t\n"));

  CHECK(btx::hf::code_block("a ``` b", "yaml") == "````yaml\na ``` b\n````\n");
  CHECK(btx::hf::table_cell("a|b\nc") == "a\\|b c");

  const auto dir = scratch_dir("model-card");
  write(dir / "README.md", "---\ntags: [x]\nlicense: 'mit'\n---\n# m\n");
  CHECK(btx::hf::card_license(dir) == std::optional<std::string>("mit"));
  write(dir / "README.md", "# no front matter\nlicense: mit\n");
  CHECK_FALSE(btx::hf::card_license(dir).has_value());
}
