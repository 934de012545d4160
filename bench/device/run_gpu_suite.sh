#!/usr/bin/env bash
# The native plugin's GPU suite in one call, for the device machine (H200): GPU tests, sanitizers,
# the TensorRT glue check, the lookup benchmark against HierarchicalKV and cuCollections, and Nsight
# Compute metrics of the lookup kernels. Logs go to $OUT (or ./out); a short table is printed last.
#
#   bash bench/device/run_gpu_suite.sh                      # everything
#   STEPS="tests sanitizer" bash bench/device/run_gpu_suite.sh
#
# Steps (STEPS, in this order): tests (pytest tests/gpu), sanitizer (compute-sanitizer memcheck,
# racecheck, synccheck on hps_gpu_driver), glue (hps_trt_glue_check), peers (bench/peers/lookup_peers),
# ncu (kernel metrics of our lookup and the cuco gather at dim 128).
# Inputs, all optional:
#   BUILD=build/plugin        libhps_plugin.so, hps_gpu_driver, hps_trt_glue_check; built with cmake
#                             when missing (NLOHMANN_JSON_DIR: a folder holding nlohmann/json.hpp)
#   PEERS=build/peers/lookup_peers   built by bench/peers/build.sh "$PEER_SOURCES" when missing
#   BASELINE_LIB=...          another libhps_plugin.so measured beside ours at --compare-dims
#   PEERS_ARGS="..."          extra lookup_peers arguments (e.g. "--dims 128 --variants lib,u8")
#   NCU_ARGS="..."            extra lookup_peers arguments for the ncu step
#   .whl/*.whl                Python wheels the tests need and the machine lacks (installed to /tmp/site)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
STEPS="${STEPS:-tests sanitizer glue peers ncu}"
BUILD="${BUILD:-build/plugin}"
PEERS="${PEERS:-build/peers/lookup_peers}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/machine.txt"
nvcc --version 2>/dev/null | tail -1 >> "$OUT/machine.txt"

if [ ! -f "$BUILD/libhps_plugin.so" ]; then
  extra=()
  [ -n "${NLOHMANN_JSON_DIR:-}" ] && extra+=("-DCMAKE_CXX_FLAGS=-I$NLOHMANN_JSON_DIR" "-Dnlohmann_json_DIR=$NLOHMANN_JSON_DIR")
  cmake -S plugin -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90 "${extra[@]}" > "$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" -j"$(nproc)" >> "$OUT/build.log" 2>&1 || { note "plugin build FAILED (build.log)"; exit 1; }
fi
if has peers || has ncu; then
  if [ ! -x "$PEERS" ]; then
    bench/peers/build.sh "${PEER_SOURCES:?PEERS missing: set PEER_SOURCES (bench/peers/fetch_sources.sh)}" \
      "$(dirname "$PEERS")" >> "$OUT/build.log" 2>&1 || { note "peer build FAILED (build.log)"; exit 1; }
  fi
fi
export HPS_SURGEON_PLUGIN_LIB="$PWD/$BUILD/libhps_plugin.so"

if has tests; then
  if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      > "$OUT/pip.log" 2>&1 || note "wheel install failed (pip.log)"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  start=$SECONDS
  PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" timeout 400 python3 -m pytest -q -p no:cacheprovider tests/gpu \
    > "$OUT/tests.log" 2>&1
  note "tests/gpu: $(tail -1 "$OUT/tests.log") ($((SECONDS - start)) s)"
fi

if has sanitizer; then
  : > "$OUT/sanitizer.log"
  for dim in 16 128; do
    for tool in "memcheck --leak-check full" "racecheck" "synccheck"; do
      timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/hps_gpu_driver" /tmp/hps_drv 2048 "$dim" \
        >> "$OUT/sanitizer.log" 2>&1
      rc=$?
      note "compute-sanitizer ${tool%% *} dim $dim: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -1) (exit $rc)"
    done
  done
fi

if has glue && [ -x "$BUILD/hps_trt_glue_check" ]; then
  timeout 60 "$BUILD/hps_trt_glue_check" > "$OUT/glue.log" 2>&1
  note "hps_trt_glue_check: exit $? ($(tail -1 "$OUT/glue.log"))"
fi

if has peers; then
  libs=(--lib "ours=$PWD/$BUILD/libhps_plugin.so")
  [ -n "${BASELINE_LIB:-}" ] && libs+=(--lib "pre=$BASELINE_LIB")
  # shellcheck disable=SC2086
  timeout 420 "$PEERS" "${libs[@]}" --json "$OUT/peers.json" ${PEERS_ARGS:-} > "$OUT/peers.log" 2>&1
  note "lookup_peers: exit $?"
  sed -n '/^summary/,$p' "$OUT/peers.log" >> "$SUMMARY"
fi

if has ncu; then
  # One call of each kernel of interest at dim 128; counters read without touching clocks.
  # shellcheck disable=SC2086
  timeout 240 ncu --clock-control none --target-processes all --kernel-name-base function \
    --kernel-name regex:'resident|gather_rows|find' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,sm__inst_issued.avg.pct_of_peak_sustained_active \
    "$PEERS" --profile --dims 128 --systems variants,cuco ${NCU_ARGS:-} > "$OUT/ncu.txt" 2>&1
  note "ncu: exit $? ($(grep -c ', Context [0-9]*, Stream' "$OUT/ncu.txt") kernel reports)"
fi

echo
echo "===== summary ====="
cat "$SUMMARY"
