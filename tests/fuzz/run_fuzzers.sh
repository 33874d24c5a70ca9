#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer targets (the `fuzz` preset, build-fuzz/) and runs each for a bounded
# time on its seed corpus. Exits non-zero when a target crashes; the input is saved under
# build-fuzz/crashes/ and belongs in tests/fuzz/regressions/<target>/ once fixed.
#   tests/fuzz/run_fuzzers.sh [TARGET...]     targets: safetensors index config yaml
#                                             pipeline_config merge_config (default: all)
# Environment: BTX_FUZZ_SECONDS (per target, default 8), CMAKE_PREFIX_PATH (LibTorch; else
# the .venv's torch wheel), BTX_FUZZ_JOBS (build jobs, default nproc).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
say() { printf '[btx-fuzz] %s\n' "$*" >&2; }
seconds=${BTX_FUZZ_SECONDS:-5}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors index config yaml pipeline_config merge_config)
build="$root/build-fuzz"

if [ ! -f "$build/CMakeCache.txt" ]; then
  prefix=${CMAKE_PREFIX_PATH:-}
  if [ -z "$prefix" ] && [ -x "$root/.venv/bin/python" ]; then
    prefix=$("$root/.venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  fi
  say "configuring $build (cmake --preset fuzz)"
  cmake --preset fuzz ${prefix:+"-DCMAKE_PREFIX_PATH=$prefix"} >/dev/null
fi
say "building ${targets[*]}"
cmake --build "$build" -j "${BTX_FUZZ_JOBS:-$(nproc)}" \
  $(printf -- '--target fuzz_%s ' "${targets[@]}")

# LibTorch is not instrumented and keeps allocations in caches it frees at exit only:
# leak checks would blame torch, so they are off (ASan still checks every access).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
mkdir -p "$build/crashes" "$build/logs"
# One line per target for the record (benchmarks/RESULTS.md keeps the long campaigns):
# executions and their rate; edges (cov), features (ft) and the in-memory corpus (corp:
# inputs/bytes) at start-up (INITED) and at the end. The corpus folder keeps more files than
# libFuzzer's corpus: inputs it later replaced by smaller ones stay on disk.
final_stat() { grep -Eo "stat::$2: *[0-9]+" "$1" | grep -Eo '[0-9]+$' || echo '?'; }
status_of() { grep -Eo "$2 +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*" "$1" | tail -n 1 |
  sed -E "s/^$2 +//"; }
summary() {
  printf '%s runs, %s/s; start %s; end %s' "$(final_stat "$1" number_of_executed_units)" \
    "$(final_stat "$1" average_exec_per_sec)" "$(status_of "$1" INITED)" "$(status_of "$1" DONE)"
}
failed=()
for t in "${targets[@]}"; do
  work="$build/corpus/$t"  # grows across runs; the committed seeds stay read-only
  mkdir -p "$work"
  log="$build/logs/$t.log"
  dict=()  # the config targets' keys and edge values: text mutations rarely guess them
  case $t in
    yaml | pipeline_config | merge_config) dict=(-dict="$root/tests/fuzz/tool_configs.dict") ;;
  esac
  say "fuzz_$t: ${seconds}s on $(ls "$root/tests/fuzz/corpus/$t" | wc -l) seeds (+ $(ls "$work" | wc -l) found earlier)"
  if "$build/bin/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 -artifact_prefix="$build/crashes/$t-" ${dict[@]+"${dict[@]}"} \
      "$work" "$root/tests/fuzz/corpus/$t" >"$log" 2>&1; then
    say "fuzz_$t: ok ($(summary "$log"))"
  else
    say "fuzz_$t: FAILED; last lines of $log:"
    tail -n 40 "$log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  say "crashed: ${failed[*]}. Inputs: $(ls "$build"/crashes/ | tr '\n' ' ')"
  say "reproduce: $build/bin/fuzz_<target> <input>; once fixed, add the input to tests/fuzz/regressions/<target>/"
  exit 1
fi
say "all fuzz targets ran ${seconds}s each without a crash"
