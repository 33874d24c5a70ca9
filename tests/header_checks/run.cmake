# SPDX-License-Identifier: MIT
# Configures and builds tests/header_checks with COMPILER (cmake -P): the test passes when
# every header compiles alone.
string(REPLACE "|" ";" prefix "${PREFIX_PATH}")
set(work ${BTX_BINARY_DIR}/header_checks)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${BTX_SOURCE_DIR}/tests/header_checks -B ${work}
    -G ${GENERATOR} -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_COMPILER=${COMPILER}
    "-DCMAKE_PREFIX_PATH=${prefix}" -DTorch_DIR=${Torch_DIR} -DBTX_SOURCE_DIR=${BTX_SOURCE_DIR}
    "-DBTX_GLOO_INCLUDE_DIR=${BTX_GLOO_INCLUDE_DIR}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the header checks failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${work} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "a header does not compile on its own (${rc}): see the errors above")
endif()
