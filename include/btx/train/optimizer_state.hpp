// SPDX-License-Identifier: MIT
// Optimizer state <-> named tensors, for training checkpoints (optimizer.safetensors).
// Each model parameter's state is stored as "<param>.<field>": AdamW and Adam as exp_avg,
// exp_avg_sq, max_exp_avg_sq (amsgrad only) and step; SGD as momentum_buffer. An AdamW
// file carries no optimizer tag (the format of every btx checkpoint so far); Adam and SGD
// files name theirs, so a checkpoint never resumes under a different optimizer. Any other
// optimizer is refused by name rather than saved without its state.
#pragma once

#include <torch/torch.h>

#include <c10/util/Type.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include <btx/train/checkpoint_files.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The optimizers whose state btx checkpoints hold.
enum class OptimizerStateKind { adamw, adam, sgd };

inline const char* to_string(OptimizerStateKind kind) {
  switch (kind) {
    case OptimizerStateKind::adamw:
      return "adamw";
    case OptimizerStateKind::adam:
      return "adam";
    case OptimizerStateKind::sgd:
      return "sgd";
  }
  return "?";
}

// The optimizer's C++ type, demangled (e.g. "torch::optim::AdamW").
inline std::string optimizer_type_name(const torch::optim::Optimizer& opt) {
  return c10::demangle(typeid(opt).name());
}

// Which state `opt` keeps, or nullopt for an optimizer btx checkpoints do not know.
inline std::optional<OptimizerStateKind> optimizer_state_kind(const torch::optim::Optimizer& opt) {
  if (dynamic_cast<const torch::optim::AdamW*>(&opt)) return OptimizerStateKind::adamw;
  if (dynamic_cast<const torch::optim::Adam*>(&opt)) return OptimizerStateKind::adam;
  if (dynamic_cast<const torch::optim::SGD*>(&opt)) return OptimizerStateKind::sgd;
  return std::nullopt;
}

namespace detail {

[[noreturn]] inline void unknown_optimizer_state(const std::string& context,
                                                 const std::string& optimizer,
                                                 const std::string& state_type) {
  throw std::invalid_argument(
      context + ": btx training checkpoints hold the state of torch::optim::AdamW, Adam and " +
      "SGD; optimizer " + optimizer +
      (state_type.empty() ? "" : " (parameter state " + state_type + ")") +
      " is none of them, so its state cannot be checkpointed for an exact resume. Train it "
      "without checkpoint_dir, or teach btx/train/optimizer_state.hpp its state");
}

// The kind of `opt`, or an error naming its type and its state's type.
inline OptimizerStateKind checkpointable_kind(torch::optim::Optimizer& opt,
                                              const std::string& context) {
  if (auto kind = optimizer_state_kind(opt)) return *kind;
  std::string state_type;
  if (!opt.state().empty()) {
    const torch::optim::OptimizerParamState& first = *opt.state().begin()->second;
    state_type = c10::demangle(typeid(first).name());
  }
  unknown_optimizer_state(context, optimizer_type_name(opt), state_type);
}

// The fields stored per parameter; the first is present whenever the parameter has state.
inline std::vector<std::string> state_fields(OptimizerStateKind kind) {
  if (kind == OptimizerStateKind::sgd) return {"momentum_buffer"};
  return {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
}

template <class State>
void put_adam_state(const State& s, const std::string& p,
                    std::map<std::string, torch::Tensor>& out) {
  out[p + ".exp_avg"] = s.exp_avg();
  out[p + ".exp_avg_sq"] = s.exp_avg_sq();
  if (s.max_exp_avg_sq().defined()) out[p + ".max_exp_avg_sq"] = s.max_exp_avg_sq();
  out[p + ".step"] = torch::tensor({s.step()}, torch::kInt64);
}

template <class State>
std::unique_ptr<State> take_adam_state(const std::map<std::string, torch::Tensor>& t,
                                       const std::string& p, const torch::Device& dev) {
  auto s = std::make_unique<State>();
  s->step(t.at(p + ".step").item<int64_t>());
  s->exp_avg(t.at(p + ".exp_avg").to(dev));
  s->exp_avg_sq(t.at(p + ".exp_avg_sq").to(dev));
  if (t.count(p + ".max_exp_avg_sq")) s->max_exp_avg_sq(t.at(p + ".max_exp_avg_sq").to(dev));
  return s;
}

template <class State>
const State& state_as(const torch::optim::OptimizerParamState& s, torch::optim::Optimizer& opt,
                      const std::string& context) {
  const auto* typed = dynamic_cast<const State*>(&s);
  if (!typed)
    unknown_optimizer_state(context, optimizer_type_name(opt), c10::demangle(typeid(s).name()));
  return *typed;
}

}  // namespace detail

// The safetensors metadata of optimizer.safetensors for `kind` (AdamW: no tag).
inline std::map<std::string, std::string> optimizer_state_metadata(OptimizerStateKind kind) {
  std::map<std::string, std::string> meta = {{"format", detail::kCheckpointFormat}};
  if (kind != OptimizerStateKind::adamw) meta["optimizer"] = to_string(kind);
  return meta;
}

// The state `opt` keeps for each of `model`'s parameters, as "<param>.<field>" tensors.
// Throws std::invalid_argument naming the optimizer and its state type when btx does not
// know them.
inline std::map<std::string, torch::Tensor> optimizer_state_tensors(
    const torch::nn::Module& model, torch::optim::Optimizer& opt,
    const std::string& context = "save_training_checkpoint") {
  const auto kind = detail::checkpointable_kind(opt, context);
  std::map<std::string, torch::Tensor> out;
  auto& state = opt.state();
  for (const auto& p : model.named_parameters()) {
    auto it = state.find(p.value().unsafeGetTensorImpl());
    if (it == state.end()) continue;
    const auto& s = *it->second;
    switch (kind) {
      case OptimizerStateKind::adamw:
        detail::put_adam_state(detail::state_as<torch::optim::AdamWParamState>(s, opt, context),
                               p.key(), out);
        break;
      case OptimizerStateKind::adam:
        detail::put_adam_state(detail::state_as<torch::optim::AdamParamState>(s, opt, context),
                               p.key(), out);
        break;
      case OptimizerStateKind::sgd: {
        const auto& sgd = detail::state_as<torch::optim::SGDParamState>(s, opt, context);
        if (sgd.momentum_buffer().defined())
          out[p.key() + ".momentum_buffer"] = sgd.momentum_buffer();
        break;
      }
    }
  }
  return out;
}

// Checks optimizer state read from `file` (tensors and metadata) against `model` and `opt`
// without changing either: the optimizer that wrote it, every name, shape and dtype.
inline void check_optimizer_state_tensors(const std::map<std::string, torch::Tensor>& tensors,
                                          const std::map<std::string, std::string>& metadata,
                                          const torch::nn::Module& model,
                                          torch::optim::Optimizer& opt,
                                          const std::filesystem::path& file) {
  const auto kind = detail::checkpointable_kind(opt, "load_training_checkpoint");
  const auto tag = metadata.find("optimizer");
  const std::string written = tag == metadata.end() ? "adamw" : tag->second;
  if (written != to_string(kind)) {
    throw std::runtime_error("checkpoint file " + file.string() + " holds " + written +
                             " optimizer state, but this run's optimizer is " +
                             optimizer_type_name(opt) +
                             "; resume with the optimizer that wrote it, or remove the "
                             "checkpoint folder to train from the start");
  }
  const auto fields = detail::state_fields(kind);
  std::set<std::string> known;
  for (const auto& p : model.named_parameters()) {
    for (const auto& f : fields) known.insert(p.key() + "." + f);
    if (!tensors.count(p.key() + "." + fields.front())) continue;  // no state yet
    for (const auto& f : fields) {
      if (f == "max_exp_avg_sq" && !tensors.count(p.key() + "." + f)) continue;  // amsgrad only
      const auto like = f == "step" ? torch::empty({1}, torch::kInt64) : p.value();
      (void)detail::expect(tensors, p.key() + "." + f, like, file);
    }
  }
  for (const auto& [name, t] : tensors) {
    if (!known.count(name)) {
      throw std::runtime_error("checkpoint file " + file.string() + " has tensor \"" + name +
                               "\", which is not " + to_string(kind) +
                               " state of a model parameter; was it written for a different "
                               "model?");
    }
  }
}

// Replaces `opt`'s state for every model parameter by `tensors` (already checked); a
// parameter without stored state starts without optimizer state.
inline void load_optimizer_state_tensors(const std::map<std::string, torch::Tensor>& tensors,
                                         const torch::nn::Module& model,
                                         torch::optim::Optimizer& opt) {
  const auto kind = detail::checkpointable_kind(opt, "load_training_checkpoint");
  const auto marker = detail::state_fields(kind).front();
  auto& state = opt.state();
  for (const auto& p : model.named_parameters()) {
    void* key = p.value().unsafeGetTensorImpl();
    state.erase(key);
    const std::string& name = p.key();
    if (!tensors.count(name + "." + marker)) continue;
    const auto dev = p.value().device();
    switch (kind) {
      case OptimizerStateKind::adamw:
        state[key] = detail::take_adam_state<torch::optim::AdamWParamState>(tensors, name, dev);
        break;
      case OptimizerStateKind::adam:
        state[key] = detail::take_adam_state<torch::optim::AdamParamState>(tensors, name, dev);
        break;
      case OptimizerStateKind::sgd: {
        auto s = std::make_unique<torch::optim::SGDParamState>();
        s->momentum_buffer(tensors.at(name + ".momentum_buffer").to(dev));
        state[key] = std::move(s);
        break;
      }
    }
  }
}

BTX_NAMESPACE_END
}  // namespace btx
