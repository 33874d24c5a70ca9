#!/bin/sh
# SPDX-License-Identifier: MIT
# Compiler launcher of the header checks: a check's translation unit is compiled with
# -fsyntax-only (every error a header can have is a parse or semantic one, and skipping code
# generation saves about a quarter of each check's time), then its object file is created
# empty so the build stays incremental; the dependency file is written as usual. Everything
# else (the precompiled header) is compiled as given.
out=""
prev=""
check=0
for arg in "$@"; do
  [ "$prev" = "-o" ] && out=$arg
  case $arg in */checks/*.cpp) check=1 ;; esac
  prev=$arg
done
if [ "$check" = 1 ] && [ -n "$out" ]; then
  "$@" -fsyntax-only && : >"$out"
else
  exec "$@"
fi
