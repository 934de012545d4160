"""What users see when something is wrong: the exception, check's findings, and the CLI's exit codes."""

from __future__ import annotations

import re
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
#: the user interrupted the command (Ctrl-C): what was written is complete or absent, as for any error.
EXIT_INTERRUPTED = 130
#: set to make the CLI re-raise unexpected exceptions with their traceback instead of one line.
DEBUG_ENV = "HPS_SURGEON_DEBUG"


#: characters of a value quoted in a message (a 10 MB name is cut, its length said)
SHOWN_CHARS = 120
#: characters of one message line; longer ones keep their start and their end (what to do)
LINE_CHARS = 2000
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def shown(value: object) -> str:
    """`value` quoted for a one-line message: control characters (newlines, ANSI escapes), NULs and lone
    surrogates escaped, cut to SHOWN_CHARS characters with the full length said."""
    text = value if isinstance(value, str) else repr(value)
    escaped = text.encode("unicode_escape", errors="backslashreplace").decode("ascii").replace("'", "\\'")
    if len(escaped) > SHOWN_CHARS:
        escaped = f"{escaped[:SHOWN_CHARS]}...' ({len(text)} characters)"
        return "'" + escaped
    return "'" + escaped + "'"


def one_line(text: str) -> str:
    """`text` as one printable line of at most LINE_CHARS characters: what a message must be, whatever
    values it quotes (a safety net: messages quote values through `shown`)."""
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", errors="backslashreplace").decode("ascii"),
                            text)
    if len(text) > LINE_CHARS:
        text = f"{text[:LINE_CHARS * 2 // 3]} [... {len(text) - LINE_CHARS} characters cut ...] " \
               f"{text[-LINE_CHARS // 3:]}"
    return text


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
        return one_line(f"{self.path}:{self.where}: {prefix}{self.message}")


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that are errors (warnings let a check pass)."""
    return [p for p in problems if p.severity == "error"]
