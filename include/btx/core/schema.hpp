// SPDX-License-Identifier: MIT
// Option schemas: the keys of a config section declared once, each with the member it
// fills, a one-line doc and its checks, so that reading (unknown keys and wrong types
// refused, naming the key), writing (the record a run keeps), --help text and the keys a
// registry entry owns all come from that one declaration instead of code per key.
//
//   struct Budget { int64_t steps = 100; double lr = 3e-3; };
//   const auto budget = btx::schema::Schema<Budget>("budget")
//       .key("steps", &Budget::steps, "optimizer steps", btx::schema::positive<int64_t>())
//       .key("lr", &Budget::lr, "peak learning rate", btx::schema::positive<double>());
//   Budget b = budget.read(nlohmann::json::parse(R"({"steps": 20})"), {}, "expert_stage");
//
// A refusal is a std::invalid_argument: "config: expert_stage.steps must be > 0, got 0",
// "config: unknown key 'stpes' in expert_stage (known: lr, steps)".
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace schema {

// What a failed check says after "<key> " (e.g. "must be > 0"); nullopt: the value is fine.
template <class V>
using Check = std::function<std::optional<std::string>(const V&)>;

[[nodiscard]] inline std::invalid_argument error(const std::string& key, const std::string& what) {
  return std::invalid_argument("config: " + key + " " + what);
}
[[nodiscard]] inline std::string join(const std::vector<std::string>& names,
                                      const std::string& separator = ", ") {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : separator) + n;
  return out;
}
[[nodiscard]] inline std::string path(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

namespace detail {

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

// A whole number within T's range (1e3 is 1000; 2.5, 1e300, and -1 for an unsigned key
// are refused): nlohmann's get<T> would truncate or convert out of range.
template <class T>
bool integer_in_range(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return std::in_range<T>(v.get<uint64_t>());
  if (v.is_number_integer()) return std::in_range<T>(v.get<int64_t>());
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  // double(max) + 1 is 2^63 or 2^64 exactly: the first value past T's range.
  return std::isfinite(d) && std::trunc(d) == d && d >= double(std::numeric_limits<T>::min()) &&
         d < double(std::numeric_limits<T>::max()) + 1.0;
}

// One JSON value as V, or a refusal naming `key`.
template <class V>
V decode(const nlohmann::json& v, const std::string& key) {
  if constexpr (std::is_same_v<V, nlohmann::json>) {
    return v;
  } else if constexpr (std::is_same_v<V, bool>) {
    if (!v.is_boolean()) throw error(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<V>) {
    if (!v.is_number() || !integer_in_range<V>(v)) {
      throw error(key, "must be a whole number in [" +
                           std::to_string(std::numeric_limits<V>::min()) + ", " +
                           std::to_string(std::numeric_limits<V>::max()) + "], got " + v.dump());
    }
    return v.is_number_float() ? V(v.get<double>()) : v.get<V>();
  } else if constexpr (std::is_floating_point_v<V>) {
    if (!v.is_number() || !std::isfinite(v.get<double>())) {
      throw error(key, "must be a finite number, got " + v.dump());
    }
    return v.get<V>();
  } else if constexpr (std::is_same_v<V, std::string>) {
    if (!v.is_string()) throw error(key, "must be a string, got " + v.dump());
    return v.get<std::string>();
  } else if constexpr (is_optional<V>::value) {
    if (v.is_null()) return std::nullopt;
    return decode<typename V::value_type>(v, key);
  } else if constexpr (is_vector<V>::value) {
    if (!v.is_array()) throw error(key, "must be a list, got " + v.dump());
    V out;
    for (size_t i = 0; i < v.size(); ++i) {
      out.push_back(decode<typename V::value_type>(v[i], key + "[" + std::to_string(i) + "]"));
    }
    return out;
  } else {
    static_assert(sizeof(V) == 0, "btx::schema: no JSON reading for this member type");
  }
}

// A number as a message shows it: whole doubles without a fraction ("[0, 1)", not "[0.0, 1.0)").
template <class V>
std::string show(const V& v) {
  if constexpr (std::is_floating_point_v<V>) {
    if (std::isfinite(v) && std::trunc(v) == v && std::fabs(v) < 1e15) {
      return std::to_string(static_cast<long long>(v));
    }
  }
  return nlohmann::json(v).dump();
}

template <class V>
nlohmann::json encode(const V& v) {
  if constexpr (is_optional<V>::value) {
    return v ? encode(*v) : nlohmann::json(nullptr);
  } else if constexpr (is_vector<V>::value) {
    auto out = nlohmann::json::array();
    for (const auto& x : v) out.push_back(encode(x));
    return out;
  } else {
    return nlohmann::json(v);
  }
}

}  // namespace detail

// ------------------------------------------------------------------ checks
template <class V>
Check<V> positive() {
  return [](const V& v) -> std::optional<std::string> {
    if (v > V(0)) return std::nullopt;
    return "must be > 0, got " + detail::show(v);
  };
}
template <class V>
Check<V> at_least(V low) {
  return [low](const V& v) -> std::optional<std::string> {
    if (v >= low) return std::nullopt;
    return "must be >= " + detail::show(low) + ", got " + detail::show(v);
  };
}
// In [low, high] (or [low, high) when !include_high).
template <class V>
Check<V> in_range(V low, V high, bool include_high = true) {
  return [=](const V& v) -> std::optional<std::string> {
    if (v >= low && (include_high ? v <= high : v < high)) return std::nullopt;
    return "must be in [" + detail::show(low) + ", " + detail::show(high) +
           (include_high ? "]" : ")") + ", got " + detail::show(v);
  };
}
// In (low, high].
template <class V>
Check<V> above_at_most(V low, V high) {
  return [=](const V& v) -> std::optional<std::string> {
    if (v > low && v <= high) return std::nullopt;
    return "must be in (" + detail::show(low) + ", " + detail::show(high) + "], got " +
           detail::show(v);
  };
}
inline Check<std::string> one_of(std::vector<std::string> allowed) {
  return [allowed = std::move(allowed)](const std::string& v) -> std::optional<std::string> {
    for (const auto& a : allowed) {
      if (a == v) return std::nullopt;
    }
    return "'" + v + "' is not one of " + join(allowed);
  };
}
// A choice whose valid names are only known when it is read (a registry's names).
inline Check<std::string> one_of(std::function<std::vector<std::string>()> allowed) {
  return [allowed = std::move(allowed)](const std::string& v) -> std::optional<std::string> {
    return one_of(allowed())(v);
  };
}
template <class V>
Check<V> non_empty() {
  return [](const V& v) -> std::optional<std::string> {
    if (!v.empty()) return std::nullopt;
    return std::string("must not be empty");
  };
}

// ------------------------------------------------------------------ the schema
template <class T>
class Schema {
 public:
  // `name`: what the section is ("the top level", "expert_stage"), said with unknown keys.
  explicit Schema(std::string name = "the top level") : name_(std::move(name)) {}

  // A key filling `member`. Checks run on every value read for it.
  template <class V>
  Schema& key(std::string name, V T::*member, std::string doc, Check<V> check = {}) {
    Field f;
    f.name = name;
    f.doc = std::move(doc);
    f.read = [member, check, name](T& t, const nlohmann::json& v, const std::string& where) {
      const std::string at = path(where, name);
      V value = detail::decode<V>(v, at);
      if (check) {
        if (auto why = check(value)) throw error(at, *why);
      }
      t.*member = std::move(value);
    };
    f.write = [member](const T& t) { return detail::encode(t.*member); };
    fields_.push_back(std::move(f));
    return *this;
  }

  // A key whose value is a mapping read by `sub` over the member's current value (keys the
  // mapping leaves out keep it), e.g. `expert_stage: {lr: 1e-3}`.
  template <class S>
  Schema& section(std::string name, S T::*member, const Schema<S>& sub, std::string doc) {
    Field f;
    f.name = name;
    f.doc = std::move(doc);
    f.read = [member, sub, name](T& t, const nlohmann::json& v, const std::string& where) {
      t.*member = sub.read(v, t.*member, path(where, name));
    };
    f.write = [member, sub](const T& t) { return sub.write(t.*member); };
    f.sub_keys = sub.keys();
    fields_.push_back(std::move(f));
    return *this;
  }

  // A key whose value is a list of mappings, each read by `sub` over `defaults(t)` (the
  // list replaces the member's), e.g. `domains: [{name: math, ...}]`.
  template <class S>
  Schema& list(std::string name, std::vector<S> T::*member, const Schema<S>& sub, std::string doc,
               std::type_identity_t<std::function<S(const T&)>> defaults = {}) {
    Field f;
    f.name = name;
    f.doc = std::move(doc);
    f.read = [member, sub, name, defaults](T& t, const nlohmann::json& v,
                                           const std::string& where) {
      const std::string at = path(where, name);
      if (!v.is_array()) throw error(at, "must be a list, got " + v.dump().substr(0, 200));
      const S base = defaults ? defaults(t) : S{};
      std::vector<S> out;
      for (size_t i = 0; i < v.size(); ++i) {
        out.push_back(sub.read(v[i], base, at + "[" + std::to_string(i) + "]"));
      }
      t.*member = std::move(out);
    };
    f.write = [member, sub](const T& t) {
      auto out = nlohmann::json::array();
      for (const auto& x : t.*member) out.push_back(sub.write(x));
      return out;
    };
    f.sub_keys = sub.keys();
    fields_.push_back(std::move(f));
    return *this;
  }

  // A key read and written by functions of the whole object (a value with a grammar of its
  // own: a size with units, an enum spelled as a name).
  Schema& custom(std::string name, std::string doc,
                 std::function<void(T&, const nlohmann::json&, const std::string& key)> read,
                 std::function<nlohmann::json(const T&)> write) {
    Field f;
    f.name = std::move(name);
    f.doc = std::move(doc);
    f.read = [read = std::move(read), n = f.name](T& t, const nlohmann::json& v,
                                                  const std::string& where) {
      read(t, v, path(where, n));
    };
    f.write = std::move(write);
    fields_.push_back(std::move(f));
    return *this;
  }

  // A check across keys, run after every key of a mapping is read; `given` is the mapping
  // as written, so a rule can tell a key left to its default from one set to that value.
  Schema& rule(
      std::function<void(const T&, const nlohmann::json& given, const std::string& where)> check) {
    rules_.push_back(std::move(check));
    return *this;
  }

  // `j` (a mapping) over `base`: every key must be known, every value of the right type
  // and within its checks; then the rules run. Keys absent from `j` keep base's values.
  [[nodiscard]] T read(const nlohmann::json& j, T base = T{}, const std::string& where = "") const {
    const std::string section = where.empty() ? name_ : where;
    if (!j.is_object()) {
      throw std::invalid_argument("config: '" + section + "' must be a mapping, got " +
                                  j.dump().substr(0, 200));
    }
    for (const auto& [k, v] : j.items()) {
      const Field* f = find(k);
      if (!f) {
        throw std::invalid_argument("config: unknown key '" + k + "' in " + section +
                                    " (known: " + join(keys()) + ")");
      }
      f->read(base, v, where);
    }
    for (const auto& r : rules_) r(base, j, where);
    return base;
  }

  // Every key of `t`, as read() takes it back.
  [[nodiscard]] nlohmann::json write(const T& t) const {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& f : fields_) out[f.name] = f.write(t);
    return out;
  }

  [[nodiscard]] std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const auto& f : fields_) out.push_back(f.name);
    return out;
  }
  [[nodiscard]] bool has(const std::string& key) const { return find(key) != nullptr; }

  // "  key (default): doc" per key, defaults from `defaults`; nested keys listed.
  [[nodiscard]] std::string help(const T& defaults = T{}, const std::string& indent = "  ") const {
    std::string out;
    for (const auto& f : fields_) {
      std::string shown = f.write(defaults).dump();
      if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
      out += indent + f.name + " (" + shown + "): " + f.doc;
      if (!f.sub_keys.empty()) out += " {" + join(f.sub_keys) + "}";
      out += "\n";
    }
    return out;
  }

 private:
  struct Field {
    std::string name, doc;
    std::function<void(T&, const nlohmann::json&, const std::string& where)> read;
    std::function<nlohmann::json(const T&)> write;
    std::vector<std::string> sub_keys;
  };
  [[nodiscard]] const Field* find(const std::string& key) const {
    for (const auto& f : fields_) {
      if (f.name == key) return &f;
    }
    return nullptr;
  }

  std::string name_;
  std::vector<Field> fields_;
  std::vector<std::function<void(const T&, const nlohmann::json&, const std::string&)>> rules_;
};

}  // namespace schema
BTX_NAMESPACE_END
}  // namespace btx
