// SPDX-License-Identifier: MIT
// Training checkpoints of sharded data parallelism: every rank writes its slice of each
// flat unit (parameters and optimizer state) to shard-RRRRR-of-NNNNN.safetensors, rank 0
// the replicated rest (buffers, frozen parameters), the generators and state.json (the
// unit layout, each file's size and XXH3-128). The folder appears whole: the shards are
// written into <dir>/.staging-step-NNNNNN/, rank 0 renames it to step-NNNNNN after every
// rank is done, then updates <dir>/latest. A unit's slices concatenate to the same flat
// vector on any world size, so a resume on M ranks reads every shard and keeps its own
// slice of M (resharding); on the same world size it continues bit for bit. Every rank
// reads every file, so all ranks agree on which checkpoint loads: a damaged shard is
// named and its checkpoint skipped for the one before, as unsharded checkpoints are.
// Needs a folder every rank sees (as unsharded data parallelism does).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/io/atomic_dir.hpp>
#include <btx/io/detail/file_hash.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/detail/flat_units.hpp>
#include <btx/train/checkpoint.hpp>
#include <btx/train/checkpoint_files.hpp>
#include <btx/train/optimizer_state.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {
namespace detail {

inline constexpr const char* kShardedCheckpointFormat = "btx-sharded-train-checkpoint";

inline std::string shard_file_name(int64_t rank, int64_t ranks) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05lld-of-%05lld.safetensors", static_cast<long long>(rank),
                static_cast<long long>(ranks));
  return buf;
}

// The tensor fields of one parameter's optimizer state (step is kept per parameter).
inline std::vector<std::string> sharded_state_fields(OptimizerStateKind kind) {
  if (kind == OptimizerStateKind::sgd) return {"momentum_buffer"};
  return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
}

// The state of one piece as "p.<field>" tensors (btx/train/optimizer_state.hpp's naming).
inline std::map<std::string, torch::Tensor> piece_state(torch::optim::Optimizer& opt,
                                                        const torch::Tensor& piece,
                                                        OptimizerStateKind kind) {
  std::map<std::string, torch::Tensor> out;
  auto it = opt.state().find(piece.unsafeGetTensorImpl());
  if (it == opt.state().end()) return out;
  const std::string context = "sharded checkpoint";
  if (kind == OptimizerStateKind::adamw) {
    btx::detail::put_adam_state(
        btx::detail::state_as<torch::optim::AdamWParamState>(*it->second, opt, context), "p", out);
  } else if (kind == OptimizerStateKind::adam) {
    btx::detail::put_adam_state(
        btx::detail::state_as<torch::optim::AdamParamState>(*it->second, opt, context), "p", out);
  } else {
    const auto& s = btx::detail::state_as<torch::optim::SGDParamState>(*it->second, opt, context);
    if (s.momentum_buffer().defined()) out["p.momentum_buffer"] = s.momentum_buffer();
  }
  return out;
}

// The layout a resume must find again: each unit's parameters, in order, with their sizes.
inline nlohmann::json unit_layout(const std::vector<FlatUnit>& units) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& u : units) {
    nlohmann::json params = nlohmann::json::array();
    for (size_t i = 0; i < u.params.size(); ++i)
      params.push_back({u.names[i], u.params[i].numel()});
    out.push_back({{"name", u.name}, {"numel", u.numel}, {"params", params}});
  }
  return out;
}

// This rank's tensors: per unit k, "unitK.param" [chunk] and each state field [chunk] laid
// out as the parameters are, "unitK.state" [F] (1: the parameter has state, 0: none, -1:
// no piece of it here) and "unitK.step" [F].
inline std::map<std::string, torch::Tensor> shard_tensors(std::vector<FlatUnit>& units,
                                                          torch::optim::Optimizer& opt,
                                                          OptimizerStateKind kind) {
  std::map<std::string, torch::Tensor> out;
  for (size_t k = 0; k < units.size(); ++k) {
    FlatUnit& u = units[k];
    const std::string prefix = "unit" + std::to_string(k) + ".";
    const int64_t F = int64_t(u.params.size());
    out[prefix + "param"] = u.shard.detach();
    auto has = torch::full({F}, int64_t(-1), torch::kInt64);
    auto step = torch::zeros({F}, torch::kInt64);
    std::map<std::string, torch::Tensor> fields;
    for (size_t j = 0; j < u.pieces.size(); ++j) {
      const auto state = piece_state(opt, u.pieces[j], kind);
      const size_t i = u.piece_param[j];
      has.data_ptr<int64_t>()[i] = state.empty() ? 0 : 1;
      if (state.count("p.step")) step.data_ptr<int64_t>()[i] = state.at("p.step").item<int64_t>();
      const int64_t at = u.offsets[i] + u.piece_from[j] - u.begin;  // in the shard
      for (const auto& f : sharded_state_fields(kind)) {
        if (!state.count("p." + f)) continue;
        auto& flat = fields[f];
        if (!flat.defined()) flat = torch::zeros({u.chunk}, state.at("p." + f).options());
        flat.narrow(0, at, u.pieces[j].numel()).copy_(state.at("p." + f).reshape({-1}));
      }
    }
    for (const auto& f : sharded_state_fields(kind)) {
      out[prefix + f + ".present"] = torch::tensor({int64_t(fields.count(f))}, torch::kInt64);
      out[prefix + f] = fields.count(f) ? fields[f] : torch::zeros({u.chunk}, u.shard.options());
    }
    out[prefix + "state"] = has;
    out[prefix + "step"] = step;
  }
  return out;
}

// Writes `tensors` to `file` through a temporary name, so no half-written file exists.
inline void write_shard_file(const std::filesystem::path& file,
                             const std::map<std::string, torch::Tensor>& tensors) {
  const auto tmp = file.string() + ".tmp";
  io::save_safetensors(tmp, tensors, {{"format", kShardedCheckpointFormat}});
  std::filesystem::rename(tmp, file);
}

}  // namespace detail

// Writes checkpoint step-NNNNNN of `state` into `dir` (a collective: every rank of `dp`).
inline std::filesystem::path save_sharded_checkpoint(Communicator& dp,
                                                     const std::filesystem::path& dir,
                                                     torch::nn::Module& model,
                                                     std::vector<detail::FlatUnit>& units,
                                                     torch::optim::Optimizer& opt,
                                                     const TrainState& state, int64_t keep) {
  namespace fs = std::filesystem;
  const auto kind = btx::detail::checkpointable_kind(opt, "sharded checkpoint");
  const std::string folder = btx::detail::step_folder_name(state.step);
  const fs::path staging = dir / (".staging-" + folder), target = dir / folder;
  const auto mine = detail::shard_tensors(units, opt, kind);
  std::string bad;
  for (const auto& [name, t] : mine) {
    if (bad.empty() && !btx::detail::is_finite_tensor(t)) bad = name;
  }
  const auto bad_ranks = dp.all_gather_int(bad.empty() ? 0 : 1, "checkpoint finiteness");
  for (size_t r = 0; r < bad_ranks.size(); ++r) {
    if (bad_ranks[r] != 0) {
      throw std::runtime_error("refusing to write checkpoint " + target.string() + ": rank " +
                               std::to_string(r) + "'s shard holds NaN or Inf" +
                               (bad.empty() ? "" : " (here: \"" + bad + "\")"));
    }
  }
  if (dp.is_root()) {
    fs::remove_all(staging);
    fs::create_directories(staging);
  }
  dp.barrier("checkpoint staging folder");
  detail::write_shard_file(staging / detail::shard_file_name(dp.rank(), dp.size()), mine);
  if (dp.is_root()) {
    // Everything outside the units: buffers and parameters no unit holds (frozen ones).
    std::map<std::string, torch::Tensor> replicated;
    std::set<const void*> in_units;
    for (const auto& u : units) {
      for (const auto& p : u.params) in_units.insert(p.unsafeGetTensorImpl());
    }
    for (const auto& p : model.named_parameters()) {
      if (!in_units.count(p.value().unsafeGetTensorImpl()))
        replicated[p.key()] = p.value().detach();
    }
    for (const auto& b : model.named_buffers()) replicated[b.key()] = b.value().detach();
    detail::write_shard_file(staging / "replicated.safetensors", replicated);
    detail::write_shard_file(staging / "rng.safetensors", btx::detail::rng_tensors(model));
  }
  dp.barrier("checkpoint shards written");
  if (dp.is_root()) {
    nlohmann::json info = btx::detail::train_state_json(state, detail::kShardedCheckpointFormat);
    info["world_size"] = dp.size();
    info["optimizer"] = to_string(kind);
    info["units"] = detail::unit_layout(units);
    for (const auto& entry : fs::directory_iterator(staging)) {
      const std::string name = entry.path().filename().string();
      info["files"][name] = fs::file_size(entry.path());
      info["hashes"][name] = io::xxh3_128_file(entry.path());
    }
    {
      std::ofstream json(staging / "state.json");
      json << info.dump(1) << "\n";
      if (!json) throw std::runtime_error("cannot write " + (staging / "state.json").string());
    }
    io::detail::fsync_path(staging);
    fs::remove_all(target);
    fs::rename(staging, target);
    io::detail::fsync_path(dir);
    btx::detail::write_text_durably(dir / "latest", folder + "\n");
    std::error_code ec;
    int64_t kept = 0;
    for (const auto& [step, path] : btx::detail::checkpoint_folders(dir)) {
      if (step > state.step || ++kept > keep) fs::remove_all(path, ec);
    }
  }
  dp.barrier("checkpoint committed");
  return target;
}

namespace detail {

// Checkpoint `folder` into this rank's units and optimizer (every rank reads every file).
inline TrainState load_sharded_checkpoint(Communicator& dp, const std::filesystem::path& folder,
                                          torch::nn::Module& model, std::vector<FlatUnit>& units,
                                          torch::optim::Optimizer& opt) {
  nlohmann::json info;
  {
    std::ifstream in(folder / "state.json");
    if (!in) throw CorruptCheckpoint("checkpoint " + folder.string() + " has no state.json");
    try {
      info = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw CorruptCheckpoint("checkpoint " + folder.string() + ": unreadable state.json (" +
                              e.what() + ")");
    }
  }
  if (info.value("format", "") == btx::detail::kCheckpointFormat) {
    throw std::runtime_error("checkpoint " + folder.string() +
                             " was written without sharding; resume it with sharding: none");
  }
  if (info.value("format", "") != kShardedCheckpointFormat || info.value("version", 0) != 1)
    throw CorruptCheckpoint("checkpoint " + folder.string() + " is not a btx sharded checkpoint");
  const auto kind = btx::detail::checkpointable_kind(opt, "sharded checkpoint");
  if (info.value("optimizer", "") != to_string(kind)) {
    throw std::runtime_error("checkpoint " + folder.string() + " holds " +
                             info.value("optimizer", "?") + " state, this run uses " +
                             to_string(kind));
  }
  if (info.value("units", nlohmann::json()) != unit_layout(units)) {
    throw std::runtime_error("checkpoint " + folder.string() +
                             ": its parameters (units in state.json) are not this model's; was "
                             "it written for a different model?");
  }
  const TrainState state = btx::detail::train_state_from_json(info, folder);
  const int64_t old_ranks = info.value("world_size", int64_t(0));
  if (old_ranks < 1) throw CorruptCheckpoint("checkpoint " + folder.string() + ": no world_size");
  std::vector<std::map<std::string, torch::Tensor>> shards;
  for (int64_t r = 0; r < old_ranks; ++r)
    shards.push_back(btx::detail::read_tensors(folder, shard_file_name(r, old_ranks), info));
  const auto replicated = btx::detail::read_tensors(folder, "replicated.safetensors", info);
  const auto rng = btx::detail::read_tensors(folder, "rng.safetensors", info);

  // Validate before changing anything.
  for (size_t k = 0; k < units.size(); ++k) {
    const std::string prefix = "unit" + std::to_string(k) + ".";
    for (int64_t r = 0; r < old_ranks; ++r) {
      for (const std::string f : {"param", "state", "step"}) {
        if (!shards[size_t(r)].count(prefix + f)) {
          throw CorruptCheckpoint("checkpoint file " +
                                  (folder / shard_file_name(r, old_ranks)).string() + " lacks \"" +
                                  prefix + f + "\"");
        }
      }
    }
  }
  torch::NoGradGuard no_grad;
  const int64_t N = dp.size(), lo_rank = dp.rank();
  for (size_t k = 0; k < units.size(); ++k) {
    FlatUnit& u = units[k];
    const std::string prefix = "unit" + std::to_string(k) + ".";
    // The unit's whole flat vector of `field`, on this world size's padding.
    const auto whole = [&](const std::string& field) {
      std::vector<torch::Tensor> parts;
      for (const auto& s : shards) parts.push_back(s.at(prefix + field));
      auto flat = torch::zeros({N * u.chunk}, parts[0].options());
      flat.narrow(0, 0, u.numel).copy_(torch::cat(parts).narrow(0, 0, u.numel));
      return flat;
    };
    const auto params = whole("param").to(u.shard.options());
    u.shard.copy_(params.narrow(0, lo_rank * u.chunk, u.chunk));
    if (u.resident) u.flat.copy_(params);
    const int64_t F = int64_t(u.params.size());
    std::vector<int64_t> has(size_t(F), -1), step(size_t(F), 0);
    for (const auto& s : shards) {
      for (int64_t i = 0; i < F; ++i) {
        has[size_t(i)] = std::max(has[size_t(i)], s.at(prefix + "state")[i].item<int64_t>());
        step[size_t(i)] = std::max(step[size_t(i)], s.at(prefix + "step")[i].item<int64_t>());
      }
    }
    std::map<std::string, torch::Tensor> fields;
    for (const auto& f : sharded_state_fields(kind)) {
      bool present = false;
      for (const auto& s : shards) {
        present |=
            s.count(prefix + f + ".present") && s.at(prefix + f + ".present").item<int64_t>();
      }
      if (present) fields[f] = whole(f);
    }
    for (size_t j = 0; j < u.pieces.size(); ++j) {
      const size_t i = u.piece_param[j];
      opt.state().erase(u.pieces[j].unsafeGetTensorImpl());
      if (has[i] != 1) continue;
      std::map<std::string, torch::Tensor> t;
      const int64_t at = u.offsets[i] + u.piece_from[j], n = u.pieces[j].numel();
      for (const auto& [f, flat] : fields) t["p." + f] = flat.narrow(0, at, n).clone();
      t["p.step"] = torch::tensor({step[i]}, torch::kInt64);
      const auto dev = u.pieces[j].device();
      if (kind == OptimizerStateKind::adamw) {
        opt.state()[u.pieces[j].unsafeGetTensorImpl()] =
            btx::detail::take_adam_state<torch::optim::AdamWParamState>(t, "p", dev);
      } else if (kind == OptimizerStateKind::adam) {
        opt.state()[u.pieces[j].unsafeGetTensorImpl()] =
            btx::detail::take_adam_state<torch::optim::AdamParamState>(t, "p", dev);
      } else {
        auto s = std::make_unique<torch::optim::SGDParamState>();
        if (t.count("p.momentum_buffer")) s->momentum_buffer(t.at("p.momentum_buffer").to(dev));
        opt.state()[u.pieces[j].unsafeGetTensorImpl()] = std::move(s);
      }
    }
  }
  for (const auto& p : model.named_parameters()) {
    if (replicated.count(p.key())) p.value().copy_(replicated.at(p.key()));
  }
  for (const auto& b : model.named_buffers()) {
    if (replicated.count(b.key())) b.value().copy_(replicated.at(b.key()));
  }
  btx::detail::apply_rng_tensors(rng, model);
  return state;
}

}  // namespace detail

// The newest sharded checkpoint in `dir` that loads (a collective); nullopt when none.
inline std::optional<std::pair<std::filesystem::path, TrainState>> resume_sharded_checkpoint(
    Communicator& dp, const std::filesystem::path& dir, torch::nn::Module& model,
    std::vector<detail::FlatUnit>& units, torch::optim::Optimizer& opt) {
  std::string problems;
  const auto folders = btx::detail::checkpoint_folders(dir);
  for (const auto& [step, path] : folders) {
    try {
      return std::make_pair(path, detail::load_sharded_checkpoint(dp, path, model, units, opt));
    } catch (const CorruptCheckpoint& e) {
      if (dp.is_root())
        std::fprintf(stderr, "btx: skipping damaged checkpoint %s: %s\n", path.c_str(), e.what());
      problems += "\n  " + path.string() + ": " + e.what();
    }
  }
  if (!folders.empty()) {
    throw std::runtime_error("no checkpoint in " + dir.string() + " can be loaded:" + problems +
                             "\nremove the folder to train from the start");
  }
  return std::nullopt;
}

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
