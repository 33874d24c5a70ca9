// SPDX-License-Identifier: MIT
// Every key of btx-pipeline's config, declared once: what it fills, what it means (the
// --help text) and its checks. The combinations the keys alone cannot check are validate()'s.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>

#include <btx/recipe/btx_stages.hpp>

#include "../common/domain_schema.hpp"
#include "config.hpp"

namespace btx::pipeline {

namespace {

namespace s = btx::schema;

s::Schema<StageBudget> budget_schema(const std::string& name) {
  return s::Schema<StageBudget>(name)
      .key("steps", &StageBudget::steps, "optimizer steps", s::positive<int64_t>())
      .key("lr", &StageBudget::lr, "peak learning rate (warmup, then cosine decay)",
           s::positive<double>())
      .key("warmup", &StageBudget::warmup, "warmup steps (at most half the stage)",
           s::at_least<int64_t>(0));
}

s::Schema<DecoderConfig> model_schema() {
  return s::Schema<DecoderConfig>("model")
      .key("hidden_size", &DecoderConfig::hidden_size, "width D", s::positive<int64_t>())
      .key("intermediate_size", &DecoderConfig::intermediate_size, "FFN width F",
           s::positive<int64_t>())
      .key("num_hidden_layers", &DecoderConfig::num_hidden_layers, "decoder layers",
           s::positive<int64_t>())
      .key("num_attention_heads", &DecoderConfig::num_attention_heads, "query heads",
           s::positive<int64_t>())
      .key("num_key_value_heads", &DecoderConfig::num_key_value_heads, "key/value heads (GQA)",
           s::positive<int64_t>())
      .key("head_dim", &DecoderConfig::head_dim, "per head (null: hidden_size / heads)")
      .key("rope_theta", &DecoderConfig::rope_theta, "RoPE base", s::positive<double>())
      .key("rms_norm_eps", &DecoderConfig::rms_norm_eps, "RMSNorm epsilon", s::positive<double>())
      .key("max_position_embeddings", &DecoderConfig::max_position_embeddings, "longest sequence",
           s::positive<int64_t>())
      .key("tie_word_embeddings", &DecoderConfig::tie_word_embeddings,
           "the LM head reuses the embedding")
      .key("vocab_size", &DecoderConfig::vocab_size, "vocabulary (a sentencepiece tokenizer's)",
           s::positive<int64_t>());
}

// The merge choice's keys (experts_from, averaging, router_init and their options): read
// over the config's current choice, a changed name dropping the old entry's options.
void read_mix_key(PipelineConfig& c, const std::string& key, const nlohmann::json& value) {
  const auto keys = mix_keys();
  const bool name_key = key == keys.method || key == keys.averaging || key == keys.router_init;
  // config.json records an option of an entry not chosen as null (mix_json): not given.
  if (value.is_null() && !name_key) return;
  nlohmann::json given = nlohmann::json::object();
  // The current choice as keys.
  const auto add = [&](const std::string& name_key, const auto& chosen) {
    given[name_key] = chosen.name();
    for (const auto& [option, v] : chosen.options.items()) given[keys.key_of(option)] = v;
  };
  add(keys.method, c.mix.method);
  add(keys.averaging, c.mix.averaging);
  add(keys.router_init, c.mix.router_init);
  if (name_key) {
    const auto& old = key == keys.method      ? c.mix.method.spec->options
                      : key == keys.averaging ? c.mix.averaging.spec->options
                                              : c.mix.router_init.spec->options;
    for (const auto& option : old.keys) given.erase(keys.key_of(option));
  }
  given[key] = value;
  c.mix = merge::read_merge_choice(given, keys);
}

nlohmann::json mix_json(const PipelineConfig& c, const std::string& key) {
  const auto keys = mix_keys();
  if (key == keys.method) return c.mix.method.name();
  if (key == keys.averaging) return c.mix.averaging.name();
  if (key == keys.router_init) return c.mix.router_init.name();
  for (const auto* chosen :
       {&c.mix.method.options, &c.mix.averaging.options, &c.mix.router_init.options}) {
    for (const auto& [option, v] : chosen->items()) {
      if (keys.key_of(option) == key) return v;
    }
  }
  return nullptr;  // an option of an entry not chosen
}

// `arms`: names of the recipe graph's optional arms, each with its options read by the
// arm's own schema (unknown arms and options refused, naming them).
std::map<std::string, nlohmann::json> read_arms(const nlohmann::json& v, const std::string& key) {
  std::map<std::string, nlohmann::json> out;
  const auto add = [&](const std::string& name, const nlohmann::json& given) {
    const auto option = recipe::btx_graph().option(name);
    if (out.count(name)) throw std::invalid_argument("config: " + key + ": '" + name + "' twice");
    out[name] = option.options.read(given, key + "." + name);
  };
  if (v.is_array()) {
    for (const auto& item : v) {
      if (!item.is_string()) {
        throw std::invalid_argument("config: " + key + " lists arm names (strings), got " +
                                    item.dump());
      }
      add(item.get<std::string>(), nlohmann::json::object());
    }
  } else if (v.is_object()) {
    for (const auto& [name, given] : v.items()) add(name, given);
  } else {
    throw std::invalid_argument("config: " + key +
                                " is a list of arm names or a mapping of arm names to options");
  }
  return out;
}

s::Schema<PipelineConfig> make_schema() {
  using C = PipelineConfig;
  s::Schema<C> sc("the top level");
  sc.key("run_dir", &C::run_dir, "the run's folder", s::non_empty<std::string>())
      .key("seed", &C::seed, "every random stream's seed")
      .key("repeats", &C::repeats,
           "run the whole pipeline with seeds seed .. seed+repeats-1, each in <run>/seed-<s>/, "
           "and report means and spreads",
           s::positive<int64_t>())
      .key("sweep", &C::sweep,
           "{axis, variants: [{name, x, KEY: VALUE...}]} or a list of such, each with a name "
           "(tools/btx-pipeline/sweep.hpp)")
      .section("model", &C::model, model_schema(), "the demo seed's Llama (no seed_checkpoint)")
      .key("seq_len", &C::seq_len, "tokens per training window", s::positive<int64_t>())
      .key("batch_size", &C::batch_size, "windows per optimizer step", s::positive<int64_t>())
      .list("domains", &C::domains, btx::tools::domain_schema(), "one expert each",
            [](const C& c) {
              DomainSpec d;
              if (!c.domains.empty()) d.max_train_tokens = c.domains.front().max_train_tokens;
              return d;
            })
      .key("tokenizer", &C::tokenizer, "auto | sentencepiece | seed | bytes",
           s::one_of({"auto", "sentencepiece", "seed", "bytes"}))
      .key("tokenizer_vocab_size", &C::tokenizer_vocab_size,
           "sentencepiece pieces (256 bytes + <unk>, <s>, </s> and more)",
           s::in_range<int64_t>(260, 65536))
      .key("seed_checkpoint", &C::seed_checkpoint, "an HF checkpoint of any family to start from")
      .list(
          "experts", &C::experts,
          s::Schema<C::ExpertSource>("experts[]")
              .key("domain", &C::ExpertSource::domain, "the domain this expert is for",
                   s::non_empty<std::string>())
              .key("checkpoint", &C::ExpertSource::checkpoint,
                   "an HF folder: a dense finetune of seed_checkpoint", s::non_empty<std::string>())
              .key("flops", &C::ExpertSource::flops,
                   "its training FLOPs after the seed (null: unknown, counted as 0)"),
          "experts the user already has, taken instead of training those domains'")
      .section("seed_stage", &C::seed_stage, budget_schema("seed_stage"), "the seed's training")
      .section("expert_stage", &C::expert_stage, budget_schema("expert_stage"),
               "each expert's training")
      .section("finetune_stage", &C::finetune_stage, budget_schema("finetune_stage"),
               "the MoE stage (its steps from moe_share when set)")
      .key("moe_share", &C::moe_share, "the MoE stage's share of BTX's compute (0: steps as given)",
           s::in_range(0.0, 1.0, /*include_high=*/false))
      .custom(
          "router", "BTX's router (see Routers below)",
          [](C& c, const nlohmann::json& v, const std::string& key) {
            c.router = resolve_router(s::detail::decode<std::string>(v, key), {});
          },
          [](const C& c) { return nlohmann::json(c.router.name); })
      .custom(
          "router_options", "the router's own options, e.g. {capacity_factor: 2}",
          [](C& c, const nlohmann::json& v, const std::string&) {
            // Read by the registration `router` resolved to: no second look-up.
            c.router = resolve_router(c.router);
            c.router.options = c.router.registration->resolve_options(c.router.name, v);
          },
          [](const C& c) { return c.router.options; })
      .key("extra_routers", &C::extra_routers, "more routers to finetune and compare")
      .key("load_balance_alpha", &C::load_balance_alpha, "weight of the load-balancing loss",
           s::at_least(0.0))
      .key("load_balance_form", &C::load_balance_form, "btx | switch", s::one_of({"btx", "switch"}))
      .key("freeze_experts", &C::freeze_experts, "the MoE stage trains routers and trunk only")
      .key("seed_as_expert", &C::seed_as_expert, "the seed joins as the generalist expert")
      .key("seed_as_shared_expert", &C::seed_as_shared_expert,
           "or, where the family has one, as the shared expert");
  for (const auto& key : merge::merge_choice_keys(mix_keys())) {
    sc.custom(
        key, "MiX: see Merge methods below",
        [key](C& c, const nlohmann::json& v, const std::string&) { read_mix_key(c, key, v); },
        [key](const C& c) { return mix_json(c, key); });
  }
  sc.key("baselines", &C::baselines, "dense, sparse upcycling, BTM merge and ensemble")
      .custom(
          "arms", "optional arms to run too: a list of names, or {name: {options}} (see Arms)",
          [](C& c, const nlohmann::json& v, const std::string& key) { c.arms = read_arms(v, key); },
          [](const C& c) {
            nlohmann::json j = nlohmann::json::object();
            for (const auto& [name, options] : c.arms) j[name] = options;
            return j;
          })
      .key("eval_windows", &C::eval_windows, "held-out windows per domain in the report",
           s::positive<int64_t>())
      .key("math_problems", &C::math_problems, "math exact-match problems", s::at_least<int64_t>(0))
      .key("sample_prompts", &C::sample_prompts, "every model continues each in the report")
      .key("sample_tokens", &C::sample_tokens, "tokens each continuation", s::positive<int64_t>())
      .key("log_every", &C::log_every, "progress and metrics interval (steps)",
           s::positive<int64_t>())
      .key("curve_every", &C::curve_every, "held-out learning curves (a multiple of log_every)",
           s::at_least<int64_t>(0))
      .key("curve_windows", &C::curve_windows, "held-out windows per domain on the curves",
           s::positive<int64_t>())
      .key("checkpoint_every", &C::checkpoint_every, "training checkpoints (0: none)",
           s::at_least<int64_t>(0))
      .key("max_restarts", &C::max_restarts,
           "a failed worker job (an expert's group, a synchronous stage) runs again this many "
           "times, resuming from its last checkpoint",
           s::at_least<int64_t>(0))
      .key("stage_jobs", &C::stage_jobs,
           "stages trained at once (0: as many as the cores and the memory allow)",
           s::at_least<int64_t>(0))
      .key("threads", &C::threads,
           "threads per process (0: OMP_NUM_THREADS if set, else the cores the affinity, "
           "cgroup and SLURM_CPUS_PER_TASK allow, divided among the stages at once)",
           s::at_least<int64_t>(0))
      .key("device", &C::device, "cpu | cuda | cuda:N")
      .key("precision", &C::precision,
           "fp32 | bf16-mixed | bf16 | auto (bf16-mixed on a CPU with native bf16 or on CUDA, "
           "else fp32)")
      .custom(
          "ranks_per_expert", "data-parallel ranks of each expert",
          [](C& c, const nlohmann::json& v, const std::string& key) {
            c.topology.ranks_per_expert = s::detail::decode<int64_t>(v, key);
          },
          [](const C& c) { return nlohmann::json(c.topology.ranks_per_expert); })
      .custom(
          "ranks_per_stage", "data-parallel ranks of each synchronous stage",
          [](C& c, const nlohmann::json& v, const std::string& key) {
            c.topology.ranks_per_stage = s::detail::decode<int64_t>(v, key);
          },
          [](const C& c) { return nlohmann::json(c.topology.ranks_per_stage); })
      .custom(
          "expert_worlds", "per_expert (a job each) | shared (one world split into groups)",
          [](C& c, const nlohmann::json& v, const std::string& key) {
            const auto name = s::detail::decode<std::string>(v, key);
            if (auto why = s::one_of({"per_expert", "shared"})(name)) throw s::error(key, *why);
            c.topology.expert_worlds = recipe::parse_expert_worlds(name);
          },
          [](const C& c) { return nlohmann::json(recipe::to_string(c.topology.expert_worlds)); })
      .custom(
          "dist_timeout_s", "rendezvous and collective timeout",
          [](C& c, const nlohmann::json& v, const std::string& key) {
            c.topology.timeout_s = s::detail::decode<int64_t>(v, key);
          },
          [](const C& c) { return nlohmann::json(c.topology.timeout_s); })
      .key("fail_expert", &C::fail_expert, "fault injection: this expert's job ...")
      .key("fail_step", &C::fail_step, "... fails before this step ...")
      .key("fail_rank", &C::fail_rank, "... on this rank of its group ...", s::at_least<int64_t>(0))
      .key("fail_signal", &C::fail_signal, "... by abort or kill", s::one_of({"abort", "kill"}))
      .key("allow_non_finite", &C::allow_non_finite, "load checkpoints holding NaN or Inf");
  sc.rule([](const C& c, const nlohmann::json& given, const std::string&) {
    // Checked here, not in validate(): the driver splits the run into repeats before any
    // repeat's own validation sees its config.
    if (c.seed > std::numeric_limits<uint64_t>::max() - uint64_t(c.repeats)) {
      throw std::invalid_argument("config: seed + repeats overflows the seed's range");
    }
    if (uses_sentencepiece(c) && given.contains("model") && given.at("model").is_object() &&
        given.at("model").contains("vocab_size") && c.model.vocab_size != c.tokenizer_vocab_size) {
      throw std::invalid_argument(
          "config: model.vocab_size " + std::to_string(c.model.vocab_size) +
          " differs from tokenizer_vocab_size " + std::to_string(c.tokenizer_vocab_size) +
          ": with a sentencepiece tokenizer the model's vocabulary is the tokenizer's (set "
          "tokenizer_vocab_size, or tokenizer: bytes for vocab_size 256)");
    }
  });
  return sc;
}

void positive(const char* field, int64_t v) {
  if (v <= 0) {
    throw std::invalid_argument(std::string("config: ") + field + " must be > 0, got " +
                                std::to_string(v));
  }
}

}  // namespace

const schema::Schema<PipelineConfig>& pipeline_schema() {
  static const auto schema = make_schema();
  return schema;
}

void validate(const PipelineConfig& c, const ArchShape& seed) {
  if (c.seed_checkpoint.empty()) c.model.validate();
  positive("seed_stage.steps", c.seed_checkpoint.empty() ? c.seed_stage.steps : 1);
  if (c.curve_every % c.log_every != 0) {
    throw std::invalid_argument("config: curve_every (" + std::to_string(c.curve_every) +
                                ") must be 0 (no learning curves) or a multiple of log_every (" +
                                std::to_string(c.log_every) + ")");
  }
  if (c.seq_len >= seed.max_position_embeddings) {  // seq_len + 1 positions (no overflow)
    throw std::invalid_argument("config: seq_len=" + std::to_string(c.seq_len) +
                                " exceeds the seed's max_position_embeddings=" +
                                std::to_string(seed.max_position_embeddings));
  }
  if (c.domains.empty()) throw std::invalid_argument("config: no domains");
  if (c.tokenizer == "seed" && !seed_has_tokenizer(c)) {
    throw std::invalid_argument(c.seed_checkpoint.empty()
                                    ? std::string("config: tokenizer seed needs a seed_checkpoint")
                                    : "config: tokenizer seed, but seed_checkpoint " +
                                          c.seed_checkpoint +
                                          " has no tokenizer.json or tokenizer.model");
  }
  if (c.tokenizer == "sentencepiece") {
    if (!c.seed_checkpoint.empty()) {
      throw std::invalid_argument(
          "config: tokenizer sentencepiece trains a new vocabulary, but seed_checkpoint " +
          c.seed_checkpoint + " has its own (use tokenizer: seed, bytes or auto)");
    }
    for (const auto& d : c.domains) {
      if (!d.token_file.empty()) {
        throw std::invalid_argument("config: tokenizer sentencepiece, but domain '" + d.name +
                                    "' reads ids from a token_file (use tokenizer: bytes)");
      }
    }
  }
  // The mix: a method that makes an MoE of the experts, cut evenly.
  const auto& method = *c.mix.method.spec;
  if (method.dense_output || method.copies_one_source) {
    throw std::invalid_argument("config: experts_from " + method.name +
                                " does not make an MoE of the experts");
  }
  const size_t sources = c.domains.size() + (c.seed_as_expert ? 1 : 0);
  try {
    (void)method.recipe(c.mix.method.options,
                        {sources, seed.intermediate_size, 2, int64_t(sources), {}});
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("config: experts_from ") + method.name + ": " +
                                e.what());
  }
  if (c.mix.averaging.spec->name == "keep_base" && !c.seed_as_expert) {
    throw std::invalid_argument(
        "config: averaging keep_base keeps the seed's tensors, which needs seed_as_expert");
  }
  std::set<std::string> imported;
  for (const auto& e : c.experts) {
    const bool known = std::any_of(c.domains.begin(), c.domains.end(),
                                   [&](const DomainSpec& d) { return d.name == e.domain; });
    if (!known) {
      throw std::invalid_argument("config: experts[].domain '" + e.domain +
                                  "' is not one of the domains");
    }
    if (!imported.insert(e.domain).second) {
      throw std::invalid_argument("config: experts lists domain '" + e.domain + "' twice");
    }
    if (c.seed_checkpoint.empty()) {
      throw std::invalid_argument("config: experts[] (" + e.domain +
                                  ") needs the seed they were finetuned from as seed_checkpoint");
    }
    if (!std::filesystem::exists(std::filesystem::path(e.checkpoint) / "config.json")) {
      throw std::invalid_argument("config: experts[].checkpoint " + e.checkpoint +
                                  " is not a checkpoint folder with a config.json");
    }
    if (e.flops && !(*e.flops >= 0.0)) {
      throw std::invalid_argument("config: experts[].flops must be >= 0");
    }
  }
  c.topology.validate(c.batch_size);
  (void)placement(c);  // a device this machine lacks fails here, before any work
}

}  // namespace btx::pipeline
