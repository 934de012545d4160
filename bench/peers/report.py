"""Markdown tables from a lookup_peers --json file (the peer table of BENCHMARKS.md).

    python3 bench/peers/report.py out/peers.json [out/variants.json]

Per dim and key distribution: each system's median time, keys/s, % of the copy floor of the same run,
and our speed ratio to each peer (peer time / our time); then latency, then hierarchical tables.
"""

from __future__ import annotations

import json
import sys

# (system, label, the system it is compared with: ratio = that one's time / this one's time)
RESIDENT = [("ours_resident_identity", "ours, identity keys", None),
             ("ours_resident", "ours, hashed keys", None),
             ("cuco_find_gather_idkeys", "cuco find + gather, identity keys", "ours_resident_identity"),
             ("cuco_find_gather", "cuco find + gather, hashed keys", "ours_resident"),
             ("hkv_find_hbm", "HKV find (HBM)", "ours_resident")]
HIER = [("ours_hier_identity", "ours, cache 0.2, identity keys", None),
        ("ours_hier", "ours, cache 0.2, hashed keys", None),
        ("hkv_find_hybrid", "HKV find, hybrid 20 % HBM", "ours_hier_identity"),
        ("hkv_find_hybrid", "HKV find, hybrid 20 % HBM", "ours_hier")]


def load(path: str) -> tuple[dict, dict]:
    data = json.load(open(path))
    return data, {(r["dim"], r["dist"], r["system"], r["what"]): r for r in data["results"]}


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    keys_per_s = r["n"] / (r["ms"] * 1e-3)
    return f"{r['ms']:.3f} ms, {keys_per_s / 1e9:.2f} G/s, {r['floor_ms'] / r['ms'] * 100:.0f} %"


def table(data: dict, res: dict, systems: list[tuple], what: str, title: str) -> list[str]:
    dims = sorted({r["dim"] for r in data["results"]})
    dists = ["uniform", "zipf1.05", "zipf1.2"]
    shown = list(dict.fromkeys((s, label) for s, label, _ in systems))
    ratios = [(s, label, ours) for s, label, ours in systems if ours]
    hier = what == "batch_fresh"
    head = (["dim", "keys", "floor"] + (["PCIe floor (ours, identity)"] if hier else []) + [label for _, label in shown]
            + [f"{label} / {ours}" for _, label, ours in ratios])
    lines = [f"**{title}** (time, keys/s, % of copy floor)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for dim in dims:
        for dist in dists:
            rows = {s: res.get((dim, dist, s, what)) for s, _ in shown}
            if not any(rows.values()):
                continue
            floor = next(r["floor_ms"] for r in rows.values() if r)
            cells = [str(dim), dist, f"{floor:.3f} ms"]
            if hier:
                ours = rows.get("ours_hier_identity")
                cells.append(f"{ours['pcie_floor_ms']:.3f} ms" if ours and ours.get("pcie_floor_ms") else "-")
            cells += [cell(rows[s]) for s, _ in shown]
            for s, _, ours in ratios:
                peer, mine = rows.get(s), res.get((dim, dist, ours, what))
                cells.append(f"{peer['ms'] / mine['ms']:.2f}x" if peer and mine else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def latency(data: dict, res: dict) -> list[str]:
    dims = sorted({r["dim"] for r in data["results"]})
    systems = [s for s in ("ours_resident_identity", "ours_resident", "ours@pre_resident", "cuco_find_gather_idkeys",
                           "cuco_find_gather", "hkv_find_hbm")
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
    print(f"{data['card']} ({data['versions']}); copy {data['copy_GBps']:.0f} GB/s; pinned host-to-device "
          f"{data.get('h2d_GBps', 0):.1f} GB/s; {data['rows']} rows; "
          f"batch {data['batch']} x {data['hotness']}; mismatches {bad}\n")
    for lines in (table(data, res, RESIDENT, "batch", "Resident (all vectors in HBM)"), latency(data, res),
                  table(data, res, HIER, "batch_fresh", "Hierarchical (20 % in HBM), fresh keys")):
        print("\n".join(lines) + "\n")
    print("**Every hierarchical run** (fresh keys; PCIe floor: distinct rows read from host x row bytes at the "
          "pinned copy's bandwidth)\n\n| dim | keys | system | ms | PCIe floor | time / PCIe floor | note |\n"
          "|---|---|---|---|---|---|---|")
    for r in data["results"]:
        if r["what"] == "batch_fresh":
            floor = r.get("pcie_floor_ms") or 0
            print(f"| {r['dim']} | {r['dist']} | {r['system']} | {r['ms']:.3f} | {floor:.3f} | "
                  f"{r['ms'] / floor if floor else float('nan'):.2f} | {r['note']} |")
    print()
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
