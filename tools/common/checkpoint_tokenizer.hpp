// SPDX-License-Identifier: MIT
// Text -> token ids with a Hugging Face checkpoint's own tokenizer, the ids transformers'
// `AutoTokenizer.from_pretrained(folder)(text).input_ids` gives (special tokens added as the
// tokenizer declares them):
//   tokenizer.json   through the Python `tokenizers` package (the Rust library transformers
//                    itself runs; no C++ reader of that format is packaged), in a child
//                    process: $BTX_PYTHON, else python3;
//   tokenizer.model  through SentencePiece (libsentencepiece), with BOS/EOS as
//                    tokenizer_config.json's add_bos_token (default true) and add_eos_token
//                    (default false) say, as transformers' Llama tokenizer does. Where
//                    transformers' conversion departs from SentencePiece, btx follows
//                    transformers: a text that starts with a space gets no second "▁"
//                    (Metaspace prepends only to text not starting with one). Checked
//                    equal to transformers for Llama-style models (identity normalisation,
//                    whitespace kept); it is not for models whose normaliser folds
//                    whitespace (nmt_nfkc, remove_extra_whitespaces), which transformers
//                    does not convert, nor for special-token strings inside the text,
//                    which transformers splits out: use tokenizer.json or token ids there.
// tokenizer.json wins when both exist, as in transformers; when Python cannot read it,
// tokenizer.model is used instead and `note()` says so.
#pragma once

#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/text_codec.hpp>

#include "tokenizer_session.hpp"

extern char** environ;

namespace btx::tools {

class CheckpointTokenizer {
 public:
  // The tokenizer of checkpoint `folder`; throws naming the folder when it has none, or
  // naming what to install when none of its files can be read here.
  explicit CheckpointTokenizer(const std::filesystem::path& folder) : folder_(folder) {
    const auto json_file = folder / "tokenizer.json";
    const auto model_file = folder / "tokenizer.model";
    const bool has_json = std::filesystem::exists(json_file);
    const bool has_model = std::filesystem::exists(model_file);
    if (!has_json && !has_model) {
      throw std::runtime_error(folder.string() + " has no tokenizer.json or tokenizer.model");
    }
    std::string python_problem;
    if (has_json) {
      python_problem = python_can_read(json_file);
      if (python_problem.empty()) {
        kind_ = Kind::json;
        return;
      }
      if (!has_model) {
        throw std::runtime_error("cannot read " + json_file.string() + ": " + python_problem);
      }
      note_ = "read " + model_file.string() + " with SentencePiece instead of tokenizer.json (" +
              python_problem + ")";
    }
    load_sentencepiece(model_file);
  }

  // Token ids of each text.
  [[nodiscard]] std::vector<std::vector<int64_t>> encode(
      const std::vector<std::string>& texts) const {
    return kind_ == Kind::json ? encode_with_python(texts, true)
                               : encode_with_sentencepiece(texts, true);
  }
  // Token ids of each text with no special tokens added (documents a caller packs with EOS
  // between them), as transformers gives with add_special_tokens=False.
  [[nodiscard]] std::vector<std::vector<int64_t>> encode_documents(
      const std::vector<std::string>& texts) const {
    return kind_ == Kind::json ? encode_with_python(texts, false)
                               : encode_with_sentencepiece(texts, false);
  }

  // Encode and decode as running text (no special tokens added), for corpora and
  // generation: tokenizer.json through one long-lived Python process (TokenizerSession),
  // tokenizer.model through SentencePiece in this process.
  [[nodiscard]] TextCodec codec() const {
    TextCodec c;
    c.name = "checkpoint:" + file().string();
    if (kind_ == Kind::json) {
      auto session = std::make_shared<TokenizerSession>(python(), folder_ / "tokenizer.json");
      c.vocab_size = session->vocab_size();
      c.encode = [session](std::string_view text) { return session->encode(text); };
      c.decode = [session](const std::vector<int64_t>& ids) { return session->decode(ids); };
      return c;
    }
    c.vocab_size = sp_->GetPieceSize();
    c.encode = [sp = sp_](std::string_view text) {
      std::vector<int> pieces;
      const auto status = sp->Encode(text, &pieces);
      if (!status.ok()) throw std::runtime_error("SentencePiece: " + status.ToString());
      return std::vector<int64_t>(pieces.begin(), pieces.end());
    };
    c.decode = [sp = sp_](const std::vector<int64_t>& ids) {
      std::string text;
      const auto status = sp->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
      if (!status.ok()) throw std::runtime_error("SentencePiece: " + status.ToString());
      return text;
    };
    return c;
  }

  // The file the ids come from.
  [[nodiscard]] std::filesystem::path file() const {
    return folder_ / (kind_ == Kind::json ? "tokenizer.json" : "tokenizer.model");
  }

  // Which file and reader produce the ids, for logs and model cards.
  [[nodiscard]] std::string description() const {
    return kind_ == Kind::json ? "tokenizer.json via Python tokenizers (" + python() + ")"
                               : "tokenizer.model via SentencePiece";
  }
  [[nodiscard]] const std::string& note() const { return note_; }

 private:
  enum class Kind { json, sentencepiece };

  static std::string python() {
    const char* p = std::getenv("BTX_PYTHON");
    return p && *p ? p : "python3";
  }

  // Runs python3 -c `code` with `args`; returns its exit status (127: not started) and
  // leaves its stderr in `err`.
  static int run_python(const std::string& code, const std::vector<std::string>& args,
                        std::string& err) {
    const auto err_file = scratch_path("stderr");
    std::vector<std::string> argv{python(), "-c", code};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> c_argv;
    for (auto& a : argv) c_argv.push_back(a.data());
    c_argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    pid_t pid = 0;
    const int rc = posix_spawnp(&pid, c_argv[0], &actions, nullptr, c_argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    int status = 127 << 8;
    if (rc == 0) waitpid(pid, &status, 0);
    std::ifstream in(err_file);
    err.assign(std::istreambuf_iterator<char>(in), {});
    std::error_code ignored;
    std::filesystem::remove(err_file, ignored);
    if (rc != 0) return 127;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  static std::filesystem::path scratch_path(const std::string& what) {
    static std::atomic<int> counter{0};
    return std::filesystem::temp_directory_path() / ("btx-tokenizer-" + std::to_string(getpid()) +
                                                     "-" + std::to_string(counter++) + "-" + what);
  }

  // "" when python() can load `file` with the tokenizers package, else why not.
  static std::string python_can_read(const std::filesystem::path& file) {
    std::string err;
    const int status = run_python(
        "import sys\n"
        "try:\n    from tokenizers import Tokenizer\n"
        "except ImportError:\n    sys.exit(3)\n"
        "Tokenizer.from_file(sys.argv[1])\n",
        {file.string()}, err);
    if (status == 0) return "";
    if (status == 127) return python() + " not found (set BTX_PYTHON to a Python 3)";
    if (status == 3) {
      return "the Python package `tokenizers` is missing from " + python() +
             " (pip install tokenizers, or set BTX_PYTHON to a Python that has it)";
    }
    return "the Python tokenizers package could not load it: " + last_line(err);
  }

  std::vector<std::vector<int64_t>> encode_with_python(const std::vector<std::string>& texts,
                                                       bool special_tokens) const {
    const auto in = scratch_path("texts.json");
    const auto out = scratch_path("ids.json");
    std::ofstream(in) << nlohmann::json(texts).dump();
    std::string err;
    const int status = run_python(
        "import json, sys\n"
        "from tokenizers import Tokenizer\n"
        "t = Tokenizer.from_file(sys.argv[1])\n"
        "texts = json.load(open(sys.argv[2], encoding='utf-8'))\n"
        "ids = [e.ids for e in t.encode_batch(texts, add_special_tokens=sys.argv[4] == '1')]\n"
        "json.dump(ids, open(sys.argv[3], 'w'))\n",
        {(folder_ / "tokenizer.json").string(), in.string(), out.string(),
         special_tokens ? "1" : "0"},
        err);
    std::error_code ignored;
    std::filesystem::remove(in, ignored);
    if (status != 0) {
      std::filesystem::remove(out, ignored);
      throw std::runtime_error("tokenizing with " + (folder_ / "tokenizer.json").string() +
                               " failed: " + last_line(err));
    }
    std::ifstream f(out);
    const auto ids = nlohmann::json::parse(f).get<std::vector<std::vector<int64_t>>>();
    std::filesystem::remove(out, ignored);
    return ids;
  }

  void load_sentencepiece(const std::filesystem::path& file) {
    kind_ = Kind::sentencepiece;
    sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
    const auto status = sp_->Load(file.string());
    if (!status.ok()) {
      throw std::runtime_error("SentencePiece cannot read " + file.string() + ": " +
                               status.ToString());
    }
    // tokenizer_config.json decides the special tokens around the text.
    nlohmann::json config = nlohmann::json::object();
    if (std::ifstream in(folder_ / "tokenizer_config.json"); in) {
      config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (!config.is_object()) {
        throw std::runtime_error((folder_ / "tokenizer_config.json").string() +
                                 " is not a JSON object");
      }
    }
    const auto flag = [&](const char* key, bool fallback) {
      return config.contains(key) && config[key].is_boolean() ? config[key].get<bool>() : fallback;
    };
    std::vector<std::string> probe;
    (void)sp_->Encode("a", &probe);
    adds_dummy_prefix_ = !probe.empty() && probe.front().rfind("\xE2\x96\x81", 0) == 0;
    if (flag("add_bos_token", true)) bos_ = special_id(config, "bos_token", sp_->bos_id());
    if (flag("add_eos_token", false)) eos_ = special_id(config, "eos_token", sp_->eos_id());
  }

  // The id of special token `key` (a string or {"content": ...}), else `fallback`.
  int special_id(const nlohmann::json& config, const char* key, int fallback) const {
    std::string piece;
    if (config.contains(key)) {
      const auto& v = config[key];
      if (v.is_string()) piece = v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string())
        piece = v["content"].get<std::string>();
    }
    const int id = piece.empty() ? fallback : sp_->PieceToId(piece);
    if (id < 0 || (!piece.empty() && id == sp_->unk_id() && piece != sp_->IdToPiece(id))) {
      throw std::runtime_error((folder_ / "tokenizer_config.json").string() + ": " + key + " '" +
                               piece + "' is not a piece of tokenizer.model");
    }
    return id;
  }

  std::vector<std::vector<int64_t>> encode_with_sentencepiece(const std::vector<std::string>& texts,
                                                              bool special_tokens) const {
    std::vector<std::vector<int64_t>> out;
    for (const auto& text : texts) {
      std::vector<int> pieces;
      const bool leading_space = adds_dummy_prefix_ && !text.empty() && text.front() == ' ';
      const auto status = sp_->Encode(leading_space ? text.substr(1) : text, &pieces);
      if (!status.ok()) throw std::runtime_error("SentencePiece: " + status.ToString());
      std::vector<int64_t> ids;
      if (special_tokens && bos_ >= 0) ids.push_back(bos_);
      ids.insert(ids.end(), pieces.begin(), pieces.end());
      if (special_tokens && eos_ >= 0) ids.push_back(eos_);
      out.push_back(std::move(ids));
    }
    return out;
  }

  std::filesystem::path folder_;
  Kind kind_ = Kind::json;
  std::string note_;
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int bos_ = -1, eos_ = -1;
  bool adds_dummy_prefix_ = false;  // the model's normaliser prepends "▁" to every text
};

}  // namespace btx::tools
