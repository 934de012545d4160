#!/usr/bin/env bash
# The native plugin's GPU suite in one call, for the device machine (H200): GPU tests, sanitizers,
# the TensorRT glue check, the lookup benchmark against HierarchicalKV and cuCollections, our kernel
# variants, and Nsight Compute metrics of the lookup kernels. Logs go to $OUT (or ./out); a short
# table is printed last.
#
#   bash bench/device/run_gpu_suite.sh                         # everything
#   STEPS="tests sanitizer" bash bench/device/run_gpu_suite.sh
#
# Steps (STEPS, run in the order given; default: all, as listed):
#   tests      pytest $TESTS (default tests/gpu)                              -> checks.log
#   sanitizer  compute-sanitizer memcheck/racecheck/synccheck on hps_gpu_driver -> checks.log
#   glue       hps_trt_glue_check                                             -> checks.log
#   peers      lookup_peers: ours (resident, hierarchical, CUDA graph, latency) against cuco and HKV,
#              every dim and key distribution                              -> peers.log, peers.json
#   variants   lookup_peers: variants of our resident kernel (a separate process, so an experiment
#              that faults cannot take the peer table with it)         -> variants.log, variants.json
#   ncu        Nsight Compute metrics of our kernels, the gather ceiling and cuco at dim 128 -> ncu.txt
# Inputs, all optional:
#   BUILD=build/plugin        libhps_plugin.so, hps_gpu_driver, hps_trt_glue_check; built with cmake
#                             when missing. The machine has no nlohmann-json: unpack it here
#                             (apt-get download nlohmann-json3-dev; dpkg-deb -x *.deb .deps/nlohmann)
#                             and set NLOHMANN_JSON_DIR=.deps/nlohmann/usr/share/cmake/nlohmann_json
#   PEERS=build/peers/lookup_peers   built by bench/peers/build.sh "$PEER_SOURCES" when missing
#   BASELINE_LIB=...          another libhps_plugin.so measured beside ours (lookup_peers --compare-dims)
#   PEERS_ARGS, VARIANTS_ARGS, NCU_ARGS   extra lookup_peers arguments for those steps
#   PEERS_SYSTEMS, PEERS_TIMEOUT   the peers step's --systems (lib,hier,cuco,hkv,hkv_hybrid) and limit (420 s)
#   TESTS_TIMEOUT, SANITIZER_TIMEOUT   seconds per pytest run / sanitizer run (400 / 150)
#   SANITIZER_RUNS            "tool:dim;..." (memcheck --leak-check full:16;racecheck:16;synccheck:16;memcheck --leak-check full:128)
#   .whl/*.whl                Python wheels the tests need and the machine lacks (installed to /tmp/site)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
STEPS="${STEPS:-tests sanitizer glue peers variants ncu}"
TESTS="${TESTS:-tests/gpu}"
BUILD="${BUILD:-build/plugin}"
PEERS="${PEERS:-build/peers/lookup_peers}"
SUMMARY="$OUT/summary.txt"
CHECKS="$OUT/checks.log"
: > "$SUMMARY"
: > "$CHECKS"
note() { echo "$*" | tee -a "$SUMMARY"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1

note "machine: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader); $(nvcc --version 2>/dev/null | tail -1)"

if [ ! -f "$BUILD/libhps_plugin.so" ]; then
  extra=()
  [ -n "${NLOHMANN_JSON_DIR:-}" ] && extra+=("-Dnlohmann_json_DIR=$(cd "$NLOHMANN_JSON_DIR" && pwd)")
  { cmake -S plugin -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90 "${extra[@]}" && cmake --build "$BUILD" -j"$(nproc)"; } \
    >> "$CHECKS" 2>&1 || { note "plugin build FAILED (checks.log)"; exit 1; }
fi
if has peers || has variants || has ncu; then
  if [ ! -x "$PEERS" ]; then
    bench/peers/build.sh "${PEER_SOURCES:?PEERS missing: set PEER_SOURCES (bench/peers/fetch_sources.sh)}" \
      "$(dirname "$PEERS")" >> "$CHECKS" 2>&1 || { note "peer build FAILED (checks.log)"; exit 1; }
  fi
fi
export HPS_SURGEON_PLUGIN_LIB="$PWD/$BUILD/libhps_plugin.so"
# hps_gpu_driver and hps_trt_glue_check find libhps_plugin.so here when built on another machine;
# devlib/ holds hiredis, RocksDB and their libraries for a library built elsewhere (the device
# machine has none: see bench/device/run_storage_gpu.sh).
export LD_LIBRARY_PATH="$PWD/$BUILD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d devlib ] && export LD_LIBRARY_PATH="$PWD/devlib:$LD_LIBRARY_PATH"

step_tests() {
  if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >> "$CHECKS" 2>&1 || note "wheel install failed (checks.log)"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # The package as pip would install it: patterns/ ships inside it as hps_surgeon.patterns.
  rm -rf /tmp/hps_pkg && mkdir -p /tmp/hps_pkg && cp -r src/hps_surgeon /tmp/hps_pkg/ && cp -r patterns /tmp/hps_pkg/hps_surgeon/
  start=$SECONDS
  # shellcheck disable=SC2086
  PYTHONPATH="/tmp/hps_pkg${PYTHONPATH:+:$PYTHONPATH}" timeout "${TESTS_TIMEOUT:-400}" python3 -m pytest -q -p no:cacheprovider $TESTS \
    > "$OUT/tests.tmp" 2>&1
  note "pytest $TESTS: $(tail -1 "$OUT/tests.tmp") ($((SECONDS - start)) s)"
  cat "$OUT/tests.tmp" >> "$CHECKS" && rm -f "$OUT/tests.tmp"
}

step_sanitizer() {
  local run tool dim rc runs
  IFS=';' read -ra runs <<< "${SANITIZER_RUNS:-memcheck --leak-check full:16;racecheck:16;synccheck:16;memcheck --leak-check full:128}"
  for run in "${runs[@]}"; do
    tool=${run%:*} dim=${run##*:}
    timeout "${SANITIZER_TIMEOUT:-150}" compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/hps_gpu_driver" /tmp/hps_drv 2048 "$dim" \
      > "$OUT/san.tmp" 2>&1
    rc=$?
    note "compute-sanitizer ${tool%% *}, hps_gpu_driver dim $dim: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san.tmp" | tail -1); driver: $(grep -E '^(OK|FAILED)' "$OUT/san.tmp" | tail -1) (exit $rc)"
    cat "$OUT/san.tmp" >> "$CHECKS" && rm -f "$OUT/san.tmp"
  done
}

step_glue() {
  [ -x "$BUILD/hps_trt_glue_check" ] || { note "hps_trt_glue_check: not built (TENSORRT_ROOT)"; return; }
  mkdir -p /tmp/hps_glue
  timeout 60 "$BUILD/hps_trt_glue_check" /tmp/hps_glue > "$OUT/glue.tmp" 2>&1
  note "hps_trt_glue_check: exit $? ($(tail -1 "$OUT/glue.tmp"))"
  cat "$OUT/glue.tmp" >> "$CHECKS" && rm -f "$OUT/glue.tmp"
}

libs=(--lib "ours=$PWD/$BUILD/libhps_plugin.so")
[ -n "${BASELINE_LIB:-}" ] && libs+=(--lib "pre=$BASELINE_LIB")
step_peers() {
  # shellcheck disable=SC2086
  timeout "${PEERS_TIMEOUT:-420}" "$PEERS" "${libs[@]}" --systems "${PEERS_SYSTEMS:-lib,hier,cuco,hkv,hkv_hybrid}" --json "$OUT/peers.json" ${PEERS_ARGS:-} \
    > "$OUT/peers.log" 2>&1
  note "lookup_peers (peers): exit $?"
  sed -n '/^summary/,$p' "$OUT/peers.log" >> "$SUMMARY"
}

step_variants() {
  # shellcheck disable=SC2086
  timeout 300 "$PEERS" --systems variants --json "$OUT/variants.json" ${VARIANTS_ARGS:-} > "$OUT/variants.log" 2>&1
  note "lookup_peers (variants): exit $?"
  # The short table: dim 128, uniform keys, batch and 1024 x 26 (everything else: variants.log).
  awk '/^=== dim/ {d = $3} d == 128 && /uniform/ && (/ batch / || /latency1024/)' "$OUT/variants.log" >> "$SUMMARY"
}

step_ncu() {
  # One call of each kernel of interest; counters read without touching the clocks.
  # shellcheck disable=SC2086
  timeout 240 ncu --clock-control none --target-processes all --kernel-name-base function \
    --kernel-name regex:'resident|gather_rows|known_rows|find' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,sm__inst_issued.avg.pct_of_peak_sustained_active \
    "$PEERS" --profile --dims 128 --systems variants,cuco ${NCU_ARGS:-} > "$OUT/ncu.txt" 2>&1
  note "ncu: exit $? ($(grep -c ', Context [0-9]*, Stream' "$OUT/ncu.txt") kernel reports)"
}

for step in $STEPS; do
  case $step in
    tests | sanitizer | glue | peers | variants | ncu) "step_$step" ;;
    *) note "unknown step $step" ;;
  esac
done

echo
echo "===== summary ====="
cat "$SUMMARY"
