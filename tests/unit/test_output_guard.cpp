// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include <btx/io/output_guard.hpp>

namespace fs = std::filesystem;

TEST_CASE("output guard: an output that is or contains an input is refused, naming both") {
  const fs::path root = fs::temp_directory_path() / ("btx-guard-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "experts" / "e0");
  fs::create_directories(root / "out");
  fs::create_symlink(root / "experts" / "e0", root / "link");
  const auto e0 = root / "experts" / "e0";

  CHECK(btx::io::is_same_or_inside(e0, e0));
  CHECK(btx::io::is_same_or_inside(e0, root / "experts"));
  CHECK(btx::io::is_same_or_inside(root / "link", e0));  // through a symlink
  CHECK(btx::io::is_same_or_inside(root / "experts/../experts/e0/", e0));
  CHECK_FALSE(btx::io::is_same_or_inside(root / "experts", e0));  // an input's parent is spared
  CHECK_FALSE(btx::io::is_same_or_inside(root / "experts-2", root / "experts"));
  CHECK_FALSE(btx::io::is_same_or_inside(root / "out", e0));

  const std::string needle = "experts[0].source_model " + e0.string();
  for (const auto& out : {e0, root / "experts", root / "link"}) {
    CHECK_THROWS_WITH_AS(
        btx::io::refuse_output_over_inputs(
            out, "OUT_DIR", {{"base_model", root / "out"}, {"experts[0].source_model", e0}}),
        doctest::Contains(needle.c_str()), std::invalid_argument);
  }
  CHECK_NOTHROW(btx::io::refuse_output_over_inputs(root / "out", "OUT_DIR",
                                                   {{"experts[0].source_model", e0}, {"x", ""}}));
  fs::remove_all(root);
}
