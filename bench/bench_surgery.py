"""Benchmark of the surgery itself (issue 2, "Speed and memory"): `hps-surgeon rewrite` on a DLRM-like model.

Generates (untimed) a model shaped like torch's legacy DLRM export (fixtures/README.md, `dlrm_small`):
`sparse_keys` int64 [batch, 26]; per table i `Gather(axis=1, sparse_keys, Const(i))` -> `/emb_l.i/Gather`
on `emb_l.i.weight` (float32, dims 64..128) -> Concat with a small bottom MLP -> top MLP -> Sigmoid.
Tables total --gb GiB in ONE external-data file (or --files N), written in chunks from one repeated
random block, so generating needs little memory. Then times, in one run, medians of --repeat runs:

* (a) `hps-surgeon rewrite MODEL --out DIR --force --quiet` (subprocess), peak RSS from wait4;
  plus the graph-only part: the API stages on the same model, and the CLI on a same-graph twin
  whose tables have 8 rows;
* (b) a competent user's script: `onnx.load` (external data in memory), onnx-graphsurgeon surgery by
  node name, `ndarray.tofile` per table (+ key file), save the model;
* (c) the HugeCTR HPS demo notebooks' `convert_to_sparse_model` (one `struct.pack` per row) on a
  --small-gb model, scaled by bytes;
* (d) `cp` of the external-data file.

Every variant is timed alike: the page cache is dropped before each run (when root; else runs are
warm and the report says so) and, inside the timed window, every file the run wrote is fsynced
after the process exits (a no-op for (a), which fsyncs itself). `uptime` is recorded beside each row.

    python bench/bench_surgery.py surgery --workdir /work/bench_tmp --gb 4 --repeat 3
    python bench/bench_surgery.py scaling --workdir /work/bench_tmp
    python bench/bench_surgery.py profile --workdir /work/bench_tmp --nodes 100000
    python bench/bench_surgery.py rowloop --workdir /work/bench_tmp --dim 16 --small-gb 0.05 --gb 4

Not a test: prints a table and writes JSON (--json); numbers go to bench/SURGERY_RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

NUM_TABLES = 26
DENSE = 13
GiB = 1 << 30
_BLOCK_BYTES = 64 << 20


def log(*args: object) -> None:
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------
# model generation (untimed)


def table_shapes(total_bytes: int, num_tables: int = NUM_TABLES, dim: int | None = None) -> list[tuple[int, int]]:
    """(rows, dim) per table: dims 64..128 in steps of 16 (or all `dim`), sizes skewed like Criteo's."""
    dims = [dim or 64 + 16 * (i % 5) for i in range(num_tables)]
    weights = [(1 + (i * 7) % 11) ** 2 for i in range(num_tables)]
    scale = total_bytes / sum(weights)
    shapes = []
    for dim, weight in zip(dims, weights):
        rows = max(8, -(-int(weight * scale) // (dim * 4)))  # round up: total >= total_bytes
        shapes.append((rows, dim))
    return shapes


def _external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _write_repeated(f, block: bytes, length: int) -> None:
    done = 0
    while done < length:
        n = min(len(block), length - done)
        f.write(block[:n] if n < len(block) else block)
        done += n


def make_dlrm(folder: Path, total_bytes: int, files: int = 1, seed: int = 0, dim: int | None = None) -> Path:
    """Write folder/model.onnx + external data (tables only) spread over `files` files; return the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    block = rng.standard_normal(_BLOCK_BYTES // 4, dtype=np.float32).tobytes()
    shapes = table_shapes(total_bytes, dim=dim)
    names = ["model.onnx.data"] if files == 1 else [f"model.onnx.data.{k}" for k in range(files)]
    handles = [open(folder / n, "wb") for n in names]
    inits, nodes, emb_outs = [], [], []
    try:
        for i, (rows, dim) in enumerate(shapes):
            k = i % files
            f = handles[k]
            offset = (f.tell() + 4095) // 4096 * 4096  # page-aligned, as onnx's own writer can do
            f.seek(offset)
            length = rows * dim * 4
            _write_repeated(f, block, length)
            table = TensorProto(name=f"emb_l.{i}.weight", data_type=TensorProto.FLOAT, dims=[rows, dim])
            _external(table, names[k], offset, length)
            inits.append(table)
            nodes.append(helper.make_node("Constant", [], [f"/Constant_{i}_output_0"], name=f"/Constant_{i}",
                                          value=helper.make_tensor("v", TensorProto.INT64, [], [i])))
            nodes.append(helper.make_node("Gather", ["sparse_keys", f"/Constant_{i}_output_0"],
                                          [f"/Gather_{i}_output_0"], name=f"/Gather_{i}", axis=1))
            nodes.append(helper.make_node("Gather", [table.name, f"/Gather_{i}_output_0"],
                                          [f"/emb_l.{i}/Gather_output_0"], name=f"/emb_l.{i}/Gather"))
            emb_outs.append(f"/emb_l.{i}/Gather_output_0")
    finally:
        for f in handles:
            f.close()

    def dense(name: str, shape: list[int]) -> None:
        inits.append(onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.05).astype(np.float32), name))

    dense("bot_l.0.weight", [64, DENSE]), dense("bot_l.0.bias", [64])
    dense("bot_l.1.weight", [16, 64]), dense("bot_l.1.bias", [16])
    width = 16 + sum(d for _, d in shapes)
    dense("top_l.0.weight", [64, width]), dense("top_l.0.bias", [64])
    dense("top_l.1.weight", [1, 64]), dense("top_l.1.bias", [1])
    nodes += [
        helper.make_node("Gemm", ["dense_features", "bot_l.0.weight", "bot_l.0.bias"], ["/bot_l.0/Gemm_output_0"],
                         name="/bot_l.0/Gemm", transB=1),
        helper.make_node("Relu", ["/bot_l.0/Gemm_output_0"], ["/bot_l.1/Relu_output_0"], name="/bot_l.1/Relu"),
        helper.make_node("Gemm", ["/bot_l.1/Relu_output_0", "bot_l.1.weight", "bot_l.1.bias"],
                         ["/bot_l.2/Gemm_output_0"], name="/bot_l.2/Gemm", transB=1),
        helper.make_node("Relu", ["/bot_l.2/Gemm_output_0"], ["/bot_l.3/Relu_output_0"], name="/bot_l.3/Relu"),
        helper.make_node("Concat", ["/bot_l.3/Relu_output_0", *emb_outs], ["/Concat_output_0"], name="/Concat",
                         axis=1),
        helper.make_node("Gemm", ["/Concat_output_0", "top_l.0.weight", "top_l.0.bias"], ["/top_l.0/Gemm_output_0"],
                         name="/top_l.0/Gemm", transB=1),
        helper.make_node("Relu", ["/top_l.0/Gemm_output_0"], ["/top_l.1/Relu_output_0"], name="/top_l.1/Relu"),
        helper.make_node("Gemm", ["/top_l.1/Relu_output_0", "top_l.1.weight", "top_l.1.bias"],
                         ["/top_l.2/Gemm_output_0"], name="/top_l.2/Gemm", transB=1),
        helper.make_node("Sigmoid", ["/top_l.2/Gemm_output_0"], ["click_probability"], name="/Sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "dlrm_bench",
        [helper.make_tensor_value_info("dense_features", TensorProto.FLOAT, ["batch", DENSE]),
         helper.make_tensor_value_info("sparse_keys", TensorProto.INT64, ["batch", NUM_TABLES])],
        [helper.make_tensor_value_info("click_probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_surgery")
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path


def make_scaling_graph(folder: Path, nodes: int, lookup_every: int = 20, chain: int | None = None) -> Path:
    """~`nodes` nodes: one lookup (Gather axis=1 + Gather on a 4x8 table) per `lookup_every` nodes, each
    followed by a chain of elementwise ops (Mul/Add/Relu with small initializers), all summed at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    units = max(1, nodes // lookup_every)
    chain = lookup_every - 3 if chain is None else chain  # 2 gathers + 1 Add into the running sum
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(np.full([8], 0.5, np.float32), "scale"),
             onnx.numpy_helper.from_array(np.full([8], 0.1, np.float32), "shift")]
    out_nodes, acc = [], None
    for u in range(units):
        table = onnx.numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), f"emb_l.{u}.weight")
        idx = onnx.numpy_helper.from_array(np.array(u, np.int64), f"idx_{u}")
        inits += [table, idx]
        out_nodes.append(helper.make_node("Gather", ["sparse_keys", idx.name], [f"k{u}"], name=f"/Gather_{u}", axis=1))
        out_nodes.append(helper.make_node("Gather", [table.name, f"k{u}"], [f"e{u}_0"], name=f"/emb_l.{u}/Gather"))
        cur = f"e{u}_0"
        for c in range(chain):
            op, extra = [("Mul", ["scale"]), ("Add", ["shift"]), ("Relu", [])][c % 3]
            nxt = f"e{u}_{c + 1}"
            out_nodes.append(helper.make_node(op, [cur, *extra], [nxt], name=f"/u{u}/{op}_{c}"))
            cur = nxt
        if acc is None:
            acc = cur
        else:
            out_nodes.append(helper.make_node("Add", [acc, cur], [f"acc{u}"], name=f"/acc/Add_{u}"))
            acc = f"acc{u}"
    out_nodes.append(helper.make_node("Identity", [acc], ["out"], name="/out"))
    graph = helper.make_graph(
        out_nodes, f"scaling_{nodes}",
        [helper.make_tensor_value_info("sparse_keys", TensorProto.INT64, ["batch", units])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_surgery")
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path


# ----------------------------------------------------------------------------------------------
# the baselines (b) and (c), run as subprocesses: `bench_surgery.py user MODEL OUT --rows tofile|struct`


def user_script(model_path: str, out: str, rows: str) -> None:
    """What a competent user writes by hand (b), or with the HugeCTR notebooks' row loop (c)."""
    import struct

    import onnx_graphsurgeon as gs

    out_dir = Path(out)
    (out_dir / "tables").mkdir(parents=True)
    model = onnx.load(model_path)  # external data read into memory
    graph = gs.import_onnx(model)
    del model
    lookups = [n for n in graph.nodes if n.op == "Gather" and n.name.startswith("/emb_l.")]
    names, dims = [], []
    for table_id, node in enumerate(lookups):
        table, keys, emb = node.inputs[0], node.inputs[1], node.outputs[0]
        weights = table.values  # numpy array
        name = table.name.replace(".", "_")
        folder = out_dir / "tables" / name
        folder.mkdir()
        if rows == "tofile":
            np.arange(weights.shape[0], dtype=np.int64).tofile(folder / "key")
            weights.tofile(folder / "emb_vector")
        else:  # HugeCTR hps demo notebooks, convert_to_sparse_model
            embedding_vec_size = weights.shape[1]
            with open(folder / "key", "wb") as key_file, open(folder / "emb_vector", "wb") as vec_file:
                for key in range(weights.shape[0]):
                    vec = weights[key]
                    key_struct = struct.pack("q", key)
                    vec_struct = struct.pack(str(embedding_vec_size) + "f", *vec)
                    key_file.write(key_struct)
                    vec_file.write(vec_struct)
        del weights
        names.append(name)
        dims.append(int(table.shape[1]))
        # keys [B] int64 -> int32 [B, 1] -> HPS_TRT -> [B, 1, D] -> [B, D]
        k32 = gs.Variable(f"{node.name}/keys32", dtype=np.int32)
        k2 = gs.Variable(f"{node.name}/keys2d", dtype=np.int32)
        hps = gs.Variable(f"{node.name}/hps", dtype=np.float32)
        ax = gs.Constant(f"{node.name}/axes", np.array([1], np.int64))
        graph.nodes += [
            gs.Node("Cast", f"{node.name}/Cast", attrs={"to": TensorProto.INT32}, inputs=[keys], outputs=[k32]),
            gs.Node("Unsqueeze", f"{node.name}/Unsqueeze", inputs=[k32, ax], outputs=[k2]),
            gs.Node("HPS_TRT", f"{node.name}/HPS", domain="trt.plugins", inputs=[k2], outputs=[hps],
                    attrs={"ps_config_file": str(out_dir / "hps_config.json") + "\0", "model_name": "dlrm\0",
                           "table_id": table_id, "emb_vec_size": int(table.shape[1])}),
            gs.Node("Squeeze", f"{node.name}/Squeeze", inputs=[hps, ax], outputs=[emb]),
        ]
        node.inputs.clear()
        node.outputs.clear()
    graph.cleanup().toposort()
    out_model = gs.export_onnx(graph)
    out_model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    onnx.save(out_model, str(out_dir / "model.onnx"))
    config = {"supportlonglong": False, "models": [{
        "model": "dlrm", "sparse_files": [f"tables/{n}" for n in names], "embedding_table_names": names,
        "embedding_vecsize_per_table": dims, "maxnum_catfeature_query_per_table_per_sample": [1] * len(names),
        "default_value_for_each_table": [0.0] * len(names), "deployed_device_list": [0], "max_batch_size": 1024,
        "hit_rate_threshold": 1.0, "gpucacheper": 1.0, "gpucache": True}]}
    (out_dir / "hps_config.json").write_text(json.dumps(config, indent=2))


# ----------------------------------------------------------------------------------------------
# timing harness


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def fsync_tree(path: Path) -> None:
    """fsync every file (and folder) under path; what (a) does itself, done here for the others."""
    if path.is_file():
        paths = [path]
    else:
        paths = [Path(d) / f for d, _, fs in os.walk(path) for f in fs] + [Path(d) for d, _, _ in os.walk(path)]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def timed(cmd: list[str], out: Path, *, cold: bool, env: dict | None = None) -> dict:
    """Run cmd; wall time includes fsync of `out`; peak RSS of the process (and children it waited for)."""
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    dropped = drop_caches() if cold else False
    load = uptime()
    # Peak RSS via /usr/bin/time: Linux keeps a process's max RSS across exec, so a child forked
    # straight from this (larger) harness would report the harness's RSS as its floor.
    rss_file = out.parent / f".{out.name}.rss"
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, _ = os.wait4(proc.pid, 0)
    run_s = time.perf_counter() - start
    fsync_tree(out)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close(), proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    rss_kib = int(rss_file.read_text().split()[-1])
    rss_file.unlink()
    return {"wall_s": wall, "process_s": run_s, "rss_mib": rss_kib / 1024, "load": load,
            "cold": dropped, "stdout": stdout[-2000:]}


def tree_bytes(path: Path) -> int:
    return sum((Path(d) / f).stat().st_size for d, _, fs in os.walk(path) for f in fs)


def table_bytes(out: Path) -> tuple[int, int]:
    emb = sum(p.stat().st_size for p in (out / "tables").glob("*/emb_vector"))
    key = sum(p.stat().st_size for p in (out / "tables").glob("*/key"))
    return emb, key


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


_STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
from hps_surgeon import api, export
from hps_surgeon.load import read_model
from hps_surgeon.match import find_matches
from hps_surgeon.plan import Options, plan_rewrites
from hps_surgeon.rewrite import rewrite_model
from hps_surgeon.spec import load_patterns
t = {"import": time.perf_counter() - t0}
def lap(name, t1):
    t[name] = time.perf_counter() - t1
    return time.perf_counter()
t1 = time.perf_counter()
loaded = read_model(sys.argv[1]); t1 = lap("load_model", t1)
if len(sys.argv) > 2 and sys.argv[2] == "cache-tensors":
    # What-if for the profile finding: plan.py's _plan_table calls loaded.graph.tensors() once per
    # match (a full graph walk each); plan does not mutate the graph, so one walk is enough.
    _cached = loaded.graph.tensors()
    loaded.graph.tensors = lambda *a, **k: _cached
specs = load_patterns(None); t1 = lap("load_patterns", t1)
options = Options(model_name="bench", ps_config_file="/tmp/hps_config.json")
result = find_matches(loaded.graph, specs, options.as_match_options()); t1 = lap("find_matches", t1)
plan = plan_rewrites(loaded, result, options); t1 = lap("plan_rewrites", t1)
model = rewrite_model(loaded, plan); t1 = lap("rewrite_model", t1)
t["lookups"] = len(plan.lookups)
print(json.dumps(t))
"""


_CLI_STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
from hps_surgeon import api, cli, export, staging
t = {"import": time.perf_counter() - t0}
def wrap(mod, name, key=None):
    fn = getattr(mod, name)
    def timed(*a, **k):
        t1 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            t[key or name] = t.get(key or name, 0.0) + time.perf_counter() - t1
    setattr(mod, name, timed)
for mod, name in ((api, "_load"), (api, "load_patterns"), (api, "_match"), (api, "plan_rewrites"),
                  (export, "report"), (api, "rewrite_model"), (export, "write_model"), (export, "write_tables"),
                  (staging, "write_json"), (export, "check_written"), (staging, "_replace")):
    wrap(mod, name)
t1 = time.perf_counter()
rc = cli.main(["rewrite", sys.argv[1], "--out", sys.argv[2], "--force", "--quiet"])
t["rewrite_total"] = time.perf_counter() - t1
print(json.dumps(t))
"""


def run_cli_stages(model: Path, out: Path) -> dict:
    """The CLI's own `rewrite` in one process, with the time of each step of api.rewrite (no profiler)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", _CLI_STAGES, str(model), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_stages(model: Path, cache_tensors: bool = False) -> dict:
    cmd = [sys.executable, "-c", _STAGES, str(model)] + (["cache-tensors"] if cache_tensors else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def surgery(args: argparse.Namespace) -> dict:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cold = not args.warm
    big_bytes, small_bytes = int(args.gb * GiB), int(args.small_gb * GiB)
    res: dict = {"gb": args.gb, "files": args.files, "repeat": args.repeat}

    t = time.perf_counter()
    big = make_dlrm(work / "big", big_bytes, files=args.files)
    log(f"generated {big} ({tree_bytes(big.parent) / GiB:.2f} GiB, {args.files} data file(s)) "
        f"in {time.perf_counter() - t:.1f} s")
    small = make_dlrm(work / "small", small_bytes)
    twin = make_dlrm(work / "twin", 0)  # same graph, 8-row tables: the graph-only CLI run
    multi = make_dlrm(work / "multi", small_bytes, files=NUM_TABLES) if args.files == 1 else None
    data_file = big.parent / "model.onnx.data"
    src_table_bytes = sum(r * d * 4 for r, d in table_shapes(big_bytes))
    res["table_bytes"] = src_table_bytes
    cli = _cli()
    me = str(Path(__file__).resolve())

    def cmd_a(model: Path, out: Path) -> list[str]:
        return [*cli, "rewrite", str(model), "--out", str(out), "--force", "--quiet"]

    # graph-only: stages on the big model (no table bytes are read) and the CLI on the 8-row twin
    res["stages"] = [run_stages(big) for _ in range(args.repeat)]
    res["twin_cli"] = [timed(cmd_a(twin, work / "out_twin"), work / "out_twin", cold=False)
                       for _ in range(args.repeat)]
    res["python_startup"] = [timed([sys.executable, "-c", "import hps_surgeon.cli"], work / "none", cold=False)
                             for _ in range(args.repeat)]
    log("stages:", json.dumps(res["stages"][-1]), "twin CLI median", f"{med(res['twin_cli'], 'wall_s'):.2f} s")

    if multi is not None:  # several external-data files: must rewrite and give the same table bytes
        r = timed(cmd_a(multi, work / "out_multi"), work / "out_multi", cold=cold)
        r1 = timed(cmd_a(small, work / "out_small"), work / "out_small", cold=cold)
        same = all((work / "out_multi" / p.relative_to(work / "out_small")).read_bytes() == p.read_bytes()
                   for p in (work / "out_small" / "tables").glob("*/*"))
        res["multi_files"] = {"ok": same, "files": NUM_TABLES, "wall_s": r["wall_s"], "single_wall_s": r1["wall_s"]}
        log("multi-file external data:", res["multi_files"])

    # (c) on the small model, fewer runs
    res["c"] = [timed([sys.executable, me, "user", str(small), str(work / "out_c"), "--rows", "struct"],
                      work / "out_c", cold=cold) for _ in range(args.repeat_c)]
    res["c_table_bytes"] = table_bytes(work / "out_c")[0]
    log(f"(c) struct.pack on {res['c_table_bytes'] / 2**20:.0f} MiB: {med(res['c'], 'wall_s'):.1f} s")
    shutil.rmtree(work / "out_c", ignore_errors=True)

    # (a), (b), (d) interleaved, one round at a time, so background load hits all alike
    res["a"], res["b"], res["d"] = [], [], []
    for i in range(args.repeat):
        ra = timed(cmd_a(big, work / "out_a"), work / "out_a", cold=cold)
        ra["emb_bytes"], ra["key_bytes"] = table_bytes(work / "out_a")
        shutil.rmtree(work / "out_a")
        res["a"].append(ra)
        log(f"round {i}: (a) {ra['wall_s']:.1f} s {ra['rss_mib']:.0f} MiB load {ra['load']}")
        if not args.skip_b:
            rb = timed([sys.executable, me, "user", str(big), str(work / "out_b"), "--rows", "tofile"],
                       work / "out_b", cold=cold)
            rb["emb_bytes"], rb["key_bytes"] = table_bytes(work / "out_b")
            shutil.rmtree(work / "out_b")
            res["b"].append(rb)
            log(f"round {i}: (b) {rb['wall_s']:.1f} s {rb['rss_mib']:.0f} MiB load {rb['load']}")
        rd = timed(["cp", str(data_file), str(work / "out_d")], work / "out_d", cold=cold)
        (work / "out_d").unlink()
        res["d"].append(rd)
        log(f"round {i}: (d) {rd['wall_s']:.1f} s load {rd['load']}")
    res["d_bytes"] = data_file.stat().st_size
    return res


def summarize(res: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    a_s, d_s = med(res["a"], "wall_s"), med(res["d"], "wall_s")
    a_rss = med(res["a"], "rss_mib")
    emb = res["a"][0]["emb_bytes"]
    c_rate = res["c_table_bytes"] / med(res["c"], "wall_s")
    c_scaled = emb / c_rate
    a_gbs, d_gbs = emb / a_s / 1e9, res["d_bytes"] / d_s / 1e9
    rows.append(("(a) hps-surgeon rewrite, wall s (incl. fsync)", f"{a_s:.2f}", "", ""))
    rows.append(("(a) peak RSS MiB", f"{a_rss:.0f}", "<= 512", _met(a_rss <= 512)))
    if res["b"]:
        b_s, b_rss = med(res["b"], "wall_s"), med(res["b"], "rss_mib")
        rows.append(("(b) user script (onnx.load + gs + tofile), wall s", f"{b_s:.2f}", "", ""))
        rows.append(("(b) peak RSS MiB", f"{b_rss:.0f}", "", ""))
        rows.append(("speed (b)/(a)", f"{b_s / a_s:.2f}x", ">= 1.5x", _met(b_s / a_s >= 1.5)))
        rows.append(("RSS (a)/(b)", f"{100 * a_rss / b_rss:.1f} %", "<= 25 %", _met(a_rss / b_rss <= 0.25)))
    rows.append(("(c) struct.pack rate MiB/s (measured on small model)", f"{c_rate / 2**20:.2f}", "", ""))
    rows.append(("(c) scaled to this model, s", f"{c_scaled:.0f}", "", ""))
    rows.append(("speed (c)/(a)", f"{c_scaled / a_s:.0f}x", ">= 100x", _met(c_scaled / a_s >= 100)))
    rows.append(("(d) cp + fsync, wall s", f"{d_s:.2f}", "", ""))
    rows.append(("(a) table GB/s vs (d) GB/s", f"{a_gbs:.3f} / {d_gbs:.3f} = {100 * a_gbs / d_gbs:.0f} %",
                 ">= 50 %", _met(a_gbs / d_gbs >= 0.5)))
    rows.append(("(a) table GB/s end to end incl. fsync", f"{a_gbs:.3f}", ">= 0.6", _met(a_gbs >= 0.6)))
    stages = res["stages"]
    graph_s = statistics.median(sum(v for k, v in s.items() if k not in ("import", "lookups")) for s in stages)
    rows.append(("graph part: API stages load+match+plan+rewrite, s", f"{graph_s:.3f}", "< 1", _met(graph_s < 1)))
    twin = med(res["twin_cli"], "wall_s")
    py = med(res["python_startup"], "wall_s")
    rows.append(("graph part: CLI on 8-row twin (whole process), s", f"{twin:.2f}", "< 1", _met(twin < 1)))
    rows.append(("  of which python + imports (hps_surgeon.cli), s", f"{py:.2f}", "", ""))
    if "multi_files" in res:
        m = res["multi_files"]
        rows.append((f"external data over {m['files']} files", "identical tables" if m["ok"] else "MISMATCH",
                     "works", _met(m["ok"])))
    return rows


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    log("\n".join(lines))


def rowloop(args: argparse.Namespace) -> dict:
    """(c) vs (a) at one embedding dim: (c) (HugeCTR's struct.pack row loop) on a --small-gb model,
    (a) on a --gb model, both with every table of dim --dim; cold, interleaved, medians of --repeat."""
    work = Path(args.workdir) / f"rowloop_d{args.dim}"
    small = make_dlrm(work / "small", int(args.small_gb * GiB), dim=args.dim)
    big = make_dlrm(work / "big", int(args.gb * GiB), dim=args.dim) if args.gb else None
    cli, me = _cli(), str(Path(__file__).resolve())
    res: dict = {"dim": args.dim, "c": [], "a_small": [], "a": []}
    for i in range(args.repeat):
        rc = timed([sys.executable, me, "user", str(small), str(work / "out_c"), "--rows", "struct"],
                   work / "out_c", cold=not args.warm)
        rc["emb_bytes"], rc["key_bytes"] = table_bytes(work / "out_c")
        shutil.rmtree(work / "out_c")
        res["c"].append(rc)
        ras = timed([*cli, "rewrite", str(small), "--out", str(work / "out_as"), "--force", "--quiet"],
                    work / "out_as", cold=not args.warm)
        shutil.rmtree(work / "out_as")
        res["a_small"].append(ras)
        log(f"dim {args.dim} round {i}: (c) {rc['wall_s']:.1f} s on {rc['emb_bytes'] / 2**20:.0f} MiB, "
            f"(a) same model {ras['wall_s']:.2f} s, load {rc['load']}")
        if big is not None:
            ra = timed([*cli, "rewrite", str(big), "--out", str(work / "out_a"), "--force", "--quiet"],
                       work / "out_a", cold=not args.warm)
            ra["emb_bytes"], ra["key_bytes"] = table_bytes(work / "out_a")
            shutil.rmtree(work / "out_a")
            res["a"].append(ra)
            log(f"dim {args.dim} round {i}: (a) {ra['wall_s']:.1f} s on {ra['emb_bytes'] / 2**30:.2f} GiB, "
                f"{ra['rss_mib']:.0f} MiB, load {ra['load']}")
    c_rate = res["c"][0]["emb_bytes"] / med(res["c"], "wall_s")
    rows = [("(c) struct.pack rate, MiB/s of emb_vector", f"{c_rate / 2**20:.1f}"),
            ("(c) / (a) on the small model", f"{med(res['c'], 'wall_s') / med(res['a_small'], 'wall_s'):.0f}x")]
    if res["a"]:
        a_s = med(res["a"], "wall_s")
        c_scaled = res["a"][0]["emb_bytes"] / c_rate
        rows += [("(a) on the big model, wall s", f"{a_s:.2f}"),
                 ("(c) scaled to the big model, s", f"{c_scaled:.0f}"),
                 ("speed (c)/(a), big model", f"{c_scaled / a_s:.0f}x")]
    res["rows"] = rows
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------
# graph scaling


def scaling(args: argparse.Namespace) -> dict:
    work = Path(args.workdir) / "scaling"
    res: dict = {}
    cli = _cli()
    for n in args.nodes:
        model = make_scaling_graph(work / f"n{n}", n, args.lookup_every)
        count = len(onnx.load_model(str(model), load_external_data=False).graph.node)
        stages = [run_stages(model, args.cache_tensors) for _ in range(args.repeat)]
        out = work / f"out{n}"
        e2e = [] if args.stages_only else [
            timed([*cli, "rewrite", str(model), "--out", str(out), "--force", "--quiet"], out, cold=False)
            for _ in range(args.repeat)]
        shutil.rmtree(out, ignore_errors=True)
        res[n] = {"nodes": count, "stages": stages, "cli": e2e, "load": uptime()}
        if args.cli_stages:
            cs = [run_cli_stages(model, out) for _ in range(args.repeat)]
            res[n]["cli_stages"] = cs
            st = {k: statistics.median(c.get(k, 0.0) for c in cs) for k in cs[0]}
            tot = st["rewrite_total"]
            log(f"{count} nodes: imports {st['import']:.2f} s; api.rewrite steps (median s, share of cli.main "
                f"{tot:.2f} s): " + ", ".join(f"{k} {v:.2f} ({100 * v / tot:.0f}%)" for k, v in st.items()
                                                 if k not in ("import", "rewrite_total")))
        st = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        cli_s = f"{med(e2e, 'wall_s'):.2f} s" if e2e else "-"
        log(f"{count} nodes: CLI {cli_s} (load {uptime()}), stages {json.dumps(st)}")
    return res


def scaling_rows(res: dict) -> list[tuple[str, ...]]:
    rows = []
    for n, r in res.items():
        st = {k: statistics.median(s[k] for s in r["stages"]) for k in r["stages"][0]}
        graph = sum(v for k, v in st.items() if k not in ("import", "lookups"))
        cli_s = f"{med(r['cli'], 'wall_s'):.2f}" if r["cli"] else "-"
        rows.append((str(r["nodes"]), str(int(st["lookups"])), cli_s, f"{graph:.2f}",
                     *(f"{st[k]:.2f}" for k in ("load_model", "find_matches", "plan_rewrites", "rewrite_model")),
                     r["load"]))
    return rows


def scaling_ratio(res: dict) -> tuple[float, float]:
    keys = sorted(res, key=int)
    big, mid = res[keys[-1]], res[keys[-2]]
    cli = med(big["cli"], "wall_s") / med(mid["cli"], "wall_s") if big["cli"] and mid["cli"] else float("nan")

    def g(r):
        return statistics.median(sum(v for k, v in s.items() if k not in ("import", "lookups")) for s in r["stages"])
    return cli, g(big) / g(mid)


def profile(args: argparse.Namespace) -> None:
    """cProfile of `hps-surgeon rewrite` on one scaling graph (or any --model); prints the top functions."""
    import cProfile
    import pstats

    from hps_surgeon import cli

    work = Path(args.workdir) / "scaling"
    model = Path(args.model) if args.model else make_scaling_graph(work / f"n{args.nodes}", args.nodes,
                                                                     args.lookup_every)
    out = work / "out_profile"
    prof = cProfile.Profile()
    prof.enable()
    cli.main(["rewrite", str(model), "--out", str(out), "--force", "--quiet"])
    prof.disable()
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(prof).sort_stats(args.sort)
    stats.print_stats(args.top)
    if args.dump:
        stats.dump_stats(args.dump)


# ----------------------------------------------------------------------------------------------


def versions() -> dict:
    import onnx_graphsurgeon
    import onnxruntime
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    du = shutil.disk_usage("/work")
    return {"python": platform.python_version(), "onnx": onnx.__version__,
            "onnx_graphsurgeon": onnx_graphsurgeon.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem, 1),
            "disk_free_gib": round(du.free / GiB, 1), "kernel": platform.release()}


def _cli() -> list[str]:
    # With --src, run the package from that folder (a frozen copy of src/, so edits made while a
    # long run is going do not change what is measured); else the installed `hps-surgeon`.
    if os.environ.get("BENCH_SRC"):
        return [sys.executable, "-m", "hps_surgeon"]
    return [shutil.which("hps-surgeon") or "hps-surgeon"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="import hps_surgeon from this folder (e.g. a copy of src/)")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("surgery", help="(a)-(d) on a generated DLRM-like model")
    s.add_argument("--workdir", default="/work/bench_tmp")
    s.add_argument("--gb", type=float, default=4.0, help="GiB of tables in the big model")
    s.add_argument("--small-gb", type=float, default=0.2, help="GiB of tables for (c) and the multi-file check")
    s.add_argument("--files", type=int, default=1, help="external-data files of the big model")
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--repeat-c", type=int, default=3)
    s.add_argument("--warm", action="store_true", help="do not drop the page cache between runs")
    s.add_argument("--skip-b", action="store_true")
    s.add_argument("--json")
    g = sub.add_parser("scaling", help="rewrite time of synthetic graphs")
    g.add_argument("--workdir", default="/work/bench_tmp")
    g.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000, 100000])
    g.add_argument("--lookup-every", type=int, default=20, help="one lookup per this many nodes")
    g.add_argument("--repeat", type=int, default=3)
    g.add_argument("--stages-only", action="store_true", help="time the API stages only, not the CLI")
    g.add_argument("--cli-stages", action="store_true",
                   help="also run the CLI --repeat times with each step of api.rewrite timed (no profiler)")
    g.add_argument("--cache-tensors", action="store_true",
                   help="what-if: stages with graph.tensors() computed once during plan (see SURGERY_RESULTS.md)")
    g.add_argument("--json")
    p = sub.add_parser("profile", help="cProfile of one rewrite")
    p.add_argument("--workdir", default="/work/bench_tmp")
    p.add_argument("--model")
    p.add_argument("--nodes", type=int, default=100000)
    p.add_argument("--lookup-every", type=int, default=20)
    p.add_argument("--sort", default="cumulative")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--dump")
    r = sub.add_parser("rowloop", help="(c) vs (a) with every table of one dim (HugeCTR demos use small dims)")
    r.add_argument("--workdir", default="/work/bench_tmp")
    r.add_argument("--dim", type=int, default=16)
    r.add_argument("--small-gb", type=float, default=0.1, help="GiB of tables for (c)")
    r.add_argument("--gb", type=float, default=0.0, help="GiB of tables for (a) (0: small model only)")
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--warm", action="store_true")
    r.add_argument("--keep", action="store_true", help="keep the generated models")
    r.add_argument("--json")
    u = sub.add_parser("user", help="(internal) the baseline scripts (b) and (c)")
    u.add_argument("model")
    u.add_argument("out")
    u.add_argument("--rows", choices=["tofile", "struct"], required=True)
    args = parser.parse_args()
    if args.src:
        os.environ["BENCH_SRC"] = os.environ["PYTHONPATH"] = str(Path(args.src).resolve())
        sys.path.insert(0, os.environ["PYTHONPATH"])

    if args.command == "user":
        user_script(args.model, args.out, args.rows)
        return
    if args.command == "profile":
        profile(args)
        return
    info = versions()
    log(json.dumps(info))
    if args.command == "surgery":
        res = surgery(args)
        print_table(summarize(res), ("measure", "median", "target", ""))
    elif args.command == "rowloop":
        res = rowloop(args)
        print_table(res["rows"], ("measure", "median"))
    else:
        res = scaling(args)
        print_table(scaling_rows(res), ("nodes", "lookups", "CLI s", "stages s", "load", "match", "plan",
                                        "rewrite", "loadavg"))
        cli_ratio, graph_ratio = scaling_ratio(res)
        log(f"largest/next ratio: CLI {cli_ratio:.1f}, stages {graph_ratio:.1f} (target for 100k/10k <= 12)")
    res["machine"] = info
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
