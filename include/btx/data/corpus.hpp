// SPDX-License-Identifier: MIT
// Multi-domain corpora: each domain reads real text files (or a directory of them), a
// pre-tokenised nanoGPT token file, or generated arithmetic; documents are split into
// train and held-out eval deterministically, and every file read goes into a manifest
// with its size and FNV-1a hash so a run records exactly what it trained on.
// Two steps, so a tokenizer can be trained on the text in between: read_corpus_text()
// reads every domain, encode_corpus() turns its text into ids with a TextCodec (bytes by
// default); build_corpus() does both.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/hash.hpp>
#include <btx/data/arithmetic.hpp>
#include <btx/data/text_codec.hpp>
#include <btx/data/token_file.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct DomainSpec {
  std::string name;                     // e.g. "code"
  std::vector<std::string> paths;       // text files or directories
  std::vector<std::string> extensions;  // directory filter (".h"); empty: every regular file
  bool recursive = false;               // descend into subdirectories
  std::string generator;                // "arithmetic": generated problems instead of files
  std::string token_file;               // nanoGPT train.bin (replaces paths)
  std::string eval_token_file;          // nanoGPT val.bin (default: last 10% of token_file)
  std::string token_dtype = "uint16";   // uint16 | uint32
  int64_t max_train_tokens = 1 << 20;   // cap on training tokens kept
  int64_t max_eval_tokens = 1 << 15;    // cap on held-out tokens kept
  int64_t eval_every = 10;              // every n-th document (from the 5th) is held out
  uint64_t seed = 1234;                 // for generated domains
  double weight = 1.0;                  // share of a mixture's windows (relative)
  // Documents (btx-train; data/document_corpus.hpp): how each file is read, and the
  // held-out documents' own files instead of every eval_every-th document.
  std::string format = "auto";          // auto | text | jsonl | chat | parquet
  std::string field;                    // a JSONL field / Parquet column; empty: text/messages
  std::vector<std::string> eval_paths;  // files or folders of held-out documents
};

struct ManifestEntry {
  std::string domain, path, split;
  uint64_t bytes = 0, fnv1a64 = 0;
};

struct Domain {
  std::string name;
  torch::Tensor train_tokens;                    // [N] int32
  torch::Tensor eval_tokens;                     // [M] int32
  std::vector<ArithmeticProblem> eval_problems;  // generated math only: exact-match set
  double weight = 1.0;                           // share of a mixture's windows (relative)
};

struct Corpus {
  std::vector<Domain> domains;
  std::vector<ManifestEntry> manifest;
  int64_t vocab_size = ByteTokenizer::vocab_size;

  [[nodiscard]] const Domain& domain(const std::string& name) const {
    for (const auto& d : domains) {
      if (d.name == name) return d;
    }
    throw std::invalid_argument("corpus has no domain '" + name + "'");
  }
  [[nodiscard]] nlohmann::json manifest_json() const {
    auto files = nlohmann::json::array();
    for (const auto& m : manifest) {
      char hash[17];
      std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(m.fnv1a64));
      files.push_back({{"domain", m.domain},
                       {"path", m.path},
                       {"split", m.split},
                       {"bytes", m.bytes},
                       {"fnv1a64", hash}});
    }
    auto domains_json = nlohmann::json::array();
    for (const auto& d : domains) {
      domains_json.push_back({{"name", d.name},
                              {"train_tokens", d.train_tokens.numel()},
                              {"eval_tokens", d.eval_tokens.numel()},
                              {"eval_problems", d.eval_problems.size()}});
    }
    return {{"vocab_size", vocab_size}, {"domains", domains_json}, {"files", files}};
  }
};

// A domain before tokenisation: its train and held-out text (text and generated domains)
// or its ids (token-file domains), with the caps of its spec.
struct DomainText {
  std::string name;
  std::string train_text, eval_text;
  torch::Tensor train_tokens, eval_tokens;  // token-file domains only
  std::vector<ArithmeticProblem> eval_problems;
  int64_t max_train_tokens = 0, max_eval_tokens = 0;
  double weight = 1.0;

  [[nodiscard]] bool is_text() const { return !train_tokens.defined(); }
};

struct CorpusText {
  std::vector<DomainText> domains;
  std::vector<ManifestEntry> manifest;
  int64_t token_file_vocab = 0;  // 1 + the largest id in any token file (0: none)
};

// A domain's files in the order they are read: each path, a folder's files (with one of
// `extensions`; `recursive`) sorted, each once.
inline std::vector<std::filesystem::path> domain_files(const DomainSpec& spec) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  const auto wanted = [&](const fs::path& p) {
    if (spec.extensions.empty()) return true;
    return std::find(spec.extensions.begin(), spec.extensions.end(), p.extension().string()) !=
           spec.extensions.end();
  };
  for (const auto& root : spec.paths) {
    std::error_code ec;
    if (!fs::exists(root, ec)) {
      throw std::invalid_argument("domain '" + spec.name + "': path '" + root + "' does not exist");
    }
    if (fs::is_regular_file(root, ec)) {
      files.emplace_back(root);
      continue;
    }
    const auto add = [&](const fs::directory_entry& e) {
      if (e.is_regular_file(ec) && wanted(e.path())) files.push_back(e.path());
    };
    if (spec.recursive) {
      for (const auto& e : fs::recursive_directory_iterator(root, ec)) add(e);
    } else {
      for (const auto& e : fs::directory_iterator(root, ec)) add(e);
    }
  }
  std::sort(files.begin(), files.end());  // directory order is not deterministic
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

namespace detail {

inline DomainText text_domain(const DomainSpec& spec, std::vector<ManifestEntry>& manifest) {
  const auto files = domain_files(spec);
  std::string train, eval;
  int64_t doc = 0;
  for (const auto& f : files) {
    if (int64_t(train.size()) >= spec.max_train_tokens &&
        int64_t(eval.size()) >= spec.max_eval_tokens) {
      break;
    }
    std::ifstream in(f, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    if (text.empty()) continue;
    const bool held_out =
        files.size() > 1 && spec.eval_every > 0 && doc % spec.eval_every == spec.eval_every / 2;
    ++doc;
    auto& dst = held_out ? eval : train;
    const int64_t cap = held_out ? spec.max_eval_tokens : spec.max_train_tokens;
    if (int64_t(dst.size()) >= cap) continue;
    manifest.push_back(
        {spec.name, f.string(), held_out ? "eval" : "train", text.size(), fnv1a64(text)});
    dst += text;
    dst += "\n\n";
  }
  if (eval.empty() && !train.empty()) {  // one document: hold out its last tenth
    const size_t cut = train.size() - std::max<size_t>(1, train.size() / 10);
    eval = train.substr(cut);
    train.resize(cut);
  }
  DomainText d;
  d.name = spec.name;
  d.train_text = std::move(train);
  d.eval_text = std::move(eval);
  return d;
}

inline DomainText arithmetic_domain(const DomainSpec& spec, std::vector<ManifestEntry>& manifest) {
  const auto train_text =
      arithmetic_text(arithmetic_problems(size_t(spec.max_train_tokens / 7), spec.seed));
  // Held-out problems come from another seed; overlap with training is possible but rare.
  auto eval_problems = arithmetic_problems(size_t(spec.max_eval_tokens / 7), spec.seed + 7919);
  const auto eval_text = arithmetic_text(eval_problems);
  manifest.push_back({spec.name, "generated:arithmetic seed=" + std::to_string(spec.seed), "train",
                      train_text.size(), fnv1a64(train_text)});
  manifest.push_back({spec.name, "generated:arithmetic seed=" + std::to_string(spec.seed + 7919),
                      "eval", eval_text.size(), fnv1a64(eval_text)});
  DomainText d;
  d.name = spec.name;
  d.train_text = train_text;
  d.eval_text = eval_text;
  d.eval_problems = std::move(eval_problems);
  return d;
}

inline DomainText token_domain(const DomainSpec& spec, std::vector<ManifestEntry>& manifest,
                               int64_t& vocab_size) {
  auto train = read_token_file(spec.token_file, spec.token_dtype);
  torch::Tensor eval;
  if (!spec.eval_token_file.empty()) {
    eval = read_token_file(spec.eval_token_file, spec.token_dtype);
  } else {
    const int64_t cut = train.numel() - std::max<int64_t>(1, train.numel() / 10);
    eval = train.slice(0, cut).clone();
    train = train.slice(0, 0, cut).clone();
  }
  for (const auto& path : {spec.token_file, spec.eval_token_file}) {
    if (path.empty()) continue;
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    manifest.push_back({spec.name, path, path == spec.token_file ? "train" : "eval", bytes.size(),
                        fnv1a64(bytes)});
  }
  if (train.numel() > 0) vocab_size = std::max<int64_t>(vocab_size, train.max().item<int>() + 1);
  if (eval.numel() > 0) vocab_size = std::max<int64_t>(vocab_size, eval.max().item<int>() + 1);
  DomainText d;
  d.name = spec.name;
  d.train_tokens = train;
  d.eval_tokens = eval;
  return d;
}

}  // namespace detail

// Reads every domain; throws std::invalid_argument for a missing path, an empty text
// domain or a duplicate name, before any training can start.
inline CorpusText read_corpus_text(const std::vector<DomainSpec>& specs) {
  if (specs.empty()) throw std::invalid_argument("corpus: no domains configured");
  CorpusText corpus;
  for (const auto& spec : specs) {
    if (spec.name.empty()) throw std::invalid_argument("corpus: a domain has no name");
    for (const auto& d : corpus.domains) {
      if (d.name == spec.name) {
        throw std::invalid_argument("corpus: domain '" + spec.name + "' is configured twice");
      }
    }
    DomainText domain;
    if (!spec.token_file.empty()) {
      domain = detail::token_domain(spec, corpus.manifest, corpus.token_file_vocab);
    } else if (spec.generator == "arithmetic") {
      domain = detail::arithmetic_domain(spec, corpus.manifest);
    } else if (!spec.generator.empty()) {
      throw std::invalid_argument("domain '" + spec.name + "': unknown generator '" +
                                  spec.generator + "' (known: arithmetic)");
    } else if (spec.paths.empty()) {
      throw std::invalid_argument("domain '" + spec.name +
                                  "' names no paths, token_file or generator");
    } else {
      domain = detail::text_domain(spec, corpus.manifest);
    }
    domain.max_train_tokens = spec.max_train_tokens;
    domain.max_eval_tokens = spec.max_eval_tokens;
    domain.weight = spec.weight;
    if (domain.is_text() && (domain.train_text.empty() || domain.eval_text.empty())) {
      throw std::invalid_argument("domain '" + spec.name + "' is empty (" +
                                  std::to_string(domain.train_text.size()) + " train and " +
                                  std::to_string(domain.eval_text.size()) +
                                  " eval bytes of text): check its paths and extensions");
    }
    corpus.domains.push_back(std::move(domain));
  }
  return corpus;
}

// Every text domain's ids under `codec` (token-file domains as read), each cut to its
// spec's caps; throws std::invalid_argument for a domain left empty.
inline Corpus encode_corpus(const CorpusText& text, const TextCodec& codec = TextCodec::bytes()) {
  Corpus corpus;
  corpus.manifest = text.manifest;
  corpus.vocab_size = std::max(codec.vocab_size, text.token_file_vocab);
  for (const auto& d : text.domains) {
    Domain domain{d.name, d.train_tokens, d.eval_tokens, d.eval_problems, d.weight};
    if (d.is_text()) {
      domain.train_tokens = codec.encode_tensor(d.train_text);
      domain.eval_tokens = codec.encode_tensor(d.eval_text);
    }
    domain.train_tokens = domain.train_tokens.slice(0, 0, d.max_train_tokens);
    domain.eval_tokens = domain.eval_tokens.slice(0, 0, d.max_eval_tokens);
    if (domain.train_tokens.numel() == 0 || domain.eval_tokens.numel() == 0) {
      throw std::invalid_argument("domain '" + d.name + "' is empty (" +
                                  std::to_string(domain.train_tokens.numel()) + " train and " +
                                  std::to_string(domain.eval_tokens.numel()) +
                                  " eval tokens): check its paths and extensions");
    }
    corpus.domains.push_back(std::move(domain));
  }
  return corpus;
}

inline Corpus build_corpus(const std::vector<DomainSpec>& specs,
                           const TextCodec& codec = TextCodec::bytes()) {
  return encode_corpus(read_corpus_text(specs), codec);
}

BTX_NAMESPACE_END
}  // namespace btx
