// SPDX-License-Identifier: MIT
// MixManifest: how a merged checkpoint was made (method, sources, policies, expert count,
// suggested top-k), saved beside it as JSON so the merge can be traced and repeated.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

struct MixManifest {
  std::string method;                 // "btx_mix", "split", "blend", "upcycle", "btm_merge", ...
  std::vector<std::string> sources;   // source labels, in expert order
  nlohmann::json averaging;           // the averaging policy's to_json() (null if none)
  nlohmann::json router_init;         // the router init policy's to_json() (null if dense)
  std::vector<double> weights;        // normalised averaging weights (empty: tensor-aware)
  std::string base;                   // the seed task vectors are taken from ("" if none)
  int64_t num_experts = 0;            // 0 for a dense result
  int64_t split_factor = 1;           // chunks per source FFN (splitting), else 1
  int64_t experts_per_token = 0;      // suggested top-k for the MoE config (0: dense)
  int64_t moe_intermediate_size = 0;  // each expert's I (0: dense)
  // The shared expert's I (0: a zero-width one); empty: the MoE has none.
  std::optional<int64_t> shared_expert_intermediate_size;
  // Provenance, one entry per expert: the pieces concatenated along I, each
  // {"source": label, "rows": [begin, end)}. Empty for a dense result.
  nlohmann::json experts = nlohmann::json::array();
  nlohmann::json options = nlohmann::json::object();  // method-specific (upcycling noise, ...)
};

inline void to_json(nlohmann::json& j, const MixManifest& m) {
  j = nlohmann::json{{"method", m.method},
                     {"sources", m.sources},
                     {"averaging", m.averaging},
                     {"router_init", m.router_init},
                     {"weights", m.weights},
                     {"base", m.base},
                     {"num_experts", m.num_experts},
                     {"split_factor", m.split_factor},
                     {"experts_per_token", m.experts_per_token},
                     {"moe_intermediate_size", m.moe_intermediate_size},
                     {"experts", m.experts},
                     {"options", m.options}};
  j["shared_expert_intermediate_size"] = m.shared_expert_intermediate_size
                                             ? nlohmann::json(*m.shared_expert_intermediate_size)
                                             : nlohmann::json();
}

inline void from_json(const nlohmann::json& j, MixManifest& m) {
  if (!j.is_object() || !j.contains("method")) {
    throw std::invalid_argument("btx::merge::MixManifest: JSON must be an object with 'method'");
  }
  MixManifest out;
  out.method = j.at("method").get<std::string>();
  out.sources = j.value("sources", std::vector<std::string>{});
  out.averaging = j.value("averaging", nlohmann::json());
  out.router_init = j.value("router_init", nlohmann::json());
  out.weights = j.value("weights", std::vector<double>{});
  out.base = j.value("base", std::string());
  out.num_experts = j.value("num_experts", int64_t{0});
  out.split_factor = j.value("split_factor", int64_t{1});
  out.experts_per_token = j.value("experts_per_token", int64_t{0});
  out.moe_intermediate_size = j.value("moe_intermediate_size", int64_t{0});
  if (j.contains("shared_expert_intermediate_size") &&
      !j["shared_expert_intermediate_size"].is_null()) {
    out.shared_expert_intermediate_size = j["shared_expert_intermediate_size"].get<int64_t>();
  }
  out.experts = j.value("experts", nlohmann::json::array());
  out.options = j.value("options", nlohmann::json::object());
  m = std::move(out);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
