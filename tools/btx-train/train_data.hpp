// SPDX-License-Identifier: MIT
// btx-train's data: the config's domains read as documents (chat conversations rendered
// with the checkpoint's own template), tokenised with the checkpoint's own tokenizer and
// packed with its EOS (data/document_corpus.hpp), and --show-documents, which prints the
// first documents of each domain as they will be tokenised, and their ids.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/hash.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/data/document_corpus.hpp>

#include "../common/chat_template.hpp"
#include "../common/checkpoint_tokenizer.hpp"
#include "config.hpp"
#include "parquet_reader.hpp"

namespace btx::train_tool {

namespace fs = std::filesystem;

inline bool has_chat_domains(const TrainConfig& c) {
  for (const auto& d : c.domains) {
    if (d.format == "chat") return true;
  }
  return false;
}

// The checkpoint's chat template as a renderer when a domain holds chat data.
inline ChatRenderer chat_renderer_for(const TrainConfig& c) {
  return has_chat_domains(c) ? tools::chat_renderer(c.model) : ChatRenderer{};
}

// The checkpoint's tokenizer. Chat data needs its tokenizer.json: a rendered conversation
// holds special-token strings (<|im_start|>), which transformers' tokenizers take as one
// token each and SentencePiece alone would spell out.
inline std::shared_ptr<tools::CheckpointTokenizer> tokenizer_for(const TrainConfig& c) {
  auto tokenizer = std::make_shared<tools::CheckpointTokenizer>(c.model);
  if (has_chat_domains(c) && tokenizer->file().filename() != "tokenizer.json") {
    throw DataError("chat data needs " + (fs::path(c.model) / "tokenizer.json").string() +
                    " (read here with " + tokenizer->description() +
                    ", which does not split the template's special tokens out of the text "
                    "as transformers does)" +
                    (tokenizer->note().empty() ? "" : ": " + tokenizer->note()));
  }
  return tokenizer;
}

// The checkpoint's EOS id (config.json, else generation_config.json; a list's first).
inline int64_t eos_id_of(const fs::path& model) {
  for (const char* file : {"config.json", "generation_config.json"}) {
    std::ifstream in(model / file);
    if (!in) continue;
    const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("eos_token_id")) continue;
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) return e.get<int64_t>();
    if (e.is_array() && !e.empty() && e[0].is_number_integer()) return e[0].get<int64_t>();
  }
  throw std::invalid_argument(model.string() +
                              ": no eos_token_id in config.json or generation_config.json; "
                              "documents are packed with EOS between them");
}

// What identifies the checkpoint's tokenizer for the token cache: its files' hashes (the
// chat template's among them).
inline std::string tokenizer_key(const fs::path& model) {
  std::string key;
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                           "chat_template.jinja", "chat_template.json"}) {
    std::ifstream in(model / name, std::ios::binary);
    if (!in) continue;
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    key += std::string(name) + ":" + ::btx::detail::hex64(fnv1a64(bytes)) + ";";
  }
  return key;
}

inline Corpus read_corpus(const TrainConfig& c, const ModelSpec& spec) {
  DocumentCorpusOptions options;
  options.vocab_size = spec.shape.vocab_size;
  options.cache_dir =
      c.cache_dir.empty() ? fs::path(c.run_dir) / "token-cache" : fs::path(c.cache_dir);
  options.parquet = parquet_reader();
  options.chat = chat_renderer_for(c);
  bool needs_tokenizer = false;
  for (const auto& d : c.domains) needs_tokenizer = needs_tokenizer || d.token_file.empty();
  if (needs_tokenizer) {
    auto tokenizer = tokenizer_for(c);
    options.encode = [tokenizer](const std::vector<std::string>& docs) {
      return tokenizer->encode_documents(docs);
    };
    options.eos_id = eos_id_of(c.model);
    options.tokenizer_key = tokenizer->description() + " " + tokenizer_key(c.model);
  } else {
    options.encode = [](const std::vector<std::string>&) -> std::vector<std::vector<int64_t>> {
      throw std::logic_error("token-file domains need no tokenizer");
    };
    options.eos_id = 0;
  }
  return document_corpus(c.domains, options);
}

// --show-documents N: the first N documents of each domain with paths, as JSON lines
// {"domain", "file", "text", "ids"}: the text as it will be tokenised (a conversation
// rendered by the chat template) and its ids (before the EOS that follows every document).
inline int show_documents(const TrainConfig& c, int64_t n) {
  const auto tokenizer = tokenizer_for(c);
  const DocumentOptions base{"auto", "", parquet_reader(), chat_renderer_for(c)};
  for (const auto& spec : c.domains) {
    if (spec.paths.empty()) {
      std::fprintf(stderr, "[btx-train] domain %s: no document files (token file or generator)\n",
                   spec.name.c_str());
      continue;
    }
    DocumentOptions options = base;
    options.format = spec.format;
    options.field = spec.field;
    std::vector<std::string> texts, files;
    for (const auto& file : domain_files(spec)) {
      for (auto& doc : read_documents(file, options)) {
        if (int64_t(texts.size()) == n) break;
        texts.push_back(std::move(doc));
        files.push_back(file.string());
      }
      if (int64_t(texts.size()) == n) break;
    }
    const auto ids = tokenizer->encode_documents(texts);
    for (size_t i = 0; i < texts.size(); ++i) {
      const nlohmann::ordered_json line = {
          {"domain", spec.name}, {"file", files[i]}, {"text", texts[i]}, {"ids", ids[i]}};
      std::printf("%s\n", line.dump().c_str());
    }
  }
  return 0;
}

}  // namespace btx::train_tool
