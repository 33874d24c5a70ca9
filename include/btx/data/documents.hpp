// SPDX-License-Identifier: MIT
// Documents from the files datasets ship in: a text file is one document; a JSONL file has
// one JSON object per line whose field `field` (a string) is a document; a chat file is
// JSONL whose field (default `messages`) is a conversation, [{"role", "content"}, ...],
// rendered into one document by a chat renderer a program plugs in (btx-train renders with
// the checkpoint's own chat template); a Parquet file has one row per document in its string
// column `field`, read by a reader a program plugs in (btx-train's uses Apache Arrow's C++
// library; the header-only core links neither). Bad data is a DataError naming file, line or
// row, and field, before anything is tokenised: invalid UTF-8, a line that is not a JSON
// object, a missing or non-string field, a conversation that is not a list of messages with
// roles or that the template refuses, a file that is not what its extension says.
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

enum class DocumentFormat { text, jsonl, chat, parquet };

inline std::string format_name(DocumentFormat f) {
  switch (f) {
    case DocumentFormat::text:
      return "text";
    case DocumentFormat::jsonl:
      return "jsonl";
    case DocumentFormat::chat:
      return "chat";
    case DocumentFormat::parquet:
      return "parquet";
  }
  return "?";
}

// `name`: text | jsonl | chat | parquet, or auto (by extension: .jsonl/.ndjson -> jsonl,
// .parquet -> parquet, anything else -> text; chat is never guessed).
inline DocumentFormat document_format(const std::string& name, const std::filesystem::path& file) {
  if (name == "text") return DocumentFormat::text;
  if (name == "jsonl") return DocumentFormat::jsonl;
  if (name == "chat") return DocumentFormat::chat;
  if (name == "parquet") return DocumentFormat::parquet;
  if (name != "auto") {
    throw DataError("unknown data format '" + name + "' (known: auto, text, jsonl, chat, parquet)");
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

// Renders one conversation (a JSON array of message objects, each with a string "role")
// into the text of one document; throws std::exception saying why it cannot (a template's
// raise_exception, say). Empty: this program reads no chat data. Ordered JSON: a template
// that prints a message (tojson) sees its keys in the file's order, as Python does.
using ChatRenderer = std::function<std::string(const nlohmann::ordered_json& messages)>;

struct DocumentOptions {
  std::string format = "auto";  // auto | text | jsonl | chat | parquet
  std::string field;            // the JSONL field / Parquet column; empty: text (messages for chat)
  ParquetReader parquet;        // needed for Parquet files
  ChatRenderer chat;            // needed for chat files
};

// The field (column) a file of `format` keeps its documents in, `field` when given.
inline std::string document_field(DocumentFormat format, const std::string& field) {
  if (!field.empty()) return field;
  return format == DocumentFormat::chat ? "messages" : "text";
}

namespace detail {
inline std::string read_bytes(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DataError(file.string() + ": cannot be read");
  return {std::istreambuf_iterator<char>(in), {}};
}

// Calls on_row(value of `field`, "file:line") for every non-blank line of JSONL `bytes`.
template <class OnRow>
void for_each_jsonl_field(const std::filesystem::path& file, const std::string& bytes,
                          const std::string& field, OnRow&& on_row) {
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
    nlohmann::ordered_json row;
    try {
      row = nlohmann::ordered_json::parse(text);
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
    on_row(row[field], where);
  }
}

inline std::vector<std::string> jsonl_documents(const std::filesystem::path& file,
                                                const std::string& bytes,
                                                const std::string& field) {
  std::vector<std::string> docs;
  for_each_jsonl_field(file, bytes, field,
                       [&](nlohmann::ordered_json& value, const std::string& where) {
                         if (!value.is_string()) {
                           throw DataError(where + ": field '" + field + "' is " +
                                           value.type_name() + ", not a string");
                         }
                         docs.push_back(value.get<std::string>());
                       });
  return docs;
}

// One document per conversation: a non-empty array of objects with a string "role", as
// chat datasets (and transformers' apply_chat_template) have them, rendered by `render`.
inline std::vector<std::string> chat_documents(const std::filesystem::path& file,
                                               const std::string& bytes, const std::string& field,
                                               const ChatRenderer& render) {
  std::vector<std::string> docs;
  for_each_jsonl_field(
      file, bytes, field, [&](nlohmann::ordered_json& value, const std::string& where) {
        const std::string what = where + ": field '" + field + "'";
        if (!value.is_array() || value.empty()) {
          throw DataError(what + " is " + (value.is_array() ? "an empty list" : value.type_name()) +
                          ", not a list of messages");
        }
        for (size_t i = 0; i < value.size(); ++i) {
          const auto& m = value[i];
          const std::string message = what + ", message " + std::to_string(i);
          if (!m.is_object()) throw DataError(message + " is " + m.type_name() + ", not an object");
          if (!m.contains("role") || !m["role"].is_string()) {
            throw DataError(message + " has no string 'role'");
          }
        }
        try {
          docs.push_back(render(value));
        } catch (const std::exception& e) {
          throw DataError(what + ": the chat template cannot render it: " + e.what());
        }
      });
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
    return options.parquet(file, document_field(format, options.field));
  }
  if (parquet_bytes) {
    throw DataError(file.string() + ": a Parquet file read as " + format_name(format) +
                    " (give it the .parquet extension or format: parquet)");
  }
  if (format == DocumentFormat::jsonl) {
    return detail::jsonl_documents(file, bytes, document_field(format, options.field));
  }
  if (format == DocumentFormat::chat) {
    if (!options.chat) {
      throw DataError(file.string() + ": chat data, but this program renders no chat templates");
    }
    return detail::chat_documents(file, bytes, document_field(format, options.field), options.chat);
  }
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
