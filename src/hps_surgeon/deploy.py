"""`hps-surgeon deploy`: a Triton model repository from a rewrite folder (in progress)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `deploy` subcommand (not yet available)."""
