// SPDX-License-Identifier: MIT
// The bodies of the fuzz targets for the tools' configs, shared like fuzz_targets.hpp's by
// the libFuzzer entry points (tests/fuzz/fuzz_{yaml,pipeline_config,merge_config}.cpp,
// through fuzz_tool_bodies.cpp) and the unit test that replays their seeds and past crashes
// (tests/unit/test_fuzz_inputs.cpp). Users write configs as YAML or JSON text, so every
// input goes through the tools' front end (tools/common/yaml_json.hpp) first. A config
// error is a std::invalid_argument (what btx-pipeline and btx-merge report and exit 1 on);
// any other exception, a crash or a sanitizer report is a bug.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>

#include <btx/core/model_spec.hpp>
#include <btx/models/llama/compat.hpp>

#include "../../tools/btx-merge/config.hpp"
#include "../../tools/btx-pipeline/config.hpp"
#include "../../tools/common/yaml_json.hpp"
#include "fuzz_common.hpp"

namespace btx::fuzz {

// Where the front end says the text came from; every refusal must begin with it.
inline constexpr std::string_view kConfigWhere = "config file 'fuzz.yaml'";

// The tools' limits are 10^6 values and depth 128; the fuzzers use smaller ones so that an
// alias bomb is refused in microseconds, not seconds (the checks are the same code).
inline tools::YamlLimits fuzz_yaml_limits() {
  return {.max_values = 10'000, .max_depth = 32};
}

// Text through the front end; a refusal (std::invalid_argument naming the file) returns
// false, anything else thrown escapes (a bug).
inline bool read_config_text(const uint8_t* data, size_t size, nlohmann::json& out) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    out = tools::parse_config_text(text, std::string(kConfigWhere), fuzz_yaml_limits());
    return true;
  } catch (const std::invalid_argument& e) {
    if (std::string_view(e.what()).substr(0, kConfigWhere.size()) != kConfigWhere) {
      broken(std::string("a refusal does not name the file: ") + e.what());
    }
    return false;
  }
}

// Values (every node counts) and nesting of a converted document, checked against limits.
inline void check_within(const nlohmann::json& j, const tools::YamlLimits& limits,
                         std::size_t& values, int depth) {
  if (++values > limits.max_values) broken("accepted YAML expands beyond max_values");
  if (depth > limits.max_depth) broken("accepted YAML nests deeper than max_depth");
  if (j.is_structured()) {
    for (const auto& item : j) check_within(item, limits, values, depth + 1);
  }
}

// Any bytes as a YAML or JSON config: refused naming the file, or a JSON document that
// respects the limits (YAML) and survives a JSON write/read round trip, as configs do when
// the tools record them (btx-pipeline's config.json, btx-merge's model card).
inline void yaml_bytes(const uint8_t* data, size_t size) {
  nlohmann::json j;
  if (!read_config_text(data, size, j)) return;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || text[first] != '{') {
    std::size_t values = 0;
    check_within(j, fuzz_yaml_limits(), values, 0);
  }
  std::string written;
  try {
    written = j.dump();
  } catch (const std::exception& e) {
    broken(std::string("an accepted config cannot be written as JSON: ") + e.what());
  }
  if (nlohmann::json::parse(written) != j) {
    broken("an accepted config changed in a JSON write/read round trip: " + written);
  }
}

// The seed's shape as btx-pipeline's open_run() takes it (seed_spec_of): the config's model
// with the tokenizer's vocabulary (LlamaFamily::spec(model).shape is the model's ArchShape).
// A seed_checkpoint is not read here (the checkpoint readers have fuzzers of their own): it
// stands for a Llama of the default shape.
inline ArchShape pipeline_seed_shape(const pipeline::PipelineConfig& c) {
  if (!c.seed_checkpoint.empty()) return pipeline::default_config().model;
  LlamaConfig model = c.model;
  if (pipeline::uses_sentencepiece(c)) model.vocab_size = c.tokenizer_vocab_size;
  return model;
}

// Any bytes as btx-pipeline's CONFIG, read as its main() does (apply_config over the
// default, then the checks of open_run()): refused with std::invalid_argument, or accepted,
// and then the config.json btx-pipeline writes for its workers holds every key given and
// reads back (as each worker does) to the same config, which passes the same checks.
inline void pipeline_config_bytes(const uint8_t* data, size_t size) {
  nlohmann::json j;
  if (!read_config_text(data, size, j)) return;
  pipeline::PipelineConfig c;
  try {
    c = pipeline::apply_config(pipeline::default_config(), j);
    pipeline::validate(c, pipeline_seed_shape(c));
  } catch (const std::invalid_argument&) {
    return;  // a config error, named
  }
  // open_run() resolves the tokenizer before config.json is written.
  if (pipeline::uses_sentencepiece(c)) {
    c.tokenizer = "sentencepiece";
    c.model.vocab_size = c.tokenizer_vocab_size;
  } else if (c.tokenizer == "auto") {
    c.tokenizer = "bytes";
  }
  const auto resolved = pipeline::to_json(c);
  std::string written;
  try {
    written = resolved.dump(2);
  } catch (const std::exception& e) {
    broken(std::string("an accepted config cannot be written to config.json: ") + e.what());
  }
  // A key the config may set but config.json lacks would be lost by every worker.
  for (const auto& [key, value] : j.items()) {
    if (!resolved.contains(key)) broken("config key '" + key + "' is not in config.json");
  }
  if (j.contains("model")) {
    for (const auto& [key, value] : j.at("model").items()) {
      if (!resolved.at("model").contains(key)) {
        broken("config key 'model." + key + "' is not in config.json");
      }
    }
  }
  pipeline::PipelineConfig again;
  try {
    again = pipeline::apply_config(pipeline::default_config(), nlohmann::json::parse(written));
    pipeline::validate(again, pipeline_seed_shape(again));
  } catch (const std::exception& e) {
    broken(std::string("a worker cannot read the config.json of an accepted config: ") + e.what() +
           "\n" + written);
  }
  if (pipeline::to_json(again) != pipeline::to_json(c)) {
    broken("config.json changed in a write/read round trip: " + written);
  }
}

// Any bytes as btx-merge's CONFIG: refused with std::invalid_argument, or a MergeConfig
// that keeps the promises the merge relies on (parse_merge_config checks them all).
inline void merge_config_bytes(const uint8_t* data, size_t size) {
  nlohmann::json j;
  if (!read_config_text(data, size, j)) return;
  merge_tool::MergeConfig c;
  try {
    c = merge_tool::parse_merge_config(j);
  } catch (const std::invalid_argument&) {
    return;  // a config error, named
  }
  const auto& method = *c.merge.method.spec;
  if (method.dense_output) broken("a dense method accepted for an MoE");
  if (c.experts.empty()) broken("no experts accepted");
  const auto unsplit = int64_t(c.experts.size()) + (c.include_base_as_expert ? 1 : 0);
  if (c.experts_per_token < 1 || c.experts_per_token > unsplit) {
    broken("experts_per_token " + std::to_string(c.experts_per_token) + " accepted for " +
           std::to_string(unsplit) + " experts");
  }
  // Every option of every chosen entry was read by its schema: every key present, checked.
  for (const auto* chosen :
       {&c.merge.method.options, &c.merge.averaging.options, &c.merge.router_init.options}) {
    if (!chosen->is_object()) broken("an entry's options are not a mapping");
  }
  const auto& a = c.merge.averaging.options;
  if (a.contains("density")) {
    const double d = a.at("density").get<double>();
    if (!(d > 0.0 && d <= 1.0)) broken("density outside (0, 1] accepted");
  }
  if (a.contains("lambda") && !std::isfinite(a.at("lambda").get<double>())) {
    broken("a non-finite lambda accepted");
  }
  if (a.contains("weights")) {
    for (const auto& w : a.at("weights")) {
      if (!std::isfinite(w.get<double>())) broken("a non-finite weight accepted");
    }
  }
  if (c.merge.averaging.name() == "weighted" && a.at("weights").empty()) {
    broken("weighted without weights");
  }
  if (!std::isfinite(c.router_aux_loss_coef)) broken("a non-finite router_aux_loss_coef accepted");
  if (c.max_shard_size < 1) broken("max_shard_size 0 accepted");
  const bool hidden = c.merge.router_init.spec->per_source;
  for (size_t e = 0; e < c.experts.size(); ++e) {
    const auto& x = c.experts[e];
    if (x.source_model.empty() && !method.copies_one_source) broken("an expert without a source");
    if (hidden != !x.prompts.empty()) {
      broken("experts[" + std::to_string(e) + "] has prompts without gate_mode hidden, or none");
    }
  }
}

}  // namespace btx::fuzz
