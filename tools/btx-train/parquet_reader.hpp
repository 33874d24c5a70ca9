// SPDX-License-Identifier: MIT
// btx-train's Parquet reader: one document per row of a string column, read with Apache
// Arrow's C++ library (the headers and libraries the `pyarrow` wheel ships; CMake option
// BTX_PARQUET, which the README's test command turns on). Errors name the file, the row and
// the column: a missing column (the file's columns listed), a column that is not strings, a
// null row, invalid UTF-8. Built without Arrow, parquet_reader() is empty and a Parquet
// domain is refused naming the file.
#pragma once

#include <btx/data/documents.hpp>

#ifdef BTX_WITH_PARQUET
#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#endif

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace btx::train_tool {

#ifdef BTX_WITH_PARQUET
namespace detail {

template <class T>
T value_or_throw(arrow::Result<T> result, const std::filesystem::path& file) {
  if (!result.ok()) throw DataError(file.string() + ": " + result.status().ToString());
  return std::move(result).ValueOrDie();
}

inline void ok_or_throw(const arrow::Status& status, const std::filesystem::path& file) {
  if (!status.ok()) throw DataError(file.string() + ": " + status.ToString());
}

template <class Array>
void append_strings(const Array& array, int64_t first_row, const std::filesystem::path& file,
                    const std::string& column, std::vector<std::string>& out) {
  for (int64_t i = 0; i < array.length(); ++i) {
    const std::string where =
        file.string() + ": row " + std::to_string(first_row + i) + ", column '" + column + "'";
    if (array.IsNull(i)) throw DataError(where + ": null, not a document");
    auto text = std::string(array.GetView(i));
    if (const auto bad = invalid_utf8_at(text); bad != std::string::npos) {
      throw DataError(where + ": invalid UTF-8 at byte " + std::to_string(bad));
    }
    out.push_back(std::move(text));
  }
}

}  // namespace detail

inline std::vector<std::string> read_parquet_column(const std::filesystem::path& file,
                                                    const std::string& column) {
  auto input = detail::value_or_throw(arrow::io::ReadableFile::Open(file.string()), file);
  auto reader =
      detail::value_or_throw(parquet::arrow::OpenFile(input, arrow::default_memory_pool()), file);
  std::shared_ptr<arrow::Schema> schema;
  detail::ok_or_throw(reader->GetSchema(&schema), file);
  const int index = schema->GetFieldIndex(column);
  if (index < 0) {
    std::string names;
    for (const auto& f : schema->fields()) names += (names.empty() ? "" : ", ") + f->name();
    throw DataError(file.string() + ": no column '" + column + "' (the file has: " + names + ")");
  }
  const auto type = schema->field(index)->type()->id();
  if (type != arrow::Type::STRING && type != arrow::Type::LARGE_STRING) {
    throw DataError(file.string() + ": column '" + column + "' is " +
                    schema->field(index)->type()->ToString() + ", not strings");
  }
  std::shared_ptr<arrow::ChunkedArray> chunks;
  detail::ok_or_throw(reader->ReadColumn(index, &chunks), file);
  std::vector<std::string> out;
  out.reserve(size_t(chunks->length()));
  int64_t row = 0;
  for (const auto& chunk : chunks->chunks()) {
    if (type == arrow::Type::STRING) {
      detail::append_strings(static_cast<const arrow::StringArray&>(*chunk), row, file, column,
                             out);
    } else {
      detail::append_strings(static_cast<const arrow::LargeStringArray&>(*chunk), row, file, column,
                             out);
    }
    row += chunk->length();
  }
  return out;
}

inline ParquetReader parquet_reader() {
  return read_parquet_column;
}
#else
inline ParquetReader parquet_reader() {
  return {};
}
#endif

}  // namespace btx::train_tool
