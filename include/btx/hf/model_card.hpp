// SPDX-License-Identifier: MIT
// A Hugging Face model card: README.md with the hub's YAML front matter (license,
// base_model, tags, library_name) and a Markdown body, which is what people read first on
// a model hub and what the hub indexes (base_model links a model to its parents).
//
//   hf::ModelCard card{.title = "my-moe", .base_models = {"org/seed"}, .tags = {"moe"}};
//   card.sections.push_back({"Sources", "| # | source |\n|---|---|\n| 0 | org/seed |\n"});
//   write(dir / "README.md", card.render());
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

struct ModelCard {
  std::string title;
  std::optional<std::string> license;  // an SPDX-like id the hub knows ("apache-2.0", "mit")
  std::vector<std::string> base_models;
  std::vector<std::string> tags;
  std::string library_name = "transformers";
  std::string summary;                                        // the paragraph under the title
  std::vector<std::pair<std::string, std::string>> sections;  // {heading, Markdown body}

  // README.md's text. Front matter values are JSON strings, which YAML reads as strings
  // whatever they contain (colons, quotes, leading dashes).
  [[nodiscard]] std::string render() const {
    std::ostringstream out;
    out << "---\n";
    if (license) out << "license: " << nlohmann::json(*license).dump() << "\n";
    if (!base_models.empty()) {
      out << "base_model:\n";
      for (const auto& b : base_models) out << "- " << nlohmann::json(b).dump() << "\n";
    }
    if (!tags.empty()) {
      out << "tags:\n";
      for (const auto& t : tags) out << "- " << nlohmann::json(t).dump() << "\n";
    }
    out << "library_name: " << nlohmann::json(library_name).dump() << "\n";
    out << "---\n\n# " << title << "\n";
    if (!summary.empty()) out << "\n" << summary << "\n";
    for (const auto& [heading, body] : sections) {
      out << "\n## " << heading << "\n\n" << body;
      if (!body.empty() && body.back() != '\n') out << "\n";
    }
    return out.str();
  }
};

// The license a checkpoint's own model card declares in its front matter (`license: x`),
// if it has a README.md that does.
inline std::optional<std::string> card_license(const std::filesystem::path& dir) {
  std::ifstream in(dir / "README.md");
  std::string line;
  if (!in || !std::getline(in, line) || line != "---") return std::nullopt;
  while (std::getline(in, line) && line != "---") {
    if (line.rfind("license:", 0) != 0) continue;
    std::string v = line.substr(8);
    const auto b = v.find_first_not_of(" \t"), e = v.find_last_not_of(" \t\r");
    if (b == std::string::npos) return std::nullopt;
    v = v.substr(b, e - b + 1);
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) {
      v = v.substr(1, v.size() - 2);
    }
    return v.empty() ? std::nullopt : std::optional<std::string>(v);
  }
  return std::nullopt;
}

// Text as a Markdown table cell: pipes escaped, newlines as spaces.
inline std::string table_cell(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else {
      out += (c == '\n' || c == '\r') ? ' ' : c;
    }
  }
  return out;
}

// A fenced code block whose fence is longer than any backtick run inside `text`.
inline std::string code_block(const std::string& text, const std::string& language = "") {
  size_t longest = 0, run = 0;
  for (char c : text) {
    run = c == '`' ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  const std::string fence(std::max<size_t>(3, longest + 1), '`');
  return fence + language + "\n" + text + (text.empty() || text.back() == '\n' ? "" : "\n") +
         fence + "\n";
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
