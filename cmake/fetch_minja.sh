#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cmake/fetch_minja.sh PYTHON DEST: minja, Google's header-only Jinja for chat templates (MIT;
# the engine llama.cpp vendored), as DEST/minja/{minja,chat-template}.hpp, with the real
# models' chat templates llama.cpp tests it on (DEST/templates/*.jinja, which btx's tests
# render against transformers). Both come from the llama-cpp-python 0.3.16 sdist on PyPI,
# the last that vendors minja (later ones carry llama.cpp's own engine). Quick when DEST
# already has them; nothing is left at DEST when a step fails.
set -euo pipefail
py=$1 dest=$2
version=0.3.16
[ -f "$dest/minja/minja.hpp" ] && [ -d "$dest/templates" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp" 2>/dev/null
top=llama_cpp_python-$version/vendor/llama.cpp
tar -xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp" "$top/vendor/minja" "$top/models/templates" "$top/LICENSE"
mkdir -p "$tmp/out/minja"
cp "$tmp/$top/vendor/minja/"*.hpp "$tmp/out/minja/"
cp "$tmp/$top/LICENSE" "$tmp/out/minja/LICENSE.llama.cpp"
cp -r "$tmp/$top/models/templates" "$tmp/out/templates"
echo "llama-cpp-python==$version (PyPI sdist): vendor/llama.cpp/vendor/minja, models/templates" > "$tmp/out/SOURCE"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp/out" "$dest"
