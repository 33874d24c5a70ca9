#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Set-up for tests/python/test_llama_cpp.py (llama.cpp as a tested client), idempotent:
# a few seconds when everything is there, ~10 min on 2 cores the first time (~1 min of
# pip installs, then llama.cpp built from llama-cpp-python's sdist, 193 compile steps).
# It makes, under build/ (git-ignored):
#   build/llama-cpp-venv/   a venv: torch (CPU wheel, installed first or pip pulls CUDA),
#                           transformers, safetensors, sentencepiece, protobuf, numpy, the
#                           gguf-py deps, and llama-cpp-python built from the pinned sdist
#   build/llama-cpp-work/   that sdist and its extracted tree, whose
#                           vendor/llama.cpp/convert_hf_to_gguf.py is the converter and
#                           vendor/llama.cpp/gguf-py the gguf package it is run with
# Env: BTX_LLAMA_CPP_VENV / BTX_LLAMA_CPP_WORK move those folders;
#      BTX_LLAMA_CPP_PYTHON_VERSION picks another llama-cpp-python (one pin for the library
#      and the converter, so both come from the same llama.cpp commit).
# Heavy steps run under `nice -n 19` with CMAKE_BUILD_PARALLEL_LEVEL=$(nproc).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=${BTX_LLAMA_CPP_PYTHON_VERSION:-0.3.36}
venv=${BTX_LLAMA_CPP_VENV:-$root/build/llama-cpp-venv}
work=${BTX_LLAMA_CPP_WORK:-$root/build/llama-cpp-work}
py="$venv/bin/python"
say() { printf '[llama.cpp env] %4ds %s\n' "$SECONDS" "$*" >&2; }
pip() { nice -n 19 "$py" -m pip "$@"; }

mkdir -p "$work"
# One set-up at a time (ctest -j may start several llama.cpp tests at once).
exec 9>"$work/.setup.lock"
flock 9
if [ ! -x "$py" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
if ! "$py" -c 'import torch' 2>/dev/null; then
  say "installing torch==2.13.0 (CPU wheel) first"
  pip install -q torch==2.13.0
fi
if ! "$py" -c 'import transformers, safetensors, sentencepiece, google.protobuf, numpy, yaml, tqdm, requests' 2>/dev/null; then
  say "installing the converter's and the test's Python packages"
  pip install -q numpy sentencepiece transformers safetensors protobuf pyyaml tqdm requests
fi

sdist="$work/llama_cpp_python-$version.tar.gz"
src="$work/llama_cpp_python-$version"
if [ ! -f "$sdist" ]; then
  say "downloading the llama-cpp-python $version sdist"
  pip download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$version"
fi
if [ ! -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  say "extracting $sdist"
  tar -xzf "$sdist" -C "$work"
fi
have=$("$py" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)
if [ "$have" != "$version" ]; then
  say "building llama-cpp-python $version (llama.cpp from source; slow, log: $work/build.log)"
  start=$SECONDS
  if ! CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
       pip install -v "$sdist" >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    say "FAILED to build llama-cpp-python (see $work/build.log)"
    exit 1
  fi
  say "built llama-cpp-python in $((SECONDS - start)) s"
fi
say "ready: $py, converter $src/vendor/llama.cpp/convert_hf_to_gguf.py"
