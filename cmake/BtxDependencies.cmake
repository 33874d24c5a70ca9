# SPDX-License-Identifier: MIT
# Finds what btx::btx carries: LibTorch, nlohmann_json, range-v3 and xxHash's header.
# A user's own LibTorch given by CMAKE_PREFIX_PATH or Torch_DIR is found first; the
# quickstart script appends the venv wheel's prefix after it.
if(TARGET torch)
  set(Torch_FOUND TRUE)  # a parent project found LibTorch already: use its targets
else()
  # Under add_subdirectory/FetchContent the parent links btx::btx, which names torch's
  # imported targets: they must be visible outside this directory.
  if(NOT PROJECT_IS_TOP_LEVEL)
    set(CMAKE_FIND_PACKAGE_TARGETS_GLOBAL ON)
  endif()
  find_package(Torch QUIET)
endif()
if(NOT Torch_FOUND)
  message(FATAL_ERROR
    "btx needs LibTorch and none was found.\n"
    "Either point CMake at it: -DCMAKE_PREFIX_PATH=/path/to/libtorch (or -DTorch_DIR=...),\n"
    "or use a PyTorch wheel: -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')\n"
    "The README's quickstart script does the latter in a local venv.")
endif()
message(STATUS "btx: LibTorch ${Torch_VERSION} from ${Torch_DIR}")
set(CMAKE_FIND_PACKAGE_TARGETS_GLOBAL OFF)

if(NOT TARGET nlohmann_json::nlohmann_json)
  find_package(nlohmann_json 3.10 REQUIRED)
endif()
if(NOT TARGET range-v3::range-v3)
  find_package(range-v3 REQUIRED)
endif()
# xxHash (Debian libxxhash-dev), used header-only (XXH_INLINE_ALL) for content hashes.
find_path(BTX_XXHASH_INCLUDE_DIR xxhash.h)
if(NOT BTX_XXHASH_INCLUDE_DIR)
  message(FATAL_ERROR "btx needs xxhash.h (Debian/Ubuntu: apt-get install libxxhash-dev; "
                      "or -DBTX_XXHASH_INCLUDE_DIR=/path/to/xxHash)")
endif()

# TORCH_CXX_FLAGS is one string ("-D_GLIBCXX_USE_CXX11_ABI=1"); targets need a list.
function(btx_torch_cxx_flags out)
  separate_arguments(_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  set(${out} ${_flags} PARENT_SCOPE)
endfunction()
