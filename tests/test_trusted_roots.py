"""Trusted roots (issue 21): `--allow-path DIR` and $HPS_SURGEON_ALLOW_PATH for real deployments.

A HugeCTR deployment keeps its config in the model repository and its tables on another volume
(HugeCTR's own samples name `/data/...` sparse files): the layout here is the same,

    repo/dlrm/model.onnx, repo/dlrm/hps_config.json   (sparse_files: absolute paths under data/)
    data/embeddings/<table>/{key, emb_vector}

Refused by default (untrusted input stays confined); read by check, verify, deploy and publish when
the user names data/embeddings as trusted, and by no more than that.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import hps_surgeon
from hps_surgeon.confine import ALLOW_ENV

from support import FIXTURES, tree

SOURCE = FIXTURES / "torch/dlrm_small_legacy.onnx"  # 26 tables
OPT_IN = "; if you own the folder that holds it, trust it with --allow-path DIR"


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> tuple[Path, Path]:
    """(the model folder repo/dlrm, the tables' folder data/embeddings), HugeCTR-style."""
    root = tmp_path_factory.mktemp("deployment")
    model_dir, tables = root / "repo/dlrm", root / "data/embeddings"
    hps_surgeon.rewrite(SOURCE, model_dir, model_name="dlrm")
    tables.parent.mkdir(parents=True)
    shutil.move(model_dir / "tables", tables)
    config = json.loads((model_dir / "hps_config.json").read_text())
    entry = config["models"][0]
    entry["sparse_files"] = [str(tables / Path(f).name) for f in entry["sparse_files"]]
    (model_dir / "hps_config.json").write_text(json.dumps(config, indent=2))
    return model_dir, tables


def _first_table(model_dir: Path) -> str:
    return json.loads((model_dir / "hps_config.json").read_text())["models"][0]["sparse_files"][0]


def test_tables_on_another_volume_are_refused_by_default(cli, layout, tmp_path):
    model_dir, tables = layout
    first = _first_table(model_dir)
    problem = (f"{model_dir / 'hps_config.json'}:models[0].sparse_files[0]: '{first}' leads outside {model_dir} (to "
               f"{first}); refusing to read it — keep what hps_config.json names inside its folder (an absolute path, "
               "as rewrite writes them: point it at this folder, or rewrite with --relative-paths for a folder that "
               f"moves){OPT_IN}")
    checked = cli("check", model_dir / "model.onnx")
    assert checked.code == 1 and checked.out.splitlines()[0] == problem
    verified = cli("verify", SOURCE, model_dir / "model.onnx", "--config", model_dir / "hps_config.json")
    assert (verified.code, verified.error_line) == (2, f"hps-surgeon: error: {problem} (and 25 more)")
    deployed = cli("deploy", model_dir, "--repo", tmp_path / "triton")
    assert deployed.code == 2 and deployed.error_line.startswith(f"hps-surgeon: error: rewrite folder fails "
                                                                 f"validation: {problem} (and 25 more)")
    published = cli("publish", model_dir, "--persistent-db", tmp_path / "db")
    assert (published.code, published.error_line) == (2, f"hps-surgeon: error: {problem} (and 25 more)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_check_verify_and_deploy_read_tables_under_an_allowed_path(cli, layout, tmp_path):
    model_dir, tables = layout
    before = tree(tables)
    checked = cli("check", model_dir / "model.onnx", "--allow-path", tables)
    assert (checked.code, checked.err) == (0, "")
    assert not [line for line in checked.out.splitlines() if ": warning: " not in line and ": note: " not in line]
    verified = cli("verify", SOURCE, model_dir / "model.onnx", "--config", model_dir / "hps_config.json",
                   "--allow-path", tables)
    assert verified.code == 0, verified.err
    assert "PASSED" in verified.out.splitlines()[-1]
    deployed = cli("deploy", model_dir, "--repo", tmp_path / "triton", "--allow-path", tables)
    assert deployed.code == 0, deployed.err
    copied = tmp_path / "triton/dlrm/hps/tables"
    assert len(list(copied.iterdir())) == 26
    name = Path(_first_table(model_dir)).name
    assert (copied / name / "emb_vector").read_bytes() == (tables / name / "emb_vector").read_bytes()
    deployed_config = json.loads((tmp_path / "triton/dlrm/hps/hps_config.json").read_text())
    assert deployed_config["models"][0]["sparse_files"][0] == f"/models/dlrm/hps/tables/{name}"
    assert tree(tables) == before  # read, never written


def test_publish_reads_tables_under_an_allowed_path(cli, layout, tmp_path):
    from hps_surgeon.storage import _native
    try:
        _native.load()
    except _native.StorageUnavailableError as exc:
        pytest.skip(str(exc))
    model_dir, tables = layout
    copy = tmp_path / "dlrm"
    shutil.copytree(model_dir, copy)  # publish writes persistent_db into the config: keep the module's intact
    result = cli("publish", copy, "--persistent-db", tmp_path / "db", "--allow-path", tables, "--quiet")
    assert result.code == 0, result.err
    assert json.loads((copy / "hps_config.json").read_text())["persistent_db"]["path"] == str(tmp_path / "db")
    assert (tmp_path / "db/CURRENT").is_file()


def test_environment_variable_for_a_pre_commit_hook(cli, layout, tmp_path, monkeypatch):
    """A hook's `args` are fixed in .pre-commit-config.yaml; its environment names the trusted folders (':')."""
    model_dir, tables = layout
    monkeypatch.setenv(ALLOW_ENV, f"{tmp_path}{os.pathsep}{tables}")
    assert cli("check", model_dir / "model.onnx").code == 0
    monkeypatch.setenv(ALLOW_ENV, f"{tables.parent / 'elsewhere'}")
    result = cli("check", model_dir / "model.onnx")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: ${ALLOW_ENV} '{tables.parent / 'elsewhere'}': not a folder (resolves to "
           f"{tables.parent / 'elsewhere'}); name the folder that holds the tables")


def test_allowed_path_trusts_that_folder_only(cli, layout, tmp_path):
    """Another folder named trusted changes nothing for the tables, and the message says what is trusted."""
    model_dir, tables = layout
    other = tmp_path / "other"
    other.mkdir()
    first = _first_table(model_dir)
    result = cli("check", model_dir / "model.onnx", "--allow-path", other)
    assert result.code == 1
    assert result.out.splitlines()[0] == (
        f"{model_dir / 'hps_config.json'}:models[0].sparse_files[0]: '{first}' leads outside {model_dir} or in a folder "
        f"trusted with --allow-path ({other}) (to {first}); refusing to read it — keep what hps_config.json names "
        "inside its folder (an absolute path, as rewrite writes them: point it at this folder, or rewrite with "
        "--relative-paths for a folder that moves)")


def test_symlink_out_of_an_allowed_path_is_refused(cli, layout, tmp_path):
    """Trusted is where the real path lies: a link inside data/embeddings to a file elsewhere is still refused."""
    model_dir, tables = layout
    copy = tmp_path / "embeddings"
    shutil.copytree(tables, copy)
    (tmp_path / "SECRET").write_bytes(bytes(range(256)) * 16)
    name = Path(_first_table(model_dir)).name
    (copy / name / "key").unlink()
    os.symlink(tmp_path / "SECRET", copy / name / "key")
    config = json.loads((model_dir / "hps_config.json").read_text())
    config["models"][0]["sparse_files"] = [str(copy / Path(f).name) for f in config["models"][0]["sparse_files"]]
    edited = tmp_path / "dlrm"
    shutil.copytree(model_dir, edited)
    (edited / "hps_config.json").write_text(json.dumps(config))
    result = cli("check", edited / "model.onnx", "--allow-path", copy)
    assert result.code == 1
    assert f"'{copy / name / 'key'}' leads outside {edited} or in a folder trusted with --allow-path ({copy}) (to " \
           f"{tmp_path / 'SECRET'}); refusing to read it" in result.out


@pytest.mark.parametrize("value, problem", [
    ("/", "'/': the root folder would trust every path; name the folder that holds the tables"),
    ("{missing}", "'{missing}': not a folder (resolves to {missing}); name the folder that holds the tables"),
])
def test_allow_path_that_names_no_folder_to_trust(cli, layout, tmp_path, value, problem):
    model_dir, _ = layout
    missing = tmp_path / "missing"
    result = cli("check", model_dir / "model.onnx", "--allow-path", value.format(missing=missing))
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: --allow-path {problem.format(missing=missing)}")


def test_build_engine_reads_tables_under_an_allowed_path(cli, layout, tmp_path):
    """build-engine validates the folder (tables included) before it looks at --out or a builder: with the tables
    trusted, it gets as far as the --out check (a folder here, so that nothing is built)."""
    model_dir, tables = layout
    refused = cli("build-engine", model_dir, "--out", tmp_path)
    assert refused.code == 2 and "leads outside" in refused.error_line
    trusted = cli("build-engine", model_dir, "--out", tmp_path, "--allow-path", tables)
    assert (trusted.code, trusted.error_line) == (2, f"hps-surgeon: error: --out {tmp_path}: is a folder — name the "
                                                     "engine file")
