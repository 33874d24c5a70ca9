// SPDX-License-Identifier: MIT
// The keys of one data domain (btx::DomainSpec), declared once for every program that reads
// corpora: btx-pipeline's domains (one expert each) and btx-train's (one mixture).
#pragma once

#include <string>

#include <btx/core/schema.hpp>
#include <btx/data/corpus.hpp>

namespace btx::tools {

// `documents`: the keys of document corpora too (format, field, eval_paths), which
// btx-train reads (data/document_corpus.hpp) and btx-pipeline does not yet.
inline schema::Schema<DomainSpec> domain_schema(bool documents = false) {
  namespace s = btx::schema;
  auto out = s::Schema<DomainSpec>("domains[]");
  if (documents) {
    out.key("format", &DomainSpec::format,
            "auto (by extension) | text | jsonl | chat (JSONL conversations rendered with the "
            "checkpoint's chat template) | parquet",
            s::one_of({"auto", "text", "jsonl", "chat", "parquet"}))
        .key("field", &DomainSpec::field,
             "the JSONL field / Parquet column of each document (default: text; messages for "
             "chat)")
        .key("eval_paths", &DomainSpec::eval_paths,
             "files or folders of held-out documents (default: every eval_every-th document)");
  }
  return out.key("name", &DomainSpec::name, "the domain's name", s::non_empty<std::string>())
      .key("paths", &DomainSpec::paths, "text files or folders")
      .key("extensions", &DomainSpec::extensions, "a folder's files to read (e.g. [.h])")
      .key("recursive", &DomainSpec::recursive, "descend into subfolders")
      .key("generator", &DomainSpec::generator, "arithmetic: generated problems instead")
      .key("token_file", &DomainSpec::token_file, "nanoGPT token file (train split)")
      .key("eval_token_file", &DomainSpec::eval_token_file, "its held-out split")
      .key("token_dtype", &DomainSpec::token_dtype, "uint16 or uint32",
           s::one_of({"uint16", "uint32"}))
      .key("max_train_tokens", &DomainSpec::max_train_tokens, "cap on training tokens",
           s::positive<int64_t>())
      .key("max_eval_tokens", &DomainSpec::max_eval_tokens, "cap on held-out tokens",
           s::positive<int64_t>())
      .key("eval_every", &DomainSpec::eval_every, "every n-th document is held out",
           s::positive<int64_t>())
      .key("weight", &DomainSpec::weight,
           "the domain's share of the mixture's training windows (relative to the others')",
           s::positive<double>())
      .key("seed", &DomainSpec::seed, "a generated domain's seed");
}

}  // namespace btx::tools
