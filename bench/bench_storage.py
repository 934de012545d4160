"""Storage-tier benchmark (issue 14), run on the GPU machine in one go:

1. publish throughput of one table into a 3-master Redis Cluster on loopback and into RocksDB on
   local disk (SST ingestion), against raw baselines measured in the same run (`redis-benchmark
   --cluster -t hset -P` and RocksDB's `db_bench fillrandom` with the same value size);
2. lookup time and hit rates of 131072 x 26 keys (Zipf 1.05 and 1.2) through libhps_plugin.so with
   (a) the host-memory tier (whole table in pinned host memory), (b) Redis Cluster, (c) RocksDB, each
   with a GPU cache of --cache-ratio of the rows; the GPU hit rate next to the static top-k optimum
   of the key distribution; every result compared with the table byte for byte;
3. lookup time against the miss rate (Redis, cache ratios swept), with the distinct keys fetched per
   batch and the tiers' own fetch of that many distinct keys (hps_tiers_fetch) as the baseline;
4. a Redis node killed while serving with RocksDB below (exact results, counted), and an online
   update made visible by hps_refresh;
5. the host-memory tier's two miss paths per batch size: the zero-copy kernel and the copy-engine
   path (HPS_COPY_ENGINE_MIN_KEYS=0), Zipf 1.05 and 1.2.

It needs no hps_surgeon import (the device image lacks some of its dependencies): the two C ABIs
are called through ctypes here. Each section's failure is recorded in the results and the others
still run. Usage (see BENCHMARKS.md for the command used):
    python3 bench/bench_storage.py --lib-dir build/plugin --bin-dir devbin --out results.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The tests' Redis Cluster (3 masters on loopback), with the binaries of $HPS_REDIS_BIN (--bin-dir).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_servers import ENV_BIN, start_cluster  # noqa: E402

from hps_configs import model_entry  # noqa: E402  (bench/, this script's folder)

BATCH, SLOTS, DIM = 131072, 26, 128


class Tier(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("volatile_hits", "persistent_hits", "defaults", "unavailable", "corrupt",
                                               "elevated")]


class Info(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("dim", ctypes.c_int32), ("device", ctypes.c_int32),
                ("cache_slots", ctypes.c_int64), ("resident", ctypes.c_int32), ("default_value", ctypes.c_float)]


class Stats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("lookups", "cache_hits", "host_hits", "not_found", "insertions",
                                               "evictions")]


def libs(lib_dir: Path):
    storage = ctypes.CDLL(str(lib_dir / "libhps_storage.so"))
    plugin = ctypes.CDLL(str(lib_dir / "libhps_plugin.so"))
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    storage.hps_storage_last_error.restype = ctypes.c_char_p
    plugin.hps_last_error.restype = ctypes.c_char_p
    storage.hps_db_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, i32, ctypes.POINTER(vp)]
    storage.hps_db_publish.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p, i32, i64, i64, i64, vp, vp,
                                       ctypes.POINTER(i64), ctypes.POINTER(i64)]
    storage.hps_db_insert.argtypes = [vp, ctypes.c_char_p, vp, i64, vp, i32]
    storage.hps_db_close.argtypes = [vp]
    plugin.hps_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, i32, i32, ctypes.POINTER(vp)]
    plugin.hps_lookup.argtypes = [vp, vp, i32, i64, vp, vp]
    plugin.hps_stats.argtypes = [vp, ctypes.POINTER(Stats)]
    plugin.hps_tier_stats.argtypes = [vp, ctypes.POINTER(Tier)]
    plugin.hps_refresh.argtypes = [vp, ctypes.c_double, ctypes.POINTER(i64)]
    plugin.hps_table_info.argtypes = [vp, ctypes.POINTER(Info)]
    plugin.hps_close.argtypes = [vp]
    storage.hps_tiers_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, i32, ctypes.POINTER(vp)]
    storage.hps_tiers_fetch.argtypes = [vp, vp, i64, vp]
    storage.hps_tiers_close.argtypes = [vp]
    return storage, plugin


def ok(lib, status, what):
    if status != 0:
        err = (lib.hps_storage_last_error if hasattr(lib, "hps_storage_last_error") else lib.hps_last_error)()
        raise RuntimeError(f"{what}: status {status}: {err.decode()}")


def write_table(folder: Path, rows: int, seed: int):
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.int64(1) << 40, size=rows, replace=False).astype(np.int64)
    folder.mkdir(parents=True)
    keys.astype("<i8").tofile(folder / "key")
    step = 1 << 18
    with open(folder / "emb_vector", "wb") as f:
        for r in range(0, rows, step):
            rng.standard_normal((min(step, rows - r), DIM), dtype=np.float32).tofile(f)
    return keys


def config(path: Path, ratio: float, volatile=None, persistent=None, refresh=None):
    c = {"supportlonglong": True, "models": [model_entry("bench", "t0", DIM, ratio, BATCH, SLOTS)]}
    if volatile:
        c["volatile_db"] = volatile
    if persistent:
        c["persistent_db"] = persistent
    path.write_text(json.dumps(c))
    return path


def zipf_rows(rng, alpha, n, rows, perm):
    return perm[(rng.zipf(alpha, size=n) - 1) % rows]


_ROW_COUNTS: dict = {}


def topk_optimum(alpha: float, rows: int, k: int, draws: int = 10_000_000) -> float:
    """Hit rate of the best static cache of k rows under zipf_rows, estimated from draws: the better
    of two fixed sets scored on an independent sample, ranks 0..k-1 (the Zipf head) and the k rows
    most drawn in a first sample (which also catches the rows numpy's wrapped tail favours: its
    sampler departs from the exact truncated Zipf far in the tail, so no closed form is used).
    Scoring a set on the draws that chose it would favour lucky rows."""
    if (alpha, rows, draws) not in _ROW_COUNTS:
        rng = np.random.default_rng(123)
        _ROW_COUNTS[(alpha, rows, draws)] = [
            np.bincount((rng.zipf(alpha, size=draws) - 1) % rows, minlength=rows) for _ in range(2)]
    choose, score = _ROW_COUNTS[(alpha, rows, draws)]
    most_drawn = np.argpartition(choose, rows - k)[rows - k:] if k < rows else np.arange(rows)
    return float(max(score[:k].sum(), score[most_drawn].sum()) / score.sum())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def open_table(plugin, cfg: Path, label: str, env: dict | None = None):
    """hps_open with the environment variables in env set while it reads them."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        h = ctypes.c_void_p()
        t = time.perf_counter()
        ok(plugin, plugin.hps_open(str(cfg).encode(), b"bench", 0, 0, ctypes.byref(h)), f"open {label}")
        return h, time.perf_counter() - t
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stats(plugin, h) -> Stats:
    s = Stats()
    ok(plugin, plugin.hps_stats(h, ctypes.byref(s)), "stats")
    return s


def tier_stats(plugin, h) -> dict:
    t = Tier()
    ok(plugin, plugin.hps_tier_stats(h, ctypes.byref(t)), "tier stats")
    return {f: int(getattr(t, f)) for f, _ in Tier._fields_}


class Bench:
    def __init__(self, args, storage, plugin, torch, keys, vectors):
        self.args, self.storage, self.plugin, self.torch = args, storage, plugin, torch
        self.keys, self.vectors = keys, vectors
        self.perm = np.random.default_rng(3).permutation(args.rows)

    def run(self, cfg: Path, alpha: float, label: str, iters: int, warmup: int = 2, env: dict | None = None,
            batch: int = BATCH):
        """Opens the table and measures it (see measure). Returns (handle, entry)."""
        h, open_s = open_table(self.plugin, cfg, label, env)
        entry = self.measure(h, alpha, label, iters, warmup, batch)
        entry["open_s"] = open_s
        return h, entry

    def measure(self, h, alpha: float, label: str, iters: int, warmup: int = 2, batch: int = BATCH,
                seed: int = 11) -> dict:
        """Fresh Zipf batches: warm-up, then timed (wall clock, lookup to synchronised result); GPU hit
        rate = cache hits / found keys; the last batch compared with the table bit for bit. The
        draws depend on (seed, batch): the same for the tables compared, never a warm-up's again."""
        torch, plugin = self.torch, self.plugin
        rng = np.random.default_rng((seed, batch))
        out = torch.empty((batch * SLOTS, DIM), dtype=torch.float32, device="cuda")
        times, rates, fetched, exact = [], [], [], True
        for it in range(iters + warmup):
            rows_idx = zipf_rows(rng, alpha, batch * SLOTS, self.args.rows, self.perm)
            k = torch.from_numpy(self.keys[rows_idx]).cuda()
            torch.cuda.synchronize()
            s0, t0 = stats(plugin, h), tier_stats(plugin, h)
            t = time.perf_counter()
            ok(plugin, plugin.hps_lookup(h, k.data_ptr(), 64, k.numel(), out.data_ptr(),
                                         torch.cuda.current_stream().cuda_stream), "lookup")
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            s1, t1 = stats(plugin, h), tier_stats(plugin, h)
            if it >= warmup:
                times.append(dt * 1e3)
                found = (s1.cache_hits - s0.cache_hits) + (s1.host_hits - s0.host_hits)
                rates.append((s1.cache_hits - s0.cache_hits) / max(found, 1))
                fetched.append(sum(t1[f] - t0[f] for f in ("volatile_hits", "persistent_hits", "defaults")))
            if it == iters + warmup - 1:  # exactness of the last batch, every key
                got = out.cpu().numpy()
                exact = bool(np.array_equal(got.view(np.uint32), np.asarray(self.vectors[rows_idx]).view(np.uint32)))
        if not times:  # warm-up only
            return {}
        info = Info()
        ok(plugin, plugin.hps_table_info(h, ctypes.byref(info)), "info")
        entry = {"tier": label, "alpha": alpha, "batch": [batch, SLOTS], "median_ms": float(np.median(times)),
                 "all_ms": times, "gpu_hit_rate": float(np.mean(rates)),
                 "topk_optimum": topk_optimum(alpha, self.args.rows, int(info.cache_slots)),
                 "cache_slots": int(info.cache_slots), "distinct_fetched_per_batch": float(np.mean(fetched)),
                 "exact": exact, "tier_stats": tier_stats(plugin, h)}
        log(json.dumps({k: v for k, v in entry.items() if k != "all_ms"}))
        return entry


def section(res: dict, name: str, fn, out: Path) -> None:
    """Runs one section; a failure is recorded and the next section runs. The results so far are
    written after each section (a run cut short by a time limit keeps them)."""
    t = time.perf_counter()
    log(f"section {name}")
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
        res.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        log(f"section {name} FAILED: {exc}")
    res.setdefault("section_s", {})[name] = time.perf_counter() - t
    out.write_text(json.dumps(res, indent=1))


def publish_section(args, storage, res, cluster, vsec, psec, env):
    table_mb = args.rows * DIM * 4 / 1e6
    for name, sec in (("volatile_db", vsec), ("persistent_db", psec)):
        h = ctypes.c_void_p()
        ok(storage, storage.hps_db_open(name.encode(), json.dumps(sec).encode(), 64, ctypes.byref(h)), name)
        rows_out, new = ctypes.c_int64(), ctypes.c_int64()
        t = time.perf_counter()
        ok(storage, storage.hps_db_publish(h, b"hps_et.bench.t0", str(args.work / "t0").encode(), DIM, 0, -1, 65536,
                                           None, None, ctypes.byref(rows_out), ctypes.byref(new)), "publish")
        dt = time.perf_counter() - t
        res[f"publish_{name}_MBps"] = table_mb / dt
        res[f"publish_{name}_s"] = dt
        ok(storage, storage.hps_db_close(h), "close")
    n_raw = min(args.rows, 1_000_000)
    out = subprocess.run([str(args.bin_dir / "redis-benchmark"), "--cluster", "-h", "127.0.0.1", "-p",
                          str(cluster.ports[0]), "-t", "hset", "-n", str(n_raw), "-d", str(DIM * 4), "-P", "64",
                          "-c", "48", "-r", str(args.rows), "-q"], capture_output=True, env=env, timeout=300)
    text = out.stdout.decode() + out.stderr.decode()
    m = re.findall(r"HSET: ([\d.]+) requests per second", text)
    res["raw_redis_benchmark_hset"] = text.strip().splitlines()[-1:] if text else []
    if m:
        res["raw_redis_MBps"] = float(m[-1]) * DIM * 4 / 1e6
    out = subprocess.run([str(args.bin_dir / "db_bench"), f"--db={args.work}/rawdb", "--benchmarks=fillrandom",
                          f"--num={n_raw}", "--key_size=8", f"--value_size={DIM * 4}", "--batch_size=1000",
                          "--disable_wal=0", "--sync=0", "--threads=1"], capture_output=True, env=env, timeout=300)
    text = out.stdout.decode()
    m = re.search(r"fillrandom\s*:\s*([\d.]+) micros/op\s+(\d+) ops/sec", text)
    if m:
        res["raw_rocksdb_ops"] = float(m.group(2))
        res["raw_rocksdb_MBps_values"] = float(m.group(2)) * DIM * 4 / 1e6
    res["raw_rocksdb_db_bench"] = [line for line in text.splitlines() if "fillrandom" in line]
    log(json.dumps({k: v for k, v in res.items() if k.startswith(("publish", "raw"))}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib-dir", type=Path, required=True)
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cache-ratio", type=float, default=0.1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--sections", default="publish,lookups,sweep,faults,host_paths")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hps_bench")
    args = ap.parse_args()
    import torch

    env = dict(os.environ)
    storage, plugin = libs(args.lib_dir)
    sections = set(args.sections.split(","))
    res = {"rows": args.rows, "dim": DIM, "batch": [BATCH, SLOTS], "cache_ratio": args.cache_ratio,
           "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count()}
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    keys = write_table(args.work / "t0", args.rows, 7)
    vectors = np.memmap(args.work / "t0" / "emb_vector", dtype="<f4", mode="r").reshape(args.rows, DIM)
    res["table_write_s"] = time.perf_counter() - t0
    bench = Bench(args, storage, plugin, torch, keys, vectors)
    os.environ[ENV_BIN] = str(args.bin_dir)
    cluster = start_cluster(args.work / "redis")
    vsec = {"type": "redis_cluster", "address": cluster.address, "num_partitions": 8,
            "initialize_after_startup": False}
    psec = {"type": "rocks_db", "path": str(args.work / "rocks"), "initialize_after_startup": False}
    try:
        # 1. publish throughput vs raw (the lookups below need the published tables).
        section(res, "publish", lambda: publish_section(args, storage, res, cluster, vsec, psec, env), args.out)

        # 2. lookups per tier.
        def lookups():
            configs = {"host_memory": config(args.work / "host.json", args.cache_ratio),
                       "redis": config(args.work / "redis.json", args.cache_ratio, volatile=vsec),
                       "rocksdb": config(args.work / "rocks.json", args.cache_ratio, persistent=psec)}
            res["lookups"] = []
            for label, cfg in configs.items():
                for alpha in (1.05, 1.2):
                    h, entry = bench.run(cfg, alpha, label, args.iters)
                    res["lookups"].append(entry)
                    ok(plugin, plugin.hps_close(h), "close")

        if "lookups" in sections:
            section(res, "lookups", lookups, args.out)

        # 3. lookup time vs miss rate, with the tiers' own fetch of as many distinct keys.
        def sweep():
            res["miss_sweep"] = []
            tiers = ctypes.c_void_p()
            redis_cfg = config(args.work / "redis_sweep.json", args.cache_ratio, volatile=vsec)
            ok(storage, storage.hps_tiers_open(str(redis_cfg).encode(), b"bench", 0, ctypes.byref(tiers)), "tiers")
            uniq = np.unique(keys[zipf_rows(np.random.default_rng(5), 1.05, BATCH * SLOTS, args.rows, bench.perm)])
            for ratio in (0.01, 0.03, 0.1, 0.3):
                h, entry = bench.run(config(args.work / f"sweep{ratio}.json", ratio, volatile=vsec), 1.05,
                                     f"redis@{ratio}", 3)
                entry["cache_ratio"] = ratio
                n = int(min(entry["distinct_fetched_per_batch"], uniq.size))
                sample = np.ascontiguousarray(uniq[:n])
                values = np.empty((n, DIM), dtype=np.float32)
                fetch_ms = []
                for _ in range(3):
                    t = time.perf_counter()
                    ok(storage, storage.hps_tiers_fetch(tiers, sample.ctypes.data, n, values.ctypes.data), "fetch")
                    fetch_ms.append((time.perf_counter() - t) * 1e3)
                entry["tiers_fetch_ms_same_distinct"] = float(np.median(fetch_ms))
                res["miss_sweep"].append(entry)
                log(f"  ratio {ratio}: lookup {entry['median_ms']:.1f} ms, {n} distinct fetched, "
                    f"hps_tiers_fetch of {n} distinct keys {entry['tiers_fetch_ms_same_distinct']:.1f} ms")
                ok(plugin, plugin.hps_close(h), "close")
            ok(storage, storage.hps_tiers_close(tiers), "close tiers")

        if "sweep" in sections:
            section(res, "sweep", sweep, args.out)

        # 4. online update then fault: Redis in front of RocksDB.
        if "faults" in sections:
            section(res, "faults", lambda: faults_section(args, storage, plugin, torch, res, cluster, keys, vectors,
                                                          vsec, psec), args.out)
        # 5. host-memory tier: zero-copy kernel vs copy-engine path per batch size.
        def host_paths():
            res["host_paths"] = []
            cfg = config(args.work / "host_paths.json", args.cache_ratio)
            for alpha in (1.05, 1.2):
                for path, threshold in (("zero_copy", "never"), ("copy_engine", "0")):
                    # One table per path, warmed up on two full batches, then each batch size in turn.
                    h, _ = open_table(plugin, cfg, path, {"HPS_COPY_ENGINE_MIN_KEYS": threshold})
                    bench.measure(h, alpha, f"host_memory/{path} warm-up", 0, warmup=2, seed=7)
                    for batch in (256, 1024, 4096, 16384, 65536, BATCH):
                        entry = bench.measure(h, alpha, f"host_memory/{path}", 5, warmup=1, batch=batch)
                        entry["path"] = path
                        res["host_paths"].append(entry)
                    ok(plugin, plugin.hps_close(h), "close")

        if "host_paths" in sections:
            section(res, "host_paths", host_paths, args.out)

    finally:
        cluster.stop()
        args.out.write_text(json.dumps(res, indent=1))
    log(json.dumps({k: v for k, v in res.items() if k not in ("lookups", "miss_sweep", "host_paths")}, indent=1))


def faults_section(args, storage, plugin, torch, res, cluster, keys, vectors, vsec, psec):
    both = config(args.work / "both.json", args.cache_ratio, volatile=vsec, persistent=psec)
    h, _ = open_table(plugin, both, "both")
    sample = np.random.default_rng(5).choice(args.rows, 200_000, replace=False)
    k = torch.from_numpy(keys[sample]).cuda()
    out = torch.empty((k.numel(), DIM), dtype=torch.float32, device="cuda")
    for _ in range(3):  # seen often enough to be admitted
        ok(plugin, plugin.hps_lookup(h, k.data_ptr(), 64, k.numel(), out.data_ptr(), 0), "warm")
    torch.cuda.synchronize()
    hv = ctypes.c_void_p()
    ok(storage, storage.hps_db_open(b"volatile_db", json.dumps(vsec).encode(), 64, ctypes.byref(hv)), "open v")
    upd = sample[:1000]
    new_vals = np.full((upd.size, DIM), 42.0, dtype=np.float32)
    ukeys = np.ascontiguousarray(keys[upd])
    ok(storage, storage.hps_db_insert(hv, b"hps_et.bench.t0", ukeys.ctypes.data, ukeys.size, new_vals.ctypes.data,
                                      DIM), "update")
    ok(storage, storage.hps_db_close(hv), "close v")
    ok(plugin, plugin.hps_lookup(h, k.data_ptr(), 64, k.numel(), out.data_ptr(), 0), "lookup before refresh")
    torch.cuda.synchronize()
    stale = int(np.sum(np.all(out.cpu().numpy()[:1000] == 42.0, axis=1)))
    refreshed = ctypes.c_int64()
    t = time.perf_counter()
    ok(plugin, plugin.hps_refresh(h, 1.0, ctypes.byref(refreshed)), "refresh")
    refresh_s = time.perf_counter() - t
    ok(plugin, plugin.hps_lookup(h, k.data_ptr(), 64, k.numel(), out.data_ptr(), 0), "lookup after refresh")
    torch.cuda.synchronize()
    res["update"] = {"updated_rows": 1000, "served_new_before_refresh": stale, "refreshed_rows": int(refreshed.value),
                     "refresh_s": refresh_s,
                     "served_new_after_refresh": int(np.sum(np.all(out.cpu().numpy()[:1000] == 42.0, axis=1)))}
    log(json.dumps(res["update"]))
    # A node killed while serving: misses on its partitions come from RocksDB (rows not updated).
    rest = sample[1000:]
    k2 = torch.from_numpy(keys[np.random.default_rng(6).choice(args.rows, 400_000)]).cuda()
    ok(plugin, plugin.hps_lookup(h, k2.data_ptr(), 64, k2.numel(),
                                 torch.empty((k2.numel(), DIM), device="cuda").data_ptr(), 0), "churn")
    cluster.kill_node(cluster.ports[1])
    time.sleep(0.5)
    k = torch.from_numpy(keys[rest]).cuda()
    out = torch.empty((k.numel(), DIM), dtype=torch.float32, device="cuda")
    ok(plugin, plugin.hps_lookup(h, k.data_ptr(), 64, k.numel(), out.data_ptr(), 0), "lookup after kill")
    torch.cuda.synchronize()
    res["fault"] = {"exact": bool(np.array_equal(out.cpu().numpy(), np.asarray(vectors[rest]))),
                    "tier_stats": tier_stats(plugin, h)}
    log(json.dumps(res["fault"]))
    ok(plugin, plugin.hps_close(h), "close")


if __name__ == "__main__":
    sys.exit(main())
