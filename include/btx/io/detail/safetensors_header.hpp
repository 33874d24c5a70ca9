// SPDX-License-Identifier: MIT
// The safetensors header: dtype table, FormatError, and the parser that enforces every
// rule of the reference reader (see shared/reference/formats.md) before any data is touched.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// Malformed or unsupported checkpoint data; the message names the file and the tensor.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// The safetensors dtypes btx maps onto torch (F8_*, C64 and sub-byte kinds are refused).
struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
  uint64_t size;
};
inline const std::vector<DtypeEntry>& dtype_table() {
  static const std::vector<DtypeEntry> table = {
      {"BOOL", torch::kBool, 1},     {"U8", torch::kUInt8, 1},    {"I8", torch::kInt8, 1},
      {"I16", torch::kInt16, 2},     {"U16", torch::kUInt16, 2},  {"F16", torch::kFloat16, 2},
      {"BF16", torch::kBFloat16, 2}, {"I32", torch::kInt32, 4},   {"U32", torch::kUInt32, 4},
      {"F32", torch::kFloat32, 4},   {"F64", torch::kFloat64, 8}, {"I64", torch::kInt64, 8},
      {"U64", torch::kUInt64, 8}};
  return table;
}
inline std::optional<DtypeEntry> dtype_from_name(std::string_view name) {
  for (const auto& e : dtype_table()) {
    if (name == e.name) return e;
  }
  return std::nullopt;
}
// Throws std::invalid_argument for a torch dtype safetensors (as btx writes it) lacks.
inline DtypeEntry dtype_from_torch(torch::ScalarType type) {
  for (const auto& e : dtype_table()) {
    if (type == e.type) return e;
  }
  throw std::invalid_argument(std::string("btx cannot write torch dtype ") + c10::toString(type) +
                              " to safetensors");
}
inline std::string supported_dtype_names() {
  std::string out;
  for (const auto& e : dtype_table()) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

struct TensorInfo {
  std::string name;
  DtypeEntry dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // [begin, end) relative to the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;  // sorted by offset
  uint64_t data_start = 0;          // 8 + N: file offset of the data section
};

namespace detail {

// Parses JSON and reports the first key repeated inside one object (nlohmann keeps the
// last silently; the format forbids duplicates).
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& where) {
  std::vector<std::set<std::string>> open;
  std::optional<std::string> duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      open.emplace_back();
    } else if (event == E::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (event == E::key && !open.empty()) {
      auto key = parsed.get<std::string>();
      if (!open.back().insert(key).second && !duplicate) duplicate = key;
    }
    return true;
  };
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": invalid JSON (" + e.what() + ")");
  }
  if (duplicate) throw FormatError(where + ": duplicate key \"" + *duplicate + "\"");
  return doc;
}

inline uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) throw FormatError(what);
  return a * b;
}

}  // namespace detail

// Validates a header (`json_text` = the N bytes after the length prefix) against a file
// of `file_size` bytes. `file` only names the source in error messages.
inline SafetensorsHeader parse_safetensors_header(std::string_view json_text, uint64_t file_size,
                                                  const std::string& file) {
  const std::string where = "safetensors file " + file;
  auto doc = detail::parse_json_strict(json_text, where + " header");
  if (!doc.is_object()) throw FormatError(where + ": header is not a JSON object");
  SafetensorsHeader header;
  header.data_start = 8 + json_text.size();
  for (const auto& [name, entry] : doc.items()) {
    const std::string at = where + ", tensor \"" + name + "\"";
    if (name == "__metadata__") {
      if (!entry.is_object()) throw FormatError(where + ": __metadata__ is not a JSON object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) {
          throw FormatError(where + ": __metadata__ value for \"" + k +
                            "\" is not a string (metadata maps strings to strings)");
        }
        header.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) throw FormatError(at + ": entry is not a JSON object");
    for (const auto& [k, v] : entry.items()) {
      if (k != "dtype" && k != "shape" && k != "data_offsets") {
        throw FormatError(at + ": unknown field \"" + k + "\"");
      }
    }
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) {
      throw FormatError(at + ": missing or non-string \"dtype\"");
    }
    const auto dtype_name = entry["dtype"].get<std::string>();
    const auto dtype = dtype_from_name(dtype_name);
    if (!dtype) {
      throw FormatError("unsupported dtype " + dtype_name + " for tensor \"" + name + "\" in " +
                        file + " (btx reads " + supported_dtype_names() + ")");
    }
    TensorInfo info{name, *dtype, {}, 0, 0};
    if (!entry.contains("shape") || !entry["shape"].is_array()) {
      throw FormatError(at + ": missing or non-array \"shape\"");
    }
    uint64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned() ||
          d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
        throw FormatError(at + ": shape entry " + d.dump() + " is not a non-negative integer");
      }
      info.shape.push_back(int64_t(d.get<uint64_t>()));
      numel = detail::checked_mul(numel, d.get<uint64_t>(), at + ": element count overflows");
    }
    if (numel > uint64_t(std::numeric_limits<int64_t>::max())) {
      throw FormatError(at + ": element count overflows");
    }
    const uint64_t nbytes = detail::checked_mul(numel, dtype->size, at + ": byte size overflows");
    const auto& offsets = entry.contains("data_offsets") ? entry["data_offsets"] : nlohmann::json();
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      throw FormatError(at + ": \"data_offsets\" must be [BEGIN, END] with unsigned integers");
    }
    info.begin = offsets[0].get<uint64_t>();
    info.end = offsets[1].get<uint64_t>();
    if (info.end < info.begin) {
      throw FormatError(at + ": data_offsets END " + std::to_string(info.end) + " < BEGIN " +
                        std::to_string(info.begin));
    }
    if (info.end - info.begin != nbytes) {
      throw FormatError(at + ": data_offsets span " + std::to_string(info.end - info.begin) +
                        " bytes but dtype " + dtype_name + " and shape " + entry["shape"].dump() +
                        " need " + std::to_string(nbytes));
    }
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  uint64_t expected = 0;
  for (const auto& t : header.tensors) {
    if (t.begin != expected) {
      throw FormatError(where + ", tensor \"" + t.name + "\": data starts at " +
                        std::to_string(t.begin) + " but the previous tensor ends at " +
                        std::to_string(expected) + (t.begin > expected ? " (hole)" : " (overlap)"));
    }
    expected = t.end;
  }
  if (expected > std::numeric_limits<uint64_t>::max() - header.data_start ||
      header.data_start + expected != file_size) {
    throw FormatError(where + ": header describes " + std::to_string(header.data_start) + " + " +
                      std::to_string(expected) + " bytes but the file has " +
                      std::to_string(file_size) + " (truncated or trailing data)");
  }
  return header;
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
