"""`hps-surgeon` command line: one module per command, each with `add_parser(commands)` and `run(args)`;
no logic of its own (the library does the work).

Exit codes: 0 success; 1 findings (verify mismatch, check problems, an engine the builder refused, a failed
build-native step); 2 bad input or usage; 3 verify INCONCLUSIVE (too few distinct keys reached a table); 4 a bug (an
unexpected exception, reported as one line; HPS_SURGEON_DEBUG=1 shows its traceback). publish also
exits 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import DEBUG_ENV, EXIT_BUG, EXIT_INPUT, EXIT_OK, SurgeonError
from . import build_engine, build_native, check, deploy, doctor, publish, rewrite, scan, verify

#: every command, in the order `hps-surgeon -h` lists them
COMMANDS = (scan, rewrite, verify, check, deploy, build_engine, publish, doctor, build_native)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except SurgeonError as exc:
        print(f"hps-surgeon: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # `hps-surgeon scan m.onnx | head`: the reader left, nothing to report
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:
        # A safety net, not a fix: every bad input has its own check and message. This one says
        # that none applied, in one line, instead of a traceback in a pre-commit hook's output.
        if os.environ.get(DEBUG_ENV):
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"hps-surgeon: error: internal error ({type(exc).__name__}: {text}); this is a bug in hps-surgeon — "
              f"please report it with the command and input (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_BUG


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hps-surgeon",
        description="Rewrite the embedding lookups of ONNX recommendation models into HPS_TRT nodes for "
                    "NVIDIA's Hierarchical Parameter Server, export the tables, verify and deploy the result.",
        epilog="exit codes: 0 success; 1 verify found a mismatch, check found a problem, the builder refused the "
               "model or a build-native step failed; 2 bad input or usage; 3 verify INCONCLUSIVE (too few distinct keys reached a table); "
               "4 a bug in hps-surgeon (please report it)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(run=command.run)
    return top


if __name__ == "__main__":
    sys.exit(main())
