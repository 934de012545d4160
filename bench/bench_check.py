"""Benchmark of `hps-surgeon check` (issue 3): a 100k-node model with multi-GB external data.

`check` is meant for pre-commit hooks: it must finish in seconds and never read table bytes.
The model is bench_surgery's 100k-node scaling graph (5,000 lookups) plus one 4 GiB table held
in external data (a sparse file: reading it would be the only way to make it cost anything).
Timed (medians of --repeat, warm cache, peak RSS from /usr/bin/time):

* `check ORIGINAL --require-rewritten --max-table-mb 1` (scan: graph import + matching);
* `check REWRITTEN` (validation of 5,001 HPS_TRT nodes against hps_config.json and the key files).

    python bench/bench_check.py --workdir /work/bench_tmp/check --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_surgery import make_scaling_graph  # noqa: E402

BIG_ROWS, BIG_DIM = 8 << 20, 128  # 4 GiB of float32


def make_model(folder: Path, nodes: int) -> Path:
    path = make_scaling_graph(folder, nodes)
    model = onnx.load(str(path))
    big = TensorProto(name="big.weight", data_type=TensorProto.FLOAT, dims=[BIG_ROWS, BIG_DIM])
    big.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "big.data"), ("offset", "0"), ("length", str(BIG_ROWS * BIG_DIM * 4))):
        entry = big.external_data.add()
        entry.key, entry.value = key, value
    with open(folder / "big.data", "wb") as f:
        f.truncate(BIG_ROWS * BIG_DIM * 4)
    model.graph.initializer.append(big)
    model.graph.input.append(helper.make_tensor_value_info("big_keys", TensorProto.INT64, ["batch", 26]))
    model.graph.node.append(helper.make_node("Gather", ["big.weight", "big_keys"], ["big_emb"], name="/big/Gather"))
    model.graph.output.append(helper.make_tensor_value_info("big_emb", TensorProto.FLOAT, ["batch", 26, BIG_DIM]))
    onnx.save(model, str(path))
    return path


def timed(cmd: list[str]) -> tuple[float, int, int]:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    return elapsed, int(proc.stderr.strip().splitlines()[-1]) // 1024, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    source = make_model(args.workdir / "src", args.nodes)
    out = args.workdir / "rw"
    subprocess.run(["hps-surgeon", "rewrite", str(source), "--out", str(out), "--force", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    data_gb = sum(f.stat().st_size for f in source.parent.iterdir() if f.suffix == ".data") / 1e9
    print(f"model: {args.nodes} nodes, {data_gb:.1f} GB external data; load {os.getloadavg()[0]:.1f}")
    cases = {"check --require-rewritten (original)": ["hps-surgeon", "check", str(source), "--require-rewritten",
                                                      "--max-table-mb", "1"],
             "check (rewritten, with its config)": ["hps-surgeon", "check", str(out / "model.onnx")]}
    for name, cmd in cases.items():
        runs = [timed(cmd) for _ in range(args.repeat)]
        print(f"{name}: median {statistics.median(r[0] for r in runs):.2f} s "
              f"(runs {', '.join(f'{r[0]:.2f}' for r in runs)}), peak RSS {max(r[1] for r in runs)} MiB, "
              f"exit {runs[0][2]}")


if __name__ == "__main__":
    main()
