// SPDX-License-Identifier: MIT
// A checkpoint's own chat template, rendered as transformers' apply_chat_template renders it
// for training data (add_generation_prompt false, no tools): Jinja with trim_blocks and
// lstrip_blocks, the messages (a message's `thinking` / `reasoning` also given as
// `reasoning_content`, and back, as transformers aliases them), the named special tokens
// (bos_token, eos_token, ...) as strings, tools and documents as None, raise_exception and
// strftime_now. The Jinja engine
// is minja (Google's header-only C++ Jinja for chat templates, MIT, on nlohmann::json; the
// one llama.cpp used), whose two headers the README's test command takes from the
// llama-cpp-python sdist on PyPI (CMake option BTX_CHAT_TEMPLATES). Built without it,
// chat_renderer() refuses chat data naming what to turn on.
//
// The template is read where transformers reads it: chat_template.jinja (transformers 5),
// else tokenizer_config.json's `chat_template` (a string, or a list of {name, template}
// whose "default" is used), else chat_template.json's.
#pragma once

#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#ifdef BTX_WITH_CHAT_TEMPLATES
#include <minja/minja.hpp>
#endif

#include <btx/data/documents.hpp>
#include <btx/hf/side_files.hpp>

namespace btx::tools {

// Where `folder`'s chat template comes from and its text; empty text when it has none.
struct ChatTemplateSource {
  std::filesystem::path file;
  std::string text;
};

inline ChatTemplateSource chat_template_source(const std::filesystem::path& folder) {
  const auto read = [](const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  if (std::filesystem::exists(folder / "chat_template.jinja")) {
    return {folder / "chat_template.jinja", read(folder / "chat_template.jinja")};
  }
  // A template is a string, or a list of named ones of which "default" is the template.
  const auto from_json = [&](const std::filesystem::path& file) -> ChatTemplateSource {
    if (!std::filesystem::exists(file)) return {};
    const auto j = nlohmann::json::parse(read(file), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("chat_template")) return {};
    const auto& t = j["chat_template"];
    if (t.is_string()) return {file, t.get<std::string>()};
    if (t.is_array()) {
      for (const auto& named : t) {
        if (named.is_object() && named.value("name", "") == "default" &&
            named.contains("template") && named["template"].is_string()) {
          return {file, named["template"].get<std::string>()};
        }
      }
    }
    return {};
  };
  if (auto s = from_json(folder / "tokenizer_config.json"); !s.text.empty()) return s;
  return from_json(folder / "chat_template.json");
}

// transformers fills every reasoning name from the first one a message has (the templates
// read `reasoning_content`, gpt-oss's `thinking`).
inline nlohmann::ordered_json alias_reasoning_fields(const nlohmann::ordered_json& messages) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    const nlohmann::ordered_json* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      if (m.contains(key) && !m[key].is_null()) {
        reasoning = &m[key];
        break;
      }
    }
    if (!reasoning) {
      out.push_back(m);
      continue;
    }
    // {"thinking": r, **message, "reasoning_content": r}: thinking first unless the message
    // has it, reasoning_content where the message has it or last.
    nlohmann::ordered_json aliased = {{"thinking", *reasoning}};
    for (const auto& [k, v] : m.items()) aliased[k] = v;
    aliased["reasoning_content"] = *reasoning;
    out.push_back(std::move(aliased));
  }
  return out;
}

// Renders conversations with checkpoint `folder`'s chat template; throws naming the folder
// when it has none, the file when the template does not parse, and what to build with when
// this program has no Jinja engine.
inline ChatRenderer chat_renderer(const std::filesystem::path& folder) {
  const auto source = chat_template_source(folder);
  if (source.text.empty()) {
    throw DataError(folder.string() +
                    " has no chat template (chat_template.jinja, or chat_template in "
                    "tokenizer_config.json or chat_template.json); chat data needs one");
  }
#ifdef BTX_WITH_CHAT_TEMPLATES
  std::shared_ptr<minja::TemplateNode> root;
  try {
    root = minja::Parser::parse(source.text, {/*trim_blocks=*/true, /*lstrip_blocks=*/true,
                                              /*keep_trailing_newline=*/false});
  } catch (const std::exception& e) {
    throw DataError(source.file.string() + ": the chat template does not parse: " + e.what());
  }
  const auto tokens = hf::named_special_tokens(folder);
  return [root, tokens](const nlohmann::ordered_json& messages) {
    auto context = minja::Context::make(minja::Value(
        nlohmann::ordered_json{{"messages", alias_reasoning_fields(messages)},
                               {"add_generation_prompt", false},
                               {"tools", nullptr},  // transformers passes None, not nothing
                               {"documents", nullptr}}));
    for (const auto& [name, text] : tokens) context->set(name, minja::Value(text));
    context->set("strftime_now", minja::Value::callable([](const std::shared_ptr<minja::Context>&,
                                                           minja::ArgumentsValue& args) {
                   args.expectArgs("strftime_now", {1, 1}, {0, 0});
                   const auto format = args.args[0].get<std::string>();
                   const auto now = std::time(nullptr);
                   std::tm local{};
                   localtime_r(&now, &local);
                   char out[256];
                   const auto n = std::strftime(out, sizeof out, format.c_str(), &local);
                   return minja::Value(std::string(out, n));
                 }));
    return root->render(context);
  };
#else
  throw DataError("chat data (" + source.file.string() +
                  "'s template): this btx-train was built without a Jinja engine; configure "
                  "with -DBTX_CHAT_TEMPLATES=ON (the README's test command does)");
#endif
}

}  // namespace btx::tools
