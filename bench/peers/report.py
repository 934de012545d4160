"""Markdown tables from a lookup_peers --json file (the peer table of BENCHMARKS.md).

    python3 bench/peers/report.py out/peers.json [out/variants.json]

Per dim and key distribution: each system's median time, keys/s, % of the copy floor of the same run,
and our speed ratio to each peer (peer time / our time); then latency, then hierarchical tables.
"""

from __future__ import annotations

import json
import sys

RESIDENT = [("ours_resident", "ours"), ("cuco_find_gather", "cuco find + gather"), ("hkv_find_hbm", "HKV find (HBM)")]
HIER = [("ours_hier", "ours, cache 0.2"), ("hkv_find_hybrid", "HKV find, hybrid 20 % HBM")]


def load(path: str) -> tuple[dict, dict]:
    data = json.load(open(path))
    return data, {(r["dim"], r["dist"], r["system"], r["what"]): r for r in data["results"]}


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    keys_per_s = r["n"] / (r["ms"] * 1e-3)
    return f"{r['ms']:.3f} ms, {keys_per_s / 1e9:.2f} G/s, {r['floor_ms'] / r['ms'] * 100:.0f} %"


def table(data: dict, res: dict, systems: list[tuple[str, str]], what: str, title: str) -> list[str]:
    dims = sorted({r["dim"] for r in data["results"]})
    dists = ["uniform", "zipf1.05", "zipf1.2"]
    head = ["dim", "keys", "floor"] + [label for _, label in systems] + [f"ours / {label}" for _, label in systems[1:]]
    lines = [f"**{title}** (time, keys/s, % of copy floor)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for dim in dims:
        for dist in dists:
            rows = [res.get((dim, dist, s, what)) for s, _ in systems]
            if not any(rows):
                continue
            floor = next(r["floor_ms"] for r in rows if r)
            ours = rows[0]
            ratios = [f"{p['ms'] / ours['ms']:.2f}x" if p and ours else "-" for p in rows[1:]]
            lines.append("| " + " | ".join([str(dim), dist, f"{floor:.3f} ms"] + [cell(r) for r in rows] + ratios) + " |")
    return lines


def latency(data: dict, res: dict) -> list[str]:
    dims = sorted({r["dim"] for r in data["results"]})
    systems = [s for s in ("ours_resident", "ours@pre_resident", "cuco_find_gather", "hkv_find_hbm")
               if any((d, "uniform", s, "latency1024") in res for d in dims)]
    lines = ["**Latency** (device time of one call, uniform keys, us)", "",
             "| dim | batch | " + " | ".join(systems) + " |", "|" + "---|" * (2 + len(systems))]
    for dim in dims:
        for what, label in (("latency1024", f"1024 x {data['hotness']}"), ("latency1", f"1 x {data['hotness']}")):
            cells = [f"{res[(dim, 'uniform', s, what)]['ms'] * 1e3:.1f}" if (dim, "uniform", s, what) in res else "-"
                     for s in systems]
            lines.append(f"| {dim} | {label} | " + " | ".join(cells) + " |")
    return lines


def main(paths: list[str]) -> int:
    data, res = load(paths[0])
    bad = sum(r["mismatches"] for r in data["results"])
    print(f"{data['card']} ({data['versions']}); copy {data['copy_GBps']:.0f} GB/s; {data['rows']} rows; "
          f"batch {data['batch']} x {data['hotness']}; mismatches {bad}\n")
    for lines in (table(data, res, RESIDENT, "batch", "Resident (all vectors in HBM)"), latency(data, res),
                  table(data, res, HIER, "batch_fresh", "Hierarchical (20 % in HBM), fresh keys")):
        print("\n".join(lines) + "\n")
    for path in paths[1:]:
        vdata, vres = load(path)
        print(f"**Variants** ({path})\n\n| dim | dist | variant | what | ms | % of floor |\n|---|---|---|---|---|---|")
        for r in vdata["results"]:
            print(f"| {r['dim']} | {r['dist']} | {r['system']} | {r['what']} | {r['ms']:.4f} | "
                  f"{r['floor_ms'] / r['ms'] * 100:.1f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
