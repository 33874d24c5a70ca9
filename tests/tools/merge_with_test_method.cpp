// SPDX-License-Identifier: MIT
// btx-merge with one more merge method, registered here and nowhere else: "rotate", the BTX
// mix with its experts rotated by an option of its own (`by`: expert j is source j + by).
// tests/python/test_merge.py's TestOnlyMethod runs it from a config and finds the method in
// --help, its option read and checked, and the rotated experts in a Mixtral transformers
// loads, without an edit to btx-merge's config reader or merge.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <btx/core/named_registry.hpp>
#include <btx/core/schema.hpp>
#include <btx/merge/method_registry.hpp>
#include <btx/merge/recipes.hpp>

#include "../../tools/btx-merge/merge_main.hpp"

namespace {
struct RotateOptions {
  int64_t by = 1;
};
}  // namespace

int main(int argc, char** argv) {
  namespace merge = btx::merge;
  merge::methods().add(
      {.name = "rotate",
       .describe = "test only: the BTX mix with expert j taken from source j + by",
       .options = btx::OptionSchema::of(btx::schema::Schema<RotateOptions>("rotate options")
                                            .key("by", &RotateOptions::by, "sources to skip",
                                                 btx::schema::at_least<int64_t>(0))),
       .recipe =
           [](const nlohmann::json& o, const merge::MethodContext& c) {
             auto r = merge::btx_recipe(c.num_sources, c.width, c.experts_per_token, c.shared);
             const auto by = int64_t(o.at("by").get<int64_t>() % int64_t(c.num_sources));
             std::rotate(r.experts.begin(), r.experts.begin() + by, r.experts.end());
             r.method = "rotate";
             return r;
           },
       .expert_names =
           [](const std::vector<std::string>& sources, const nlohmann::json& o) {
             auto names = sources;
             const auto by = int64_t(o.at("by").get<int64_t>() % int64_t(names.size()));
             std::rotate(names.begin(), names.begin() + by, names.end());
             return names;
           }});
  return btx::merge_tool::main(argc, argv);
}
