// SPDX-License-Identifier: MIT
// The launcher's environment (torchrun, Slurm, none) as btx reads it, its errors, and the
// one-process Communicator and data-parallel hooks (the multi-process runs are in
// tests/python/test_dist.py).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <btx/parallel/data_parallel.hpp>
#include <btx/parallel/dist_env.hpp>

namespace {

// Sets the given variables (and clears the other launcher ones) for one scope.
class ScopedLauncherEnv {
 public:
  explicit ScopedLauncherEnv(std::vector<std::pair<std::string, std::string>> vars) {
    for (const char* n : kNames) {
      if (const char* v = std::getenv(n)) saved_.emplace_back(n, v);
      ::unsetenv(n);
    }
    for (const auto& [k, v] : vars) ::setenv(k.c_str(), v.c_str(), 1);
  }
  ~ScopedLauncherEnv() {
    for (const char* n : kNames) ::unsetenv(n);
    for (const auto& [k, v] : saved_) ::setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  static constexpr const char* kNames[] = {"RANK",
                                           "WORLD_SIZE",
                                           "LOCAL_RANK",
                                           "MASTER_ADDR",
                                           "MASTER_PORT",
                                           "SLURM_PROCID",
                                           "SLURM_NTASKS",
                                           "SLURM_LOCALID",
                                           "TORCHELASTIC_USE_AGENT_STORE",
                                           "BTX_STORE_LISTEN_FD"};
  std::vector<std::pair<std::string, std::string>> saved_;
};

}  // namespace

TEST_CASE("dist env: torchrun's variables, Slurm's, or one process") {
  {
    ScopedLauncherEnv env({});
    const auto e = btx::dist::dist_env_from_environment();
    CHECK(e.launcher == "none");
    CHECK_FALSE(e.distributed());
  }
  {
    ScopedLauncherEnv env({{"RANK", "2"},
                           {"WORLD_SIZE", "4"},
                           {"LOCAL_RANK", "0"},
                           {"MASTER_ADDR", "node7"},
                           {"MASTER_PORT", "29511"},
                           {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
    const auto e = btx::dist::dist_env_from_environment();
    CHECK(e.launcher == "torchrun");
    CHECK(e.rank == 2);
    CHECK(e.world_size == 4);
    CHECK(e.local_rank == 0);
    CHECK(e.master_addr == "node7");
    CHECK(e.master_port == 29511);
    CHECK(e.agent_store);
    CHECK(e.describe() == "rank 2 of 4 (torchrun, store node7:29511)");
  }
  {
    ScopedLauncherEnv env({{"SLURM_PROCID", "5"},
                           {"SLURM_NTASKS", "8"},
                           {"SLURM_LOCALID", "1"},
                           {"MASTER_ADDR", "10.0.0.1"}});
    const auto e = btx::dist::dist_env_from_environment();
    CHECK(e.launcher == "slurm");
    CHECK(e.rank == 5);
    CHECK(e.local_rank == 1);
    CHECK(e.master_port == 29500);
  }
}

TEST_CASE("dist env: malformed or inconsistent variables are named") {
  const auto error_with = [](std::vector<std::pair<std::string, std::string>> vars) {
    ScopedLauncherEnv env(std::move(vars));
    try {
      (void)btx::dist::dist_env_from_environment();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_with({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK='x'") != std::string::npos);
  CHECK(error_with({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("not below the world size 2") !=
        std::string::npos);
  CHECK(error_with({{"RANK", "0"}}).find("RANK and WORLD_SIZE") != std::string::npos);
  CHECK(error_with({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}})
            .find("MASTER_PORT=70000") != std::string::npos);
  CHECK(error_with({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}).find("export MASTER_ADDR") !=
        std::string::npos);
  CHECK(error_with({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"BTX_STORE_LISTEN_FD", "-3"}})
            .find("BTX_STORE_LISTEN_FD='-3'") != std::string::npos);
}

TEST_CASE("dist env: btx's launcher hands rank 0 its store's socket, already listening") {
  btx::dist::LocalStoreSocket store;
  CHECK(store.port() > 0);
  CHECK((::fcntl(store.fd(), F_GETFD) & FD_CLOEXEC) != 0);  // no other child inherits it
  // A rank that connects before rank 0 serves the store waits in the backlog, not refused.
  const int client = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(store.port()));
  CHECK(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  ::close(client);
  for (int64_t rank : {0, 1}) {
    std::vector<std::pair<std::string, std::string>> vars;
    for (const auto& entry : btx::dist::launcher_env(rank, 2, store)) {
      const auto eq = entry.find('=');
      vars.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
    }
    ScopedLauncherEnv env(vars);
    const auto e = btx::dist::dist_env_from_environment();
    CHECK(e.master_port == store.port());
    CHECK(e.store_listen_fd == (rank == 0 ? store.fd() : -1));
  }
}

TEST_CASE("dist: one process needs no peers, and shards split the global batch") {
  btx::dist::Communicator one;
  CHECK(one.size() == 1);
  std::vector<torch::Tensor> t = {torch::ones({3})};
  one.all_reduce(t, btx::dist::Reduce::mean, "t");
  CHECK(torch::equal(t[0], torch::ones({3})));
  const std::vector<double> values = {1.5, 2.0};
  CHECK(one.mean(values, "v") == values);
  CHECK(one.split(3).size() == 1);

  const auto ids = torch::arange(12).reshape({6, 2});
  CHECK(torch::equal(btx::dist::shard_rows(ids, 1, 3), ids.narrow(0, 2, 2)));
  CHECK_THROWS_WITH_AS(btx::dist::shard_rows(ids, 0, 4), doctest::Contains("multiple of the ranks"),
                       std::invalid_argument);

  // Buckets hold consecutive same-dtype tensors up to the byte limit.
  const std::vector<torch::Tensor> ts = {torch::zeros({4}), torch::zeros({4}),
                                         torch::zeros({4}, torch::kFloat64), torch::zeros({100})};
  const auto buckets = btx::dist::detail::buckets_of(ts, 40);
  REQUIRE(buckets.size() == 3);
  CHECK(buckets[0] == std::vector<size_t>({0, 1}));
  CHECK(buckets[1] == std::vector<size_t>(1, 2));
  CHECK(buckets[2] == std::vector<size_t>(1, 3));

  // The hooks of one rank: it writes files, shards nothing away, averages nothing.
  const auto hooks = btx::dist::data_parallel(one);
  CHECK(hooks.writes_files);
  CHECK(torch::equal(hooks.place_batch(ids), ids));
}
