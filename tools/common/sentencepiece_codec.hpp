// SPDX-License-Identifier: MIT
// A SentencePiece tokenizer trained on a corpus's training text, as a btx::TextCodec, and
// the Hugging Face files that make a checkpoint carrying it load in transformers'
// AutoTokenizer (LlamaTokenizer: tokenizer.model, its tokenizer.json, tokenizer_config.json,
// special_tokens_map.json). Trained Llama-style, so transformers reads it as SentencePiece
// does: BPE with byte fallback (any UTF-8 and any byte encodes), identity normalisation,
// whitespace kept as written (code indentation survives), <unk>=0 <s>=1 </s>=2.
#pragma once

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/text_codec.hpp>
#include <btx/io/atomic_dir.hpp>

#include "tokenizer_json.hpp"

namespace btx::tools {

struct SentencePieceOptions {
  int64_t vocab_size = 2048;
  std::string model_type = "bpe";  // bpe | unigram
};

namespace detail {

// Lines of several texts, each line one training sentence (SentencePiece's unit).
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string_view>& texts) {
    for (const auto text : texts) {
      size_t start = 0;
      while (start < text.size()) {
        const size_t end = std::min(text.find('\n', start), text.size());
        // SentencePiece skips sentences over 4192 bytes; minified lines are not prose.
        if (end > start && end - start <= 4000)
          lines_.emplace_back(text.substr(start, end - start));
        start = end + 1;
      }
    }
    if (!lines_.empty()) current_ = std::string(lines_[0]);
  }
  bool done() const override { return next_ >= lines_.size(); }
  void Next() override {
    if (++next_ < lines_.size()) current_ = std::string(lines_[next_]);
  }
  const std::string& value() const override { return current_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string_view> lines_;
  size_t next_ = 0;
  std::string current_;
};

}  // namespace detail

class SentencePieceCodec {
 public:
  // Trains a model on `texts` (deterministic: one thread, fixed seed sentence order).
  static SentencePieceCodec train(const std::vector<std::string_view>& texts,
                                  const SentencePieceOptions& options) {
    detail::LineIterator lines(texts);
    std::string model;
    const std::string args =
        "--vocab_size=" + std::to_string(options.vocab_size) +
        " --model_type=" + options.model_type +
        " --character_coverage=0.9995 --byte_fallback=true --normalization_rule_name=identity"
        " --remove_extra_whitespaces=false --split_digits=true --num_threads=1"
        " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2"
        " --max_sentence_length=4192 --shuffle_input_sentence=false";
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
    if (!status.ok()) {
      throw std::runtime_error("training the SentencePiece tokenizer failed: " + status.ToString());
    }
    return from_model(model, "trained");
  }

  // The model in `file` (a tokenizer.model).
  static SentencePieceCodec load(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + file.string());
    std::string model((std::istreambuf_iterator<char>(in)), {});
    return from_model(model, file.string());
  }

  [[nodiscard]] int64_t vocab_size() const { return sp_->GetPieceSize(); }

  // As a TextCodec (shares the model; the codec may outlive this object).
  [[nodiscard]] TextCodec codec() const {
    auto sp = sp_;
    TextCodec c;
    c.name = "sentencepiece";
    c.vocab_size = vocab_size();
    c.encode = [sp](std::string_view text) {
      std::vector<int> ids;
      check(sp->Encode(text, &ids));
      return std::vector<int64_t>(ids.begin(), ids.end());
    };
    c.decode = [sp](const std::vector<int64_t>& ids) {
      std::string text;
      check(sp->Decode(std::vector<int>(ids.begin(), ids.end()), &text));
      return text;
    };
    return c;
  }

  // Folder `dir` (new, or replaced) holding tokenizer.model, tokenizer_config.json and
  // special_tokens_map.json, what transformers' AutoTokenizer needs beside the weights,
  // and `extra` files (name -> contents); it appears complete or not at all.
  void write_hf_files(const std::filesystem::path& dir,
                      const std::map<std::string, std::string>& extra = {}) const {
    io::AtomicDir out(dir, /*overwrite=*/true);
    const auto write = [&](const char* name, const std::string& bytes) {
      std::ofstream f(out.path() / name, std::ios::binary);
      f << bytes;
      if (!f.flush()) throw std::runtime_error("cannot write " + (dir / name).string());
    };
    write("tokenizer.model", model_);
    write("tokenizer.json", llama_tokenizer_json(*sp_));  // for transformers without sentencepiece
    const nlohmann::json special = {
        {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
    nlohmann::json config = special;
    config["tokenizer_class"] = "LlamaTokenizer";
    config["add_bos_token"] = true;
    config["add_eos_token"] = false;
    config["legacy"] = false;
    config["model_max_length"] = 1 << 20;
    write("tokenizer_config.json", config.dump(2) + "\n");
    write("special_tokens_map.json", special.dump(2) + "\n");
    for (const auto& [name, bytes] : extra) write(name.c_str(), bytes);
    out.commit();
  }

  [[nodiscard]] static std::vector<std::string> hf_file_names() {
    return {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"};
  }

 private:
  static void check(const sentencepiece::util::Status& status) {
    if (!status.ok()) throw std::runtime_error("SentencePiece: " + status.ToString());
  }

  static SentencePieceCodec from_model(const std::string& model, const std::string& where) {
    SentencePieceCodec c;
    c.model_ = model;
    c.sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
    const auto status = c.sp_->LoadFromSerializedProto(model);
    if (!status.ok()) {
      throw std::runtime_error("not a SentencePiece model (" + where + "): " + status.ToString());
    }
    return c;
  }

  std::string model_;
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace btx::tools
