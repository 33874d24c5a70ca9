// SPDX-License-Identifier: MIT
// Reading Hugging Face config.json files, for any model family: the strict JSON reader,
// the model_type a file declares, and ConfigFields, the typed field access every family's
// config parser uses so that a missing or mistyped field is refused naming the file and
// the field (never read as a default that silently computes something else).
#pragma once

#include <nlohmann/json.hpp>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>

#include <btx/io/detail/safetensors_header.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

namespace detail {
inline std::runtime_error config_error(const std::string& where, const std::string& what) {
  return std::runtime_error(where + ": " + what);
}
}  // namespace detail

// A config.json's text, parsed strictly (duplicate keys, trailing garbage: refused).
inline nlohmann::json read_json_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read " + file.string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return io::detail::parse_json_strict(text, file.string());
}

// The special-token ids a config.json declares (bos/eos/pad_token_id, as present), which a
// model written from it carries on: btx's own config writers know shapes, not tokenizers,
// and transformers' generate() stops at config.json's eos_token_id.
inline nlohmann::ordered_json token_ids_of(const nlohmann::json& config) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (config.contains(key) && !config[key].is_null()) out[key] = config[key];
  }
  return out;
}

// `model_type`, or else the first architecture with its "ForCausalLM" cut and lower-cased
// (so "MixtralForCausalLM" reads as "mixtral"); empty when neither is there. A model_type
// that is not a string is refused naming `where`.
inline std::string declared_model_type(const nlohmann::json& j,
                                       const std::string& where = "config.json") {
  if (!j.is_object()) return "";
  if (j.contains("model_type") && !j["model_type"].is_null()) {
    if (!j["model_type"].is_string()) {
      throw detail::config_error(where,
                                 "field \"model_type\" has the wrong JSON type (not a string)");
    }
    return j["model_type"].get<std::string>();
  }
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    std::string arch = j["architectures"][0].get<std::string>();
    const std::string suffix = "ForCausalLM";
    if (arch.size() > suffix.size() && arch.ends_with(suffix)) {
      arch.resize(arch.size() - suffix.size());
      for (auto& c : arch) c = char(std::tolower(static_cast<unsigned char>(c)));
    }
    return arch;
  }
  return "";
}

// Typed reads of one config object; each error names `where` and the field.
class ConfigFields {
 public:
  ConfigFields(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {
    if (!j_.is_object()) throw detail::config_error(where_, "not a JSON object");
  }
  [[nodiscard]] const std::string& where() const { return where_; }
  [[nodiscard]] bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  [[nodiscard]] int64_t required_int(const char* key) const {
    if (!j_.contains(key) || !j_[key].is_number_integer()) {
      throw detail::config_error(where_, std::string("required integer field \"") + key +
                                             "\" is missing or not an integer");
    }
    return j_[key].get<int64_t>();
  }
  [[nodiscard]] int64_t optional_int(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number_integer()) {
      throw detail::config_error(where_, std::string("field \"") + key + "\" is not an integer");
    }
    return j_[key].get<int64_t>();
  }
  [[nodiscard]] double optional_num(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) {
      throw detail::config_error(where_, std::string("field \"") + key + "\" is not a number");
    }
    return j_[key].get<double>();
  }
  [[nodiscard]] bool optional_bool(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) {
      throw detail::config_error(where_, std::string("field \"") + key + "\" is not a boolean");
    }
    return j_[key].get<bool>();
  }
  [[nodiscard]] std::string optional_string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) {
      throw detail::config_error(where_, std::string("field \"") + key + "\" is not a string");
    }
    return j_[key].get<std::string>();
  }
  // For a flag btx's model does not implement: true is refused naming `why`.
  void refuse_true(const char* key, const std::string& why) const {
    if (j_.contains(key) && j_[key].is_boolean() && j_[key].get<bool>()) {
      throw detail::config_error(
          where_, std::string("\"") + key + "\": true is not supported (" + why + ")");
    }
  }
  // The storage dtype name (transformers 5 writes "dtype", 4 "torch_dtype").
  [[nodiscard]] std::string dtype() const {
    std::string out = "float32";
    if (j_.contains("torch_dtype") && j_["torch_dtype"].is_string())
      out = j_["torch_dtype"].get<std::string>();
    if (j_.contains("dtype") && j_["dtype"].is_string()) out = j_["dtype"].get<std::string>();
    return out;
  }
  [[nodiscard]] const nlohmann::json& json() const { return j_; }

 private:
  const nlohmann::json& j_;
  std::string where_;
};

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
