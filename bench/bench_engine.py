"""Engine build times with TensorRT-RTX and our plugin (issue 13), for every fixture rewritten with defaults.

Each fixture is rewritten once into --workdir, then built --repeat times in this process
(`engine.build_serialized`: parse + build + serialize, the plugin loaded through loadLibrary) for
one compute capability; the median is reported with the engine size and plugin layers. The
bundled DLRM is also timed as a user runs it, `hps-surgeon build-engine` in a fresh process.

    python bench/bench_engine.py --workdir /tmp/bench_engine --repeat 3 [--compute-capability 8.6]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import hps_surgeon
from hps_surgeon.deploy import engine, rewrite_folder, triton

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def rewritten(fixture: Path, workdir: Path) -> Path | None:
    """The rewrite with default options, or None (nothing to rewrite, or the model needs options)."""
    out = workdir / fixture.relative_to(FIXTURES).as_posix().replace("/", "__")
    try:
        return out if hps_surgeon.rewrite(fixture, out, force=True, quiet=True).written else None
    except hps_surgeon.SurgeonError:
        return None


def profile(folder: Path) -> triton.Profile:
    source = rewrite_folder.read_rewrite(folder)
    where = str(folder / "model.onnx")
    return triton.profile(triton.model_io(source.model, where)[0], rewrite_folder.batch_range(source),
                          where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compute-capability", default="8.6")
    args = ap.parse_args()
    options = engine.EngineOptions(compute_capabilities=(args.compute_capability,))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    rows, started = [], time.perf_counter()
    for fixture in sorted([*FIXTURES.glob("*/*.onnx"), *FIXTURES.glob("thirdparty/models/*.onnx")]):
        folder = rewritten(fixture, args.workdir)
        if folder is None:
            continue
        prof = profile(folder)
        builds = [engine.build_serialized(folder / "model.onnx", prof, options) for _ in range(args.repeat)]
        last = builds[-1]
        outcome = f"{len(last.plan)} B" if last.ok else f"not built: {last.problems[0].message[:60]}"
        rows.append((fixture.relative_to(FIXTURES).as_posix(), last.plugin_layers,
                     statistics.median(b.seconds for b in builds), outcome))
    print(f"# {last.builder}, {last.targets}, median of {args.repeat}")
    print("| fixture | plugin layers | parse + build (s) | engine |\n| --- | --- | --- | --- |")
    for name, layers, seconds, outcome in rows:
        print(f"| {name} | {layers} | {seconds:.2f} | {outcome} |")
    built = [r for r in rows if r[3].endswith(" B")]
    print(f"\n{len(built)} of {len(rows)} built; total wall {time.perf_counter() - started:.1f} s "
          f"(rewrites and {args.repeat} builds each)")
    dlrm = args.workdir / "torch__dlrm_small_legacy.onnx"
    cli = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "build-engine", str(dlrm), "--out",
                               str(args.workdir / "dlrm.plan"), "--force", "--compute-capability",
                               args.compute_capability], capture_output=True, text=True)
        cli.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"build-engine failed: {proc.stderr.strip()}")
    print(f"hps-surgeon build-engine (bundled DLRM, fresh process): median {statistics.median(cli):.2f} s")


if __name__ == "__main__":
    main()
