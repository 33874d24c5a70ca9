// SPDX-License-Identifier: MIT
// doctest entry point for btx-tests; torch runs single-threaded so results are exact
// and the two cores stay free for ctest's parallel jobs.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <torch/torch.h>

#include <cstdio>

namespace {

// CTest runs each test case through a name filter; a name the filter cannot express
// (a ';' splits it in CMake) would match nothing and "pass". Count what passed the
// filters so an empty selection fails instead.
bool test_run_ended = false;  // false for queries such as --list-test-cases
unsigned selected_test_cases = 0;

struct SelectionCounter : doctest::IReporter {
  explicit SelectionCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    test_run_ended = true;
    selected_test_cases = stats.numTestCasesPassingFilters;
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("selection_counter", 1, SelectionCounter);

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (rc == 0 && test_run_ended && selected_test_cases == 0) {
    std::fprintf(stderr, "btx-tests: no test case matches the given filters\n");
    return 1;
  }
  return rc;
}
