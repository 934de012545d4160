"""Do two PTX files hold the same kernels? For refactors that must not touch tuned kernels.

    nvcc -std=c++17 -O3 -DNDEBUG -arch=sm_90 -ptx -I plugin/include -I plugin/src plugin/src/gpu_table.cu -o new.ptx
    python3 plugin/tests/compare_kernel_ptx.py old.ptx new.ptx [--strip Li32ELi8ELi1E ...]

Kernels are matched by their mangled name without its namespace; --strip removes a piece of the
mangled names first (template arguments that a later version added with defaults: resident_kernel's
Li32ELi8ELi1E is kChunk 32, kUnroll 8, kMinBlocks 1). Two kernels are the same when
their instruction sequences are equal once registers and labels are renamed in order of first use
and `setp.le a, b` is read as `setp.ge b, a` (likewise gt/lt); failing that, the script says whether
each basic block still holds the same instructions (only their order moved, which is what a
register copy scheduled elsewhere looks like). Exit 0 only when every kernel is the same.
"""

from __future__ import annotations

import collections
import re
import sys

_NAMESPACE = re.compile(r"_ZN3hps(?:\d+_GLOBAL__N__[0-9a-f]{8}_\d+_\w+?_cu_[0-9a-f]{8}|7kernels)")
_REG = re.compile(r"%(r|rd|p|f|rs)\d+")
_LABEL = re.compile(r"\$L__BB\d+_\d+")
_SWAPPED = re.compile(r"setp\.(le|gt)\.(\w+)\s+(%\w+), (%\w+), (%\w+);")


def kernels(path: str, strip: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    body = None
    for raw in open(path):
        entry = re.match(r"^(?:\.visible )?\.entry (\S+)\(", raw)
        if entry:
            name = _NAMESPACE.sub("", entry.group(1))
            for piece in strip:
                name = name.replace(piece, "")
            body = found.setdefault(name, [])
            continue
        line = raw.strip()
        if body is None or not line or line.startswith(("//", ".loc", ".reg")):
            continue
        line = re.sub(r"_ZZN3hps\S*?E(\d+\w+?)(?=[\[;,+\]])", r"SHARED_\1", line)
        line = re.sub(r"_ZN3hps\S*?_param_", "PARAM_", line)
        swapped = _SWAPPED.match(line)
        if swapped:
            op, ty, dst, a, b = swapped.groups()
            line = f"setp.{'ge' if op == 'le' else 'lt'}.{ty} \t{dst}, {b}, {a};"
        body.append(line)
    return found


def renamed(lines: list[str]) -> list[str]:
    regs: dict[str, str] = {}
    labels: dict[str, str] = {}
    return [_LABEL.sub(lambda m: labels.setdefault(m.group(0), f"L{len(labels)}"),
                       _REG.sub(lambda m: regs.setdefault(m.group(0), f"%{m.group(1)}{len(regs)}"), line))
            for line in lines]


def basic_blocks(lines: list[str]) -> list[object]:
    blocks: list[object] = []
    current: collections.Counter[str] = collections.Counter()
    for line in lines:
        line = _LABEL.sub("L", _REG.sub(r"%\1", line))
        if line.startswith("L") or "bra" in line or line.startswith("ret"):
            blocks += [current, line]
            current = collections.Counter()
        else:
            current[line] += 1
    return blocks + [current]


def main(old_path: str, new_path: str, strip: list[str]) -> int:
    old, new = kernels(old_path, []), kernels(new_path, strip)
    same_everywhere = True
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            verdict = "only in " + (new_path if a is None else old_path)
        elif renamed(a) == renamed(b):
            verdict = "identical"
        elif basic_blocks(a) == basic_blocks(b):
            verdict = "same instructions per basic block, order moved"
        else:
            verdict = "DIFFERENT"
        same_everywhere &= verdict == "identical"
        print(f"{name}: {len(a or [])} / {len(b or [])} instructions: {verdict}")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    strip = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--strip"]
    paths = [a for i, a in enumerate(args) if a != "--strip" and (i == 0 or args[i - 1] != "--strip")]
    if len(paths) != 2:
        sys.exit(__doc__)
    sys.exit(main(paths[0], paths[1], strip))
