"""`hps-surgeon doctor`: what works on this machine and what to install for the rest. Always exits 0."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..machine.doctor import diagnose, render
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "doctor", help="report what works here: Python deps, native libraries, GPUs, builders, databases",
        description="Reports each part hps-surgeon uses (ok / partial / missing, with its fix) and which commands "
                    "work on this machine. It reports and never fails: exit 0 whatever it finds.")
    _options.add_json(p, "the report")
    return p


def run(args: argparse.Namespace) -> int:
    diagnosis = diagnose()
    print(json.dumps(diagnosis.as_json(), indent=2) if args.json else render(diagnosis), end="\n" if args.json else "")
    return EXIT_OK
