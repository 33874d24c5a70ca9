# SPDX-License-Identifier: MIT
# Builds and runs one tiny consumer project that uses btx the way a user would (cmake -P).
# WAY: find_package | fetch_content | add_subdirectory. No build type: unoptimised, it
# compiles in a fraction of Release's time, and the test is about the build, not speed.
set(work ${BTX_BINARY_DIR}/consumers/${WAY})
string(REPLACE "|" ";" prefix "${PREFIX_PATH}")
if(WAY STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BTX_BINARY_DIR} --prefix ${work}/install
    RESULT_VARIABLE rc OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cmake --install of btx failed (${rc})")
  endif()
  list(PREPEND prefix ${work}/install)
endif()
find_program(ccache ccache)
set(launcher)
if(ccache)
  set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${ccache})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${BTX_SOURCE_DIR}/tests/consumers/${WAY}
    -B ${work}/build -G ${GENERATOR} -DCMAKE_BUILD_TYPE= "-DCMAKE_PREFIX_PATH=${prefix}"
    -DTorch_DIR=${Torch_DIR} -DBTX_SOURCE_DIR=${BTX_SOURCE_DIR} ${launcher}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the ${WAY} consumer failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${work}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the ${WAY} consumer failed (${rc})")
endif()
execute_process(COMMAND ${work}/build/consumer RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message(STATUS "${out}")
if(NOT rc EQUAL 0 OR NOT out MATCHES "btx consumer ok")
  message(FATAL_ERROR "the ${WAY} consumer did not run (${rc}): ${out}")
endif()
