// SPDX-License-Identifier: MIT
// Every key of a btx-merge config, declared once (what it fills, what it means, its
// checks), and the combinations the keys alone cannot check.
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>

#include <btx/core/device.hpp>
#include <btx/merge/averaging_registry.hpp>
#include <btx/merge/method_registry.hpp>
#include <btx/merge/router_init_registry.hpp>

#include "config.hpp"

namespace btx::merge_tool {

namespace {

namespace s = btx::schema;

std::invalid_argument key_error(const std::string& key, const std::string& what) {
  return std::invalid_argument("config key '" + key + "': " + what);
}

// A size in bytes: a positive integer, or a number with a unit ("500MB", "2GB", "1GiB").
uint64_t parse_size(const nlohmann::json& j, const std::string& key) {
  if (j.is_number_integer()) {
    const auto v = s::detail::decode<int64_t>(j, key);
    if (v < 1) throw key_error(key, "must be >= 1, got " + j.dump());
    return uint64_t(v);
  }
  if (!j.is_string())
    throw key_error(key, "must be a size (bytes, or e.g. 500MB), got " + j.dump());
  const auto text = j.get<std::string>();
  static const std::map<std::string, uint64_t> units = {{"B", 1},
                                                        {"KB", 1000},
                                                        {"MB", 1000'000},
                                                        {"GB", 1000'000'000},
                                                        {"KiB", 1ull << 10},
                                                        {"MiB", 1ull << 20},
                                                        {"GiB", 1ull << 30}};
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    throw key_error(key, "'" + text + "' is not a size (bytes, or e.g. 500MB, 2GB, 1GiB)");
  }
  const auto unit = units.find(text.substr(used));
  if (unit == units.end() || !(v > 0)) {
    throw key_error(key, "'" + text + "' is not a size (bytes, or e.g. 500MB, 2GB, 1GiB)");
  }
  const double bytes = v * double(unit->second);
  if (!(bytes >= 1.0 && bytes < 18446744073709551616.0)) {  // [1, 2^64): a uint64_t
    throw key_error(key, "'" + text + "' is not between 1 byte and 2^64 bytes");
  }
  return uint64_t(bytes);
}

s::Schema<ExpertEntry> expert_schema() {
  return s::Schema<ExpertEntry>("experts[]")
      .key("source_model", &ExpertEntry::source_model,
           "HF dense checkpoint folder (method upcycle: omitted or base_model)")
      .key("positive_prompts", &ExpertEntry::prompts,
           "gate_mode hidden: this expert's domain, each a string (tokenised with base_model's "
           "own tokenizer as transformers does) or a list of token ids")
      .key("negative_prompts", &ExpertEntry::negative_prompts,
           "the same form: prompts this expert should not take (their mean is subtracted)");
}

s::Schema<MergeConfig> make_schema() {
  using C = MergeConfig;
  s::Schema<C> sc("the top level");
  sc.key("operation", &C::operation,
         "merge (dense experts -> MoE); for anchored experts (FlexOlmo): flexolmo "
         "(concatenate experts[] over base_model, the anchor), remove_experts (drop `remove` "
         "from the MoE base_model), add_experts (append experts[] to the MoE base_model)",
         s::one_of({"merge", "flexolmo", "remove_experts", "add_experts"}))
      .key("remove", &C::remove, "remove_experts: indices of the experts to drop (0: the anchor)")
      .key("base_model", &C::base_model,
           "HF checkpoint folder: architecture, tokenizer files and config.json come from it; "
           "gate_mode hidden runs it (dense for merge and flexolmo, the merged MoE for "
           "remove_experts and add_experts). Required")
      .list("experts", &C::experts, expert_schema(), "the dense experts, in expert order")
      .key("experts_per_token", &C::experts_per_token, "top-k (split C: the config gets C*k)",
           s::positive<int64_t>())
      .key("dtype", &C::dtype, "output dtype (default: the sources')",
           s::one_of({"float32", "float16", "bfloat16"}))
      .key("expert_layout", &C::expert_layout,
           "how the MoE's experts are stored: per_expert (one tensor per expert, what "
           "transformers' save_pretrained writes by default) or packed (experts.gate_up_proj "
           "[E, 2F, D] and experts.down_proj [E, D, F], transformers 5's own layout); default: "
           "the family's",
           s::one_of({"per_expert", "packed"}))
      .key("include_base_as_expert", &C::include_base_as_expert,
           "base_model as expert 0 (the BTX paper's generalist); with gate_mode hidden its "
           "prompts are every expert's")
      .custom(
          "shared_experts",
          "[{source_model: PATH}, ...]: the always-on shared expert of architectures that have "
          "one (Qwen2-MoE, GLM-4-MoE): each source's FFN, concatenated (several: each at 1/N; "
          "GLM-4-MoE's n_shared_experts). Gated (Qwen2-MoE), the gate starts at 0 (sigmoid: "
          "1/2); ungated, its down_proj is halved; the routed experts' down_proj is halved",
          [](C& c, const nlohmann::json& list, const std::string&) {
            if (!list.is_array() || list.empty()) {
              throw key_error("shared_experts", "must list one or more {source_model: PATH}");
            }
            c.shared_experts.clear();
            for (size_t i = 0; i < list.size(); ++i) {
              const std::string where = "shared_experts[" + std::to_string(i) + "]";
              const auto& x = list[i];
              if (!x.is_object() || !x.contains("source_model")) {
                throw key_error(where, "must be a mapping with source_model");
              }
              for (const auto& [key, value] : x.items()) {
                if (key != "source_model") {
                  throw key_error(where + "." + key,
                                  "not supported (btx starts the shared expert's gate at zero; "
                                  "shared_experts take source_model only)");
                }
              }
              c.shared_experts.push_back(
                  s::detail::decode<std::string>(x["source_model"], where + ".source_model"));
            }
          },
          [](const C& c) {
            if (c.shared_experts.empty()) return nlohmann::json(nullptr);
            nlohmann::json out = nlohmann::json::array();
            for (const auto& m : c.shared_experts) out.push_back({{"source_model", m}});
            return out;
          })
      .key("architecture", &C::architecture,
           "the output's model_type where it differs from base_model's family's MoE (glm4_moe "
           "from a Llama, Qwen2 or Qwen3 seed); refused, naming the field, where that "
           "architecture cannot carry the sources' model")
      .key("dense_layers", &C::dense_layers,
           "leading layers kept dense, their FFNs averaged (first_k_dense_replace; "
           "GLM-4-MoE, Qwen-MoE's mlp_only_layers)")
      .key("seed", &C::seed, "seed of gate_mode random and of dare_* drops")
      .custom(
          "max_shard_size", "bytes per safetensors shard (also 500MB, 2GB, 1GiB)",
          [](C& c, const nlohmann::json& v, const std::string&) {
            c.max_shard_size = parse_size(v, "max_shard_size");
          },
          [](const C& c) { return nlohmann::json(c.max_shard_size); })
      .key("router_aux_loss_coef", &C::router_aux_loss_coef,
           "written to config.json (transformers' load-balancing weight)")
      .key("device", &C::device, "where averaging and stacking compute: cpu, cuda or cuda:N")
      .key("tokenizer_source", &C::tokenizer_source,
           "whose tokenizer, chat template and generation files the output keeps: base "
           "(sources must agree) or a folder")
      .key("allow_non_finite", &C::allow_non_finite,
           "take NaN and Inf in the sources instead of refusing them");
  for (const auto& key : merge::merge_choice_keys(merge_keys())) {
    sc.custom(
        key, "see Methods, Averagings and Gate modes below",
        [key](C& c, const nlohmann::json& v, const std::string&) { c.merge_given[key] = v; },
        [key](const C& c) {
          return c.merge_given.contains(key) ? c.merge_given.at(key) : nlohmann::json(nullptr);
        });
  }
  return sc;
}

}  // namespace

const schema::Schema<MergeConfig>& merge_config_schema() {
  static const auto schema = make_schema();
  return schema;
}

namespace {
// An MoE edit's config: only the keys it reads (the merge choice, prompts, the shared
// expert and the device are the merge's).
MergeConfig checked_edit(MergeConfig c, const nlohmann::json& j) {
  for (const char* key : {"method", "averaging", "gate_mode", "split", "weights", "density",
                          "lambda", "include_base_as_expert", "shared_experts", "device",
                          "architecture", "dense_layers", "expert_layout"}) {
    if (j.contains(key)) throw key_error(key, "does not apply to operation " + c.operation);
  }
  for (size_t e = 0; e < c.experts.size(); ++e) {
    const auto& x = c.experts[e];
    const std::string where = "experts[" + std::to_string(e) + "]";
    if (x.source_model.empty()) throw key_error(where + ".source_model", "missing");
    if (!x.prompts.empty() || !x.negative_prompts.empty()) {
      throw key_error(where + ".positive_prompts",
                      "does not apply to operation " + c.operation +
                          " (anchored experts bring their router rows)");
    }
  }
  if (c.operation == "remove_experts") {
    if (c.remove.empty()) throw key_error("remove", "missing: the indices of the experts to drop");
    if (!c.experts.empty()) throw key_error("experts", "does not apply to remove_experts");
  } else {
    if (!c.remove.empty()) throw key_error("remove", "applies to operation remove_experts only");
    if (c.experts.empty()) {
      throw key_error("experts",
                      "missing or empty (a list of {source_model: PATH}: anchored "
                      "experts, MoEs of two)");
    }
  }
  if (c.tokenizer_source == "union") throw key_error("tokenizer_source", "union is not supported");
  return c;
}
}  // namespace

MergeConfig parse_merge_config(const nlohmann::json& j) {
  if (!j.is_object()) throw std::invalid_argument("the config must be a mapping of keys");
  MergeConfig c = merge_config_schema().read(j, MergeConfig{}, "");
  if (c.base_model.empty()) throw key_error("base_model", "missing (a HF checkpoint folder)");
  if (c.operation != "merge") return checked_edit(std::move(c), j);
  if (!c.remove.empty()) throw key_error("remove", "applies to operation remove_experts only");
  if (c.experts.empty()) {
    throw key_error("experts", "missing or empty (a list of {source_model: PATH})");
  }
  // mergekit's shorthands: `split: C` is method split, `weights` is averaging weighted.
  const auto keys = merge_keys();
  nlohmann::json given = c.merge_given;
  if (given.contains("split") && !given.contains("method")) given["method"] = "split";
  if (given.contains("weights") && !given.contains("averaging")) given["averaging"] = "weighted";
  c.merge = merge::read_merge_choice(given, keys);
  const auto& method = *c.merge.method.spec;
  if (method.dense_output) {
    throw key_error("method", "btm_merge makes a dense model; btx-merge makes an MoE");
  }
  if (c.device != "cpu") {
    try {
      (void)parse_device(c.device);  // a device this machine lacks: an error before any work
    } catch (const std::invalid_argument& e) {
      throw key_error("device", e.what());
    }
  }
  if (c.tokenizer_source == "union") {
    throw key_error("tokenizer_source",
                    "union is not supported (btx does not resize embeddings); use base or the "
                    "folder whose tokenizer to keep");
  }
  if (j.contains("tokenizer_source") && c.tokenizer_source.empty()) {
    throw key_error("tokenizer_source", "must not be empty");
  }
  if (!std::isfinite(c.router_aux_loss_coef)) {
    throw key_error("router_aux_loss_coef", "must be a finite number");
  }
  if (method.copies_one_source) {
    if (c.include_base_as_expert) {
      throw key_error("include_base_as_expert", "does not apply to method " + method.name);
    }
    for (const char* key : {"averaging", "weights", "density", "lambda"}) {
      if (given.contains(key)) {
        throw key_error(
            key, "does not apply to method " + method.name + " (one source: base_model, copied)");
      }
    }
  }
  const bool hidden = c.merge.router_init.spec->per_source;
  for (size_t e = 0; e < c.experts.size(); ++e) {
    const auto& x = c.experts[e];
    const std::string where = "experts[" + std::to_string(e) + "]";
    if (x.source_model.empty() && !method.copies_one_source) {
      throw key_error(where + ".source_model", "missing (a HF dense checkpoint folder)");
    }
    if (hidden && x.prompts.empty()) {
      throw key_error(where + ".positive_prompts",
                      "missing: gate_mode " + c.merge.router_init.name() +
                          " (mergekit's default) needs prompts for every expert; or set "
                          "gate_mode: random");
    }
    if (!hidden && (!x.prompts.empty() || !x.negative_prompts.empty())) {
      throw key_error(
          where + (x.prompts.empty() ? ".negative_prompts" : ".positive_prompts"),
          "used by gate_mode hidden only (gate_mode is " + c.merge.router_init.name() + ")");
    }
  }
  const size_t unsplit = c.experts.size() + (c.include_base_as_expert ? 1 : 0);
  if (size_t(c.experts_per_token) > unsplit) {
    throw key_error("experts_per_token", std::to_string(c.experts_per_token) +
                                             " is more than the " + std::to_string(unsplit) +
                                             " experts");
  }
  return c;
}

std::string config_help() {
  return "CONFIG keys (YAML or JSON; unknown keys are errors; defaults in brackets):\n" +
         merge_config_schema().help(MergeConfig{}) +
         "Methods (method; split: C is method split with C chunks):\n" + merge::methods().help() +
         "Averagings of the non-FFN tensors (averaging; weights alone is weighted):\n" +
         merge::averagings().help() + "Gate modes (gate_mode; gate_<option> for their options):\n" +
         merge::router_inits().help() +
         "The output also gets a model card (README.md: method, sources with XXH3-128 hashes of\n"
         "their files, router, averaging, top-k, the checks btx ran, this config) and\n"
         "btx_merge.json. Relative paths are relative to the current directory (as in mergekit).\n";
}

}  // namespace btx::merge_tool
