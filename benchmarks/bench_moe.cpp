// SPDX-License-Identifier: MIT
// MoE layer forward+backward against a dense SwiGLU block with the same active FLOPs
// (intermediate size k*I). Pairs: BM_MoE/<experts>/<k>/<tokens> and
// BM_DenseEquivalent/<experts>/<k>/<tokens>; each BM_MoE also reports `vs_dense`, its
// thread CPU time over the dense equivalent's, measured interleaved in the same run.
// Torch runs single-threaded. BM_ExpertKernels/<dtype>/<experts>/<tokens> (dtype 0: fp32,
// 1: bf16) runs the MoE with grouped-GEMM experts, with the per-expert loop and the dense
// equivalent interleaved in each iteration, and reports their CPU time ratios.
//   OMP_NUM_THREADS=1 build/bin/btx-bench --benchmark_filter='MoE|DenseEquivalent|ExpertKernels'
#include <benchmark/benchmark.h>

#include <time.h>

#include <btx/models/llama/compat.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/routers/top_k.hpp>

namespace {

constexpr int64_t kHidden = 256, kInter = 512;  // per expert: H = 256, I = 512

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Runs `step` over the benchmark loop; returns this thread's CPU seconds per iteration
// (torch runs single-threaded here, so that is all the work, and other processes on a
// shared machine disturb it less than wall time).
template <class Step>
double timed_loop(benchmark::State& state, Step&& step) {
  const double start = thread_cpu_seconds();
  for (auto _ : state) step();
  return (thread_cpu_seconds() - start) / static_cast<double>(state.iterations());
}

void clear_grads(torch::nn::Module& m) {
  for (auto& p : m.parameters()) p.mutable_grad() = torch::Tensor();
}

// Forward+backward of a dense SwiGLU block of intermediate size k*I on x [T, H].
struct DenseStep {
  DenseStep(int64_t k, int64_t T, torch::Dtype dtype = torch::kFloat32)
      : dense(kHidden, k * kInter),
        x(torch::randn({T, kHidden}).to(dtype)),
        dy(torch::randn({T, kHidden}).to(dtype)) {
    dense->to(dtype);
  }
  void operator()() {
    clear_grads(*dense);
    auto loss = (dense->forward(x) * dy).sum();
    loss.backward();
    benchmark::DoNotOptimize(loss.data_ptr());
  }
  btx::LlamaMLP dense;
  torch::Tensor x, dy;
};

// Forward+backward of a top-k MoE layer of E experts of intermediate size I on x [T, H].
struct MoEStep {
  MoEStep(int64_t E, int64_t k, int64_t T, torch::Dtype dtype = torch::kFloat32,
          btx::ExpertKernel kernel = btx::ExpertKernel::automatic)
      : moe(std::make_shared<btx::TopK>(kHidden, E, k),
            std::make_shared<btx::PackedSwiGLU>(E, kHidden, kInter)),
        x(torch::randn({T, kHidden}).to(dtype)),
        dy(torch::randn({T, kHidden}).to(dtype)) {
    moe->to(dtype);
    moe->experts().set_kernel(kernel);
  }
  void operator()() {
    clear_grads(*moe);
    auto y = moe->forward(x);
    auto loss = (y * dy).sum() + moe->aux_loss();
    loss.backward();
    benchmark::DoNotOptimize(loss.data_ptr());
  }
  btx::MoE<btx::TopK, btx::PackedSwiGLU> moe;
  torch::Tensor x, dy;
};

void BM_DenseEquivalent(benchmark::State& state) {
  torch::set_num_threads(1);
  torch::manual_seed(0);
  DenseStep dense(state.range(1), state.range(2));
  timed_loop(state, dense);
  state.SetItemsProcessed(state.iterations() * state.range(2));
}

// Also runs the dense equivalent between timed iterations (paused), so `vs_dense` compares
// the two under the same machine load: sum of MoE CPU time over sum of dense CPU time.
void BM_MoE(benchmark::State& state) {
  torch::set_num_threads(1);
  torch::manual_seed(0);
  MoEStep moe(state.range(0), state.range(1), state.range(2));
  DenseStep dense(state.range(1), state.range(2));
  moe();  // warm-up outside the measurement
  dense();
  double moe_s = 0.0, dense_s = 0.0;
  for (auto _ : state) {
    double t0 = thread_cpu_seconds();
    moe();
    moe_s += thread_cpu_seconds() - t0;
    state.PauseTiming();
    t0 = thread_cpu_seconds();
    dense();
    dense_s += thread_cpu_seconds() - t0;
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * state.range(2));
  state.counters["vs_dense"] = moe_s / dense_s;
}

void moe_cases(benchmark::internal::Benchmark* b) {
  for (int64_t E : {4, 8}) {
    for (int64_t T : {512, 2048, 4096}) b->Args({E, 2, T});
  }
  b->Unit(benchmark::kMillisecond);
}

// Grouped-GEMM experts (timed) with the per-expert loop and the dense equivalent run
// between timed iterations on the same inputs: CPU time ratios under the same load.
void BM_ExpertKernels(benchmark::State& state) {
  torch::set_num_threads(1);
  const auto dtype = state.range(0) == 1 ? torch::kBFloat16 : torch::kFloat32;
  if (!btx::grouped_mm_supported(torch::kCPU, dtype)) {
    state.SkipWithError("at::_grouped_mm does not run this dtype on this CPU");
    return;
  }
  torch::manual_seed(0);
  MoEStep grouped(state.range(1), 2, state.range(2), dtype, btx::ExpertKernel::grouped);
  torch::manual_seed(0);
  MoEStep loop(state.range(1), 2, state.range(2), dtype, btx::ExpertKernel::loop);
  DenseStep dense(2, state.range(2), dtype);
  grouped();  // warm-up outside the measurement
  loop();
  dense();
  double grouped_s = 0.0, loop_s = 0.0, dense_s = 0.0;
  for (auto _ : state) {
    double t0 = thread_cpu_seconds();
    grouped();
    grouped_s += thread_cpu_seconds() - t0;
    state.PauseTiming();
    t0 = thread_cpu_seconds();
    loop();
    loop_s += thread_cpu_seconds() - t0;
    t0 = thread_cpu_seconds();
    dense();
    dense_s += thread_cpu_seconds() - t0;
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * state.range(2));
  state.counters["grouped_vs_loop"] = grouped_s / loop_s;
  state.counters["grouped_vs_dense"] = grouped_s / dense_s;
  state.counters["loop_vs_dense"] = loop_s / dense_s;
}

void kernel_cases(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t E : {4, 8}) {
      for (int64_t T : {512, 2048}) b->Args({dtype, E, T});
    }
  }
  b->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_DenseEquivalent)->Apply(moe_cases);
BENCHMARK(BM_MoE)->Apply(moe_cases);
BENCHMARK(BM_ExpertKernels)->Apply(kernel_cases);
