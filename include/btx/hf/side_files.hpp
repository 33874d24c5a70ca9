// SPDX-License-Identifier: MIT
// The files beside a checkpoint's weights that every model made from it must carry,
// byte for byte: its tokenizer (tokenizer.json, SentencePiece's tokenizer.model, BPE's
// vocab.json + merges.txt, added_tokens.json, special_tokens_map.json,
// tokenizer_config.json), its chat template (transformers 5 writes chat_template.jinja and
// additional_chat_templates/, older versions chat_template.json or a key of
// tokenizer_config.json) and its generation_config.json. Without them an instruct model
// loses its chat format and a merged model cannot be run on text.
//
// tokenizer_difference() says whether two checkpoints' tokenizers differ where it matters
// (the ids they produce, or which tokens are special), so merges can refuse sources whose
// token ids mean different things while accepting cosmetic differences (a chat template,
// model_max_length, padding side).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

// Side files a checkpoint may carry, in the order they are listed and copied.
inline const std::vector<std::string>& side_file_names() {
  static const std::vector<std::string> names = {"tokenizer.json",
                                                 "tokenizer.model",
                                                 "vocab.json",
                                                 "merges.txt",
                                                 "added_tokens.json",
                                                 "special_tokens_map.json",
                                                 "tokenizer_config.json",
                                                 "chat_template.jinja",
                                                 "chat_template.json",
                                                 "additional_chat_templates",
                                                 "generation_config.json"};
  return names;
}

// The side files (and the additional_chat_templates folder) present in `dir`.
inline std::vector<std::filesystem::path> side_files_in(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& name : side_file_names()) {
    if (std::filesystem::exists(dir / name)) out.push_back(dir / name);
  }
  return out;
}

namespace detail {

inline std::optional<std::string> read_if_present(const std::filesystem::path& p) {
  if (!std::filesystem::exists(p)) return std::nullopt;
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream text;  // in bulk: a character at a time took 7 ms for a 0.7 MB file
  text << in.rdbuf();
  return std::move(text).str();
}

inline nlohmann::json parse_side_json(const std::string& text, const std::filesystem::path& p) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(p.string() + " is not valid JSON: " + e.what());
  }
}

// A special token as a string: tokenizer configs write either "<s>" or {"content": "<s>", ...}.
inline nlohmann::json token_content(const nlohmann::json& v) {
  if (v.is_object() && v.contains("content")) return v["content"];
  if (v.is_array()) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& x : v) out.push_back(token_content(x));
    return out;
  }
  return v;
}

// Which tokens are special, as the tokenizer config files declare them: the named special
// tokens (special_tokens_map.json over tokenizer_config.json) and added_tokens_decoder's
// id -> (content, special).
inline std::map<std::string, nlohmann::json> special_tokens(const std::filesystem::path& dir) {
  static const std::vector<std::string> keys = {
      "bos_token", "eos_token", "unk_token",  "pad_token",
      "sep_token", "cls_token", "mask_token", "additional_special_tokens"};
  std::map<std::string, nlohmann::json> out;
  for (const char* file : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const auto text = read_if_present(dir / file);
    if (!text) continue;
    const auto j = parse_side_json(*text, dir / file);
    if (!j.is_object()) continue;
    for (const auto& k : keys) {
      if (j.contains(k) && !j[k].is_null()) out[k] = token_content(j[k]);
    }
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
      for (const auto& [id, tok] : j["added_tokens_decoder"].items()) {
        out["added_tokens_decoder[" + id + "]"] = {
            token_content(tok), tok.is_object() ? tok.value("special", false) : false};
      }
    }
  }
  return out;
}

inline std::string brief(const nlohmann::json& v) {
  auto s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

}  // namespace detail

// The named special tokens of checkpoint folder `dir` as strings (bos_token, eos_token,
// unk_token, pad_token, sep_token, cls_token, mask_token; those it declares), what
// transformers passes a chat template beside the messages.
inline std::map<std::string, std::string> named_special_tokens(const std::filesystem::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : detail::special_tokens(dir)) {
    if (key.ends_with("_token") && value.is_string()) out[key] = value.get<std::string>();
  }
  return out;
}

// The first way the tokenizers of checkpoint folders `a` and `b` differ where it matters,
// as a sentence naming the file; std::nullopt when they agree. Compared: presence and
// contents of tokenizer.json (all but its runtime truncation/padding settings),
// tokenizer.model, vocab.json, merges.txt and added_tokens.json, and the special tokens.
// Not compared: chat templates, generation config, model_max_length and the like.
inline std::optional<std::string> tokenizer_difference(const std::filesystem::path& a,
                                                       const std::filesystem::path& b) {
  for (const char* name :
       {"tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json"}) {
    const auto ta = detail::read_if_present(a / name), tb = detail::read_if_present(b / name);
    if (!ta && !tb) continue;
    if (!ta || !tb) {
      return std::string(name) + " is in " + (ta ? a : b).string() + " but not in " +
             (ta ? b : a).string();
    }
    if (*ta == *tb) continue;
    const std::string file(name);
    if (file == "tokenizer.model" || file == "merges.txt") {
      return file + " differs between " + a.string() + " and " + b.string();
    }
    auto ja = detail::parse_side_json(*ta, a / name), jb = detail::parse_side_json(*tb, b / name);
    if (file == "tokenizer.json") {
      for (auto* j : {&ja, &jb}) {
        if (j->is_object()) {
          j->erase("truncation");
          j->erase("padding");
        }
      }
    }
    if (ja == jb) continue;
    std::string part;
    if (ja.is_object() && jb.is_object()) {
      for (const auto& [k, v] : ja.items()) {
        if (!jb.contains(k) || jb[k] != v) {
          part = " (its \"" + k + "\")";
          break;
        }
      }
      if (part.empty()) {
        for (const auto& [k, v] : jb.items()) {
          if (!ja.contains(k)) {
            part = " (its \"" + k + "\")";
            break;
          }
        }
      }
    }
    return file + part + " differs between " + a.string() + " and " + b.string();
  }
  const auto sa = detail::special_tokens(a), sb = detail::special_tokens(b);
  for (const auto* m : {&sa, &sb}) {
    for (const auto& [k, v] : *m) {
      const auto& other = m == &sa ? sb : sa;
      const auto it = other.find(k);
      if (it != other.end() && it->second == v) continue;
      const auto va = sa.count(k) ? detail::brief(sa.at(k)) : std::string("none");
      const auto vb = sb.count(k) ? detail::brief(sb.at(k)) : std::string("none");
      return "special token " + k + " is " + va + " in " + a.string() + " but " + vb + " in " +
             b.string();
    }
  }
  return std::nullopt;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
