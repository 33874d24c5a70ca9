// SPDX-License-Identifier: MIT
// The ModelFamily extension point. A model family (Llama, Qwen3, ...) lives in its own
// folder under models/ and is one registration away from every tool: it states how to
// read and write its Hugging Face config.json, how to build its dense and MoE models, the
// two-way name table between btx parameters and its HF checkpoints (dense and MoE), where
// the FFN and router sit in a layer (its config reader says how its HF MoE routes). Family-
// agnostic code (checkpoint I/O, merging, router init, ensembling, the recipe, the tools)
// sees only the FamilyEntry that register_family<F>() builds from those statics.
#pragma once

#include <nlohmann/json.hpp>

#include <concepts>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/core/sublayer_naming.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// ------------------------------------------------------------------ the concept
// `F::name()`: the registry name ("llama"); `F::dense_model_type()` / `F::moe_model_type()`:
// the config.json model_type of its dense and MoE architectures ("llama" / "mixtral").
template <class F>
concept family_names_itself = requires {
  { F::name() } -> std::convertible_to<std::string>;
  { F::dense_model_type() } -> std::convertible_to<std::string>;
  { F::moe_model_type() } -> std::convertible_to<std::string>;
};
// `F::read_config(json, where)`: a dense or MoE config.json -> ModelSpec, refusing (naming
// `where` and the field) what the family's model cannot represent.
template <class F>
concept family_reads_config = requires(const nlohmann::json& j, const std::string& where) {
  { F::read_config(j, where) } -> std::same_as<ModelSpec>;
};
// `F::config_json(spec, dtype)`: the config.json transformers loads (MoE when spec.moe).
template <class F>
concept family_writes_config = requires(const ModelSpec& spec, const std::string& dtype) {
  { F::config_json(spec, dtype) } -> std::same_as<nlohmann::ordered_json>;
};
// `F::make_dense(spec)`, `F::make_moe(spec)` (spec.moe says how its MoE layers route):
// freshly initialised models.
template <class F>
concept family_builds_models = requires(const ModelSpec& spec) {
  { F::make_dense(spec) } -> std::same_as<CausalLM>;
  { F::make_moe(spec) } -> std::same_as<CausalLM>;
};
// `F::hf_names(param, E)`: the HF tensor(s) of a btx parameter (E for packed experts);
// `F::btx_slot(hf_name)`: where an HF tensor goes. The two must be inverse.
template <class F>
concept family_maps_names = requires(const std::string& name, int64_t experts) {
  { F::hf_names(name, experts) } -> std::same_as<std::vector<std::string>>;
  { F::btx_slot(name) } -> std::same_as<hf::BtxSlot>;
};
// `F::ffn_naming()`: where the FFN, packed experts and router sit in a layer. (Optional:
// `F::attention_naming()`, where attention sits, for attention experts.)
template <class F>
concept family_locates_ffn = requires {
  { F::ffn_naming() } -> std::same_as<SublayerNaming>;
};
template <class F>
concept ModelFamily = family_names_itself<F> && family_reads_config<F> && family_writes_config<F> &&
    family_builds_models<F> && family_maps_names<F> && family_locates_ffn<F>;

// ------------------------------------------------------------ the runtime entry
struct FamilyEntry {
  std::string name, dense_model_type, moe_model_type;
  std::vector<std::string> other_model_types;  // further config.json types it reads
  std::function<ModelSpec(const nlohmann::json&, const std::string&)> read_config;
  std::function<nlohmann::ordered_json(const ModelSpec&, const std::string&)> config_json;
  std::function<CausalLM(const ModelSpec&)> make_dense;
  std::function<CausalLM(const ModelSpec&)> make_moe;
  std::function<std::vector<std::string>(const std::string&, int64_t)> hf_names;
  std::function<hf::BtxSlot(const std::string&)> btx_slot;
  SublayerNaming ffn;
  std::optional<SublayerNaming> attention;  // where attention sits, when it can hold experts
  // Its MoE architecture always has a shared expert (Qwen2-MoE): merges fill the slot or
  // leave it zero-width; other families refuse one.
  bool moe_has_shared_expert = false;
  // Its MoE architecture may have a shared expert (GraniteMoE: as GraniteMoEShared); one
  // that always has the slot (moe_has_shared_expert) may too.
  bool moe_may_have_shared_expert = false;
  // Its MoE's shared expert is gated by sigmoid(shared_expert_gate x) (Qwen2-MoE) or added as
  // it is (GLM-4-MoE, GraniteMoEShared).
  bool moe_shared_expert_gated = true;
  // The router a merge into its MoE architecture gets for top-k routing (empty: btx's
  // softmax top-k, renormalised); its MoE writer may accept no other kind.
  std::function<RouterChoice(int64_t k)> merge_router;
  // Families on the shared decoder: the dense DecoderConfig a spec of theirs describes, and
  // their dense spec of a DecoderConfig (throwing, naming the field, what their architecture
  // cannot carry). Together they write one family's model as another's (btx-merge's
  // `architecture`: a Llama seed merged into GLM-4-MoE); see convert_spec (models/auto.hpp).
  std::function<DecoderConfig(const ModelSpec&)> decoder_of;
  std::function<ModelSpec(const DecoderConfig&, const std::string& dtype)> from_decoder;
  // The expert layouts its MoE checkpoints come in, its default first (hf::NameMap::namings);
  // empty: per-expert as hf_names says, then transformers 5's packed names.
  std::vector<hf::ExpertNaming> expert_namings;

  // What hf:: checkpoint I/O needs of the family.
  [[nodiscard]] hf::NameMap name_map() const { return {hf_names, ffn, attention, expert_namings}; }
  // Where sublayer `s` sits (an attention naming only where the family gives one).
  [[nodiscard]] const SublayerNaming& naming(Sublayer s) const {
    if (s == Sublayer::ffn) return ffn;
    if (!attention) {
      throw std::invalid_argument("btx: model family '" + name +
                                  "' does not say where its attention sits");
    }
    return *attention;
  }
  // A model for `spec`: dense, or MoE as spec.moe says.
  [[nodiscard]] CausalLM make(const ModelSpec& spec) const {
    return spec.moe ? make_moe(spec) : make_dense(spec);
  }
};

template <ModelFamily F>
FamilyEntry family_entry() {
  FamilyEntry e;
  e.name = F::name();
  e.dense_model_type = F::dense_model_type();
  e.moe_model_type = F::moe_model_type();
  // Optional: `F::other_model_types()`, more architectures the family reads and writes
  // (Llama's: mistral, a Llama with a sliding window).
  if constexpr (requires { F::other_model_types(); }) e.other_model_types = F::other_model_types();
  // Optional: `F::moe_has_shared_expert()`, true when the MoE architecture has the slot.
  if constexpr (requires { F::moe_has_shared_expert(); })
    e.moe_has_shared_expert = F::moe_has_shared_expert();
  if constexpr (requires { F::moe_may_have_shared_expert(); })
    e.moe_may_have_shared_expert = F::moe_may_have_shared_expert();
  e.moe_may_have_shared_expert = e.moe_may_have_shared_expert || e.moe_has_shared_expert;
  // Optional: `F::moe_shared_expert_gated()`, `F::merge_router(k)`, and for families on the
  // shared decoder `F::decoder_of(spec)`, `F::from_decoder(config, dtype)`.
  if constexpr (requires { F::moe_shared_expert_gated(); })
    e.moe_shared_expert_gated = F::moe_shared_expert_gated();
  if constexpr (requires(int64_t k) { F::merge_router(k); })
    e.merge_router = [](int64_t k) { return F::merge_router(k); };
  if constexpr (requires(const ModelSpec& s, const DecoderConfig& c) {
                  F::decoder_of(s);
                  F::from_decoder(c, "float32");
                }) {
    e.decoder_of = [](const ModelSpec& s) { return F::decoder_of(s); };
    e.from_decoder = [](const DecoderConfig& c, const std::string& dtype) {
      return F::from_decoder(c, dtype);
    };
  }
  e.read_config = [](const nlohmann::json& j, const std::string& where) {
    return F::read_config(j, where);
  };
  e.config_json = [](const ModelSpec& s, const std::string& dtype) {
    return F::config_json(s, dtype);
  };
  e.make_dense = [](const ModelSpec& s) { return F::make_dense(s); };
  e.make_moe = [](const ModelSpec& s) { return F::make_moe(s); };
  e.hf_names = [](const std::string& n, int64_t experts) { return F::hf_names(n, experts); };
  e.btx_slot = [](const std::string& n) { return F::btx_slot(n); };
  e.ffn = F::ffn_naming();
  // Optional: `F::expert_namings()`, the layouts its experts are stored in (GraniteMoE's
  // packed input_linear, no per-expert layout).
  if constexpr (requires { F::expert_namings(); }) e.expert_namings = F::expert_namings();
  if constexpr (requires { F::attention_naming(); }) e.attention = F::attention_naming();
  return e;
}

// ------------------------------------------------------------------ the registry
// Families by name and by config.json model_type. Registration is cheap and may happen at
// any time; lookups copy nothing (entries are never removed).
class FamilyRegistry {
 public:
  void add(FamilyEntry entry) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> types = {entry.dense_model_type, entry.moe_model_type};
    types.insert(types.end(), entry.other_model_types.begin(), entry.other_model_types.end());
    for (const auto& key : types) {
      if (by_type_.count(key)) {
        throw std::invalid_argument("btx: model_type '" + key + "' of family '" + entry.name +
                                    "' is already claimed by family '" + by_type_.at(key)->name +
                                    "'");
      }
    }
    if (by_name_.count(entry.name)) {
      throw std::invalid_argument("btx: model family '" + entry.name + "' is already registered");
    }
    auto stored = std::make_shared<const FamilyEntry>(std::move(entry));
    by_name_[stored->name] = stored;
    for (const auto& key : types) by_type_[key] = stored;
  }
  [[nodiscard]] const FamilyEntry& get(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_name_.find(name);
    if (it == by_name_.end()) {
      throw std::invalid_argument("btx: unknown model family '" + name +
                                  "'; registered: " + names_locked());
    }
    return *it->second;
  }
  // The family whose dense or MoE architecture is `model_type`, or nullptr.
  [[nodiscard]] const FamilyEntry* for_model_type(const std::string& model_type) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_type_.find(model_type);
    return it == by_type_.end() ? nullptr : it->second.get();
  }
  [[nodiscard]] std::string model_types() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    for (const auto& [type, entry] : by_type_) out += (out.empty() ? "" : ", ") + type;
    return out;
  }
  [[nodiscard]] std::string names() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return names_locked();
  }

 private:
  [[nodiscard]] std::string names_locked() const {
    std::string out;
    for (const auto& [name, entry] : by_name_) out += (out.empty() ? "" : ", ") + name;
    return out;
  }
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const FamilyEntry>> by_name_, by_type_;
};

// The process-wide registry, without the built-in families (btx/models/registry.hpp's
// families() adds those); a user family: btx::register_family<MyFamily>().
inline FamilyRegistry& family_registry() {
  static FamilyRegistry registry;
  return registry;
}

template <ModelFamily F>
bool register_family(FamilyRegistry& registry = family_registry()) {
  registry.add(family_entry<F>());
  return true;
}

BTX_NAMESPACE_END
}  // namespace btx
