// SPDX-License-Identifier: MIT
// Real OS processes for experts (exit codes, signals, logs) and gnuplot pictures.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <btx/parallel/expert_processes.hpp>
#include <btx/report/gnuplot.hpp>

namespace fs = std::filesystem;

TEST_CASE("process group: each child's exit code or signal is reported, others finish") {
  auto dir = fs::temp_directory_path() / ("btx-proc-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  btx::ExpertProcesses group;
  group.spawn("ok", {"/bin/sh", "-c", "echo hello from $EXPERT"}, (dir / "ok.log").string(),
              {"EXPERT=math"});
  group.spawn("fails", {"/bin/sh", "-c", "exit 3"}, (dir / "fails.log").string());
  group.spawn("killed", {"/bin/sh", "-c", "kill -9 $$"}, (dir / "killed.log").string());
  auto outcomes = group.wait_all();
  REQUIRE(outcomes.size() == 3);
  CHECK(outcomes[0].ok());
  CHECK(outcomes[1].exit_code == 3);
  CHECK(outcomes[2].signaled);
  CHECK(outcomes[2].signal == SIGKILL);
  CHECK(outcomes[2].describe().find("killed by signal 9") != std::string::npos);
  std::ifstream log(dir / "ok.log");
  std::string text((std::istreambuf_iterator<char>(log)), {});
  CHECK(text == "hello from math\n");
  CHECK_THROWS_AS(group.spawn("missing", {"/nonexistent/btx-worker"}, (dir / "m.log").string()),
                  std::runtime_error);
  fs::remove_all(dir);
}

TEST_CASE("gnuplot: loss curves and heatmaps become PNG files") {
  auto dir = fs::temp_directory_path() / ("btx-plot-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  btx::Series s{{"seed", {{1, 3.0}, {2, 2.5}}}, {"expert \"math\"", {{1, 2.0}, {2, 1.0}}}};
  REQUIRE(btx::plot_lines(dir / "loss.png", "loss", "step", "nats", s));
  REQUIRE(btx::plot_heatmap(dir / "heat.png", "routing", {"math", "code"}, {"e0", "e1", "e2"},
                            {{0.5, 0.25, 0.25}, {0.1, 0.8, 0.1}}));
  for (const char* f : {"loss.png", "heat.png"}) {
    std::ifstream in(dir / f, std::ios::binary);
    char magic[8] = {};
    in.read(magic, 8);
    CHECK(std::string(magic + 1, 3) == "PNG");
  }
  fs::remove_all(dir);
}
