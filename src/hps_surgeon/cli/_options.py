"""Options several commands share, each added by one helper, and the plain-text output helpers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_patterns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patterns", help="folder of pattern folders (default: the built-in patterns)")


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=what)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def positive_ints(text: str) -> tuple[int, ...]:
    """`1,64` -> (1, 64): a comma-separated list of positive integers (argparse type)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': each value must be at least 1")
    return values


def add_allow_path(p: argparse.ArgumentParser) -> None:
    """Trusted roots (confine.trusting): folders outside the config's whose tables may be read."""
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="also read tables the HPS config names under DIR (repeatable; a folder you own, e.g. "
                        "/data/embeddings; also $HPS_SURGEON_ALLOW_PATH, ':'-separated). Default: only tables inside "
                        "the config's folder")


def add_batch(p: argparse.ArgumentParser) -> None:
    """The batch range of the engine's optimization profile (deploy.repository.batch_range)."""
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch of the engine's profile (default 1)")
    p.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default min(1024, --max-batch))")
    p.add_argument("--max-batch", type=int, help="largest batch (default and limit: the HPS config's max_batch_size)")


def add_engine(p: argparse.ArgumentParser) -> None:
    """What an engine build on this machine needs besides the model (deploy.engine.EngineOptions)."""
    p.add_argument("--plugin-lib", dest="engine_plugin_lib", metavar="PATH",
                   help="libhps_plugin.so with its TensorRT glue, on this machine (default: $HPS_SURGEON_PLUGIN_LIB, "
                        "build/plugin/, /usr/local/hps_trt/lib/)")
    p.add_argument("--compute-capability", metavar="X.Y[,X.Y...]",
                   help="TensorRT-RTX only: GPUs to build for, e.g. 8.6,8.9 (default: every one it supports)")


def engine_options(args: argparse.Namespace, fp16: bool = False):
    from ..deploy.engine import EngineOptions

    caps = tuple(c.strip() for c in args.compute_capability.split(",")) if args.compute_capability else ()
    return EngineOptions(compute_capabilities=caps, fp16=fp16, plugin_lib=args.engine_plugin_lib)


def size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def table(header: Sequence[str], rows: list[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


class progress_line:
    """Where the builder is, as one line on stderr: rewritten in place on a terminal, said once elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = 0

    def __call__(self, text: str) -> None:
        line = f"building engine: {text}"[:100]
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.shown))
            sys.stderr.flush()
            self.shown = len(line)
        elif not self.shown:
            print("building engine ...", file=sys.stderr, flush=True)
            self.shown = 1

    def done(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\r" + " " * self.shown + "\r")
            sys.stderr.flush()
