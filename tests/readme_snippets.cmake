# SPDX-License-Identifier: MIT
# Turns every ```cpp block of the given Markdown files (README.md and docs/*.md) into one
# translation unit: #include lines go to the top, each block's other lines into a function
# of its own, so a snippet that no longer compiles against the headers fails the build (and
# the test that builds it). Files are separated by '|' (a CMake list would split the -D).
#   cmake -DMARKDOWN="README.md|docs/library.md" -DOUT=snippets.cpp -P readme_snippets.cmake
string(REPLACE "|" ";" files "${MARKDOWN}")
set(includes "")
set(bodies "")
set(n 0)
foreach(file IN LISTS files)
  file(STRINGS "${file}" lines ENCODING UTF-8)
  get_filename_component(name "${file}" NAME)
  set(in_block OFF)
  foreach(line IN LISTS lines)
    if(NOT in_block AND line MATCHES "^```cpp")
      set(in_block ON)
      math(EXPR n "${n} + 1")
      string(APPEND bodies "// from ${name}\n[[maybe_unused]] static void snippet_${n}() {\n")
    elseif(in_block AND line MATCHES "^```")
      set(in_block OFF)
      string(APPEND bodies "}\n\n")
    elseif(in_block)
      if(line MATCHES "^#include")
        string(APPEND includes "${line}\n")
      else()
        string(APPEND bodies "${line}\n")
      endif()
    endif()
  endforeach()
endforeach()
if(n EQUAL 0)
  message(FATAL_ERROR "no ```cpp blocks in ${MARKDOWN}")
endif()
file(WRITE "${OUT}.new"
  "// Generated from the Markdown files by tests/readme_snippets.cmake: do not edit.\n${includes}\n${bodies}")
file(COPY_FILE "${OUT}.new" "${OUT}" ONLY_IF_DIFFERENT)
