// SPDX-License-Identifier: MIT
// Real OS processes for experts (exit codes, signals, logs) and gnuplot pictures.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <btx/parallel/expert_processes.hpp>
#include <btx/report/gnuplot.hpp>
#include <btx/report/repeats.hpp>

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

TEST_CASE("process group: a close-on-exec descriptor reaches only the child it is kept for") {
  auto dir = fs::temp_directory_path() / ("btx-proc-fd-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  const std::string has_fd = "test -e /proc/self/fd/" + std::to_string(fds[1]);
  btx::ExpertProcesses group;
  group.spawn("kept", {"/bin/sh", "-c", has_fd}, (dir / "kept.log").string(), {}, {fds[1]});
  group.spawn("other", {"/bin/sh", "-c", has_fd}, (dir / "other.log").string());
  const auto outcomes = group.wait_all();
  ::close(fds[0]);
  ::close(fds[1]);
  CHECK(outcomes[0].ok());
  CHECK(outcomes[1].exit_code == 1);
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

TEST_CASE("repeats: mean and sample sd, and no spread from one value") {
  const auto s = btx::spread_of({1.0, 2.0, 3.0, 4.0});
  CHECK(s.n == 4);
  CHECK(s.mean == doctest::Approx(2.5));
  CHECK(s.sd == doctest::Approx(std::sqrt(5.0 / 3.0)));
  CHECK(btx::format_spread(s) == "2.500 ± 1.291");
  const auto one = btx::spread_of({1.5});
  CHECK(std::isnan(one.sd));
  CHECK(btx::format_spread(one) == "1.500");
  CHECK(btx::format_spread(btx::spread_of({})) == "-");
}

TEST_CASE("repeats: a gap counts only when the per-seed differences carry it") {
  // The arms move together from seed to seed (shared seed model): each arm's own sd is
  // large, the paired difference is steady, so the gap is separated.
  const std::vector<double> dense = {1.60, 1.70, 1.80}, btx_arm = {1.62, 1.72, 1.83};
  const auto steady = btx::paired_gap(dense, btx_arm);
  CHECK(steady.difference.mean == doctest::Approx(0.0233).epsilon(0.01));
  CHECK(steady.separated);
  // Differences that change sign are noise, however large their mean.
  const auto noisy = btx::paired_gap({1.0, 1.0, 1.0}, {1.3, 0.8, 1.2});
  CHECK_FALSE(noisy.separated);
  // Two repeats: Student's t with one degree of freedom (12.7) separates only steady gaps.
  CHECK(btx::paired_gap({0.0, 0.0}, {1.0, 1.1}).separated);
  const auto two = btx::paired_gap({0.0, 0.0}, {1.0, 2.0});
  CHECK(two.half_width == doctest::Approx(12.706 * 0.5));
  CHECK_FALSE(two.separated);
  // One repeat: never separated.
  CHECK_FALSE(btx::paired_gap({1.0}, {2.0}).separated);
  CHECK_THROWS_WITH_AS(btx::paired_gap({1.0, 2.0}, {1.0}),
                       doctest::Contains("pairs need equal counts"), std::invalid_argument);
  CHECK(btx::ordering_statement({{"dense", dense}, {"BTX", btx_arm}, {"noise", {1.3, 1.8, 1.6}}}) ==
        "noise ≈ dense < BTX");
}
