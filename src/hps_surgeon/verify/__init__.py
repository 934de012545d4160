"""Verification: prove with Polygraphy that a rewritten model computes what the original computes.

`compare` runs both models through Polygraphy's `Comparator` (onnxruntime on the original,
`runner.HpsRunner` on the rewrite) on feeds from `feeds`: the user's samples, or generated with keys
that `keyspace` traced back from the exported tables to input columns; `lookups` checks each HPS_TRT
node's vectors bit for bit against the lookup it replaced; `coverage` counts the keys that really
reached each table against its floor. `polygraphy_ext` puts `HpsRunner` into `polygraphy run`.
Polygraphy is imported only when a verification runs.
"""

from .compare import OutputError, VerifyReport, verify

__all__ = ["OutputError", "VerifyReport", "verify", "HpsRunner"]


def __getattr__(name: str):
    # HpsRunner subclasses Polygraphy's BaseRunner: import Polygraphy only when it is asked for.
    if name == "HpsRunner":
        from .runner import HpsRunner

        return HpsRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
