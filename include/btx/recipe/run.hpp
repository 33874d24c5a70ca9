// SPDX-License-Identifier: MIT
// The run folder of a BTX recipe and its stage records. Every stage owns <run>/<stage>/
// (its `model/` checkpoint, `metrics.jsonl`, training `checkpoints/`, a worker's
// `log.txt`) and writes `stage.json` last, through an atomic rename: a stage is finished
// exactly when its stage.json exists, so a rerun skips it, and a killed stage never looks
// finished (it resumes from its checkpoints instead). The training settings every stage
// shares (batch size, logging, checkpoint interval) travel with the run.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include <btx/io/detail/file_hash.hpp>
#include <btx/io/detail/folder_lock.hpp>
#include <btx/io/finite_check.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// Where a stage stands: never started, interrupted with training checkpoints to resume
// from, or finished (skipped by a rerun).
enum class StageState { fresh, resumable, done };

inline const char* to_string(StageState s) {
  switch (s) {
    case StageState::fresh:
      return "fresh";
    case StageState::resumable:
      return "resumable";
    case StageState::done:
      return "done";
  }
  return "?";
}

// Shared by every training stage of a run.
struct TrainSettings {
  int64_t batch_size = 8;        // sequences per optimizer step
  int64_t log_every = 10;        // progress and metrics.jsonl interval (steps)
  int64_t checkpoint_every = 0;  // training checkpoints every N steps (0: none); reruns resume
};

class Run {
 public:
  // `tag` prefixes this run's log lines ("[tag] expert-math already finished, skipped").
  explicit Run(std::filesystem::path dir, TrainSettings train = {}, std::string tag = "recipe")
      : dir_(std::move(dir)), train_(train), tag_(std::move(tag)) {
    if (dir_.empty()) throw std::invalid_argument("btx::recipe::Run: empty run folder");
    if (train_.batch_size <= 0 || train_.log_every <= 0 || train_.checkpoint_every < 0) {
      throw std::invalid_argument(
          "btx::recipe::Run: TrainSettings need batch_size > 0, log_every > 0 and "
          "checkpoint_every >= 0; got " +
          std::to_string(train_.batch_size) + ", " + std::to_string(train_.log_every) + ", " +
          std::to_string(train_.checkpoint_every));
    }
    dir_ = std::filesystem::absolute(dir_);
  }

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] const TrainSettings& train() const { return train_; }
  [[nodiscard]] const std::string& tag() const { return tag_; }

  // Files every stage model carries byte for byte (a pretrained seed's tokenizer, chat
  // template and generation config: hf::side_files_in(seed)), so each stage loads in
  // transformers with its tokenizer and keeps its chat format.
  Run& with_model_files(std::vector<std::filesystem::path> files) {
    model_files_ = std::move(files);
    return *this;
  }
  [[nodiscard]] const std::vector<std::filesystem::path>& model_files() const {
    return model_files_;
  }

  // Whether stage models read back from disk may hold NaN or Inf (refused by default:
  // a stage that loads a poisoned checkpoint fails naming tensor, file and index).
  Run& with_non_finite(io::NonFinite policy) {
    non_finite_ = policy;
    return *this;
  }
  [[nodiscard]] io::NonFinite non_finite() const { return non_finite_; }

  // <run>/<stage>; a stage name is one plain folder name.
  [[nodiscard]] std::filesystem::path stage_dir(const std::string& stage) const {
    if (stage.empty() || stage == "." || stage == ".." ||
        stage.find_first_of("/\\") != std::string::npos) {
      throw std::invalid_argument("btx::recipe: stage name '" + stage +
                                  "' must be a plain folder name (not empty, no '/')");
    }
    return dir_ / stage;
  }
  [[nodiscard]] std::filesystem::path model_dir(const std::string& stage) const {
    return stage_dir(stage) / "model";
  }
  [[nodiscard]] std::filesystem::path checkpoint_dir(const std::string& stage) const {
    return stage_dir(stage) / "checkpoints";
  }
  [[nodiscard]] std::filesystem::path record_path(const std::string& stage) const {
    return stage_dir(stage) / "stage.json";
  }

  // A stage whose model no longer matches the hashes its stage.json recorded (truncated,
  // edited, a shard deleted) is not done: it is redone, and says why.
  [[nodiscard]] StageState state(const std::string& stage) const {
    if (std::filesystem::exists(record_path(stage)) && intact(stage)) return StageState::done;
    if (std::filesystem::exists(checkpoint_dir(stage) / "latest")) return StageState::resumable;
    return StageState::fresh;
  }
  [[nodiscard]] bool done(const std::string& stage) const {
    return state(stage) == StageState::done;
  }

  // The finished stage's stage.json; throws naming the file when it is absent or broken.
  [[nodiscard]] nlohmann::json record(const std::string& stage) const {
    const auto path = record_path(stage);
    std::ifstream in(path);
    if (!in) {
      throw std::runtime_error("btx::recipe: stage '" + stage + "' is not finished (no " +
                               path.string() + ")");
    }
    try {
      return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error("btx::recipe: " + path.string() + " is not valid JSON: " + e.what());
    }
  }

  // Finishes `stage`: writes stage.json (with "stage" set) through a rename, so it appears
  // whole or not at all, then drops the stage's training checkpoints (a finished stage is
  // never resumed).
  void mark_done(const std::string& stage, nlohmann::json record) const {
    if (record.is_null()) record = nlohmann::json::object();
    if (!record.is_object()) {
      throw std::invalid_argument("btx::recipe::Run::mark_done: the record of stage '" + stage +
                                  "' must be a JSON object");
    }
    record["stage"] = stage;
    std::filesystem::create_directories(stage_dir(stage));
    if (std::filesystem::is_directory(model_dir(stage))) {
      record["model_files"] = io::xxh3_128_folder(model_dir(stage));  // checked by state()
    }
    const auto final_path = record_path(stage);
    const auto tmp = stage_dir(stage) / "stage.json.tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << record.dump(2) << "\n";
      out.flush();
      if (!out) throw std::runtime_error("btx::recipe: cannot write " + tmp.string());
    }
    std::filesystem::rename(tmp, final_path);
    checks_->intact.insert(stage);
    std::error_code ec;
    std::filesystem::remove_all(checkpoint_dir(stage), ec);
  }

  // The run folder for this process alone (a pipeline's driver): a second driver on the
  // same folder is refused at once with io::FolderBusy naming the holder. Held until the
  // returned lock is destroyed or the process dies.
  [[nodiscard]] io::FolderLock lock() const {
    return io::FolderLock::acquire(dir_, ".lock", "run folder " + dir_.string());
  }
  // Stage `stage` for this process while it trains and writes it (`writer`: the process
  // that writes the stage's files; other ranks of a data-parallel stage get an empty
  // lock). Two workers started for one stage: the second is refused with io::FolderBusy.
  [[nodiscard]] io::FolderLock claim(const std::string& stage, bool writer = true) const {
    if (!writer) return {};
    return io::FolderLock::acquire(stage_dir(stage), ".lock",
                                   "stage '" + stage + "' of run folder " + dir_.string());
  }

  // True (and says so) when `stage` is finished, so the caller skips it.
  [[nodiscard]] bool skip_if_done(const std::string& stage) const {
    if (!done(stage)) return false;
    log(stage + " already finished, skipped");
    return true;
  }

  void log(const std::string& message) const {
    std::fprintf(stderr, "[%s] %s\n", tag_.c_str(), message.c_str());
  }

 private:
  // Whether finished `stage`'s model matches its record. An intact verdict is kept for
  // this process; a failed one is checked again (another process may redo the stage).
  [[nodiscard]] bool intact(const std::string& stage) const {
    if (checks_->intact.count(stage)) return true;
    std::string problem;
    try {
      const auto rec = record(stage);
      if (rec.contains("model_files")) {
        problem = io::folder_mismatch(
            model_dir(stage), rec.at("model_files").get<std::map<std::string, std::string>>());
      }
    } catch (const std::exception& e) {
      problem = e.what();
    }
    if (problem.empty()) {
      checks_->intact.insert(stage);
    } else if (checks_->reported.insert(stage).second) {
      log("stage '" + stage + "' is recorded as finished, but " + problem + ": redoing it");
    }
    return problem.empty();
  }

  std::filesystem::path dir_;
  TrainSettings train_;
  std::string tag_;
  std::vector<std::filesystem::path> model_files_;
  io::NonFinite non_finite_ = io::NonFinite::refuse;
  struct StageChecks {
    std::set<std::string> intact, reported;
  };
  std::shared_ptr<StageChecks> checks_ = std::make_shared<StageChecks>();  // shared by copies
};

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
