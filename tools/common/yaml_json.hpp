// SPDX-License-Identifier: MIT
// Reads a YAML or JSON file into nlohmann::json (tools accept either; mergekit configs are
// YAML). Scalars become bool, integer, number or string, in that order of preference.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace btx::tools {

// Limits on what a config may expand to. YAML aliases share nodes, so a few lines like
// `b: [*a, *a, ...]` repeated can name 10^10 values ("billion laughs"); converting that
// would never finish. Real configs have a few hundred values and a depth under ten.
struct YamlLimits {
  std::size_t max_values = 1'000'000;
  int max_depth = 128;
};

namespace detail {

// Whether `s` is well-formed UTF-8, as JSON text must be: no stray or missing continuation
// bytes, overlong forms, surrogates or code points past U+10FFFF. yaml-cpp passes any bytes
// through, and nlohmann::json refuses to write them (a run's config.json, an error message).
inline bool is_utf8(const std::string& s) {
  static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};  // by continuation bytes
  static constexpr uint32_t kLeadBits[] = {0x7F, 0x1F, 0x0F, 0x07};
  for (std::size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    if (lead >= 0xF8 || (lead >= 0x80 && lead < 0xC0)) return false;  // not a lead byte
    const std::size_t n = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
    uint32_t cp = lead & kLeadBits[n];
    if (s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto next = static_cast<unsigned char>(s[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (next & 0x3F);
    }
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// A scalar's or key's text, refused (with its line and column) unless it is UTF-8.
inline const std::string& utf8_text(const YAML::Node& node, const std::string& text) {
  if (!is_utf8(text)) throw YAML::ParserException(node.Mark(), "text is not valid UTF-8");
  return text;
}

inline nlohmann::json yaml_to_json(const YAML::Node& node, const YamlLimits& limits,
                                   std::size_t& values, int depth) {
  if (++values > limits.max_values)
    throw std::invalid_argument("YAML expands to more than " + std::to_string(limits.max_values) +
                                " values (aliases repeated?)");
  if (depth > limits.max_depth)
    throw std::invalid_argument("YAML nests deeper than " + std::to_string(limits.max_depth) +
                                " levels");
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      auto out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(yaml_to_json(item, limits, values, depth + 1));
      return out;
    }
    case YAML::NodeType::Map: {
      auto out = nlohmann::json::object();
      for (const auto& kv : node) {
        const auto key = kv.first.as<std::string>();
        out[utf8_text(kv.first, key)] = yaml_to_json(kv.second, limits, values, depth + 1);
      }
      return out;
    }
    case YAML::NodeType::Scalar: {
      const auto& text = utf8_text(node, node.Scalar());
      if (node.Tag() == "!") return text;  // quoted: always a string
      bool b;
      if (YAML::convert<bool>::decode(node, b)) return b;
      try {
        size_t used = 0;
        const long long i = std::stoll(text, &used);
        if (used == text.size()) return i;
        const double d = std::stod(text, &used);
        if (used == text.size()) return d;
      } catch (const std::exception&) {
      }
      return text;
    }
  }
  return nullptr;
}

}  // namespace detail

inline nlohmann::json yaml_to_json(const YAML::Node& node, const YamlLimits& limits = {}) {
  std::size_t values = 0;
  return detail::yaml_to_json(node, limits, values, 0);
}

// A config's text: JSON when it starts with '{', YAML otherwise. Any error is a
// std::invalid_argument that begins with `where` (e.g. "config file 'x.yaml'").
inline nlohmann::json parse_config_text(const std::string& text, const std::string& where,
                                        const YamlLimits& limits = {}) {
  const auto first = text.find_first_not_of(" \t\r\n");
  try {
    if (first != std::string::npos && text[first] == '{') return nlohmann::json::parse(text);
    return yaml_to_json(YAML::Load(text), limits);
  } catch (const std::exception& e) {
    throw std::invalid_argument(where + " is not valid YAML/JSON: " + e.what());
  }
}

// JSON when the file starts with '{', YAML otherwise. Errors name the file and line.
inline nlohmann::json load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("config file '" + path + "' cannot be opened");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  return parse_config_text(text, "config file '" + path + "'");
}

}  // namespace btx::tools
