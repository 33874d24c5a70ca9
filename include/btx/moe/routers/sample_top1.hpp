// SPDX-License-Identifier: MIT
// Sample Top-1 router (BTX paper): in training, Gumbel-softmax sampling at an annealed
// temperature with a straight-through top-1 forward; at inference, plain argmax. The
// Gumbel noise is drawn on the logits' device from the router's own generator for that
// device, reseeded every step from (seed, step): runs reproduce, nothing crosses between
// host and device, and a checkpoint needs only the step counter (btx::ExtraState).
// Registered as "sample_top1" (with its option soft_first_layer, layer 0 is a Soft router).
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include <btx/core/extra_state.hpp>
#include <btx/core/recompute.hpp>
#include <btx/moe/router_helpers.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/moe/routers/soft.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// tau(step) = max(floor, init * exp(-rate * step)); step counts training forwards.
struct TemperatureSchedule {
  double init = 1.0;
  double floor = 0.5;
  double rate = 1e-4;
  [[nodiscard]] double at(int64_t step) const {
    return std::max(floor, init * std::exp(-rate * static_cast<double>(step)));
  }
};

class SampleTop1 : public torch::nn::Cloneable<SampleTop1>, public ExtraState {
 public:
  SampleTop1(int64_t hidden_size, int64_t num_experts, TemperatureSchedule schedule = {},
             uint64_t seed = 0)
      : hidden_(hidden_size), experts_(num_experts), schedule_(schedule), seed_(seed) {
    if (!(schedule.floor > 0.0) || !(schedule.init > 0.0) || schedule.rate < 0.0) {
      throw std::invalid_argument(
          "btx::SampleTop1: temperature schedule needs init > 0, floor > 0 and rate >= 0");
    }
    reset();
  }
  // A clone restarts its own noise stream from the seed (it never shares the original's).
  void reset() override {
    weight = make_router_weight(*this, experts_, hidden_, "SampleTop1");
    reseed(seed_);
  }
  void reseed(uint64_t seed) {
    seed_ = seed;
    generator_ = at::make_generator<at::CPUGeneratorImpl>(seed);
    device_generator_ = at::Generator();
  }

  RoutingResult route(const torch::Tensor& x_TD) {
    RoutingResult r;
    r.logits_TE = router_logits(x_TD, weight, "btx::SampleTop1::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    if (!is_training()) {
      r.indices_TK = r.logits_TE.argmax(1, /*keepdim=*/true);
      r.weights_TK = torch::ones(r.indices_TK.sizes(), r.logits_TE.options());
      return r;
    }
    // The temperature of the step before the count moves, the noise of the step after. A
    // recomputed forward (activation checkpointing) finds the count moved already and
    // draws the same noise again.
    if (!recomputing()) ++step_;
    const double tau = schedule_.at(step_ - 1);
    // Gumbel(0, 1) noise, on the logits' device.
    auto u_TE = torch::rand(r.logits_TE.sizes(), step_generator(r.logits_TE.device()),
                            r.logits_TE.options().dtype(torch::kFloat32))
                    .clamp(1e-10, 1.0 - 1e-7);
    auto gumbel_TE = -torch::log(-torch::log(u_TE));
    auto soft_TE = torch::softmax((r.logits_TE + gumbel_TE) / tau, 1);
    r.indices_TK = soft_TE.argmax(1, /*keepdim=*/true);
    auto soft_T1 = soft_TE.gather(1, r.indices_TK);
    r.weights_TK = (soft_T1 - soft_T1.detach()) + 1.0;  // value 1, gradient of the soft prob
    return r;
  }

  // Checkpoint hook: the seed and the step counter (the temperature and the noise stream
  // both follow from them). Checkpoints from before the noise was reseeded per step carry
  // a "generator" entry instead of "seed"; it is not needed and ignored.
  [[nodiscard]] std::map<std::string, torch::Tensor> extra_state() const override {
    return {{"seed", torch::tensor({int64_t(seed_)}, torch::kInt64)},
            {"step", torch::tensor({step_}, torch::kInt64)}};
  }
  void load_extra_state(const std::map<std::string, torch::Tensor>& state) override {
    const auto& step = extra_state_entry(state, "step", "btx::SampleTop1");
    if (step.numel() != 1) throw std::invalid_argument("btx::SampleTop1: 'step' must be a scalar");
    if (const auto seed = state.find("seed"); seed != state.end()) {
      if (seed->second.numel() != 1)
        throw std::invalid_argument("btx::SampleTop1: 'seed' must be a scalar");
      reseed(uint64_t(seed->second.to(torch::kInt64).item<int64_t>()));
    }
    step_ = step.to(torch::kInt64).item<int64_t>();
  }

  [[nodiscard]] double temperature() const { return schedule_.at(step_); }
  [[nodiscard]] int64_t step() const { return step_; }
  [[nodiscard]] uint64_t seed() const { return seed_; }
  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }

  torch::Tensor weight;  // [E, H]

 private:
  // This router's generator for `device`, seeded for the current step: a splitmix of
  // (seed, step), so consecutive steps and neighbouring layers' seeds draw unrelated noise.
  at::Generator& step_generator(torch::Device device) {
    at::Generator* gen = &generator_;
    if (!device.is_cpu()) {
      if (!device_generator_.defined() || device_generator_.device() != device) {
        device_generator_ = at::globalContext()
                                .getAcceleratorHooksInterface(device.type())
                                .getNewGenerator(device.index());
      }
      gen = &device_generator_;
    }
    uint64_t z = seed_ + 0x9E3779B97F4A7C15ull * uint64_t(step_ + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    std::lock_guard<std::mutex> lock(gen->mutex());
    gen->set_current_seed(z ^ (z >> 31));
    return *gen;
  }

  int64_t hidden_, experts_;
  TemperatureSchedule schedule_;
  uint64_t seed_;
  int64_t step_ = 0;
  at::Generator generator_;         // CPU noise
  at::Generator device_generator_;  // noise on an accelerator, made when first needed
};

// Sample Top-1's own options: the temperature schedule, and whether layer 0 routes softly
// (the BTX paper's variant).
struct SampleTop1Options {
  double temperature_init = 1.0;
  double temperature_floor = 0.5;
  double temperature_rate = 1e-4;
  bool soft_first_layer = false;

  [[nodiscard]] TemperatureSchedule temperature() const {
    return {temperature_init, temperature_floor, temperature_rate};
  }
};

inline const schema::Schema<SampleTop1Options>& sample_top1_options_schema() {
  static const auto s =
      schema::Schema<SampleTop1Options>("sample_top1 router options")
          .key("temperature_init", &SampleTop1Options::temperature_init,
               "Gumbel-softmax temperature at step 0", schema::positive<double>())
          .key("temperature_floor", &SampleTop1Options::temperature_floor, "lowest temperature",
               schema::positive<double>())
          .key("temperature_rate", &SampleTop1Options::temperature_rate,
               "tau(step) = max(floor, init * exp(-rate * step))", schema::at_least(0.0))
          .key("soft_first_layer", &SampleTop1Options::soft_first_layer,
               "layer 0 is a Soft router (the BTX paper)");
  return s;
}

// "sample_top1", for btx::router_registry(). Layer l draws its noise from seed + l.
inline RouterSpec sample_top1_router_spec() {
  return {.name = "sample_top1",
          .describe = "BTX's Sample Top-1: Gumbel-softmax top-1 in training, argmax at inference",
          .make = [](const RouterBuild& b) -> std::shared_ptr<torch::nn::Module> {
            const auto o = b.read(sample_top1_options_schema());
            if (o.soft_first_layer && b.layer == 0) {
              return std::make_shared<Soft>(b.hidden_size, b.num_experts);
            }
            return std::make_shared<SampleTop1>(b.hidden_size, b.num_experts, o.temperature(),
                                                b.seed + b.layer);
          },
          // Layer 0 runs every expert under soft_first_layer; the count is the other layers'.
          .active_experts = [](const RouterBuild&) -> int64_t { return 1; },
          .options = router_options(sample_top1_options_schema()),
          .options_help = sample_top1_options_schema().help({}, "               ")};
}

BTX_NAMESPACE_END
}  // namespace btx
