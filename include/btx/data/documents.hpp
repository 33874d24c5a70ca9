// SPDX-License-Identifier: MIT
// Documents from the files datasets ship in: a text file is one document; a JSONL file has
// one JSON object per line whose field `field` (a string) is a document; a Parquet file has
// one row per document in its string column `field`, read by a reader a program plugs in
// (btx-train's uses Apache Arrow's C++ library; the header-only core links none). Bad data
// is a DataError naming file, line or row, and field, before anything is tokenised:
// invalid UTF-8, a line that is not a JSON object, a missing or non-string field, a file
// that is not what its extension says.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// A data error: what is wrong and where (file, line or row, field).
struct DataError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

enum class DocumentFormat { text, jsonl, parquet };

inline std::string format_name(DocumentFormat f) {
  switch (f) {
    case DocumentFormat::text:
      return "text";
    case DocumentFormat::jsonl:
      return "jsonl";
    case DocumentFormat::parquet:
      return "parquet";
  }
  return "?";
}

// `name`: text | jsonl | parquet, or auto (by extension: .jsonl/.ndjson -> jsonl, .parquet
// -> parquet, anything else -> text).
inline DocumentFormat document_format(const std::string& name, const std::filesystem::path& file) {
  if (name == "text") return DocumentFormat::text;
  if (name == "jsonl") return DocumentFormat::jsonl;
  if (name == "parquet") return DocumentFormat::parquet;
  if (name != "auto") {
    throw DataError("unknown data format '" + name + "' (known: auto, text, jsonl, parquet)");
  }
  const auto ext = file.extension().string();
  if (ext == ".jsonl" || ext == ".ndjson") return DocumentFormat::jsonl;
  if (ext == ".parquet") return DocumentFormat::parquet;
  return DocumentFormat::text;
}

// The byte offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates
// and code points above U+10FFFF included), or npos.
inline size_t invalid_utf8_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return i;
    }
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return i;
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min = n == 1 ? 0x80 : n == 2 ? 0x800 : 0x10000;
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n + 1;
  }
  return std::string_view::npos;
}

// Reads Parquet rows: (file, column) -> one string per row; throws DataError naming file,
// row and column. Empty: this program reads no Parquet.
using ParquetReader =
    std::function<std::vector<std::string>(const std::filesystem::path&, const std::string&)>;

struct DocumentOptions {
  std::string format = "auto";  // auto | text | jsonl | parquet
  std::string field = "text";   // JSONL field / Parquet column holding each document
  ParquetReader parquet;        // needed for Parquet files
};

namespace detail {
inline std::string read_bytes(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DataError(file.string() + ": cannot be read");
  return {std::istreambuf_iterator<char>(in), {}};
}

inline std::vector<std::string> jsonl_documents(const std::filesystem::path& file,
                                                const std::string& bytes,
                                                const std::string& field) {
  std::vector<std::string> docs;
  size_t begin = 0;
  int64_t line = 0;
  while (begin < bytes.size()) {
    size_t end = bytes.find('\n', begin);
    if (end == std::string::npos) end = bytes.size();
    std::string_view text(bytes.data() + begin, end - begin);
    ++line;
    begin = end + 1;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;  // blank line
    const std::string where = file.string() + ":" + std::to_string(line);
    if (const auto bad = invalid_utf8_at(text); bad != std::string_view::npos) {
      throw DataError(where + ": invalid UTF-8 at column " + std::to_string(bad + 1));
    }
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(where + ": not a JSON line (" + std::string(e.what()) +
                      "); is this file JSONL?");
    }
    if (!row.is_object()) throw DataError(where + ": not a JSON object");
    if (!row.contains(field)) {
      std::string keys;
      for (const auto& [k, v] : row.items()) keys += (keys.empty() ? "" : ", ") + k;
      throw DataError(where + ": no field '" + field + "' (the line has: " + keys + ")");
    }
    if (!row[field].is_string()) {
      throw DataError(where + ": field '" + field + "' is " + row[field].type_name() +
                      ", not a string");
    }
    docs.push_back(row[field].get<std::string>());
  }
  return docs;
}
}  // namespace detail

// Every document of `file`, whose contents are `bytes`, as `options` say (a Parquet file is
// read by options.parquet). Empty documents are kept.
inline std::vector<std::string> documents_in(const std::filesystem::path& file,
                                             const std::string& bytes,
                                             const DocumentOptions& options) {
  const auto format = document_format(options.format, file);
  const bool parquet_bytes = bytes.size() >= 4 && bytes.compare(0, 4, "PAR1") == 0;
  if (format == DocumentFormat::parquet) {
    if (!parquet_bytes) throw DataError(file.string() + ": not a Parquet file (no PAR1 magic)");
    if (!options.parquet) {
      throw DataError(file.string() +
                      ": Parquet, but this program was built without a Parquet reader");
    }
    return options.parquet(file, options.field);
  }
  if (parquet_bytes) {
    throw DataError(file.string() + ": a Parquet file read as " + format_name(format) +
                    " (give it the .parquet extension or format: parquet)");
  }
  if (format == DocumentFormat::jsonl) return detail::jsonl_documents(file, bytes, options.field);
  if (const auto bad = invalid_utf8_at(bytes); bad != std::string_view::npos) {
    int64_t line = 1;
    for (size_t i = 0; i < bad; ++i) line += bytes[i] == '\n';
    throw DataError(file.string() + ":" + std::to_string(line) + ": invalid UTF-8 at byte " +
                    std::to_string(bad) + "; is this a text file?");
  }
  return {bytes};
}

inline std::vector<std::string> read_documents(const std::filesystem::path& file,
                                               const DocumentOptions& options = {}) {
  return documents_in(file, detail::read_bytes(file), options);
}

BTX_NAMESPACE_END
}  // namespace btx
