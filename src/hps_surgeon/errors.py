"""What users see when something is wrong: the exception, check's findings, and the CLI's exit codes."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
#: verify found a mismatch, check found a problem.
EXIT_FINDINGS = 1
#: bad input or usage: the message says what to fix.
EXIT_INPUT = 2
#: verify: the outputs match, but too few distinct keys reached a table to call that a proof.
EXIT_INCONCLUSIVE = 3
#: a bug in hps-surgeon: an exception no check anticipated (the CLI's last-resort handler).
EXIT_BUG = 4
#: set to make the CLI re-raise unexpected exceptions with their traceback instead of one line.
DEBUG_ENV = "HPS_SURGEON_DEBUG"


class SurgeonError(Exception):
    """A problem the user can fix.

    The message is one line: what is wrong, where (file, node or tensor), and what to do.
    """


@dataclass(frozen=True)
class Problem:
    """One finding of `check`/`validate`: `path:where: what is wrong — what to do`."""

    path: str
    where: str  #: node name, or a key path in the config
    message: str  #: what is wrong — what to do
    severity: str = "error"  #: "error"; "warning" (works here, may not elsewhere); "note" (a difference to know)

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.path}:{self.where}: {prefix}{self.message}"


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that are errors (warnings let a check pass)."""
    return [p for p in problems if p.severity == "error"]
