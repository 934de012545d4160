"""Exit codes and messages as documented (issue 21): 2 bad input, 4 "internal error", 130 interrupted,
everywhere including verify; a data loader script's failures said as what they are; messages one
readable line whatever the values they quote."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


from support import FIXTURES, run_in_process

SOURCE = FIXTURES / "torch/embedding_int64_legacy.onnx"  # keys [batch, 26] int64, 1000 rows
INTERNAL = ("this is a bug in hps-surgeon — please report it with the command and input (set HPS_SURGEON_DEBUG=1 for "
            "the traceback)")


@pytest.fixture
def released(capfd, monkeypatch):
    """The CLI as users run it: its last-resort handler on (no HPS_SURGEON_DEBUG)."""
    monkeypatch.delenv("HPS_SURGEON_DEBUG", raising=False)
    return lambda *argv: run_in_process(capfd, argv)


def verify_args(rw: Path, *extra) -> list:
    return ["verify", SOURCE, rw / "model.onnx", "--config", rw / "hps_config.json", *extra]


# --- exit codes ------------------------------------------------------------------------------------

def test_verify_unexpected_exception_is_exit_4_internal_error(released, rw, monkeypatch):
    """verify said "verify stopped: <Exception>" with exit 2 (bad input) for its own bugs."""
    def broken(*args, **kwargs):
        raise AttributeError("'int' object has no attribute 'keys'")

    monkeypatch.setattr("hps_surgeon.cli.verify.verify", broken)
    result = released(*verify_args(rw))
    assert (result.code, result.err) == (4, "hps-surgeon: error: internal error (AttributeError: 'int' object has "
                                            f"no attribute 'keys'); {INTERNAL}\n")
    with pytest.raises(AttributeError):  # --verbose: the traceback, as its help says
        released(*verify_args(rw, "--verbose"))


@pytest.mark.parametrize("command", ["verify", "check", "scan"])
def test_ctrl_c_is_exit_130_in_one_line(released, rw, monkeypatch, command):
    """A Ctrl-C during verify printed a traceback."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"verify": "hps_surgeon.cli.verify.verify", "check": "hps_surgeon.cli.check.check_models",
              "scan": "hps_surgeon.cli.scan.scan"}[command]
    monkeypatch.setattr(target, interrupted)
    argv = verify_args(rw) if command == "verify" else [command, rw / "model.onnx"]
    result = released(*argv)
    assert (result.code, result.out, result.err) == (
        130, "", f"hps-surgeon: error: {command} interrupted; outputs are written whole or not at all — run the same "
                 "command again\n")


# --- data loader scripts ---------------------------------------------------------------------------

FEEDS = """\
import numpy as np


def load_data():
    rng = np.random.default_rng(0)
    for _ in range(2):
        yield {"keys": rng.integers(0, 1000, size=(64, 26)).astype(np.int64)}
"""


@pytest.mark.parametrize("body, problem", [
    ("def load_data(:\n    pass\n", "syntax error at line 1 (invalid syntax); fix the script"),
    ("import sys\nsys.exit(3)\n", "the script called sys.exit(3) while loading; a data loader defines a function "
                                  "verify calls"),
    ("raise ValueError('no traffic')\n", "the script failed while loading: ValueError: no traffic"),
    ("open('/nonexistent/traffic.csv')\n", "the script failed while loading: FileNotFoundError: [Errno 2] No such "
                                           "file or directory: '/nonexistent/traffic.csv'"),
    ("def load_data():\n    import sys\n    sys.exit(0)\n",
     "load_data() called sys.exit(0); a data loader returns or yields its feeds"),
    ("def load_data():\n    return ['a', 'b']\n", "feed 0 is str, not a mapping of input name -> array"),
    ("def load_data():\n    return None\n", "load_data() returned NoneType, not a list or generator of feeds (input "
                                            "name -> array)"),
    ("def load_data():\n    while True:\n        yield {}\n", "load_data(): yielded more than 10000 feeds, the most "
                                                                "verify reads; yield fewer"),
    ("def other():\n    return []\n", "the script defines no function load_data(); name one with SCRIPT:FUNCTION"),
    ("def load_data():\n    return [{'keys': [[1, 2], [3]]}]\n", "feed 0: input 'keys' is not an array (setting an "
                                                                   "array element with a sequence. The requested array "
                                                                   "has an inhomogeneous shape after 1 dimensions. The "
                                                                   "detected shape was (2,) + inhomogeneous part.)"),
])
def test_data_loader_script_failure_said_as_what_it_is(cli, rw, tmp_path, body, problem):
    """A syntax error was reported as KeyError: '<module>', sys.exit(3) exited 3 silently, sys.exit(0) made verify
    exit 0 (PASSED's code) with nothing compared, a list of strings was "not a list"."""
    script = tmp_path / "traffic.py"
    script.write_text(body)
    result = cli(*verify_args(rw, "--data-loader-script", script))
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: --data-loader-script {script}: {problem}")


@pytest.mark.parametrize("kind", ["FIFO", "folder", "missing"])
def test_data_loader_script_that_is_no_file_to_run(cli, rw, tmp_path, kind):
    script = tmp_path / "traffic.py"
    if kind == "FIFO":
        os.mkfifo(script)
    elif kind == "folder":
        script.mkdir()
    problem = "no such file" if kind == "missing" else "not a regular file"
    result = cli(*verify_args(rw, "--data-loader-script", script))
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: --data-loader-script {script}: {problem}; "
                                                   "pass a Python script, SCRIPT.py[:FUNCTION]")


def test_data_loader_script_raising_keyboard_interrupt_stops_verify(released, rw, tmp_path):
    script = tmp_path / "traffic.py"
    script.write_text("def load_data():\n    raise KeyboardInterrupt\n")
    result = released(*verify_args(rw, "--data-loader-script", script))
    assert (result.code, result.err) == (130, "hps-surgeon: error: verify interrupted; outputs are written whole or "
                                              "not at all — run the same command again\n")


def test_data_loader_script_named_like_a_standard_module(cli, rw, tmp_path):
    """The script runs under a module name of its own: json.py is the user's json.py, not the standard library's
    (Polygraphy's import_from_script imports by the file's stem)."""
    script = tmp_path / "json.py"
    script.write_text(FEEDS)
    result = cli(*verify_args(rw, "--data-loader-script", script))
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith(f"PASSED: 2 feeds (--data-loader-script {script}; batch sizes 64)")


# --- messages --------------------------------------------------------------------------------------

def test_option_value_with_terminal_escapes_and_newlines(cli, tmp_path):
    """Values are echoed escaped: an ANSI sequence cannot clear the terminal, a newline cannot split the line."""
    result = cli("rewrite", SOURCE, "--out", tmp_path / "out", "--model-name", "\x1b[2Jdemo\nsecond line")
    assert (result.code, result.error_line) == (
        2, "hps-surgeon: error: --model-name '\\x1b[2Jdemo\\nsecond line': HugeCTR's HPS aborts on model names outside "
           "[a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-36); use letters, digits, '_' and '-', at most 120")


def test_megabytes_long_name_gives_a_readable_line(cli, rw):
    """A 10 MB model name gave a 10 MB error line (3 MB here: a config is read up to 4 MiB)."""
    config = json.loads((rw / "hps_config.json").read_text())
    config["models"][0]["model"] = "n" * (3 << 20)
    (rw / "hps_config.json").write_bytes(json.dumps(config).encode())
    result = cli("deploy", rw, "--repo", rw.parent / "repo")
    line = result.error_line
    assert result.code == 2 and len(line) < 2200
    assert line.startswith(f"hps-surgeon: error: rewrite folder fails validation: {rw / 'hps_config.json'}")
    assert "characters cut ...]" in line and line.endswith("(and 1 more)")


def test_check_names_a_node_whose_name_holds_a_newline_on_one_line(cli, rw):
    import onnx

    model = onnx.load(str(rw / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "HPS_TRT")
    node.name = "evil\nhps-surgeon: all clear"
    for attr in node.attribute:
        if attr.name == "table_id":
            attr.i = 7
    onnx.save(model, str(rw / "model.onnx"))
    result = cli("check", rw / "model.onnx")
    assert result.code == 1 and result.err == ""
    assert all(line.startswith(f"{rw / 'model.onnx'}:") for line in result.out.splitlines())
    assert "evil\\nhps-surgeon: all clear" in result.out


def test_no_library_warning_before_or_among_our_lines(cli, rw, monkeypatch):
    """onnx-graphsurgeon prints its warnings on stdout (among check's `path:where: message` lines), and it and
    Polygraphy print "[W] 'colored' module is not installed" on their first message; numpy warns on stderr."""
    import warnings

    import numpy as np
    from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER
    from polygraphy.logger import G_LOGGER

    from hps_surgeon.cli import check as check_command

    real = check_command.check_models

    def noisy(*args, **kwargs):
        GS_LOGGER.warning("graph surgeon has something to say")
        G_LOGGER.warning("polygraphy has something to say")
        np.mean(np.zeros(0))  # "Mean of empty slice"
        warnings.warn("a library's warning")
        return real(*args, **kwargs)

    monkeypatch.setattr("hps_surgeon.cli.check.check_models", noisy)
    result = cli("check", rw / "model.onnx")
    assert (result.code, result.out, result.err) == (0, "", "")


@pytest.mark.parametrize("option", ["--max-batch-size", "--max-keys-per-sample"])
def test_rewrite_option_past_what_hugectr_reads(cli, tmp_path, option):
    """99999999999 went into the staged config, whose validation then failed naming the staging folder."""
    result = cli("rewrite", SOURCE, "--out", tmp_path / "out", option, "99999999999")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: {option} 99999999999: must be 1 to 2147483647 (HugeCTR reads it as an int)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["rewrite", "deploy", "verify"])
def test_argument_with_bytes_that_are_not_utf8(cli, rw, tmp_path, command):
    """A path with a byte that is not UTF-8 (Python decodes it to \\udcff) went as far as writing the config, then
    died on encoding it (exit 4); check still reads such a file (its models are reported one by one)."""
    odd = os.fsdecode(bytes(tmp_path / "out") + b"\xff")
    argv = {"rewrite": ["rewrite", SOURCE, "--out", odd], "deploy": ["deploy", rw, "--repo", odd],
            "verify": ["verify", SOURCE, rw / "model.onnx", "--config", odd]}[command]
    result = cli(*argv)
    shown = odd.encode("unicode_escape").decode()
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: '{shown}': holds bytes that are not UTF-8; paths and names are written into UTF-8 "
           "files (HPS configs, model attributes) — rename it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rw"]
