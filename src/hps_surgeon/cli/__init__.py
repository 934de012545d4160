"""`hps-surgeon` command line: one module per command, each with `add_parser(commands)` and `run(args)`;
no logic of its own (the library does the work).

Exit codes: 0 success; 1 findings (verify mismatch, check problems, an engine the builder refused, a failed
build-native step); 2 bad input or usage; 3 verify INCONCLUSIVE (too few distinct keys reached a table); 4 a
bug (an unexpected exception, reported as one line; HPS_SURGEON_DEBUG=1 shows its traceback); 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Sequence

from .. import bounded, confine
from ..errors import (DEBUG_ENV, EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, SurgeonError, one_line,
                      shown)
from . import build_engine, build_native, check, deploy, doctor, publish, rewrite, scan, verify

#: every command, in the order `hps-surgeon -h` lists them
COMMANDS = (scan, rewrite, verify, check, deploy, build_engine, publish, doctor, build_native)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        # commands that read tables take --allow-path; the others never meet a stale $HPS_SURGEON_ALLOW_PATH
        trusted = confine.trusting(args.allow_path) if hasattr(args, "allow_path") else contextlib.nullcontext()
        _check_text(args)
        with warnings.catch_warnings(), _quiet_libraries(getattr(args, "verbose", False)), trusted:
            # our lines are the output: a library's warning (numpy's "Mean of empty slice") is noise
            # before them, and for anything it could mean there is a check of our own
            warnings.simplefilter("ignore")
            return args.run(args)
    except SurgeonError as exc:
        print(f"hps-surgeon: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # `hps-surgeon scan m.onnx | head`: the reader left, nothing to report
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"hps-surgeon: error: {args.command} interrupted; outputs are written whole or not at all — run the "
              "same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A safety net, not a fix: every bad input has its own check and message. This one says
        # that none applied, in one line, instead of a traceback in a pre-commit hook's output.
        if os.environ.get(DEBUG_ENV) or getattr(args, "verbose", False):
            raise
        print(f"hps-surgeon: error: {internal_error(exc)}", file=sys.stderr)
        return EXIT_BUG


def _check_text(args: argparse.Namespace) -> None:
    """Arguments are UTF-8: paths and names go into UTF-8 files (HPS configs, model attributes, JSON), where
    a byte that is not UTF-8 (Python's \\udcff in argv) cannot be written."""
    for name, value in vars(args).items():
        if name == "models":  # check's: each is reported as a problem of its own, the others still checked
            continue
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and bounded.has_surrogate(text):
                raise SurgeonError(f"{shown(text)}: holds bytes that are not UTF-8; paths and names are written into "
                                   "UTF-8 files (HPS configs, model attributes) — rename it")


@contextlib.contextmanager
def _quiet_libraries(verbose: bool):
    """No third-party line before ours: onnx-graphsurgeon and Polygraphy print their warnings on stdout
    (among check's `path:where: message` lines), and "[W] 'colored' module is not installed" on their
    first message (`--verbose` keeps their messages). Restored after the command (in-process callers)."""
    from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER
    from polygraphy.logger import G_LOGGER

    before = (GS_LOGGER.colors, GS_LOGGER.severity, G_LOGGER.colors, G_LOGGER.module_severity)
    GS_LOGGER.colors = G_LOGGER.colors = False
    if not verbose:  # what they could warn about, a check of ours says
        GS_LOGGER.severity = GS_LOGGER.ERROR
        G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        GS_LOGGER.colors, GS_LOGGER.severity, G_LOGGER.colors, G_LOGGER.module_severity = before


def internal_error(exc: BaseException) -> str:
    """The one line of an exception no check anticipated."""
    text = one_line(" ".join(str(exc).split())[:300])
    return (f"internal error ({type(exc).__name__}: {text}); this is a bug in hps-surgeon — please report it with "
            f"the command and input (set {DEBUG_ENV}=1 for the traceback)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hps-surgeon",
        description="Rewrite the embedding lookups of ONNX recommendation models into HPS_TRT nodes for "
                    "NVIDIA's Hierarchical Parameter Server, export the tables, verify and deploy the result.",
        epilog="exit codes: 0 success; 1 verify found a mismatch, check found a problem, the builder refused the "
               "model or a build-native step failed; 2 bad input or usage; 3 verify INCONCLUSIVE (too few "
               "distinct keys reached a table); 4 a bug in hps-surgeon (please report it); 130 interrupted")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(run=command.run)
    return top


if __name__ == "__main__":
    sys.exit(main())
