// SPDX-License-Identifier: MIT
// Documents as datasets ship them (data/documents.hpp, data/document_corpus.hpp) and the
// parts a run trains (moe/trainable_parts.hpp).
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <btx/data/document_corpus.hpp>
#include <btx/data/documents.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/moe/trainable_parts.hpp>

#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::test::tiny_config;

namespace {
fs::path docs_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("btx-docs-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}
void doc_write(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}
std::string doc_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}
// One id per byte, so packed streams are easy to read back.
btx::DocumentCorpusOptions doc_byte_options(const fs::path& cache) {
  btx::DocumentCorpusOptions o;
  o.encode = [](const std::vector<std::string>& docs) {
    std::vector<std::vector<int64_t>> out;
    for (const auto& d : docs) out.emplace_back(d.begin(), d.end());
    return out;
  };
  o.eos_id = 0;
  o.vocab_size = 256;
  o.tokenizer_key = "bytes";
  o.cache_dir = cache;
  return o;
}
}  // namespace

TEST_CASE("documents: UTF-8 is checked strictly") {
  CHECK(btx::invalid_utf8_at("plain ascii") == std::string_view::npos);
  CHECK(btx::invalid_utf8_at("caf\xc3\xa9 \xe6\xbc\xa2 \xf0\x9f\x98\x80") ==
        std::string_view::npos);
  CHECK(btx::invalid_utf8_at("caf\xe9") == 3);           // Latin-1
  CHECK(btx::invalid_utf8_at("ab\xc3") == 2);            // truncated
  CHECK(btx::invalid_utf8_at("\xc0\xaf") == 0);          // overlong
  CHECK(btx::invalid_utf8_at("x\xed\xa0\x80") == 1);     // a surrogate
  CHECK(btx::invalid_utf8_at("\xf4\x90\x80\x80") == 0);  // above U+10FFFF
}

TEST_CASE("documents: JSONL lines, text files and their errors name file, line and field") {
  const auto dir = docs_dir("read");
  doc_write(dir / "a.jsonl", "{\"text\": \"one\"}\n\n{\"text\": \"two\\nlines\", \"n\": 1}\r\n");
  CHECK(btx::read_documents(dir / "a.jsonl") == std::vector<std::string>{"one", "two\nlines"});
  doc_write(dir / "b.txt", "a whole file\nis one document\n");
  CHECK(btx::read_documents(dir / "b.txt").size() == 1);
  doc_write(dir / "c.jsonl", "{\"text\": \"one\"}\n{\"body\": \"x\"}\n");
  CHECK(doc_error_of([&] { (void)btx::read_documents(dir / "c.jsonl"); }) ==
        (dir / "c.jsonl").string() + ":2: no field 'text' (the line has: body)");
  doc_write(dir / "d.jsonl", "[1, 2]\n");
  CHECK(doc_error_of([&] {
          (void)btx::read_documents(dir / "d.jsonl");
        }).find(":1: not a JSON object") != std::string::npos);
  doc_write(dir / "e.jsonl", "{\"text\": [\"a\"]}\n");
  CHECK(doc_error_of([&] {
          (void)btx::read_documents(dir / "e.jsonl");
        }).find(":1: field 'text' is array, not a string") != std::string::npos);
  doc_write(dir / "f.txt", "fine\nfine\n\xff\n");
  CHECK(doc_error_of([&] {
          (void)btx::read_documents(dir / "f.txt");
        }).find("f.txt:3: invalid UTF-8 at byte 10") != std::string::npos);
  CHECK(doc_error_of([&] {
          (void)btx::read_documents(dir / "b.txt", {.format = "csv"});
        }).find("unknown data format 'csv'") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("documents: chat lines are conversations, rendered by the renderer given") {
  const auto dir = docs_dir("chat");
  btx::DocumentOptions chat{.format = "chat"};
  chat.chat = [](const nlohmann::ordered_json& messages) {
    std::string out;
    for (const auto& m : messages) {
      if (m["role"] == "tool") throw std::runtime_error("no tools here");
      out += "<" + m["role"].get<std::string>() + ">" + m.value("content", "");
    }
    return out;
  };
  doc_write(dir / "a.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, "
            "{\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"id\": 2}\n");
  CHECK(btx::read_documents(dir / "a.jsonl", chat) ==
        std::vector<std::string>{"<user>hi<assistant>yo", "<user>x"});
  const auto error = [&](const std::string& line) {
    doc_write(dir / "b.jsonl", "{\"messages\": [{\"role\": \"user\"}]}\n" + line + "\n");
    return doc_error_of([&] { (void)btx::read_documents(dir / "b.jsonl", chat); });
  };
  const auto at = (dir / "b.jsonl").string() + ":2: field 'messages'";
  CHECK(error("{\"messages\": \"hi\"}") == at + " is string, not a list of messages");
  CHECK(error("{\"messages\": []}") == at + " is an empty list, not a list of messages");
  CHECK(error("{\"messages\": [1]}") == at + ", message 0 is number, not an object");
  CHECK(error("{\"messages\": [{\"role\": \"user\"}, {\"content\": \"a\"}]}") ==
        at + ", message 1 has no string 'role'");
  CHECK(error("{\"messages\": [{\"role\": \"tool\"}]}") ==
        at + ": the chat template cannot render it: no tools here");
  CHECK(error("{\"text\": \"a\"}") ==
        (dir / "b.jsonl").string() + ":2: no field 'messages' (the line has: text)");
  // A program without a renderer refuses chat data, naming the file.
  CHECK(doc_error_of([&] { (void)btx::read_documents(dir / "a.jsonl", {.format = "chat"}); }) ==
        (dir / "a.jsonl").string() + ": chat data, but this program renders no chat templates");
  fs::remove_all(dir);
}

TEST_CASE("document corpus: packed with EOS, split by the document rule, cached by content") {
  const auto dir = docs_dir("corpus");
  std::string jsonl;
  for (int i = 0; i < 12; ++i) jsonl += "{\"text\": \"d" + std::to_string(i) + "\"}\n";
  doc_write(dir / "docs.jsonl", jsonl);
  btx::DomainSpec spec;
  spec.name = "x";
  spec.paths = {(dir / "docs.jsonl").string()};
  spec.eval_every = 4;  // documents 2, 6, 10 held out
  spec.weight = 3.0;
  auto corpus = btx::document_corpus({spec}, doc_byte_options(dir / "cache"));
  const auto& d = corpus.domains.at(0);
  const auto text = [](const torch::Tensor& t) {
    std::string s;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const auto v = t[i].item<int>();
      s += v == 0 ? '|' : char(v);
    }
    return s;
  };
  CHECK(text(d.eval_tokens) == "d2|d6|d10|");
  CHECK(text(d.train_tokens) == "d0|d1|d3|d4|d5|d7|d8|d9|d11|");
  CHECK(d.weight == 3.0);
  CHECK(corpus.manifest.size() == 1);
  // A second read takes the cache (no tokeniser called); a changed file makes a new entry.
  auto cached = doc_byte_options(dir / "cache");
  cached.encode = [](const std::vector<std::string>&) -> std::vector<std::vector<int64_t>> {
    throw std::runtime_error("tokenised again");
  };
  CHECK(btx::document_corpus({spec}, cached).domains[0].train_tokens.equal(d.train_tokens));
  doc_write(dir / "docs.jsonl", jsonl + "{\"text\": \"d12\"}\n");
  CHECK(doc_error_of([&] { (void)btx::document_corpus({spec}, cached); }) == "tokenised again");
  // Bad data in any domain fails before anything is tokenised or cached.
  btx::DomainSpec bad = spec;
  bad.name = "bad";
  doc_write(dir / "bad.jsonl", "{\"text\": 1}\n");
  bad.paths = {(dir / "bad.jsonl").string()};
  btx::DomainSpec fresh = spec;
  fresh.name = "fresh";
  const auto before = std::distance(fs::directory_iterator(dir / "cache"), {});
  CHECK(doc_error_of([&] {
          (void)btx::document_corpus({fresh, bad}, doc_byte_options(dir / "cache"));
        }).find("bad.jsonl:1: field 'text' is number") != std::string::npos);
  CHECK(std::distance(fs::directory_iterator(dir / "cache"), {}) == before);
  fs::remove_all(dir);
}

TEST_CASE("trainable parts: each choice leaves exactly its parameters trainable") {
  const auto trainable = [](torch::nn::Module& m) {
    std::set<std::string> out;
    for (const auto& p : m.named_parameters()) {
      if (p.value().requires_grad()) out.insert(p.key());
    }
    return out;
  };
  const auto moe = [] {
    return btx::LlamaForCausalLM(tiny_config(), btx::moe_feed_forward({.num_experts = 3}));
  };
  {
    auto m = moe();
    const auto s = btx::restrict_training(*m, btx::TrainedParts::router);
    CHECK(trainable(*m) == std::set<std::string>{"model.layers.0.mlp.gate.weight",
                                                 "model.layers.1.mlp.gate.weight"});
    CHECK(s.trainable_tensors == 2);
  }
  {
    auto m = moe();
    (void)btx::restrict_training(*m, btx::TrainedParts::experts_frozen);
    const auto t = trainable(*m);
    CHECK(t.count("model.layers.0.mlp.gate.weight"));
    CHECK(t.count("model.embed_tokens.weight"));
    CHECK(!t.count("model.layers.0.mlp.experts.gate_proj"));
  }
  {
    auto m = moe();
    (void)btx::restrict_training(*m, btx::TrainedParts::ffn);
    for (const auto& name : trainable(*m)) CHECK(name.find(".mlp.") != std::string::npos);
    CHECK(trainable(*m).count("model.layers.1.mlp.experts.down_proj"));
  }
  {
    auto m = moe();
    CHECK(doc_error_of([&] {
            (void)btx::restrict_training(*m, btx::TrainedParts::router_and_shared);
          }).find("no shared expert") != std::string::npos);
    CHECK(trainable(*m).size() == m->named_parameters().size());  // nothing frozen on refusal
  }
  btx::LlamaForCausalLM dense(tiny_config());
  CHECK(doc_error_of([&] {
          (void)btx::restrict_training(*dense, btx::TrainedParts::router);
        }).find("needs an MoE model") != std::string::npos);
  (void)btx::restrict_training(*dense, btx::TrainedParts::ffn);
  CHECK(trainable(*dense).count("model.layers.0.mlp.up_proj.weight"));
  CHECK(!trainable(*dense).count("lm_head.weight"));
  CHECK(btx::parse_trained_parts("router_and_shared") == btx::TrainedParts::router_and_shared);
  CHECK(doc_error_of([] { (void)btx::parse_trained_parts("routers"); }).find("known: everything") !=
        std::string::npos);
}
