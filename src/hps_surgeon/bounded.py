"""Reading the text files a user names (plan YAML, HPS config, --inputs JSON, a data loader script,
--patterns YAML) with bounded work.

Each file is refused, in one line naming it, before it is parsed when it is not a regular file (a
FIFO would block the read forever), larger than its limit, not UTF-8, or nested deeper than
MAX_DEPTH; YAML aliases are refused (an alias bomb expands a few KB into billions of nodes) and so
are integers longer than MAX_INT_DIGITS. Every check here runs in time linear in the file's size.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import numpy as np
import yaml

from .errors import SurgeonError

#: An HPS config nests 4 levels deep, a plan 4, Polygraphy's input JSON 5: anything much deeper is
#: none of them (and would exhaust the recursion of a parser before any field is read).
MAX_DEPTH = 32
#: A number in any of these files fits 64 bits (20 digits); Python refuses past 4300 digits, slowly.
MAX_INT_DIGITS = 40
#: 26 tables take 9 KB of config and 40 KB of plan; these leave room for thousands of tables.
CONFIG_MAX_BYTES = 4 << 20
PLAN_MAX_BYTES = 16 << 20
#: recorded traffic (`polygraphy run --save-inputs`) is held in memory whole, as Polygraphy holds it
INPUTS_MAX_BYTES = 256 << 20
#: a --data-loader-script's source
SCRIPT_MAX_BYTES = 16 << 20
#: a pattern.yaml of --patterns DIR (the shipped ones are at most 4 KB)
PATTERN_MAX_BYTES = 1 << 20


class Unreadable(SurgeonError):
    """`file` cannot be read as what it should be; `problem` says why and what to do."""

    def __init__(self, file: str, problem: str):
        self.file, self.problem = file, problem
        super().__init__(f"{file}: {problem}")


def read_text(path: str | os.PathLike, label: str, limit: int, fix: str) -> str:
    """The UTF-8 text of the regular file `path`, at most `limit` bytes; Unreadable (`label`: how messages
    name the file, `fix`: what to do) otherwise."""
    try:
        # opened without blocking (a FIFO would wait for a writer), then checked through its descriptor:
        # what is read is what was checked, even if the path is swapped in between
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Unreadable(label, f"no such file; {fix}") from None
    except OSError as exc:
        raise Unreadable(label, f"cannot read it ({exc.strerror}); {fix}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unreadable(label, f"not a regular file; {fix}")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise Unreadable(label, f"cannot read it ({exc.strerror}); {fix}") from None
    if len(data) > limit:
        raise Unreadable(label, f"larger than {limit >> 20} MiB, the most read of such a file; {fix}")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise Unreadable(label, f"UTF-16 text; save it as UTF-8 ({fix})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(label, f"not UTF-8 text (byte {exc.start}); {fix}") from None


# One string token, matched without backtracking (possessive) and to the end of the text when it is
# not closed: every position is scanned once, where `"(?:[^"\\]|\\.)*"` retried from each quote.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_CHUNK = 1 << 24


def _depth(outside_strings: str) -> int:
    """Deepest nesting of [ and { in JSON text whose strings are taken out (no recursion, linear time)."""
    brackets = re.sub(r"[^\[\]{}]+", "", outside_strings).encode()
    depth = deepest = 0
    for start in range(0, len(brackets), _CHUNK):  # chunks: memory stays flat on a file of brackets
        chunk = np.frombuffer(brackets, dtype=np.uint8, count=min(_CHUNK, len(brackets) - start), offset=start)
        levels = depth + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1))
        deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def check_json(text: str, label: str, nests: str, fix: str) -> None:
    """Unreadable when the JSON `text` nests deeper than MAX_DEPTH (`nests`: how deep the file should) or
    holds a run of more than MAX_INT_DIGITS digits (Python converts long integers in quadratic time)."""
    outside = _JSON_STRING.sub("", text)
    depth = _depth(outside)
    if depth > MAX_DEPTH:
        raise Unreadable(label, f"JSON nested {depth} levels deep; {nests} and at most {MAX_DEPTH} are read — {fix}")
    long = re.search(rf"\d{{{MAX_INT_DIGITS + 1},}}", outside)
    if long:
        raise Unreadable(label, f"a number of {len(long.group())} digits; numbers here fit 64 bits — {fix}")


def long_list(value: Any, limit: int) -> tuple[str, int] | None:
    """Where in a parsed JSON value a list holds more than `limit` entries, and how many; None when none does
    (checked before a schema validates each entry of a million-entry list)."""
    stack = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            if len(item) > limit:
                return where or "(top level)", len(item)
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, dict):
            stack.extend((child, f"{where}.{key}" if where else str(key)) for key, child in item.items())
    return None


def bad_string(value: Any, at: str = "") -> str | None:
    """Where in a parsed JSON/YAML value a string (key or value) holds a lone surrogate (`"\\ud800"` in
    JSON), which no file name or UTF-8 output can hold; None when none does."""
    stack = [(value, at)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if has_surrogate(item):
                return where or "(top level)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and has_surrogate(key):
                    return f"{where}.{_escaped(key)}" if where else _escaped(key)
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def has_surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate: JSON's "\\ud800", or a byte that is not UTF-8 in a command-line
    argument (Python decodes those to \\udc80-\\udcff)."""
    return any("\ud800" <= c <= "\udfff" for c in text) if not text.isascii() else False


def _escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases, nesting past MAX_DEPTH or integers past MAX_INT_DIGITS digits."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"an alias (*{self.peek_event().anchor}) at line {mark.line + 1}; aliases are not "
                                 "read (write the value out)")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep at line "
                                 f"{self.peek_event().start_mark.line + 1}")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_INT_DIGITS:
            raise yaml.YAMLError(f"an integer of {len(node.value)} digits at line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)


_SafeLoader.add_constructor("tag:yaml.org,2002:int", _SafeLoader.construct_yaml_int)


def load_yaml(text: str, label: str, fix: str) -> Any:
    """The YAML document `text` (safe types only); Unreadable naming the line of what is refused."""
    try:
        value = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise Unreadable(label, f"not valid YAML ({str(exc).splitlines()[0]}); {fix}") from None
    where = bad_string(value)
    if where is not None:
        raise Unreadable(label, f"{where}: holds a lone surrogate (not a character); {fix}")
    return value
