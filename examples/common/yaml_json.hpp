// SPDX-License-Identifier: MIT
// Reads a YAML or JSON file into nlohmann::json (tools accept either; mergekit configs are
// YAML). Scalars become bool, integer, number or string, in that order of preference.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
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
      for (const auto& kv : node)
        out[kv.first.as<std::string>()] = yaml_to_json(kv.second, limits, values, depth + 1);
      return out;
    }
    case YAML::NodeType::Scalar: {
      const auto& text = node.Scalar();
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

// JSON when the file starts with '{', YAML otherwise. Errors name the file and line.
inline nlohmann::json load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("config file '" + path + "' cannot be opened");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  const auto first = text.find_first_not_of(" \t\r\n");
  try {
    if (first != std::string::npos && text[first] == '{') return nlohmann::json::parse(text);
    return yaml_to_json(YAML::Load(text));
  } catch (const std::exception& e) {
    throw std::invalid_argument("config file '" + path + "' is not valid YAML/JSON: " + e.what());
  }
}

}  // namespace btx::tools
