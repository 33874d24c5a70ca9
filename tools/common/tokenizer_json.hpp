// SPDX-License-Identifier: MIT
// tokenizer.json for btx's own SentencePiece tokenizers (BPE, byte fallback, identity
// normalisation, <unk>=0 <s>=1 </s>=2): the file transformers 5 itself makes of such a
// tokenizer.model when `sentencepiece` and `protobuf` are installed (but for naming the
// model's unk_token, which byte fallback never emits), written here so a
// checkpoint loads with `pip install transformers` alone (without it transformers 5.25 asks
// for `tiktoken` and gives up). Checked id for id against transformers' own conversion
// (tests/python/test_side_files.py).
//
// The merges follow transformers' generate_merges over the vocabulary in id order: for each
// piece, every split into two pieces that are both in the vocabulary, shorter left halves
// first (lengths in code points, as Python counts them).
#pragma once

#include <sentencepiece_processor.h>

#include <cstddef>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace btx::tools {

namespace detail {
// Byte offsets of every code point boundary inside a UTF-8 string (not 0, not size()).
inline std::vector<size_t> inner_code_point_boundaries(const std::string& s) {
  std::vector<size_t> out;
  for (size_t i = 1; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  }
  return out;
}
}  // namespace detail

// The tokenizer.json of `sp` with BOS added before every sequence, as btx's
// tokenizer_config.json declares (add_bos_token true, add_eos_token false).
inline std::string llama_tokenizer_json(const sentencepiece::SentencePieceProcessor& sp) {
  using Json = nlohmann::ordered_json;
  const int n = sp.GetPieceSize();
  std::unordered_map<std::string, int> ids;
  Json vocab = Json::object();
  Json added = Json::array();
  for (int id = 0; id < n; ++id) {
    const std::string piece = sp.IdToPiece(id);
    ids.emplace(piece, id);
    vocab[piece] = id;
    // Control and unknown pieces are special tokens. (btx trains no user-defined pieces,
    // which Debian's SentencePiece API cannot tell apart from ordinary ones.)
    if (sp.IsControl(id) || sp.IsUnknown(id)) {
      Json token = Json::object();
      token["id"] = id;
      token["content"] = piece;
      for (const char* flag : {"single_word", "lstrip", "rstrip", "normalized"})
        token[flag] = false;
      token["special"] = true;
      added.push_back(std::move(token));
    }
  }
  Json merges = Json::array();
  for (int id = 0; id < n; ++id) {
    const std::string piece = sp.IdToPiece(id);
    for (const size_t cut : detail::inner_code_point_boundaries(piece)) {
      const std::string left = piece.substr(0, cut), right = piece.substr(cut);
      if (ids.count(left) && ids.count(right)) merges.push_back(Json::array({left, right}));
    }
  }
  const std::string bos = sp.IdToPiece(sp.bos_id());
  const std::string unk = sp.IdToPiece(sp.unk_id());
  const std::string space = "\xe2\x96\x81";  // U+2581, SentencePiece's whitespace mark
  Json out = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      // Metaspace turns spaces into U+2581 and prepends one unless the text starts with one.
      {"pre_tokenizer",
       {{"type", "Metaspace"},
        {"replacement", space},
        {"prepend_scheme", "first"},
        {"split", false}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", Json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", Json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens",
         {{bos,
           {{"id", bos}, {"ids", Json::array({sp.bos_id()})}, {"tokens", Json::array({bos})}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         Json::array({{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", unk},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
  return out.dump(2) + "\n";
}

}  // namespace btx::tools
