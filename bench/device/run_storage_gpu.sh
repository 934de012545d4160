#!/usr/bin/env bash
# The storage tiers' GPU run in one call, for the device machine (H200): the GPU tests of the
# database tiers and of the copy-engine miss path (plus the native-core tests, which share the
# hierarchical kernel), then bench/bench_storage.py. Logs and results go to $OUT (or ./out).
#
# Nothing is built there (no registry, no nlohmann-json, no hiredis/RocksDB headers): carry
#   build/plugin/{libhps_plugin.so,libhps_storage.so}   built here (nvcc 13.0, sm_90)
#   devbin/  Debian's redis-server, redis-cli, redis-benchmark, db_bench
#   devlib/  their libraries and librocksdb / libhiredis for the two .so files above
#   .whl/    onnx-graphsurgeon, polygraphy, jsonschema (+ deps): hps_surgeon imports them
# Inputs (all optional): STEPS ("tests bench"), TESTS_TIMEOUT (100 s), BENCH_TIMEOUT (190 s),
# BENCH_ARGS (extra bench_storage.py arguments), TESTS (test files). On the H200 the tests took 44 s
# and the benchmark about 190 s (its results are written after each section).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
STEPS="${STEPS:-tests bench}"
TESTS="${TESTS:-tests/gpu/test_tiers_gpu.py tests/gpu/test_copy_engine_gpu.py tests/gpu/test_native_gpu.py}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1

export LD_LIBRARY_PATH="$PWD/devlib:$PWD/build/plugin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HPS_REDIS_BIN="$PWD/devbin" PATH="$PWD/devbin:$PATH"
export HPS_SURGEON_PLUGIN_LIB="$PWD/build/plugin/libhps_plugin.so"
export HPS_SURGEON_STORAGE_LIB="$PWD/build/plugin/libhps_storage.so"
note "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(nproc) CPUs; redis $(devbin/redis-server --version | cut -d' ' -f3)"
ldd build/plugin/libhps_plugin.so | grep -q "not found" && { note "missing libraries:"; ldd build/plugin/libhps_plugin.so | grep "not found" | tee -a "$SUMMARY"; }

if has tests; then
  if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      > "$OUT/pip.log" 2>&1 || note "wheel install failed (pip.log)"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # The package as pip would install it: patterns/ ships inside it as hps_surgeon.patterns.
  rm -rf /tmp/hps_pkg && mkdir -p /tmp/hps_pkg && cp -r src/hps_surgeon /tmp/hps_pkg/ && cp -r patterns /tmp/hps_pkg/hps_surgeon/
  start=$SECONDS
  # shellcheck disable=SC2086
  PYTHONPATH="/tmp/hps_pkg${PYTHONPATH:+:$PYTHONPATH}" timeout "${TESTS_TIMEOUT:-100}" \
    python3 -m pytest -q -p no:cacheprovider -rfs $TESTS > "$OUT/tests.log" 2>&1
  note "pytest: $(tail -1 "$OUT/tests.log") ($((SECONDS - start)) s)"
fi

if has bench; then
  start=$SECONDS
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-190}" python3 bench/bench_storage.py --lib-dir build/plugin --bin-dir devbin \
    --rows 2000000 --iters 3 --out "$OUT/storage_h200.json" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
  note "bench_storage: exit $? ($((SECONDS - start)) s); errors: $(python3 -c "import json; print(json.load(open('$OUT/storage_h200.json')).get('errors', 'none'))" 2>&1)"
fi
cat "$SUMMARY"
