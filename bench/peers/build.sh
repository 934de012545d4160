#!/usr/bin/env bash
# Builds bench/peers/lookup_peers: our lookup against HierarchicalKV and cuCollections (issue 15).
#
#   bench/peers/build.sh SOURCES [OUT]     # OUT defaults to build/peers
#
# SOURCES holds the peers' public sources, never committed here (bench/peers/fetch_sources.sh makes
# it): SOURCES/HierarchicalKV/include and SOURCES/cuCollections/include, each with a COMMIT file.
# Needs nvcc 13.0 (CUDA 13's CCCL 3.0; cuCollections dc0f9fc predates it, hence cccl3_compat.cuh)
# and no other library: Hopper (sm_90) code only, static CUDA runtime, so the binary runs on the H200
# machine whichever machine built it. Four translation units, compiled in parallel.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
src="$(cd "${1:?usage: build.sh SOURCES [OUT]}" && pwd)"
out="${2:-$repo/build/peers}"
mkdir -p "$out"
for p in HierarchicalKV cuCollections; do
  [ -d "$src/$p/include" ] || { echo "$src/$p/include missing: run bench/peers/fetch_sources.sh $src" >&2; exit 1; }
done

nvcc_flags=(-std=c++17 -O3 -DNDEBUG -gencode arch=compute_90,code=sm_90 -cudart static -lineinfo
            --expt-relaxed-constexpr --expt-extended-lambda -Xcompiler -pthread
            -I "$repo/plugin/include" -I "$repo/plugin/src")
hkv=(-I "$src/HierarchicalKV/include")
cuco=(-include "$here/cccl3_compat.cuh" -I "$src/cuCollections/include")

# A translation unit is recompiled when it or a header it includes is newer than its object.
pids=()
compile() {  # name "header..." extra-flags...
  local name=$1 deps=$2 f stale=0
  shift 2
  [ -f "$out/$name.o" ] || stale=1
  for f in "$here/$name.cu" "$here/bench.hpp" $deps; do [ "$f" -nt "$out/$name.o" ] && stale=1; done
  [ $stale = 1 ] || return 0
  nvcc "${nvcc_flags[@]}" "$@" -c "$here/$name.cu" -o "$out/$name.o" 2> "$out/$name.log" &
  pids+=($!)
}
compile lookup_peers "$repo/plugin/include/hps_plugin/hps.h"
compile ours_variants "$(echo "$repo"/plugin/src/*.cuh)" -Xptxas -v  # registers and spills: ours_variants.log
compile peer_cuco "$here/cccl3_compat.cuh" "${cuco[@]}"
compile peer_hkv "" "${hkv[@]}"
for p in "${pids[@]}"; do wait "$p" || { tail -n 30 "$out"/*.log >&2; exit 1; }; done
nvcc "${nvcc_flags[@]}" "$out"/{lookup_peers,ours_variants,peer_cuco,peer_hkv}.o -o "$out/lookup_peers" -ldl
{
  echo "HierarchicalKV $(cat "$src/HierarchicalKV/COMMIT" 2>/dev/null || echo '?')"
  echo "cuCollections $(cat "$src/cuCollections/COMMIT" 2>/dev/null || echo '?')"
  nvcc --version | tail -2
} > "$out/VERSIONS.txt"
echo "built $out/lookup_peers"
cat "$out/VERSIONS.txt"
