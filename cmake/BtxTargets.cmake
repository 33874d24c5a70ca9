# SPDX-License-Identifier: MIT
# Conventions for btx's own targets (tests, examples, benchmarks): strict warnings,
# one shared precompiled torch header, ccache. Consumers of btx::btx get none of this.
if(BTX_USE_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  find_program(BTX_CCACHE ccache)
  if(BTX_CCACHE)
    # Precompiled headers are cacheable only with these sloppiness settings.
    set(CMAKE_CXX_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env
        "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
        ${BTX_CCACHE})
  endif()
endif()

# Designated initializers that leave defaulted fields out are idiomatic C++20: no warning.
set(BTX_WARNINGS -Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers)
# GCC's -Wmaybe-uninitialized depends on inlining decisions and fires on std::string and
# std::variant members of aggregates (GCC 12 false positives, moved by unrelated edits).
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  list(APPEND BTX_WARNINGS -Wno-maybe-uninitialized)
endif()

# btx's own programs spend their time in LibTorch's kernels, not in btx's code: -O1
# compiles them ~40% faster than Release's -O3 (the test command's build is most of its
# time) at no measurable cost to how fast they run (benchmarks/RESULTS.md). Empty: the
# build type's own flags. Users' targets linking btx::btx are never affected.
set(BTX_OWN_OPTIMIZATION "-O1" CACHE STRING
  "Optimisation flag of btx's own targets in Release builds (empty: the build type's)")
set(BTX_OWN_FLAGS ${BTX_WARNINGS})
if(BTX_OWN_OPTIMIZATION)
  list(APPEND BTX_OWN_FLAGS $<$<CONFIG:Release>:${BTX_OWN_OPTIMIZATION}>)
endif()

# One precompiled header shared by every btx target (REUSE_FROM): torch/torch.h alone
# costs ~20 s per translation unit on a small machine.
if(BTX_USE_PCH)
  add_library(btx_pch OBJECT ${CMAKE_CURRENT_LIST_DIR}/pch.cpp)
  target_link_libraries(btx_pch PUBLIC btx::btx)
  target_compile_options(btx_pch PRIVATE ${BTX_OWN_FLAGS})
  target_precompile_headers(btx_pch PRIVATE
    <torch/torch.h> <nlohmann/json.hpp> <vector> <string> <memory> <optional>
    <functional> <stdexcept> <filesystem>)
endif()

# Every btx program parses its command line with CLI11 (tools/common/cli.hpp),
# header-only (Debian libcli11-dev).
find_package(CLI11 CONFIG REQUIRED)

# btx_target(<target>): applies btx's conventions to one of its own targets (which all
# may use btx's distributed part, so they link btx::dist, and CLI11).
function(btx_target target)
  target_link_libraries(${target} PRIVATE btx::dist CLI11::CLI11)
  target_compile_options(${target} PRIVATE ${BTX_OWN_FLAGS})
  if(BTX_USE_PCH)
    target_precompile_headers(${target} REUSE_FROM btx_pch)
  endif()
endfunction()
