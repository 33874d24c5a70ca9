// SPDX-License-Identifier: MIT
// Training checkpoints for exact resume: parameters and buffers, optimizer state (AdamW,
// Adam or SGD: btx/train/optimizer_state.hpp), random generators (torch's default CPU one
// and every btx::ExtraState module's), the loop's step, data position and loss history.
// <dir>/step-000123/ holds model/optimizer/rng.safetensors and state.json; folders appear
// atomically (io::AtomicDir) and <dir>/latest names the newest (btx/train/checkpoint_files.hpp).
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/extra_state.hpp>
#include <btx/io/atomic_dir.hpp>
#include <btx/io/detail/file_hash.hpp>
#include <btx/io/detail/stale_temporaries.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/train/checkpoint_files.hpp>
#include <btx/train/optimizer_state.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The training loop's own state (everything but tensors).
struct TrainState {
  int64_t step = 0;            // optimizer steps done = index of the next step
  int64_t next_batch = 0;      // sampler index of the next batch
  int64_t skipped_steps = 0;   // non-finite steps skipped so far
  int64_t bad_in_a_row = 0;    // consecutive non-finite steps at the end
  std::vector<double> losses;  // LM loss of every step so far (NaN: skipped)
  double seconds = 0.0;        // wall seconds of training so far, over every resume
};

namespace detail {

// Tensor maps of one checkpoint, by file name.
struct CheckpointTensors {
  std::map<std::string, torch::Tensor> model, optimizer, rng;
};

inline std::map<std::string, torch::Tensor> model_tensors(const torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model.named_parameters()) out[p.key()] = p.value().detach();
  for (const auto& b : model.named_buffers()) out[b.key()] = b.value().detach();
  return out;
}

// torch's default CPU generator and every btx::ExtraState module's state.
inline std::map<std::string, torch::Tensor> rng_tensors(const torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> out;
  out["torch.default_cpu_generator"] = generator_state(at::detail::getDefaultCPUGenerator());
  for (const auto& m : model.named_modules("", /*include_self=*/true)) {
    if (const auto* owner = dynamic_cast<const ExtraState*>(m.value().get())) {
      for (const auto& [k, v] : owner->extra_state())
        out[(m.key().empty() ? "" : m.key() + ".") + k] = v.detach().cpu();
    }
  }
  return out;
}

// state.json's fields for the loop state.
inline nlohmann::json train_state_json(const TrainState& state, const std::string& format) {
  nlohmann::json losses = nlohmann::json::array();
  for (double l : state.losses) losses.push_back(std::isfinite(l) ? nlohmann::json(l) : nullptr);
  return {{"format", format},
          {"version", 1},
          {"step", state.step},
          {"next_batch", state.next_batch},
          {"skipped_steps", state.skipped_steps},
          {"bad_in_a_row", state.bad_in_a_row},
          {"seconds", state.seconds},
          {"losses", losses}};
}

inline TrainState train_state_from_json(const nlohmann::json& info,
                                        const std::filesystem::path& folder) {
  TrainState state;
  try {
    state.step = info.at("step").get<int64_t>();
    state.next_batch = info.at("next_batch").get<int64_t>();
    state.skipped_steps = info.at("skipped_steps").get<int64_t>();
    state.bad_in_a_row = info.at("bad_in_a_row").get<int64_t>();
    state.seconds = info.value("seconds", 0.0);  // absent in checkpoints before 0.1
    for (const auto& l : info.at("losses"))
      state.losses.push_back(l.is_null() ? std::numeric_limits<double>::quiet_NaN()
                                         : l.get<double>());
  } catch (const nlohmann::json::exception& e) {
    throw CorruptCheckpoint("checkpoint " + folder.string() + ": state.json lacks a field (" +
                            e.what() + ")");
  }
  return state;
}

// The generators of rng_tensors() put back.
inline void apply_rng_tensors(const std::map<std::string, torch::Tensor>& rng_t,
                              torch::nn::Module& model) {
  set_generator_state(at::detail::getDefaultCPUGenerator(),
                      rng_t.at("torch.default_cpu_generator"));
  for (const auto& m : model.named_modules("", /*include_self=*/true)) {
    if (auto* owner = dynamic_cast<ExtraState*>(m.value().get())) {
      const std::string prefix = m.key().empty() ? "" : m.key() + ".";
      std::map<std::string, torch::Tensor> own;
      for (const auto& [k, v] : owner->extra_state()) own[k] = rng_t.at(prefix + k);
      owner->load_extra_state(own);
    }
  }
}

}  // namespace detail

// Writes `<dir>/step-NNNNNN/` for state.step, then `<dir>/latest`, then removes all but
// the `keep` newest checkpoints. Refuses (std::runtime_error, nothing written) when any
// tensor holds NaN/Inf, and (std::invalid_argument) an optimizer whose state btx does not
// know. Returns the new folder.
inline std::filesystem::path save_training_checkpoint(const std::filesystem::path& dir,
                                                      torch::nn::Module& model,
                                                      torch::optim::Optimizer& opt,
                                                      const TrainState& state, int64_t keep = 2) {
  if (keep < 1) {
    throw std::invalid_argument("save_training_checkpoint: keep must be >= 1, got " +
                                std::to_string(keep));
  }
  const auto kind = detail::checkpointable_kind(opt, "save_training_checkpoint");
  const detail::CheckpointTensors tensors{detail::model_tensors(model),
                                          optimizer_state_tensors(model, opt),
                                          detail::rng_tensors(model)};
  const std::string folder_name = detail::step_folder_name(state.step);
  for (const auto* group : {&tensors.model, &tensors.optimizer}) {
    for (const auto& [name, t] : *group) {
      if (!detail::is_finite_tensor(t)) {
        throw std::runtime_error(
            "refusing to write checkpoint " + (dir / folder_name).string() + ": tensor \"" + name +
            "\" (" + (group == &tensors.model ? "model" : "optimizer") + ") contains NaN or Inf");
      }
    }
  }
  nlohmann::json info = detail::train_state_json(state, detail::kCheckpointFormat);
  std::filesystem::create_directories(dir);
  io::AtomicDir out(dir / folder_name, /*overwrite=*/true);
  const std::map<std::string, const std::map<std::string, torch::Tensor>*> files = {
      {"model.safetensors", &tensors.model},
      {"optimizer.safetensors", &tensors.optimizer},
      {"rng.safetensors", &tensors.rng}};
  for (const auto& [file, group] : files) {
    io::save_safetensors(out.path() / file, *group,
                         group == &tensors.optimizer ? optimizer_state_metadata(kind)
                                                     : std::map<std::string, std::string>{
                                                           {"format", detail::kCheckpointFormat}});
    info["files"][file] = std::filesystem::file_size(out.path() / file);
    info["hashes"][file] = io::xxh3_128_file(out.path() / file);  // from the page cache
  }
  {
    std::ofstream json(out.path() / "state.json");
    json << info.dump(1) << "\n";
    if (!json) throw std::runtime_error("cannot write " + (out.path() / "state.json").string());
  }
  out.commit();
  detail::write_text_durably(dir / "latest", folder_name + "\n");
  // Prune only now that the new checkpoint is complete: newer folders belong to an
  // abandoned future (a resume from an older one), older ones beyond `keep` are stale.
  std::error_code ec;
  int64_t kept = 0;
  for (const auto& [step, path] : detail::checkpoint_folders(dir)) {
    if (step > state.step || (step <= state.step && ++kept > keep))
      std::filesystem::remove_all(path, ec);
  }
  (void)io::collect_stale_temporaries_in(dir, "step-");  // left by killed writers
  return out.target();
}

// Reads checkpoint `folder` into `model` and `opt` (created over model.parameters()) and
// restores the random generators; returns the loop state. Everything is validated before
// anything is changed: CorruptCheckpoint when the folder is damaged, std::runtime_error
// naming the tensor and file when it does not fit the model.
inline TrainState load_training_checkpoint(const std::filesystem::path& folder,
                                           torch::nn::Module& model, torch::optim::Optimizer& opt) {
  nlohmann::json info;
  {
    std::ifstream in(folder / "state.json");
    if (!in) throw CorruptCheckpoint("checkpoint " + folder.string() + " has no state.json");
    try {
      info = nlohmann::json::parse(in);
      if (info.at("format") != detail::kCheckpointFormat || info.at("version") != 1)
        throw CorruptCheckpoint("not a version-1 btx training checkpoint");
    } catch (const nlohmann::json::exception& e) {
      throw CorruptCheckpoint("checkpoint " + folder.string() + ": unreadable state.json (" +
                              e.what() + ")");
    }
  }
  const TrainState state = detail::train_state_from_json(info, folder);
  std::map<std::string, std::string> opt_meta;
  const auto model_t = detail::read_tensors(folder, "model.safetensors", info);
  const auto opt_t = detail::read_tensors(folder, "optimizer.safetensors", info, &opt_meta);
  const auto rng_t = detail::read_tensors(folder, "rng.safetensors", info);
  const detail::CheckpointTensors current{
      detail::model_tensors(model), {}, detail::rng_tensors(model)};

  // Validate every name and shape first.
  const auto model_file = folder / "model.safetensors", opt_file = folder / "optimizer.safetensors",
             rng_file = folder / "rng.safetensors";
  for (const auto& [name, t] : current.model) (void)detail::expect(model_t, name, t, model_file);
  for (const auto& [name, t] : model_t) {
    if (!current.model.count(name)) {
      throw std::runtime_error("checkpoint file " + model_file.string() + " has tensor \"" + name +
                               "\" that the model lacks; was it written for a different model?");
    }
  }
  check_optimizer_state_tensors(opt_t, opt_meta, model, opt, opt_file);
  for (const auto& [name, t] : current.rng)
    (void)detail::expect(rng_t, name, name == "torch.default_cpu_generator" ? torch::Tensor() : t,
                         rng_file);

  // Apply.
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : model.named_parameters()) p.value().copy_(model_t.at(p.key()));
    for (const auto& b : model.named_buffers()) b.value().copy_(model_t.at(b.key()));
  }
  load_optimizer_state_tensors(opt_t, model, opt);
  detail::apply_rng_tensors(rng_t, model);
  return state;
}

// The newest checkpoint in `dir` that loads, applied to model/opt; nullopt when `dir` has
// none. Damaged folders (and `*.tmp-*` leftovers, which are never candidates) are skipped
// with a warning; if folders exist but none loads, throws naming each one's problem.
inline std::optional<std::pair<std::filesystem::path, TrainState>> resume_training_checkpoint(
    const std::filesystem::path& dir, torch::nn::Module& model, torch::optim::Optimizer& opt) {
  std::string problems;
  const auto folders = detail::checkpoint_folders(dir);
  for (const auto& [step, path] : folders) {
    try {
      return std::make_pair(path, load_training_checkpoint(path, model, opt));
    } catch (const CorruptCheckpoint& e) {
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

BTX_NAMESPACE_END
}  // namespace btx
