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

# One precompiled header shared by every btx target (REUSE_FROM): torch/torch.h alone
# costs ~20 s per translation unit on a small machine.
if(BTX_USE_PCH)
  add_library(btx_pch OBJECT ${CMAKE_CURRENT_LIST_DIR}/pch.cpp)
  target_link_libraries(btx_pch PUBLIC btx::btx)
  target_compile_options(btx_pch PRIVATE ${BTX_WARNINGS})
  target_precompile_headers(btx_pch PRIVATE
    <torch/torch.h> <nlohmann/json.hpp> <vector> <string> <memory> <optional>
    <functional> <stdexcept> <filesystem>)
endif()

# btx_target(<target>): applies btx's conventions to one of its own targets (which all
# may use btx's distributed part, so they link btx::dist).
function(btx_target target)
  target_link_libraries(${target} PRIVATE btx::dist)
  target_compile_options(${target} PRIVATE ${BTX_WARNINGS})
  if(BTX_USE_PCH)
    target_precompile_headers(${target} REUSE_FROM btx_pch)
  endif()
endfunction()
