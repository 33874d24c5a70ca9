// SPDX-License-Identifier: MIT
// Pipeline foundations: corpora, token files, sampling, schedule, FLOPs, the training loop
// and evaluation.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include <btx/data/corpus.hpp>
#include <btx/data/sampler.hpp>
#include <btx/data/token_file.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/train/evaluate.hpp>
#include <btx/train/flops.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

namespace fs = std::filesystem;

namespace {
fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("btx-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}
void write(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}
}  // namespace

TEST_CASE("corpus: text domains split documents deterministically and record a manifest") {
  auto dir = temp_dir("corpus");
  for (int i = 0; i < 12; ++i)
    write(dir / ("doc" + std::to_string(i + 10) + ".txt"),
          "document " + std::to_string(i) + " text\n");
  write(dir / "skip.bin", "not text");
  btx::DomainSpec spec{.name = "prose", .paths = {dir.string()}, .extensions = {".txt"}};
  auto a = btx::build_corpus({spec});
  auto b = btx::build_corpus({spec});
  CHECK(torch::equal(a.domains[0].train_tokens, b.domains[0].train_tokens));
  CHECK(a.manifest.size() == 12);  // .bin filtered out
  int evals = 0;
  for (const auto& m : a.manifest) evals += m.split == "eval" ? 1 : 0;
  CHECK(evals == 1);  // every 10th document from index 5: only index 5 of 12
  CHECK(a.manifest_json()["files"].size() == 12);
  CHECK(a.domains[0].eval_tokens.numel() > 0);
  fs::remove_all(dir);
}

TEST_CASE("corpus: missing paths, empty domains and unknown generators are rejected by name") {
  auto expect = [](const btx::DomainSpec& spec, const std::string& needle) {
    try {
      (void)btx::build_corpus({spec});
      FAIL("no error");
    } catch (const std::invalid_argument& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  expect({.name = "code", .paths = {"/nonexistent/btx"}}, "/nonexistent/btx");
  auto dir = temp_dir("empty");
  expect({.name = "code", .paths = {dir.string()}, .extensions = {".h"}}, "domain 'code' is empty");
  expect({.name = "m", .generator = "calculus"}, "unknown generator 'calculus'");
  fs::remove_all(dir);
}

TEST_CASE("corpus: arithmetic domain carries exact-match problems, and token files are read") {
  auto corpus = btx::build_corpus({{.name = "math",
                                    .generator = "arithmetic",
                                    .max_train_tokens = 7000,
                                    .max_eval_tokens = 700}});
  const auto& math = corpus.domain("math");
  REQUIRE(math.eval_problems.size() == 100);
  const auto& p = math.eval_problems[0];
  CHECK(p.prompt.back() == '=');
  auto dir = temp_dir("tokens");
  std::string bytes;
  for (uint16_t v : {1, 300, 65535, 7}) bytes += std::string{char(v & 0xff), char(v >> 8)};
  write(dir / "train.bin", bytes);
  auto t = btx::read_token_file((dir / "train.bin").string(), "uint16");
  CHECK(t.numel() == 4);
  CHECK(t[2].item<int>() == 65535);
  write(dir / "odd.bin", "abc");
  CHECK_THROWS_AS(btx::read_token_file((dir / "odd.bin").string(), "uint16"),
                  std::invalid_argument);
  // Written back: the same bytes, in either width; an id too wide for uint16 is refused
  // and leaves no file behind.
  btx::write_token_file(dir / "again.bin", t, "uint16");
  CHECK(torch::equal(btx::read_token_file((dir / "again.bin").string(), "uint16"), t));
  const auto wide = torch::tensor({0, 70000, 5}, torch::kInt32);
  btx::write_token_file(dir / "wide.bin", wide, "uint32");
  CHECK(torch::equal(btx::read_token_file((dir / "wide.bin").string(), "uint32"), wide));
  CHECK_THROWS_WITH_AS(btx::write_token_file(dir / "narrow.bin", wide, "uint16"),
                       doctest::Contains("id 70000 at index 1 does not fit uint16"),
                       std::invalid_argument);
  CHECK(!fs::exists(dir / "narrow.bin"));
  fs::remove_all(dir);
}

TEST_CASE("sampler: batches depend only on (seed, index) and respect mixture weights") {
  auto a = torch::zeros({500}, torch::kInt32), b = torch::ones({500}, torch::kInt32);
  btx::WindowSampler s({a, b}, {1.0, 0.0}, 16, 7);
  auto x = s.batch(3, 4);
  CHECK(x.sizes() == torch::IntArrayRef({4, 17}));
  CHECK(x.sum().item<int64_t>() == 0);  // weight 0 on source b
  btx::WindowSampler mix({torch::arange(1000).to(torch::kInt32)}, {}, 16, 7);
  CHECK(torch::equal(mix.batch(5, 3), mix.batch(5, 3)));
  CHECK(!torch::equal(mix.batch(5, 3), mix.batch(6, 3)));
  CHECK_THROWS_AS(btx::WindowSampler({torch::zeros({10}, torch::kInt32)}, {}, 16, 0),
                  std::invalid_argument);
}

TEST_CASE("schedule: warmup then cosine to the floor") {
  btx::CosineSchedule s{1.0, 10, 110, 0.1};
  CHECK(s(0) == doctest::Approx(0.1));
  CHECK(s(9) == doctest::Approx(1.0));
  CHECK(s(60) == doctest::Approx(0.55));
  CHECK(s(110) == doctest::Approx(0.1));
}

TEST_CASE("flops: an MoE token with k=2 costs more than a dense one, less than twice") {
  auto c = btx::test::tiny_config();
  const double dense = btx::training_flops_per_token(c, 64);
  const double moe = btx::training_flops_per_token(c, 64, {.experts = 4, .active_experts = 2});
  CHECK(moe > dense);
  CHECK(moe < 2 * dense);
}

TEST_CASE("trainer: loss falls on a repetitive stream, non-finite steps are skipped then fatal") {
  torch::manual_seed(0);
  auto c = btx::test::tiny_config();
  btx::LlamaForCausalLM model(c);
  auto stream = torch::arange(4000).remainder(16).to(torch::kInt32);
  btx::WindowSampler sampler({stream}, {}, 16, 1);
  btx::TrainOptions opts{.stage = "t", .steps = 60, .batch_size = 4, .log_every = 100};
  auto summary = btx::train_causal_lm(model, sampler, opts);
  CHECK(summary.final_loss < 1.0);
  CHECK(summary.tokens == 60 * 4 * 16);
  auto eval =
      btx::evaluate_loss([&](const torch::Tensor& ids) { return model->forward(ids); }, stream, 16);
  CHECK(eval.loss < 1.0);
  opts.steps = 10;
  CHECK_THROWS_WITH_AS(
      btx::train_causal_lm(model, sampler, opts, [] { return torch::tensor(NAN); }),
      doctest::Contains("consecutive non-finite"), std::runtime_error);
  for (const auto& p : model->parameters()) CHECK(torch::isfinite(p).all().item<bool>());
}

TEST_CASE("evaluate: uniform logits cost ln(V), an oracle answers every problem") {
  auto uniform = [](const torch::Tensor& ids) {
    return torch::zeros({ids.size(0), ids.size(1), 256});
  };
  auto r = btx::evaluate_loss(uniform, torch::arange(300).remainder(256).to(torch::kInt32), 32);
  CHECK(r.loss == doctest::Approx(std::log(256.0)));
  auto problems = btx::arithmetic_problems(20, 3);
  auto oracle = [&](const std::vector<int64_t>& ids) -> int64_t {
    std::string s = btx::ByteTokenizer::decode(ids);
    for (const auto& p : problems) {
      auto pos = s.find(p.prompt);
      if (pos == 1) {
        auto done = s.size() - 1 - p.prompt.size();
        return done < p.answer.size() ? int64_t(p.answer[done]) : int64_t('\n');
      }
    }
    return '\n';
  };
  CHECK(btx::exact_match(oracle, problems) == doctest::Approx(1.0));
}

// A codec whose pieces are several characters: exact_match decodes the answer as a whole
// and stops at a piece that carries the newline; encode_corpus caps ids, not bytes.
TEST_CASE("exact_match and encode_corpus with a multi-character codec") {
  // ids: 0 = "\n", 1..10 = digits, 11 = "\n" preceded by the digit pair "42", others bytes+100.
  btx::TextCodec codec;
  codec.name = "toy";
  codec.vocab_size = 356;
  codec.encode = [](std::string_view text) {
    std::vector<int64_t> ids;
    for (char c : text) ids.push_back(c == '\n' ? 0 : int64_t(static_cast<unsigned char>(c)) + 100);
    return ids;
  };
  codec.decode = [](const std::vector<int64_t>& ids) {
    std::string out;
    for (auto id : ids)
      out += id == 0    ? std::string("\n")
             : id == 11 ? std::string("42\n")
                        : std::string(1, char(id - 100));
    return out;
  };
  const std::vector<btx::ArithmeticProblem> problems = {{"40+2=", "42"}, {"1+1=", "2"}};
  // Answers "42\n" as one piece for the first problem, "3" then newline for the second.
  auto next = [&](const std::vector<int64_t>& ids) -> int64_t {
    const std::string s = codec.decode(ids);
    if (s.find("40+2=") != std::string::npos) return 11;
    return s.back() == '=' ? int64_t('3') + 100 : 0;
  };
  CHECK(btx::exact_match(next, problems, 10, 8, codec) == doctest::Approx(0.5));

  btx::CorpusText text;
  text.domains.push_back({.name = "d",
                          .train_text = "abcdef",
                          .eval_text = "xyz",
                          .max_train_tokens = 4,
                          .max_eval_tokens = 100});
  const auto corpus = btx::encode_corpus(text, codec);
  CHECK(corpus.vocab_size == 356);
  CHECK(corpus.domains[0].train_tokens.numel() == 4);
  CHECK(corpus.domains[0].eval_tokens[0].item<int>() == int('x') + 100);
}
