// SPDX-License-Identifier: MIT
// A corpus of documents as a model's own tokenizer sees them: each domain's files read as
// documents (data/documents.hpp: text, JSONL, Parquet; or a nanoGPT token file as is),
// tokenised once and packed with EOS after every document, held-out documents split off
// reproducibly (every eval_every-th document, counted from the middle of the first run of
// eval_every) or read from the domain's own eval_paths. The ids are cached in token files
// keyed by what made them (the files' content hashes, the tokenizer's, format, field,
// split), so a second run, a resumed one or every rank of a data-parallel job skips the
// tokenizer. Bad data fails here, naming file, line and field, before any training.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <btx/core/hash.hpp>
#include <btx/data/corpus.hpp>
#include <btx/data/documents.hpp>
#include <btx/data/token_file.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Token ids of each text, special tokens not added (documents are packed by EOS).
using BatchEncoder =
    std::function<std::vector<std::vector<int64_t>>(const std::vector<std::string>&)>;

struct DocumentCorpusOptions {
  BatchEncoder encode;
  int64_t eos_id = -1;              // appended after every document
  int64_t vocab_size = 0;           // ids must be below it
  std::string tokenizer_key;        // what identifies the tokenizer (its files' hashes)
  std::filesystem::path cache_dir;  // empty: no cache
  ParquetReader parquet;            // Parquet files need one
  ChatRenderer chat;                // chat files need one (its template is in tokenizer_key)
};

// [N] int32: every document's ids followed by EOS.
inline torch::Tensor pack_documents(const std::vector<std::vector<int64_t>>& docs, int64_t eos) {
  int64_t n = 0;
  for (const auto& d : docs) n += int64_t(d.size()) + 1;
  auto out = torch::empty({n}, torch::kInt32);
  auto* dst = out.data_ptr<int32_t>();
  for (const auto& d : docs) {
    for (const auto id : d) *dst++ = int32_t(id);
    *dst++ = int32_t(eos);
  }
  return out;
}

// Whether document `index` of a domain is held out (every n-th, from n/2): stable under
// appending documents, and the same rule text domains have always used.
inline bool held_out_document(int64_t index, int64_t eval_every) {
  return eval_every > 0 && index % eval_every == eval_every / 2;
}

namespace detail {

inline std::string hex64(uint64_t h) {
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

struct DomainDocuments {
  std::vector<std::string> train, eval;
  nlohmann::json files = nlohmann::json::array();  // what the cache key and manifest name
};

inline DomainDocuments read_domain_documents(const DomainSpec& spec,
                                             const DocumentCorpusOptions& options,
                                             std::vector<ManifestEntry>& manifest) {
  DomainDocuments out;
  const DocumentOptions reading{spec.format, spec.field, options.parquet, options.chat};
  const auto read = [&](const std::filesystem::path& file, const std::string& split) {
    const std::string bytes = read_bytes(file);
    const auto hash = fnv1a64(bytes);
    manifest.push_back({spec.name, file.string(), split, uint64_t(bytes.size()), hash});
    out.files.push_back({file.string(), hex64(hash), split});
    return documents_in(file, bytes, reading);
  };
  int64_t index = 0;
  const bool own_eval = !spec.eval_paths.empty();
  for (const auto& file : domain_files(spec)) {
    for (auto& doc : read(file, own_eval ? "train" : "train+eval")) {
      const bool eval = !own_eval && held_out_document(index++, spec.eval_every);
      (eval ? out.eval : out.train).push_back(std::move(doc));
    }
  }
  if (own_eval) {
    DomainSpec eval_spec = spec;
    eval_spec.paths = spec.eval_paths;
    for (const auto& file : domain_files(eval_spec)) {
      for (auto& doc : read(file, "eval")) out.eval.push_back(std::move(doc));
    }
  }
  if (out.train.empty()) {
    throw DataError("domain '" + spec.name + "' has no training documents: check its paths" +
                    (spec.extensions.empty() ? std::string() : " and extensions"));
  }
  return out;
}

inline torch::Tensor encode_and_pack(const std::vector<std::string>& docs,
                                     const DocumentCorpusOptions& options,
                                     const std::string& domain) {
  if (docs.empty()) return torch::empty({0}, torch::kInt32);
  const auto ids = options.encode(docs);
  if (ids.size() != docs.size()) {
    throw std::runtime_error("domain '" + domain + "': the tokenizer returned " +
                             std::to_string(ids.size()) + " encodings for " +
                             std::to_string(docs.size()) + " documents");
  }
  for (const auto& d : ids) {
    for (const auto id : d) {
      if (id < 0 || (options.vocab_size > 0 && id >= options.vocab_size)) {
        throw DataError("domain '" + domain + "': the tokenizer gave id " + std::to_string(id) +
                        ", outside the model's vocabulary of " +
                        std::to_string(options.vocab_size));
      }
    }
  }
  return pack_documents(ids, options.eos_id);
}

// Domain `spec`'s documents as packed ids: from the cache when an entry made from the same
// files, tokenizer and settings exists, else tokenised now (and cached).
inline void tokenise_domain(const DomainSpec& spec, const DomainDocuments& docs,
                            const DocumentCorpusOptions& options, Domain& domain) {
  const nlohmann::json key = {{"btx_token_cache", 1},  {"tokenizer", options.tokenizer_key},
                              {"eos", options.eos_id}, {"format", spec.format},
                              {"field", spec.field},   {"eval_every", spec.eval_every},
                              {"files", docs.files}};
  const std::string stem = spec.name + "-" + hex64(fnv1a64(key.dump()));
  const auto cached = [&](const char* split) {
    return options.cache_dir / (stem + "." + split + ".bin");
  };
  const auto record = options.cache_dir / (stem + ".json");
  if (!options.cache_dir.empty() && std::filesystem::exists(record)) {
    domain.train_tokens = read_token_file(cached("train").string(), "uint32");
    domain.eval_tokens = read_token_file(cached("eval").string(), "uint32");
    return;
  }
  domain.train_tokens = encode_and_pack(docs.train, options, spec.name);
  domain.eval_tokens = encode_and_pack(docs.eval, options, spec.name);
  if (domain.eval_tokens.numel() == 0) {  // one document: hold out its last tenth
    const int64_t n = domain.train_tokens.numel();
    const int64_t cut = n - std::max<int64_t>(1, n / 10);
    domain.eval_tokens = domain.train_tokens.slice(0, cut).clone();
    domain.train_tokens = domain.train_tokens.slice(0, 0, cut).clone();
  }
  if (options.cache_dir.empty()) return;
  std::filesystem::create_directories(options.cache_dir);
  write_token_file(cached("train"), domain.train_tokens, "uint32");
  write_token_file(cached("eval"), domain.eval_tokens, "uint32");
  nlohmann::json done = key;
  done["documents"] = {{"train", docs.train.size()}, {"eval", docs.eval.size()}};
  done["tokens"] = {{"train", domain.train_tokens.numel()}, {"eval", domain.eval_tokens.numel()}};
  // The entry counts once its record exists (written last, renamed into place); a
  // temporary per process, so ranks filling one cache never share a half-written file.
  const auto tmp = record.string() + ".tmp" + std::to_string(::getpid());
  std::ofstream(tmp) << done.dump(2) << "\n";
  std::filesystem::rename(tmp, record);
}

}  // namespace detail

// Every domain of `specs`: documents tokenised with options.encode and packed with EOS
// (token-file domains as read). Every file is read and checked before the first document is
// tokenised or anything is cached, so bad data leaves nothing behind. Cached under
// options.cache_dir when set.
inline Corpus document_corpus(const std::vector<DomainSpec>& specs,
                              const DocumentCorpusOptions& options) {
  if (specs.empty()) throw DataError("corpus: no domains configured");
  if (!options.encode || options.eos_id < 0) {
    throw std::invalid_argument("btx::document_corpus: needs an encoder and an EOS id");
  }
  Corpus corpus;
  corpus.vocab_size = options.vocab_size;
  std::vector<detail::DomainDocuments> read(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {  // read and check everything first
    const auto& spec = specs[i];
    for (size_t k = 0; k < i; ++k) {
      if (specs[k].name == spec.name) throw DataError("corpus: domain '" + spec.name + "' twice");
    }
    Domain domain;
    domain.name = spec.name;
    domain.weight = spec.weight;
    if (!spec.token_file.empty()) {
      int64_t vocab = 0;
      const auto text = detail::token_domain(spec, corpus.manifest, vocab);
      if (options.vocab_size > 0 && vocab > options.vocab_size) {
        throw DataError("domain '" + spec.name + "': token file " + spec.token_file +
                        " has ids up to " + std::to_string(vocab - 1) +
                        ", outside the model's vocabulary of " +
                        std::to_string(options.vocab_size));
      }
      domain.train_tokens = text.train_tokens;
      domain.eval_tokens = text.eval_tokens;
    } else if (spec.generator == "arithmetic") {
      // Generated problems (data/arithmetic.hpp): the train and held-out texts as one
      // document each, so a worked example needs no data files; the exact-match set too.
      auto text = detail::arithmetic_domain(spec, corpus.manifest);
      read[i].train = {std::move(text.train_text)};
      read[i].eval = {std::move(text.eval_text)};
      read[i].files.push_back({"generated:arithmetic",
                               std::to_string(spec.seed) + "/" +
                                   std::to_string(spec.max_train_tokens) + "/" +
                                   std::to_string(spec.max_eval_tokens),
                               "train+eval"});
      domain.eval_problems = std::move(text.eval_problems);
    } else if (!spec.generator.empty()) {
      throw DataError("domain '" + spec.name + "': unknown generator '" + spec.generator +
                      "' (known: arithmetic)");
    } else if (spec.paths.empty()) {
      throw DataError("domain '" + spec.name + "' names no paths, token_file or generator");
    } else {
      read[i] = detail::read_domain_documents(spec, options, corpus.manifest);
    }
    corpus.domains.push_back(std::move(domain));
  }
  for (size_t i = 0; i < specs.size(); ++i) {  // then tokenise, or take the cached ids
    const auto& spec = specs[i];
    auto& domain = corpus.domains[i];
    if (spec.token_file.empty()) detail::tokenise_domain(spec, read[i], options, domain);
    domain.train_tokens = domain.train_tokens.slice(0, 0, spec.max_train_tokens);
    domain.eval_tokens = domain.eval_tokens.slice(0, 0, spec.max_eval_tokens);
    if (domain.train_tokens.numel() == 0 || domain.eval_tokens.numel() == 0) {
      throw DataError("domain '" + spec.name + "' is empty (" +
                      std::to_string(domain.train_tokens.numel()) + " train and " +
                      std::to_string(domain.eval_tokens.numel()) + " held-out tokens)");
    }
  }
  return corpus;
}

BTX_NAMESPACE_END
}  // namespace btx
