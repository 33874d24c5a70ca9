// SPDX-License-Identifier: MIT
// Streaming merges from disk to disk: CheckpointSource reads what was saved, plans over it
// equal plans over in-memory sources, write_plan writes a Mixtral folder that
// load_causal_lm loads with btx's real MoE module, and a failure leaves nothing behind.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include <btx/merge/checkpoint_source.hpp>
#include <btx/merge/detail/row_kernels.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/write_plan.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/moe_layer.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::test::max_abs_diff;
using btx::test::scratch_dir;
using btx::test::tiny_config;
namespace merge = btx::merge;

namespace {

// A random tiny Llama saved at `dir` (sharded when max_shard_bytes is small).
btx::LlamaForCausalLM saved_llama(const fs::path& dir, uint64_t seed,
                                  uint64_t max_shard_bytes = 1u << 30,
                                  btx::LlamaConfig config = tiny_config()) {
  torch::manual_seed(seed);
  btx::LlamaForCausalLM model(config);
  btx::hf::SaveOptions opts;
  opts.max_shard_bytes = max_shard_bytes;
  btx::hf::save_hf_checkpoint(*model, config, dir, opts);
  return model;
}

bool leftovers_beside(const fs::path& target) {
  for (const auto& e : fs::directory_iterator(target.parent_path())) {
    if (e.path().filename().string().rfind(target.filename().string(), 0) == 0) return true;
  }
  return false;
}

// Within one unit in the last place: floats of one sign that are neighbours differ by one
// as integers of their width.
bool within_one_ulp(const torch::Tensor& a, const torch::Tensor& b) {
  const auto bits = a.element_size() == 4 ? torch::kInt32 : torch::kInt16;
  const auto ia = a.contiguous().view(bits).to(torch::kInt64);
  const auto ib = b.contiguous().view(bits).to(torch::kInt64);
  return (ia - ib).abs().max().item<int64_t>() <= 1;
}

}  // namespace

TEST_CASE("merge stream: CheckpointSource reads every tensor of a sharded checkpoint as saved") {
  const auto root = scratch_dir("stream-source");
  auto model = saved_llama(root / "a", 1, 16384);
  REQUIRE(fs::exists(root / "a" / "model.safetensors.index.json"));
  merge::CheckpointSource src(root / "a");
  const auto expected = merge::state_dict_of(model);
  CHECK(src.names().size() == expected.size());
  for (const auto& [name, t] : expected) {
    CHECK((src.spec(name) == merge::spec_of(name, t)));
    auto loaded = src.load(name);
    CHECK(torch::equal(loaded, t));
    loaded.add_(1.0);  // fresh memory: writing to it changes neither the file nor later loads
    CHECK(torch::equal(src.load(name), t));
  }
  CHECK(src.label() == (root / "a").string());
  CHECK_THROWS_AS((void)src.load("no.such.tensor"), btx::io::FormatError);
}

TEST_CASE("merge stream: a BTX mix over checkpoint folders equals the mix over models in memory") {
  const auto root = scratch_dir("stream-equal");
  std::vector<btx::LlamaForCausalLM> models;
  for (int j = 0; j < 3; ++j) models.push_back(saved_llama(root / std::to_string(j), 10 + j));
  const auto disk = merge::checkpoint_sources({root / "0", root / "1", root / "2"});
  const auto memory = merge::sources_of(models, {"0", "1", "2"});
  merge::BtxMix<> mix;
  const auto a = merge::materialize(mix.plan(disk));
  const auto b = merge::materialize(mix.plan(memory));
  REQUIRE(a.size() == b.size());
  // Averaged tensors are summed in chunks from disk, in whole tensors in memory: the
  // same arithmetic, possibly fused differently (1 ulp); everything else is equal.
  for (const auto& [name, t] : b) CHECK_MESSAGE(within_one_ulp(a.at(name), t), name);
  CHECK(torch::equal(a.at("model.layers.1.mlp.experts.down_proj"),
                     b.at("model.layers.1.mlp.experts.down_proj")));
}

TEST_CASE("merge stream: weighted sums read in row chunks equal whole-tensor sums to 1 ulp") {
  const auto root = scratch_dir("stream-chunks");
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    std::vector<fs::path> dirs;
    for (int j = 0; j < 3; ++j) {
      dirs.push_back(root / (c10::toString(dtype) + std::to_string(j)));
      torch::manual_seed(uint64_t(40 + j));
      btx::LlamaForCausalLM model(tiny_config());
      btx::hf::SaveOptions opts;
      opts.dtype = dtype;
      btx::hf::save_hf_checkpoint(*model, tiny_config(), dirs.back(), opts);
    }
    const auto sources = merge::checkpoint_sources(dirs);
    const std::vector<double> weights = {0.2, 0.5, 0.3};
    for (const char* name : {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                             "model.norm.weight"}) {
      const auto in = merge::shared_tensor_inputs<merge::CheckpointSource>(name, sources, nullptr,
                                                                           {"a", "b", "c"});
      const auto whole = merge::weighted_sum(name, weights, in.load, in.labels);
      for (uint64_t chunk_bytes : {1ull, 100ull, 1000ull, 1ull << 20}) {
        CAPTURE(name);
        CAPTURE(chunk_bytes);
        const auto chunked = merge::detail::weighted_sum_in_chunks(in, weights, chunk_bytes);
        REQUIRE(chunked.has_value());
        CHECK((chunked->scalar_type() == dtype));
        CHECK(within_one_ulp(*chunked, whole));
        // One chunk size or another: the same per-element arithmetic, so the same bits.
        CHECK(torch::equal(*chunked, *merge::detail::weighted_sum_in_chunks(in, weights, 64)));
      }
    }
  }
}

namespace {
// The vector row kernels against the plain per-element loops they replace: the same bits
// for every length (vector body and scalar tail), start offset (unaligned rows), weight and
// special value (ties, subnormals, overflow to Inf, NaN).
template <typename T, typename Acc>
void check_row_kernels_match_scalar(torch::ScalarType dtype) {
  torch::manual_seed(7);
  auto src = torch::randn({3, 80}, torch::kFloat64);
  src[0].slice(0, 0, 8) *= 1e38;   // products overflow
  src[1].slice(0, 0, 8) *= 1e-41;  // subnormals
  src[2].slice(0, 0, 8) = torch::tensor(
      {1.00390625, 1.01171875, -1.00390625, 0.0, -0.0, 3.0e38, -3.0e38, 2.0});  // bf16 ties
  src = src.to(dtype);
  const std::vector<double> weights = {0.3, -1.7, 1.0 / 3.0};
  for (size_t offset : {0, 1, 3}) {
    for (size_t n : {0, 1, 7, 8, 9, 15, 31, 77}) {
      CAPTURE(offset);
      CAPTURE(n);
      std::vector<Acc> acc(n + 1), expected(n + 1);
      for (size_t k = 0; k < 3; ++k) {
        const T* s = static_cast<const T*>(src[int64_t(k)].data_ptr()) + offset;
        merge::detail::accumulate_rows<T, Acc>(s, acc.data(), n, weights[k], k == 0);
        for (size_t i = 0; i < n; ++i) {
          const Acc x = static_cast<Acc>(s[i]) * static_cast<Acc>(weights[k]);
          expected[i] = k == 0 ? x : expected[i] + x;
        }
      }
      CHECK(std::memcmp(acc.data(), expected.data(), n * sizeof(Acc)) == 0);
      if (n > 2) acc[2] = std::numeric_limits<Acc>::quiet_NaN();
      std::vector<T> out(n + 1), out_expected(n + 1);
      merge::detail::narrow_rows<T, Acc>(acc.data(), out.data() + (offset ? 1 : 0), n);
      for (size_t i = 0; i < n; ++i) out_expected[i + (offset ? 1 : 0)] = static_cast<T>(acc[i]);
      CHECK(std::memcmp(out.data(), out_expected.data(), out.size() * sizeof(T)) == 0);
    }
  }
}
}  // namespace

TEST_CASE("merge stream: the vector row kernels give the scalar loops' bits") {
  check_row_kernels_match_scalar<c10::BFloat16, float>(torch::kBFloat16);
  check_row_kernels_match_scalar<float, double>(torch::kFloat32);
  check_row_kernels_match_scalar<c10::Half, float>(torch::kHalf);
}

TEST_CASE("merge stream: mismatched checkpoints are refused naming the tensor and both folders") {
  const auto root = scratch_dir("stream-mismatch");
  saved_llama(root / "a", 1);
  auto wide = tiny_config();
  wide.intermediate_size = 96;
  saved_llama(root / "b", 2, 1u << 30, wide);
  const auto sources = merge::checkpoint_sources({root / "a", root / "b"});
  try {
    (void)merge::BtxMix<>{}.plan(sources);
    FAIL("a plan over mismatched checkpoints was made");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("mlp.") != std::string::npos);
    CHECK(what.find((root / "a").string()) != std::string::npos);
    CHECK(what.find((root / "b").string()) != std::string::npos);
  }
}

TEST_CASE("merge stream: hf_decls splits packed experts into Mixtral's per-expert tensors") {
  const auto root = scratch_dir("stream-decls");
  saved_llama(root / "a", 1);
  saved_llama(root / "b", 2);
  merge::SplitMix<> split;
  split.chunks = 2;
  const auto plan = split.plan(merge::checkpoint_sources({root / "a", root / "b"}));
  const auto decls = merge::hf_decls(plan, btx::families().get("llama"), torch::kBFloat16);
  std::map<std::string, btx::io::TensorDecl> by;
  for (const auto& d : decls) by.emplace(d.name, d);
  const auto& w2 = by.at("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  CHECK(w2.shape == std::vector<int64_t>{32, 32});  // [H, I/2]
  CHECK((w2.dtype == torch::kBFloat16));
  CHECK(by.count("model.layers.0.block_sparse_moe.gate.weight"));
  CHECK_FALSE(by.count("model.layers.0.block_sparse_moe.experts.4.w1.weight"));
  CHECK_FALSE(by.count("model.layers.0.mlp.experts.gate_proj"));
  // 2 layers x (router + 4 experts x 3) + the shared tensors.
  CHECK(decls.size() ==
        2 * 13 + merge::validate_dense_sources(merge::checkpoint_sources({root / "a"}))
                     .shared_specs()
                     .size());
  const auto config =
      merge::hf_config_for(plan, btx::LlamaFamily::spec(tiny_config()), "bfloat16", 0.01);
  CHECK(config["num_local_experts"].get<int>() == 4);
  CHECK(config["num_experts_per_tok"].get<int>() == 4);  // C * k
  CHECK(config["intermediate_size"].get<int>() == 32);
  CHECK(config["dtype"].get<std::string>() == "bfloat16");
}

TEST_CASE(
    "merge stream: write_plan writes a Mixtral that load_causal_lm loads with the planned "
    "weights, and copies identical experts' logits from the dense model") {
  const auto root = scratch_dir("stream-write");
  auto dense = saved_llama(root / "seed", 7, 1u << 30);
  merge::BtxMix<merge::UniformMean, merge::RouterNormal> mix;
  mix.router.std = 1.0;  // a router that really discriminates
  const auto sources = merge::checkpoint_sources({root / "seed", root / "seed", root / "seed"});
  const auto plan = mix.plan(sources);
  std::ofstream(root / "tokenizer.json") << "{}";
  merge::WritePlanOptions opts;
  opts.max_shard_bytes = 20000;
  opts.copy_files = {root / "tokenizer.json"};
  size_t calls = 0;
  opts.progress = [&](const merge::WriteProgress& p) {
    ++calls;
    CHECK(p.index == calls);
    CHECK(p.bytes_done <= p.bytes_total);
  };
  const auto stats = merge::write_plan(
      plan, merge::hf_config_for(plan, btx::LlamaFamily::spec(tiny_config()), "float32"),
      root / "moe", opts);
  CHECK(calls == plan.outputs().size());
  CHECK(stats.shards > 1);
  for (const char* f :
       {"config.json", "btx_merge.json", "tokenizer.json", "model.safetensors.index.json"}) {
    CHECK_MESSAGE(fs::exists(root / "moe" / f), f);
  }

  auto moe = btx::hf::load_causal_lm(root / "moe");
  const auto expected = merge::materialize(plan);
  const auto got = merge::state_dict_of(moe);
  for (const auto& [name, t] : expected) CHECK_MESSAGE(torch::equal(got.at(name), t), name);
  CHECK(btx::moe_layers(*moe).size() == 2);

  moe->eval();
  dense->eval();
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(0, 64, {2, 9});
  CHECK(max_abs_diff(moe->forward(ids), dense->forward(ids)) < 1e-5);
}

TEST_CASE(
    "merge stream: unchanged expert rows are copied file to file and equal the computed plan") {
  const auto root = scratch_dir("stream-copy");
  std::vector<fs::path> dirs;
  for (int j = 0; j < 3; ++j) {
    dirs.push_back(root / ("expert" + std::to_string(j)));
    (void)saved_llama(dirs.back(), 20 + uint64_t(j), /*max_shard_bytes=*/20000);  // sharded
  }
  const auto sources = merge::checkpoint_sources(dirs);
  merge::BtxMix<> mix;
  merge::SplitMix<> split;  // chunks 2, no rescale: gate/up rows copy, down columns do not
  for (const auto& plan : {mix.plan(sources), split.plan(sources)}) {
    CAPTURE(plan.manifest().method);
    const bool is_split = plan.manifest().method == "split";
    for (const auto& s : plan.outputs()) {
      const auto ranges = plan.file_ranges(s.name);
      const bool expert = s.name.find(".mlp.experts.") != std::string::npos;
      const bool down = s.name.find("down_proj") != std::string::npos;
      CAPTURE(s.name);
      CHECK(ranges.has_value() == (expert && !(is_split && down)));
      if (ranges) CHECK(int64_t(ranges->size()) == s.shape[0]);
    }
    // Written in turn, by one writer beside the producer, by three at once (shards in
    // parallel), and without fsync: the same bytes in every file.
    std::map<std::string, std::string> first_files;
    for (size_t threads : {0, 1, 3, 4}) {
      CAPTURE(threads);
      const auto out = root / ("out-" + plan.manifest().method + std::to_string(threads));
      merge::WritePlanOptions opts;
      opts.max_shard_bytes = 30000;
      opts.write_threads = threads == 4 ? 1 : threads;
      opts.durable = threads != 4;
      (void)merge::write_plan(
          plan, merge::hf_config_for(plan, btx::LlamaFamily::spec(tiny_config()), "float32"), out,
          opts);
      const auto expected = merge::materialize(plan);
      const auto got = merge::state_dict_of(btx::hf::load_causal_lm(out));
      for (const auto& [name, t] : expected) CHECK_MESSAGE(torch::equal(got.at(name), t), name);
      std::map<std::string, std::string> files;
      for (const auto& f : fs::directory_iterator(out)) {
        std::ifstream in(f.path(), std::ios::binary);
        files[f.path().filename().string()].assign(std::istreambuf_iterator<char>(in), {});
      }
      CHECK(files.size() > 3);  // shards, index, config, manifest
      if (first_files.empty()) first_files = files;
      CHECK(files == first_files);
    }
  }
  // Stored in another dtype, nothing can be copied: every tensor is computed and cast.
  const auto plan = mix.plan(sources);
  merge::WritePlanOptions bf16;
  bf16.dtype = torch::kBFloat16;
  (void)merge::write_plan(
      plan, merge::hf_config_for(plan, btx::LlamaFamily::spec(tiny_config()), "bfloat16"),
      root / "out-bf16", bf16);
  const auto got = merge::state_dict_of(btx::hf::load_causal_lm(root / "out-bf16"));
  for (const auto& [name, t] : merge::materialize(plan)) {
    CHECK_MESSAGE(torch::equal(got.at(name).to(torch::kBFloat16), t.to(torch::kBFloat16)), name);
  }
}

TEST_CASE("merge stream: write_plan leaves nothing at the target when a tensor fails midway") {
  const auto root = scratch_dir("stream-fail");
  saved_llama(root / "a", 1);
  merge::BtxMix<> mix;
  mix.experts_per_token = 1;
  const auto good = mix.plan(merge::checkpoint_sources({root / "a"}));
  size_t n = 0;
  merge::Plan bad(
      good.outputs(),
      [&](const merge::TensorSpec& s) {
        if (++n == 5) throw std::runtime_error("disk on fire");
        return good.compute(s.name);
      },
      good.manifest());
  CHECK_THROWS_WITH(
      merge::write_plan(
          bad, merge::hf_config_for(good, btx::LlamaFamily::spec(tiny_config()), "float32"),
          root / "out"),
      doctest::Contains("disk on fire"));
  CHECK_FALSE(fs::exists(root / "out"));
  CHECK_FALSE(leftovers_beside(root / "out"));

  // A source truncated after planning fails a copy on a writer thread (or a read on this
  // one): the merge stops with that error, and nothing is left either.
  saved_llama(root / "b", 2);
  const auto mixed = mix.plan(merge::checkpoint_sources({root / "a", root / "b"}));
  const auto ranges = mixed.file_ranges("model.layers.1.mlp.experts.down_proj");
  REQUIRE(ranges.has_value());
  fs::resize_file(ranges->back().file, ranges->back().offset + 16);
  for (size_t threads : {0, 1, 2}) {
    CAPTURE(threads);
    merge::WritePlanOptions opts;
    opts.write_threads = threads;
    CHECK_THROWS_WITH(
        merge::write_plan(
            mixed, merge::hf_config_for(mixed, btx::LlamaFamily::spec(tiny_config()), "float32"),
            root / "out", opts),
        doctest::Contains("truncated"));
    CHECK_FALSE(fs::exists(root / "out"));
    CHECK_FALSE(leftovers_beside(root / "out"));
  }
}
