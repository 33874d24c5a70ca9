# SPDX-License-Identifier: MIT
# Fails if any C++ file in btx is not clang-formatted (cmake -P; CLANG_FORMAT, ROOT).
file(GLOB_RECURSE files ${ROOT}/include/*.hpp ${ROOT}/examples/*.cpp ${ROOT}/examples/*.hpp
  ${ROOT}/tools/*.cpp ${ROOT}/tools/*.hpp ${ROOT}/kernels/*.cpp ${ROOT}/kernels/*.hpp ${ROOT}/kernels/*.cu
  ${ROOT}/tests/*.cpp ${ROOT}/tests/*.hpp ${ROOT}/benchmarks/*.cpp ${ROOT}/benchmarks/*.hpp)
set(bad)
foreach(f IN LISTS files)
  execute_process(COMMAND ${CLANG_FORMAT} --dry-run -Werror ${f} RESULT_VARIABLE rc
    OUTPUT_QUIET ERROR_QUIET)
  if(NOT rc EQUAL 0)
    list(APPEND bad ${f})
  endif()
endforeach()
if(bad)
  string(REPLACE ";" "\n  " bad "${bad}")
  message(FATAL_ERROR "not clang-formatted (run clang-format -i on them):\n  ${bad}")
endif()
