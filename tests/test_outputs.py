"""Hostile input, second round (issue 21): one rule for what we write (`hps_surgeon/outputs.py`).

Every output path, named on the command line or in a config, is refused when it is the root, an
input or a folder that holds one, a special file, or (for a database) a non-empty folder that is
not a RocksDB database: one line, exit 2, nothing written anywhere. Publish checks all of this
before it needs its native library, so the answers are the same with and without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


from support import FIXTURES, tree

SOURCE = FIXTURES / "torch/embedding_int64_legacy.onnx"


def assert_refused(cli, argv: list, line: str, watched: Path) -> None:
    before = tree(watched)
    result = cli(*argv)
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: {line}")
    assert tree(watched) == before


def _unrelated(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    return folder


# --- publish --persistent-db -----------------------------------------------------------------------

@pytest.mark.parametrize("target, problem", [
    ("/", "--persistent-db /: the root folder cannot be an output; name a folder inside it"),
    ("", "--persistent-db '': an empty path; name the output folder"),
    ("{rw}", "--persistent-db {rw}: is the input {rw}; writing there would overwrite what is read — choose another "
             "--persistent-db"),
    ("{rw}/tables", "--persistent-db {rw}/tables: holds the input {rw}/tables/emb_weight; writing there would replace "
                    "or mix into what is read — choose another --persistent-db"),
    ("{rw}/tables/emb_weight", "--persistent-db {rw}/tables/emb_weight: is the input {rw}/tables/emb_weight; writing "
                               "there would overwrite what is read — choose another --persistent-db"),
    ("{tmp}", "--persistent-db {tmp}: holds the input {rw}; writing there would replace or mix into what is read — "
              "choose another --persistent-db"),
    ("{photos}", "--persistent-db {photos}: a non-empty folder that is not a RocksDB database (holds 'keep.txt'); "
                 "RocksDB would mix its files into it — name an empty or new folder, or an existing database"),
    ("{photos}/keep.txt", "--persistent-db {photos}/keep.txt: a file, not a database folder; name a folder for "
                          "RocksDB"),
    ("{fifo}", "--persistent-db {fifo}: a FIFO, not a folder; choose another --persistent-db"),
])
def test_publish_database_folder_that_is_no_place_for_one(cli, rw, tmp_path, monkeypatch, target, problem):
    """`/` got RocksDB files in the filesystem root, a folder of photos got them mixed in, `''` was the working
    folder; the rewrite folder and its tables were accepted too. Refused before the storage library is needed."""
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    names = {"rw": rw, "tmp": tmp_path, "photos": _unrelated(tmp_path), "fifo": tmp_path / "fifo"}
    assert_refused(cli, ["publish", rw, "--persistent-db", target.format(**names)], problem.format(**names), tmp_path)


@pytest.mark.parametrize("argv, problem", [
    (["--volatile-db", "redis://127.0.0.1:1", "--num-partitions", "0"],
     "--num-partitions 0: Redis partitions per table, 1 to 65536, with --volatile-db"),
    (["--volatile-db", "redis://127.0.0.1:1", "--num-partitions", str(2**64)],
     f"--num-partitions {2**64}: Redis partitions per table, 1 to 65536, with --volatile-db"),
    (["--persistent-db", "{tmp}/db", "--num-partitions", "4"],
     "--num-partitions 4: Redis partitions per table, 1 to 65536, with --volatile-db; add --volatile-db or drop it"),
    (["--volatile-db", "redis://[::1"], "--volatile-db 'redis://[::1': '[::1' is not host:port (Invalid IPv6 URL)"),
])
def test_publish_options_refused_before_any_database_is_reached(cli, rw, tmp_path, argv, problem):
    """Was ignored without --volatile-db (0, 2^64 accepted); a malformed IPv6 address was exit 4."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert_refused(cli, ["publish", rw, *argv], problem, tmp_path)


def _with_persistent_db(rw: Path, path: str) -> None:
    config = json.loads((rw / "hps_config.json").read_text())
    config["persistent_db"] = {"type": "rocks_db", "path": path}
    (rw / "hps_config.json").write_text(json.dumps(config))


def _changed_rows(tmp_path: Path, rw: Path) -> Path:
    changed = tmp_path / "delta" / "emb_weight"
    changed.mkdir(parents=True)
    for name in ("key", "emb_vector"):
        (changed / name).write_bytes((rw / "tables/emb_weight" / name).read_bytes())
    return changed


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_update_writes_no_database_outside_the_config_folder(cli, rw, tmp_path, where):
    """`publish --update` wrote the RocksDB persistent_db.path names, wherever it pointed."""
    elsewhere = tmp_path / "elsewhere"
    _with_persistent_db(rw, "../elsewhere" if where == "relative" else str(elsewhere))
    changed = _changed_rows(tmp_path, rw)
    shown = "'../elsewhere'" if where == "relative" else f"'{elsewhere}'"
    assert_refused(cli, ["publish", rw, "--update", changed],
                   f"{rw / 'hps_config.json'}: persistent_db.path: {shown} leads outside {rw} (to {elsewhere}); "
                   "refusing to write it — keep what hps_config.json names inside its folder; if you own the folder "
                   "that holds it, trust it with --allow-path DIR", tmp_path)


@pytest.mark.parametrize("path, problem", [
    ("db", "no RocksDB database there; publish the tables first (hps-surgeon publish DIR --persistent-db PATH)"),
    ("tables", "holds the input {rw}/tables/emb_weight; writing there would replace or mix into what is read — "
               "change persistent_db.path"),
])
def test_update_writes_only_into_an_existing_database(cli, rw, tmp_path, path, problem):
    """An update never creates a database, nor mixes one into a folder of other files."""
    _with_persistent_db(rw, path)
    changed = _changed_rows(tmp_path, rw)
    assert_refused(cli, ["publish", rw, "--update", changed],
                   f"{rw / 'hps_config.json'}: persistent_db.path {rw / path}: {problem.format(rw=rw)}", tmp_path)


# --- rewrite --plan-out, deploy --repo, build-engine --out ----------------------------------------

def test_plan_out_over_the_source_model(cli, tmp_path):
    """`rewrite --dry-run --plan-out MODEL.onnx` replaced the model with the YAML plan (exit 0)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(SOURCE.read_bytes())
    assert_refused(cli, ["rewrite", model, "--out", tmp_path / "out", "--dry-run", "--plan-out", model],
                   f"--plan-out {model}: is the input {model}; writing there would overwrite what is read — choose "
                   "another --plan-out", tmp_path)


@pytest.mark.parametrize("kind", ["folder", "FIFO", "/dev/null", "inside --out"])
def test_plan_out_that_is_no_file_to_write(cli, tmp_path, kind):
    os.mkfifo(tmp_path / "fifo")
    target = {"folder": tmp_path, "FIFO": tmp_path / "fifo", "/dev/null": Path("/dev/null"),
              "inside --out": tmp_path / "out/plan.yaml"}[kind]
    problem = {"folder": f"{tmp_path}: a folder, not a file; name a file to write",
               "FIFO": f"{tmp_path / 'fifo'}: a FIFO, not a file; name a file to write",
               "/dev/null": "/dev/null: a device, not a file; name a file to write",
               "inside --out": f"{target}: lies inside --out {tmp_path / 'out'}, which the rewrite replaces whole; "
                               "write the plan elsewhere"}[kind]
    assert_refused(cli, ["rewrite", SOURCE, "--out", tmp_path / "out", "--plan-out", target],
                   f"--plan-out {problem}", tmp_path)


def test_plan_out_may_be_the_plan_it_edits(cli, tmp_path):
    """--plan and --plan-out naming one file edits the plan in place: an input, but one it may replace."""
    plan = tmp_path / "plan.yaml"
    assert cli("rewrite", SOURCE, "--out", tmp_path / "out", "--dry-run", "--plan-out", plan).code == 0
    result = cli("rewrite", SOURCE, "--out", tmp_path / "out", "--dry-run", "--plan", plan, "--plan-out", plan)
    assert result.code == 0, result.err
    assert plan.read_text().startswith("# hps-surgeon plan.")


@pytest.mark.parametrize("target", ["{rw}", "{rw}/tables", "{tmp}"])
def test_deploy_repository_over_its_input(cli, rw, tmp_path, target):
    """With --force, deploy wrote NAME/ and start_triton.sh into the rewrite folder it read."""
    repo = target.format(rw=rw, tmp=tmp_path)
    held = rw if target == "{tmp}" else rw / "tables/emb_weight/key"
    verb = "is the input" if repo == str(rw) else "holds the input"
    shown_input = rw if repo == str(rw) else held
    line = (f"--repo {repo}: {verb} {shown_input}; writing there would "
            f"{'overwrite what is read' if verb == 'is the input' else 'replace or mix into what is read'} — choose "
            "another --repo")
    assert_refused(cli, ["deploy", rw, "--repo", repo, "--force"], line, tmp_path)


def test_build_engine_output_over_the_model(cli, rw, tmp_path):
    assert_refused(cli, ["build-engine", rw, "--out", rw / "model.onnx", "--force"],
                   f"--out {rw / 'model.onnx'}: is the input {rw / 'model.onnx'}; writing there would overwrite what "
                   "is read — choose another --out", tmp_path)


def test_publish_without_its_library_is_one_line_naming_the_config(rw, tmp_path):
    """On a machine without libhps_storage.so every input is still checked first; a valid one then ends in one
    line naming the config (a subprocess: this process may have loaded the library already)."""
    import subprocess
    import sys

    env = {**os.environ, "HPS_SURGEON_STORAGE_LIB": str(tmp_path / "missing/libhps_storage.so")}
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "publish", str(rw), "--persistent-db",
                           str(tmp_path / "db")], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"hps-surgeon: error: {rw / 'hps_config.json'}: cannot publish its tables: storage library "
                           f"not found (tried {tmp_path / 'missing/libhps_storage.so'}); build it with `hps-surgeon "
                           "build-native` (needs libhiredis-dev and librocksdb-dev; `hps-surgeon doctor` lists what is "
                           "missing) or set HPS_SURGEON_STORAGE_LIB\n")
    assert not (tmp_path / "db").exists()
