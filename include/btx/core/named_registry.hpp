// SPDX-License-Identifier: MIT
// A registry of named entries (merge methods, averaging policies, router inits, pipeline
// arms): each entry is one registration with its name, aliases, a one-line description and
// its own option keys, and every tool that takes such a name looks it up here, so an entry
// is one registration away from every config, listing and --help. Thread-safe; entries are
// immutable once added and never removed.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/schema.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// A registration's own option keys: `given` (a config's keys for it) read over its
// defaults into a mapping of every key, refusing unknown keys, wrong types and bad values
// naming them. Built from a typed schema (of) or empty (none).
struct OptionSchema {
  std::vector<std::string> keys;
  std::function<nlohmann::json(const nlohmann::json& given, const std::string& where)> read;
  std::string help;  // "    key (default): doc" lines

  [[nodiscard]] static OptionSchema none() {
    return {{},
            [](const nlohmann::json& given, const std::string& where) {
              if (!given.is_null() && !given.empty()) {
                throw std::invalid_argument("config: " + where + " takes no options, got " +
                                            given.dump());
              }
              return nlohmann::json::object();
            },
            ""};
  }
  template <class O>
  [[nodiscard]] static OptionSchema of(schema::Schema<O> s, O defaults = O{}) {
    OptionSchema out;
    out.keys = s.keys();
    out.help = s.help(defaults, "      ");
    out.read = [s = std::move(s), defaults](const nlohmann::json& given, const std::string& where) {
      return s.write(s.read(given.is_null() ? nlohmann::json::object() : given, defaults, where));
    };
    return out;
  }
  [[nodiscard]] bool takes(const std::string& key) const {
    for (const auto& k : keys) {
      if (k == key) return true;
    }
    return false;
  }
};

// Entries of type Spec, which has at least `std::string name, describe;`,
// `std::vector<std::string> aliases;` and `OptionSchema options;`.
template <class Spec>
class NamedRegistry {
 public:
  // `what` names an entry in messages ("merge method", "averaging").
  explicit NamedRegistry(std::string what) : what_(std::move(what)) {}

  // Adds `spec`; its name and aliases must be new.
  void add(Spec spec) {
    if (spec.name.empty()) throw std::invalid_argument("btx: a " + what_ + " needs a name");
    auto entry = std::make_shared<const Spec>(std::move(spec));
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> claimed = entry->aliases;
    claimed.push_back(entry->name);
    for (const auto& n : claimed) {
      if (find_locked(n)) {
        throw std::invalid_argument("btx: a " + what_ + " named '" + n + "' is already registered");
      }
    }
    entries_.push_back(std::move(entry));
  }

  // The entry `name` (or an alias of it) names; throws listing the registered names.
  [[nodiscard]] std::shared_ptr<const Spec> find(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto e = find_locked(name)) return e;
    throw std::invalid_argument("config: " + what_ + " '" + name + "' is not one of " +
                                schema::join(names_locked()));
  }
  [[nodiscard]] std::vector<std::shared_ptr<const Spec>> all() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_;
  }
  [[nodiscard]] std::vector<std::string> names() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return names_locked();
  }
  // The entries whose options include `key`, by name (for "applies to ... only").
  [[nodiscard]] std::vector<std::string> taking(const std::string& key) const {
    std::vector<std::string> out;
    for (const auto& e : all()) {
      if (e->options.takes(key)) out.push_back(e->name);
    }
    return out;
  }
  // "  name  description" per entry, with its options, for --help.
  [[nodiscard]] std::string help() const {
    std::string out;
    for (const auto& e : all()) {
      std::string line = "    " + e->name;
      line.resize(std::max<size_t>(line.size() + 1, 20), ' ');
      out += line + e->describe + "\n" + e->options.help;
    }
    return out;
  }
  [[nodiscard]] const std::string& what() const { return what_; }

 private:
  [[nodiscard]] std::shared_ptr<const Spec> find_locked(const std::string& name) const {
    for (const auto& e : entries_) {
      if (e->name == name) return e;
      for (const auto& a : e->aliases) {
        if (a == name) return e;
      }
    }
    return nullptr;
  }
  [[nodiscard]] std::vector<std::string> names_locked() const {
    std::vector<std::string> out;
    for (const auto& e : entries_) out.push_back(e->name);
    return out;
  }

  std::string what_;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<const Spec>> entries_;
};

BTX_NAMESPACE_END
}  // namespace btx
