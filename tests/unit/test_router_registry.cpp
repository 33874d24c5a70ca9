// SPDX-License-Identifier: MIT
// The router registry: every shipped name builds the router it always did, a router
// registered in this file works by name in moe_feed_forward, upcycled and upcycle, bad
// names, k and registrations are refused with clear messages, and every router's
// RoutingResult has the dtype, device and shape the MoE layer expects.
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include <btx/merge/upcycle_model.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/moe/surgery.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;

namespace {

constexpr int64_t kD = 16, kE = 4;

// Test-only router family "first:N": every token goes to experts 0..N-1 with weight 1/N,
// so a layer of identical experts equals one of them.
class FirstN : public torch::nn::Cloneable<FirstN> {
 public:
  FirstN(int64_t hidden, int64_t experts, int64_t n) : hidden_(hidden), experts_(experts), n_(n) {
    reset();
  }
  void reset() override { weight = btx::make_router_weight(*this, experts_, hidden_, "FirstN"); }
  btx::RoutingResult route(const torch::Tensor& x_TD) {
    btx::RoutingResult r;
    r.logits_TE = btx::router_logits(x_TD, weight, "FirstN::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    r.indices_TK = btx::every_expert_TE(x_TD.size(0), experts_, x_TD).narrow(1, 0, n_);
    r.weights_TK = torch::full({x_TD.size(0), n_}, 1.0 / double(n_), btx::weight_options(x_TD));
    return r;
  }
  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t n() const { return n_; }
  torch::Tensor weight;

 private:
  int64_t hidden_, experts_, n_;
};

bool is_first_name(const std::string& name) {
  return name.rfind("first:", 0) == 0 && name.size() > 6 && name.size() < 10 &&
         name.find_first_not_of("0123456789", 6) == std::string::npos;
}
int64_t first_n(const std::string& name) {
  return std::stoll(name.substr(6));
}

// The one registration this router needs.
[[maybe_unused]] const bool kFirstNRegistered = btx::register_router<FirstN>({
    .name = "first:N",
    .describe = "test only: experts 0..N-1 with equal weights",
    .make =
        [](const btx::RouterBuild& b) {
          return std::make_shared<FirstN>(b.hidden_size, b.num_experts, first_n(b.name));
        },
    .active_experts = [](const btx::RouterBuild& b) { return first_n(b.name); },
    .matches = is_first_name,
});

// A router that is not Cloneable: it has route(), yet it is no btx::Router.
struct NotCloneable : torch::nn::Module {
  [[nodiscard]] int64_t num_experts() const { return 2; }
  [[nodiscard]] int64_t hidden_size() const { return 4; }
  btx::RoutingResult route(const torch::Tensor&) { return {}; }
};
static_assert(btx::has_route<NotCloneable> && btx::routes_to_result<NotCloneable>);
static_assert(!btx::is_cloneable_module<NotCloneable> && !btx::Router<NotCloneable>);
static_assert(btx::is_cloneable_module<btx::TopK> && btx::is_cloneable_module<FirstN>);

// RoutingResult of whichever router `m` is.
btx::RoutingResult route_any(torch::nn::Module& m, const torch::Tensor& x_TD) {
  if (auto* r = dynamic_cast<btx::TopK*>(&m)) return r->route(x_TD);
  if (auto* r = dynamic_cast<btx::Switch*>(&m)) return r->route(x_TD);
  if (auto* r = dynamic_cast<btx::SampleTop1*>(&m)) return r->route(x_TD);
  if (auto* r = dynamic_cast<btx::Soft*>(&m)) return r->route(x_TD);
  if (auto* r = dynamic_cast<FirstN*>(&m)) return r->route(x_TD);
  throw std::logic_error("route_any: unknown router type");
}

// The dtype's name ("Float", "Long", ...), which doctest can print.
std::string name_of(const torch::Tensor& t) {
  return c10::toString(t.scalar_type());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no exception";
}

// A user's model written without btx, whose FFN blocks surgery replaces.
struct TinyFFNImpl : torch::nn::Cloneable<TinyFFNImpl> {
  TinyFFNImpl() { reset(); }
  void reset() override {
    up = register_module("up", torch::nn::Linear(kD, 24));
    down = register_module("down", torch::nn::Linear(24, kD));
  }
  torch::Tensor forward(const torch::Tensor& x) { return down(torch::tanh(up(x))); }
  torch::nn::Linear up{nullptr}, down{nullptr};
};
TORCH_MODULE(TinyFFN);

struct TinyBlockImpl : torch::nn::Module {
  TinyBlockImpl() {
    ffn = torch::nn::AnyModule(TinyFFN());
    register_module("ffn", ffn.ptr());
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + ffn.forward(x); }
  torch::nn::AnyModule ffn;
};
TORCH_MODULE(TinyBlock);

}  // namespace

TEST_CASE("router registry: every shipped name builds the router and layer types it always did") {
  struct Case {
    std::string name;
    const std::type_info& router;
    const std::type_info& packed_layer;
    const std::type_info& module_layer;
    int64_t k;  // assignments per token = active experts
  };
  using btx::ModuleExperts, btx::PackedSwiGLU, btx::MoEImpl;
  const std::vector<Case> cases = {
      {"top1", typeid(btx::TopK), typeid(MoEImpl<btx::TopK, PackedSwiGLU>),
       typeid(MoEImpl<btx::TopK, ModuleExperts>), 1},
      {"top2", typeid(btx::TopK), typeid(MoEImpl<btx::TopK, PackedSwiGLU>),
       typeid(MoEImpl<btx::TopK, ModuleExperts>), 2},
      {"topk", typeid(btx::TopK), typeid(MoEImpl<btx::TopK, PackedSwiGLU>),
       typeid(MoEImpl<btx::TopK, ModuleExperts>), 3},  // option k below
      {"topk:4", typeid(btx::TopK), typeid(MoEImpl<btx::TopK, PackedSwiGLU>),
       typeid(MoEImpl<btx::TopK, ModuleExperts>), 4},
      {"switch", typeid(btx::Switch), typeid(MoEImpl<btx::Switch, PackedSwiGLU>),
       typeid(MoEImpl<btx::Switch, ModuleExperts>), 1},
      {"sample_top1", typeid(btx::SampleTop1), typeid(MoEImpl<btx::SampleTop1, PackedSwiGLU>),
       typeid(MoEImpl<btx::SampleTop1, ModuleExperts>), 1},
      {"soft", typeid(btx::Soft), typeid(MoEImpl<btx::Soft, PackedSwiGLU>),
       typeid(MoEImpl<btx::Soft, ModuleExperts>), kE},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    // Each router's own options: k for topk, capacity_factor for switch.
    nlohmann::json options = nlohmann::json::object();
    if (c.name == "topk") options["k"] = 3;
    if (c.name == "switch") options["capacity_factor"] = 2.5;
    const btx::MoEConfig o{.num_experts = kE, .router = {c.name, options}, .seed = 7};
    auto gate = btx::find_router(c.name)->make_router(o, kD, /*layer=*/2);
    const torch::nn::Module& g = *gate;
    CHECK(typeid(g) == c.router);
    CHECK(btx::active_experts(o) == c.k);
    if (auto* topk = dynamic_cast<btx::TopK*>(gate.get())) CHECK(topk->k() == c.k);
    if (auto* sw = dynamic_cast<btx::Switch*>(gate.get())) CHECK(sw->capacity_factor() == 2.5);
    // Same init as constructing the router directly (the registry adds no RNG draws).
    torch::manual_seed(11);
    auto by_name = btx::find_router(c.name)->make_router(o, kD, 0);
    torch::manual_seed(11);
    auto direct = std::make_shared<btx::TopK>(kD, kE, 1);
    CHECK(max_abs_diff(by_name->named_parameters()["weight"], direct->weight) == 0.0);
    // The layers: MoE<R, PackedSwiGLU> from the Llama factory, MoE<R, ModuleExperts> from
    // surgery on a block btx does not know.
    auto packed = btx::moe_feed_forward(o)(tiny_config(), 1);
    const torch::nn::Module& packed_layer = *packed.ptr();
    CHECK(typeid(packed_layer) == c.packed_layer);
    btx::MoEConfig mo = o;
    mo.hidden_size = kD;
    auto modules = btx::upcycle_block(torch::nn::AnyModule(TinyFFN()), mo, 1);
    const torch::nn::Module& module_layer = *modules.ptr();
    CHECK(typeid(module_layer) == c.module_layer);
  }
  // Sample Top-1: layer l draws its noise from seed + l; soft_first_layer makes layer 0 Soft.
  btx::MoEConfig o{.num_experts = kE, .router = "sample_top1", .seed = 7};
  auto sample = std::dynamic_pointer_cast<btx::SampleTop1>(
      btx::find_router("sample_top1")->make_router(o, kD, 3));
  REQUIRE(sample);
  CHECK(sample->seed() == 10);
  o.router.options = {{"soft_first_layer", true}};
  auto first = btx::find_router("sample_top1")->make_router(o, kD, 0);
  CHECK(dynamic_cast<btx::Soft*>(first.get()) != nullptr);
  CHECK(
      dynamic_cast<btx::SampleTop1*>(btx::find_router("sample_top1")->make_router(o, kD, 1).get()));
}

TEST_CASE("router registry: a router registered here works by name in every builder") {
  REQUIRE(kFirstNRegistered);
  const btx::MoEConfig o{.num_experts = 3, .router = "first:2"};
  CHECK(btx::active_experts(o) == 2);
  CHECK(btx::active_experts({.num_experts = 3, .router = "first:3"}) == 3);
  CHECK(btx::find_router("first:2")->router_types() ==
        std::vector<std::string>{c10::demangle(typeid(FirstN).name())});

  // moe_feed_forward: a Mixtral-like Llama whose layers are MoE<FirstN, PackedSwiGLU>.
  torch::manual_seed(5);
  btx::LlamaForCausalLM model(tiny_config(), btx::moe_feed_forward(o));
  using Layer = btx::MoEImpl<FirstN, btx::PackedSwiGLU>;
  auto* layer = dynamic_cast<Layer*>(model->model->layer(1).mlp.ptr().get());
  REQUIRE(layer != nullptr);
  CHECK(layer->gate().n() == 2);
  CHECK(model->named_parameters()["model.layers.0.mlp.gate.weight"].sizes() ==
        torch::IntArrayRef({3, 32}));
  auto ids = torch::randint(0, 64, {2, 6});
  model->forward(ids);
  // Two of three experts, every token: 12 tokens -> experts 0 and 1 take 12 each.
  CHECK(layer->last_stats().tokens_per_expert.equal(torch::tensor({12, 12, 0}, torch::kLong)));

  // upcycled: identical experts, weights 1/2 + 1/2, so the MoE equals the dense model.
  btx::LlamaForCausalLM dense(tiny_config());
  auto expected = dense->forward(ids);
  auto moe = btx::merge::upcycled(btx::LlamaFamily::wrap(dense), o);
  CHECK(max_abs_diff(moe.forward(ids), expected) < 1e-5);
  auto copy = moe.clone().as<btx::LlamaForCausalLM>();
  CHECK(dynamic_cast<Layer*>(copy->model->layer(0).mlp.ptr().get()) != nullptr);

  // upcycle (surgery) on a user's block: MoE<FirstN, ModuleExperts>, output unchanged.
  TinyBlock block;
  auto x = torch::randn({5, kD});
  auto y = block->forward(x);
  auto replaced = btx::upcycle(*block, btx::ffn_slot(&TinyBlockImpl::ffn, "ffn"),
                               {.num_experts = 3, .router = "first:3", .hidden_size = kD});
  CHECK(replaced == std::vector<std::string>{"ffn"});
  auto* upcycled = dynamic_cast<btx::MoEImpl<FirstN, btx::ModuleExperts>*>(block->ffn.ptr().get());
  REQUIRE(upcycled != nullptr);
  CHECK(upcycled->gate().n() == 3);
  CHECK(max_abs_diff(block->forward(x), y) < 1e-5);
}

TEST_CASE("router registry: an unknown name lists every registered router") {
  const auto names = btx::router_names();
  REQUIRE(names.size() >= 8);
  CHECK(
      std::vector<std::string>(names.begin(), names.begin() + 7) ==
      std::vector<std::string>{"top1", "top2", "topk", "topk:K", "switch", "sample_top1", "soft"});
  const auto msg = error_of([] { btx::check_router({.router = "nope"}); });
  CHECK(msg.find("unknown router 'nope'") != std::string::npos);
  CHECK(msg.find("valid: top1, top2, topk, topk:K, switch, sample_top1, soft") !=
        std::string::npos);
  CHECK(msg.find("first:N") != std::string::npos);
  CHECK_THROWS_AS(btx::find_router("first:x"), std::invalid_argument);  // the matcher refuses it
  CHECK_THROWS_WITH_AS(btx::active_experts({.router = "Top2"}), doctest::Contains("valid: top1"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::moe_feed_forward({.router = ""}), doctest::Contains("unknown router"),
                       std::invalid_argument);
}

TEST_CASE("router registry: duplicate and overlapping registrations are errors") {
  const auto before = btx::router_names();
  const auto make = [](const btx::RouterBuild& b) {
    return std::make_shared<btx::Switch>(b.hidden_size, b.num_experts);
  };
  const auto one = [](const btx::RouterBuild&) -> int64_t { return 1; };
  CHECK_THROWS_WITH_AS(
      btx::register_router<btx::Switch>(
          {.name = "switch", .describe = "again", .make = make, .active_experts = one}),
      doctest::Contains("a router named 'switch' is already registered"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      btx::register_router<btx::Switch>(
          {.name = "first:N", .describe = "again", .make = make, .active_experts = one}),
      doctest::Contains("already registered"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::register_router<btx::Switch>(
                           {.name = "topk:5", .describe = "", .make = make, .active_experts = one}),
                       doctest::Contains("already belongs to the router family 'topk:K'"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::register_router<btx::Switch>(
                           {.name = "s*",
                            .describe = "",
                            .make = make,
                            .active_experts = one,
                            .matches = [](const std::string& n) { return n[0] == 's'; }}),
                       doctest::Contains("would also claim the registered router 'switch'"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      btx::register_router<btx::Switch>({.name = "", .make = make, .active_experts = one}),
      doctest::Contains("name must not be empty"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::register_router<btx::Switch>({.name = "x", .active_experts = one}),
                       doctest::Contains("RouterSpec.make is not set"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::register_router<btx::Switch>({.name = "x", .make = make}),
                       doctest::Contains("RouterSpec.active_experts is not set"),
                       std::invalid_argument);
  CHECK(btx::router_names() == before);  // nothing was added

  // A registry of one's own takes the same rules; an exact name wins over a family.
  btx::RouterRegistry registry;
  registry.add<btx::Switch>(
      {.name = "sw:N", .make = make, .active_experts = one, .matches = [](const std::string& n) {
         return n.rfind("sw:", 0) == 0;
       }});
  CHECK_THROWS_AS(registry.add<btx::Switch>({.name = "sw:N", .make = make, .active_experts = one}),
                  std::invalid_argument);
  CHECK(registry.find("sw:1")->name() == "sw:N");
  CHECK(registry.find_if_registered("switch") == nullptr);
  CHECK(registry.names() == std::vector<std::string>{"sw:N"});
}

TEST_CASE("router registry: a registration that misbehaves is caught when it builds") {
  btx::RouterRegistry registry;
  const auto soft = [](const btx::RouterBuild& b) {
    return std::make_shared<btx::Soft>(b.hidden_size, b.num_experts);
  };
  registry.add<FirstN>(
      {.name = "liar", .make = soft, .active_experts = [](const auto&) { return 1; }});
  registry.add<btx::Soft>(
      {.name = "null",
       .make = [](const btx::RouterBuild&) -> std::shared_ptr<torch::nn::Module> { return {}; },
       .active_experts = [](const auto&) { return 0; }});
  const btx::MoEConfig liar{.num_experts = kE, .router = "liar"};
  CHECK_THROWS_WITH_AS(
      (void)registry.find("liar")->make_router(liar, kD, 0),
      doctest::Contains("Soft but its registration lists (anonymous namespace)::FirstN"),
      std::logic_error);
  CHECK_THROWS_WITH_AS((void)registry.find("null")->make_router({.router = "null"}, kD, 0),
                       doctest::Contains("RouterSpec.make returned null"), std::logic_error);
  CHECK_THROWS_WITH_AS((void)registry.find("null")->active_experts({.router = "null"}),
                       doctest::Contains("declares active_experts=0 for num_experts=4"),
                       std::logic_error);
  // A registration builds only the names it matches, and only with E >= 1 experts.
  CHECK_THROWS_WITH_AS((void)registry.find("liar")->make_router({.router = "soft"}, kD, 0),
                       doctest::Contains("was asked to build router 'soft'"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)btx::find_router("soft")->active_experts({.num_experts = 0}),
                       doctest::Contains("num_experts must be >= 1, got 0"), std::invalid_argument);
  // make_layer takes only a router of a registered type.
  auto experts = std::make_shared<btx::PackedSwiGLU>(kE, kD, 8);
  CHECK_THROWS_WITH_AS(
      (void)btx::find_router("top2")->make_layer(std::make_shared<btx::Soft>(kD, kE), experts, {}),
      doctest::Contains("make_layer needs a router its make_router built"), std::invalid_argument);
}

TEST_CASE("router registry: topk names with a bad k name k and num_experts") {
  const auto msg = [](btx::MoEConfig o) { return error_of([&] { btx::check_router(o); }); };
  CHECK(msg({.num_experts = 4, .router = "topk:5"}) ==
        "btx: router 'topk:5' asks for k=5 but num_experts=4; k must be in [1, num_experts]");
  CHECK(msg({.router = "topk:0"}).find("asks for k=0") != std::string::npos);
  CHECK(msg({.router = {"topk", {{"k", 0}}}}).find("asks for k=0") != std::string::npos);
  CHECK(msg({.num_experts = 3, .router = {"topk", {{"k", 4}}}}).find("k=4 but num_experts=3") !=
        std::string::npos);
  // Options belong to their router: a name that fixes k refuses another, unknown keys and
  // wrong types are refused naming them, a router without options takes none.
  CHECK(msg({.router = {"top2", {{"k", 3}}}}).find("'top2' fixes k=2") != std::string::npos);
  CHECK(msg({.router = {"switch", {{"capacity", 2}}}}).find("unknown key 'capacity'") !=
        std::string::npos);
  CHECK(msg({.router = {"switch", {{"capacity_factor", "big"}}}}).find("capacity_factor") !=
        std::string::npos);
  CHECK(msg({.router = {"soft", {{"k", 2}}}}).find("router 'soft' takes no options") !=
        std::string::npos);
  CHECK(msg({.num_experts = 1, .router = "top2"}).find("k=2") != std::string::npos);
  CHECK(msg({.router = "topk:"}).find("positive integer after 'topk:'") != std::string::npos);
  CHECK(msg({.router = "topk:x2"}).find("positive integer") != std::string::npos);
  CHECK(msg({.router = "topk:-1"}).find("positive integer") != std::string::npos);
  CHECK(msg({.router = "topk:123456789012345678901"}).find("positive integer") !=
        std::string::npos);
  CHECK(msg({.num_experts = 0}).find("num_experts must be >= 1") != std::string::npos);
  CHECK(msg({.num_experts = 4, .router = "topk:4"}) == "no exception");
  CHECK_THROWS_WITH_AS(btx::active_experts({.num_experts = 4, .router = "topk:9"}),
                       doctest::Contains("k=9"), std::invalid_argument);
}

TEST_CASE("routers: every RoutingResult field has the expected dtype, device and shape") {
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  const int64_t T = 9;
  for (const auto& device : devices) {
    for (const char* name :
         {"top1", "top2", "topk:3", "switch", "sample_top1", "soft", "first:2"}) {
      for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat64}) {
        for (bool training : {true, false}) {
          CAPTURE(device);
          CAPTURE(name);
          const std::string dtype_name = c10::toString(dtype);
          CAPTURE(dtype_name);
          CAPTURE(training);
          const btx::MoEConfig o{.num_experts = kE,
                                 .router = std::string(name) == "switch"
                                               ? btx::RouterChoice(name, {{"capacity_factor", 1.0}})
                                               : btx::RouterChoice(name)};
          auto gate = btx::find_router(name)->make_router(o, kD, 1);
          gate->to(device, dtype);  // as upcycling a bf16 model does
          gate->train(training);
          auto x_TD = torch::randn({T, kD}, torch::TensorOptions().dtype(dtype).device(device));
          const btx::RoutingResult r = route_any(*gate, x_TD);
          const int64_t K = btx::active_experts(o);
          const auto math = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
          CHECK(name_of(r.indices_TK) == "Long");
          CHECK(r.indices_TK.device() == device);
          CHECK(r.indices_TK.sizes() == torch::IntArrayRef({T, K}));
          CHECK(r.indices_TK.min().item<int64_t>() >= 0);
          CHECK(r.indices_TK.max().item<int64_t>() < kE);
          for (const auto* t : {&r.weights_TK, &r.logits_TE, &r.probs_TE}) {
            CHECK(name_of(*t) == c10::toString(math));
            CHECK(t->device() == device);
          }
          CHECK(r.weights_TK.sizes() == torch::IntArrayRef({T, K}));
          CHECK(r.logits_TE.sizes() == torch::IntArrayRef({T, kE}));
          CHECK(r.probs_TE.sizes() == torch::IntArrayRef({T, kE}));
          if (r.dropped_TK.defined()) {
            CHECK(name_of(r.dropped_TK) == "Bool");
            CHECK(r.dropped_TK.device() == device);
            CHECK(r.dropped_TK.sizes() == torch::IntArrayRef({T, K}));
          }
          CHECK(r.dropped_TK.defined() == (std::string(name) == "switch"));
        }
      }
    }
  }
}

TEST_CASE("router registry: make_moe_layer puts the router on the experts' device and dtype") {
  auto experts = std::make_shared<btx::PackedSwiGLU>(kE, kD, 8);
  experts->to(torch::kFloat64);
  auto layer = btx::make_moe_layer({.num_experts = kE, .router = "top2"}, 0, experts);
  auto params = layer.ptr()->named_parameters();
  CHECK(name_of(params["gate.weight"]) == "Double");
  auto x = torch::randn({3, kD}, torch::kFloat64);
  CHECK(name_of(layer.forward(x)) == "Double");
  // A layer whose experts and router disagree on E is refused by the MoE layer.
  CHECK_THROWS_WITH_AS(btx::make_moe_layer({.num_experts = 3, .router = "top2"}, 0, experts),
                       doctest::Contains("num_experts"), std::invalid_argument);
}

TEST_CASE("router registry: a resolved router is looked up once, wherever it then travels") {
  const auto& registry = btx::router_registry();
  const uint64_t before = registry.lookups();
  const btx::MoEConfig moe =
      btx::resolved({.num_experts = 3, .router = {"switch", {{"capacity_factor", 2.0}}}});
  CHECK(registry.lookups() == before + 1);
  CHECK(moe.router.options == nlohmann::json({{"capacity_factor", 2.0}}));
  // Its layers, its FLOP accounting, a model of a family and sparse upcycling: no look-up.
  btx::LlamaForCausalLM model(tiny_config(), btx::moe_feed_forward(moe));
  CHECK(btx::active_experts(moe) == 1);
  btx::check_router(moe);
  auto* layer = dynamic_cast<btx::MoEImpl<btx::Switch, btx::PackedSwiGLU>*>(
      model->model->layer(1).mlp.ptr().get());
  REQUIRE(layer != nullptr);
  CHECK(layer->gate().capacity_factor() == 2.0);
  btx::LlamaForCausalLM dense(tiny_config());
  (void)btx::merge::upcycled(btx::LlamaFamily::wrap(dense), moe);
  CHECK(registry.lookups() == before + 1);
  // A choice built from a name alone is looked up where it is used.
  (void)btx::active_experts({.num_experts = 3, .router = "top2"});
  CHECK(registry.lookups() == before + 2);
}
