// SPDX-License-Identifier: MIT
// CausalLM: a family-agnostic handle on a built causal language model. Every model family
// wraps its own LibTorch module in one, so training, evaluation, merging, ensembling and
// checkpoint I/O work on any family without naming it. Copies share the module (like a
// torch ModuleHolder); clone() is the deep copy that Branch needs.
//
// A family's module type M (held by a ModuleHolder) must offer:
//   forward(ids_BS, KVCache*) -> logits_BSV      (nullptr: no cache)
//   ffn_inputs(ids_BS) -> L tensors [B, S, D]    (the input of each layer's FFN block,
//                                                 for router initialisation from hidden states)
//   clone() (torch::nn::Cloneable)
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <memory>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include <btx/core/kv_cache.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

template <class H>
concept lm_forward = requires(H& h, const torch::Tensor& ids_BS, KVCache* cache) {
  { h->forward(ids_BS, cache) } -> std::same_as<torch::Tensor>;
};
template <class H>
concept lm_ffn_inputs = requires(H& h, const torch::Tensor& ids_BS) {
  { h->ffn_inputs(ids_BS) } -> std::same_as<std::vector<torch::Tensor>>;
};
template <class H>
concept lm_holder = requires(H& h) {
  typename H::ContainedType;
  { h.ptr() } -> std::convertible_to<std::shared_ptr<torch::nn::Module>>;
  h->clone();
};
// What a family's model holder must offer to be wrapped in a CausalLM.
template <class H>
concept WrappableLM = lm_holder<H> && lm_forward<H> && lm_ffn_inputs<H>;

class CausalLM {
 public:
  CausalLM() = default;
  template <WrappableLM Holder>
  CausalLM(Holder model, ModelSpec spec)
      : impl_(std::make_shared<Impl<Holder>>(std::move(model))), spec_(std::move(spec)) {}

  [[nodiscard]] bool defined() const { return impl_ != nullptr; }
  [[nodiscard]] torch::nn::Module& module() const { return *ptr(); }
  [[nodiscard]] std::shared_ptr<torch::nn::Module> ptr() const { return checked().ptr(); }
  [[nodiscard]] const ModelSpec& spec() const { return spec_; }
  [[nodiscard]] bool is_moe() const { return spec_.moe.has_value(); }

  // ids_BS [B, S] int64 -> logits [B, S, V].
  torch::Tensor forward(const torch::Tensor& ids_BS, KVCache* cache = nullptr) const {
    return checked().forward(ids_BS, cache);
  }
  // One [B, S, D] tensor per layer: what each layer's FFN block sees.
  [[nodiscard]] std::vector<torch::Tensor> ffn_inputs(const torch::Tensor& ids_BS) const {
    return checked().ffn_inputs(ids_BS);
  }
  // A deep copy: same weights, no shared storage.
  [[nodiscard]] CausalLM clone() const {
    CausalLM copy;
    copy.impl_ = checked().clone();
    copy.spec_ = spec_;
    return copy;
  }
  // The family's own holder, for code that knows the family (throws on a mismatch).
  template <class Holder>
  [[nodiscard]] Holder as() const {
    auto m = std::dynamic_pointer_cast<typename Holder::ContainedType>(ptr());
    if (!m) {
      throw std::invalid_argument(std::string("btx::CausalLM::as: the model is not a ") +
                                  typeid(typename Holder::ContainedType).name());
    }
    return Holder(std::move(m));
  }

  // ModuleHolder-style access, so generic code written for holders (model->parameters(),
  // model->forward(ids)) takes a CausalLM unchanged.
  CausalLM* operator->() { return this; }
  const CausalLM* operator->() const { return this; }
  torch::nn::Module& operator*() const { return module(); }
  [[nodiscard]] std::vector<torch::Tensor> parameters() const { return module().parameters(); }
  [[nodiscard]] torch::OrderedDict<std::string, torch::Tensor> named_parameters() const {
    return module().named_parameters();
  }
  void train(bool on = true) const { module().train(on); }
  void eval() const { module().eval(); }
  void to(torch::Device device, torch::Dtype dtype) const { module().to(device, dtype); }
  void to(torch::Dtype dtype) const { module().to(dtype); }

 private:
  struct Iface {
    virtual ~Iface() = default;
    [[nodiscard]] virtual std::shared_ptr<torch::nn::Module> ptr() const = 0;
    virtual torch::Tensor forward(const torch::Tensor& ids_BS, KVCache* cache) = 0;
    virtual std::vector<torch::Tensor> ffn_inputs(const torch::Tensor& ids_BS) = 0;
    [[nodiscard]] virtual std::shared_ptr<Iface> clone() const = 0;
  };
  template <class Holder>
  struct Impl final : Iface {
    explicit Impl(Holder m) : model(std::move(m)) {}
    [[nodiscard]] std::shared_ptr<torch::nn::Module> ptr() const override { return model.ptr(); }
    torch::Tensor forward(const torch::Tensor& ids_BS, KVCache* cache) override {
      return model->forward(ids_BS, cache);
    }
    std::vector<torch::Tensor> ffn_inputs(const torch::Tensor& ids_BS) override {
      return model->ffn_inputs(ids_BS);
    }
    [[nodiscard]] std::shared_ptr<Iface> clone() const override {
      auto copy = std::dynamic_pointer_cast<typename Holder::ContainedType>(model->clone());
      if (!copy) throw std::logic_error("btx::CausalLM::clone: clone() returned another type");
      return std::make_shared<Impl>(Holder(std::move(copy)));
    }
    Holder model;
  };
  [[nodiscard]] Iface& checked() const {
    if (!impl_) throw std::logic_error("btx::CausalLM: empty handle (no model)");
    return *impl_;
  }

  std::shared_ptr<Iface> impl_;
  ModelSpec spec_;
};

BTX_NAMESPACE_END
}  // namespace btx
