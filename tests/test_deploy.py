"""`hps-surgeon deploy` (issue 6) on real rewrite outputs of every exporter fixture.

TensorRT and Triton do not run here: config.pbtxt is parsed with Triton's own ModelConfig protobuf,
build_engine.sh and start_triton.sh run against stand-in `polygraphy` / `tritonserver` executables
that record their arguments, and those arguments go through Polygraphy's own `convert` parser.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import hps_surgeon
from hps_surgeon.deploy import repository as deploy, triton
from hps_surgeon.errors import SurgeonError, errors
from hps_surgeon.hps import validate

from support import FIXTURES, copy_rewrite, lookup_model

#: fixtures with nothing for `rewrite` to do (a refused lookup; a HugeCTR model without embeddings)
NOTHING_TO_REWRITE = {"torch/embedding_max_norm_dynamo.onnx", "hugectr/dlrm_nonconstant_default.onnx",
                      "hugectr/dlrm_sparse_input.onnx"}
ALL_FIXTURES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.onnx")
                      if p.relative_to(FIXTURES).as_posix() not in NOTHING_TO_REWRITE)
PLUGIN = "/opt/fake/libhps_plugin.so"
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "LD_PRELOAD": os.environ.get("LD_PRELOAD"),
               "HPS_TRT_AUTOREGISTER": os.environ.get("HPS_TRT_AUTOREGISTER")}}, f)
"""


# --- helpers -------------------------------------------------------------------------------------

def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True,
                          env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hps-surgeon: error: "), lines[0]
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def rewritten(fixture: str, out: Path) -> Path:
    assert hps_surgeon.rewrite(FIXTURES / fixture, out).written
    return out


def model_config_pb2():
    """Triton's ModelConfig module from the tritonclient wheel.

    Loaded by path: `tritonclient.grpc`'s __init__ needs grpcio, model_config_pb2 itself only protobuf.
    """
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorder_bin(folder: Path) -> Path:
    """`polygraphy` and `tritonserver` stand-ins that write their argv and LD_PRELOAD to $RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("polygraphy", "tritonserver"):
        path = folder / name
        path.write_text(RECORDER.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def run_script(script: Path, bin_dir: Path, record: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record),
           "HPS_PLUGIN_LIB": str(bin_dir / "polygraphy")}  # any existing file stands in for the library
    env.pop("LD_PRELOAD", None)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env)


def polygraphy_convert(argv: list[str]):
    """Parse `polygraphy convert` arguments with Polygraphy's own parser; returns its argument groups."""
    from polygraphy.tools.convert.convert import Convert

    tool = Convert()
    args = tool.setup_parser().parse_args(argv)
    tool.parse(args)
    return args, tool.arg_groups


def io_of(model_path: Path) -> tuple[list, list]:
    model = onnx.load_model(str(model_path), load_external_data=False)

    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

    return ([(v.name, v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input],
            [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output])


TRITON_OF_ONNX = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64", TensorProto.INT32: "TYPE_INT32"}


# --- every fixture -------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ALL_FIXTURES)
def test_deploy_every_fixture(fixture, tmp_path):
    """config.pbtxt == the model's I/O; polygraphy accepts the build line; the deployed copy validates."""
    rw = rewritten(fixture, tmp_path / "rw")
    repo = tmp_path / "repo"
    name = "m"
    deploy.deploy(rw, repo, deploy.DeployOptions(name=name, deploy_root=str(repo), plugin_lib=PLUGIN,
                                                 max_batch=512, opt_batch=64, min_batch=2))
    folder = repo / name
    inputs, outputs = io_of(rw / "model.onnx")

    # config.pbtxt: Triton's ModelConfig parses it, it round-trips, and its I/O is the model's.
    from google.protobuf import text_format
    pb2 = model_config_pb2()
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert text_format.Parse(text_format.MessageToString(config), pb2.ModelConfig()) == config
    assert (config.name, config.platform, config.max_batch_size) == (name, "tensorrt_plan", 0)
    assert config.default_model_filename == "model.plan"
    triton_type = pb2.DataType.Name
    assert [(i.name, triton_type(i.data_type), list(i.dims)) for i in config.input] == \
        [(n, TRITON_OF_ONNX[t], d) for n, t, d in inputs]
    assert [(o.name, triton_type(o.data_type), list(o.dims)) for o in config.output] == \
        [(n, TRITON_OF_ONNX[t], d) for n, t, d in outputs]

    # build_engine.sh: run it (polygraphy stand-in), parse what it passed with Polygraphy's parser.
    bin_dir = recorder_bin(tmp_path / "bin")
    record = tmp_path / "record.json"
    proc = run_script(folder / "build_engine.sh", bin_dir, record)
    assert proc.returncode == 0, proc.stderr
    # polygraphy dlopens --plugins before importing TensorRT: the plugin must load libnvinfer itself
    assert json.loads(record.read_text())["HPS_TRT_AUTOREGISTER"] == "1"
    argv = json.loads(record.read_text())["argv"]
    assert argv[0] == "convert"
    args, groups = polygraphy_convert(argv[1:])
    from polygraphy.tools.args import TrtConfigArgs, TrtLoadPluginsArgs
    assert args.model_file == str(folder / "hps" / "model.onnx")
    assert args.output == str(folder / "1" / "model.plan") and args.convert_to == "trt"
    assert groups[TrtLoadPluginsArgs].plugins == [str(bin_dir / "polygraphy")]
    expected = {n: tuple([b if d == -1 else d for d in dims] for b in (2, 64, 512)) for n, _, dims in inputs}
    assert groups[TrtConfigArgs].profile_dicts == [expected]
    assert not groups[TrtConfigArgs].fp16

    # The deployed copy points at the deployed config and validates against it.
    hps = folder / "hps"
    model = onnx.load_model(str(hps / "model.onnx"), load_external_data=False)
    for node in validate.hps_nodes(model):
        path = next(a.s for a in node.attribute if a.name == "ps_config_file").decode().rstrip("\0")
        assert path == str(hps / "hps_config.json")
    assert errors(validate.validate(hps / "model.onnx", hps / "hps_config.json")) == []
    for file in json.loads((hps / "hps_config.json").read_text())["models"][0]["sparse_files"]:
        assert file.startswith(str(hps / "tables") + "/")
    assert (folder / "1").is_dir() and not any((folder / "1").iterdir())


# --- perf_data.json ------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture, table_of_column", [
    ("torch/dlrm_small_legacy.onnx", "emb_l_{}_weight"),
    ("torch/dlrm_small_dynamo.onnx", "emb_l_{}_weight"),
    ("tf/tf_dlrm_small.onnx", "model_emb_{}_embedding_lookup_"),
])
def test_perf_data_keys_come_from_each_columns_table(fixture, table_of_column, tmp_path):
    """DLRM: column i of sparse_keys is looked up in table i, so its keys must be that table's keys."""
    rw = rewritten(fixture, tmp_path / "rw")
    deploy.deploy(rw, tmp_path / "repo", deploy.DeployOptions(name="m", opt_batch=256))
    data = json.loads((tmp_path / "repo" / "m" / "perf_data.json").read_text())["data"]
    assert len(data) == triton.PERF_REQUESTS
    tables = {p.name: np.fromfile(p / "key", dtype="<i8") for p in (rw / "tables").iterdir()}
    for request in data:
        assert request["dense_features"]["shape"] == [256, 13]
        keys = request["sparse_keys"]
        values = np.array(keys["content"], dtype=np.int64).reshape(keys["shape"])
        assert keys["shape"][0] == 256
        for column in range(values.shape[1]):
            table = next(v for k, v in tables.items() if k.startswith(table_of_column.format(column)))
            assert np.isin(values[:, column], table).all(), column
        # Spread over the table, not just key 0 (HugeCTR's own test only ever drew key 0).
        assert len(np.unique(values[:, 0])) > 10


def test_perf_data_shared_table_and_float_keys(tmp_path):
    rw = rewritten("torch/shared_table_legacy.onnx", tmp_path / "rw")
    deploy.deploy(rw, tmp_path / "repo", deploy.DeployOptions(name="m", opt_batch=32))
    request = json.loads((tmp_path / "repo" / "m" / "perf_data.json").read_text())["data"][0]
    stored = np.fromfile(next((rw / "tables").iterdir()) / "key", dtype="<i8")
    for name, width in (("user_keys", 26), ("item_keys", 8)):
        assert request[name]["shape"] == [32, width]
        assert np.isin(request[name]["content"], stored).all()

    rw = rewritten("tf/keras_embedding_float_input.onnx", tmp_path / "rw_float")
    deploy.deploy(rw, tmp_path / "repo_float", deploy.DeployOptions(name="m", opt_batch=8))
    keys = json.loads((tmp_path / "repo_float" / "m" / "perf_data.json").read_text())["data"][0]["keys"]
    stored = np.fromfile(next((rw / "tables").iterdir()) / "key", dtype="<i8")
    assert np.isin(np.array(keys["content"]), stored.astype(np.float64)).all()


def test_instance_groups_and_deployed_device_list_agree(tmp_path):
    # HugeCTR skips lookups on a GPU outside deployed_device_list and returns success
    # (HugeCTR/src/hps/plugin/lookup_manager.cpp:168-172): Triton must run instances only on those GPUs.
    from google.protobuf import text_format
    pb2 = model_config_pb2()
    rw = rewritten("torch/embedding_int64_legacy.onnx", tmp_path / "rw")
    config_path = rw / "hps_config.json"
    config = json.loads(config_path.read_text())
    config["models"][0]["deployed_device_list"] = [3, 1]
    config_path.write_text(json.dumps(config))
    for gpus, expected in (((), [1, 3]), ((2,), [2])):
        repo = tmp_path / f"repo{len(gpus)}"
        deploy.deploy(rw, repo, deploy.DeployOptions(name="m", gpus=gpus))
        pbtxt = text_format.Parse((repo / "m" / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert [list(g.gpus) for g in pbtxt.instance_group] == [expected]
        deployed = json.loads((repo / "m" / "hps" / "hps_config.json").read_text())["models"][0]
        assert sorted(deployed["deployed_device_list"]) == expected


def test_deploy_keeps_hugectr_names_valid_and_reads_relative_paths(tmp_path):
    # HugeCTR aborts on names outside [a-zA-Z0-9_-]{1,120} (HugeCTR/src/hps/hier_parameter_server.cpp:34-38):
    # deploy refuses a folder whose config has one rather than ship it.
    out = tmp_path / "rw"
    assert hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, relative_paths=True).written
    deploy.deploy(out, tmp_path / "repo", deploy.DeployOptions(name="m"))
    deployed = json.loads((tmp_path / "repo" / "m" / "hps" / "hps_config.json").read_text())["models"][0]
    assert deployed["sparse_files"] == ["/models/m/hps/tables/emb_weight"]
    assert deployed["embedding_table_names"] == ["emb_weight"]
    config = json.loads((out / "hps_config.json").read_text())
    config["models"][0]["embedding_table_names"] = ["emb.weight"]
    (out / "hps_config.json").write_text(json.dumps(config))
    proc = run_cli("deploy", out, "--repo", tmp_path / "repo2")
    assert proc.returncode == 2 and not (tmp_path / "repo2").exists()
    assert error_line(proc).startswith(f"hps-surgeon: error: rewrite folder fails validation: {out / 'hps_config.json'}:"
                                       "models[0].embedding_table_names[0]: 'emb.weight' is not a valid HugeCTR table "
                                       "name")


# --- the CLI -------------------------------------------------------------------------------------

@pytest.fixture
def dlrm_rw(tmp_path) -> Path:
    return rewritten("torch/dlrm_small_legacy.onnx", tmp_path / "rw")


def test_cli_writes_the_repository(dlrm_rw, tmp_path):
    repo = tmp_path / "repo"
    proc = run_cli("deploy", dlrm_rw, "--repo", repo, "--name", "dlrm", "--fp16", "--instances", "2",
                   "--gpus", "0,1", "--deploy-root", "/models", "--opt-batch", "128")
    assert proc.returncode == 0, proc.stderr
    assert "deployed 'dlrm'" in proc.stdout and "/models/dlrm/build_engine.sh" in proc.stdout
    files = [f for f in listing(repo) if "/tables/" not in f]
    assert files == ["dlrm", "dlrm/1", "dlrm/build_engine.sh", "dlrm/config.pbtxt", "dlrm/hps",
                     "dlrm/hps/hps_config.json", "dlrm/hps/model.onnx", "dlrm/hps/tables", "dlrm/perf_data.json",
                     "start_triton.sh"]
    assert sorted(p.name for p in (repo / "dlrm" / "hps" / "tables").iterdir()) == \
        sorted(p.name for p in (dlrm_rw / "tables").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"

    from google.protobuf import text_format
    pb2 = model_config_pb2()
    config = text_format.Parse((repo / "dlrm" / "config.pbtxt").read_text(), pb2.ModelConfig())
    group = config.instance_group[0]
    assert (group.count, pb2.ModelInstanceGroup.Kind.Name(group.kind), list(group.gpus)) == (2, "KIND_GPU", [0, 1])
    text = (repo / "dlrm" / "config.pbtxt").read_text()
    assert "max_batch_size 0 with the batch axis in dims" in text  # the why, for the next reader

    hps = json.loads((repo / "dlrm" / "hps" / "hps_config.json").read_text())["models"][0]
    assert hps["deployed_device_list"] == [0, 1]
    assert all(f.startswith("/models/dlrm/hps/tables/") for f in hps["sparse_files"])
    model = onnx.load_model(str(repo / "dlrm" / "hps" / "model.onnx"), load_external_data=False)
    attrs = {a.s for n in validate.hps_nodes(model) for a in n.attribute if a.name == "ps_config_file"}
    assert attrs == {b"/models/dlrm/hps/hps_config.json\0"}

    script = (repo / "dlrm" / "build_engine.sh").read_text()
    assert "# trtexec " in script and "--minShapes=dense_features:1x13,sparse_keys:1x26" in script
    assert "--maxShapes=dense_features:1024x13,sparse_keys:1024x26" in script and "--fp16" in script
    assert os.access(repo / "dlrm" / "build_engine.sh", os.X_OK) and os.access(repo / "start_triton.sh", os.X_OK)
    # Tables are hard-linked when the repository is on the same filesystem.
    table = next((dlrm_rw / "tables").iterdir())
    assert (repo / "dlrm" / "hps" / "tables" / table.name / "key").stat().st_ino == (table / "key").stat().st_ino


def test_fp16_reaches_polygraphy(dlrm_rw, tmp_path):
    repo = tmp_path / "repo"
    deploy.deploy(dlrm_rw, repo, deploy.DeployOptions(name="m", deploy_root=str(repo), fp16=True))
    bin_dir, record = recorder_bin(tmp_path / "bin"), tmp_path / "record.json"
    assert run_script(repo / "m" / "build_engine.sh", bin_dir, record).returncode == 0
    from polygraphy.tools.args import TrtConfigArgs
    _, groups = polygraphy_convert(json.loads(record.read_text())["argv"][1:])
    assert groups[TrtConfigArgs].fp16


def test_build_engine_refuses_outside_the_deploy_root(dlrm_rw, tmp_path):
    repo = tmp_path / "repo"
    deploy.deploy(dlrm_rw, repo, deploy.DeployOptions(name="m", deploy_root="/nonexistent/models"))
    bin_dir, record = recorder_bin(tmp_path / "bin"), tmp_path / "record.json"
    proc = run_script(repo / "m" / "build_engine.sh", bin_dir, record)
    assert proc.returncode == 1 and not record.exists()
    assert "/nonexistent/models/m/hps/hps_config.json not found" in proc.stderr


def test_start_triton_preloads_the_plugin(dlrm_rw, tmp_path):
    repo = tmp_path / "repo"
    deploy.deploy(dlrm_rw, repo, deploy.DeployOptions(name="m", deploy_root=str(repo)))
    bin_dir, record = recorder_bin(tmp_path / "bin"), tmp_path / "record.json"
    proc = run_script(repo / "start_triton.sh", bin_dir, record)
    assert proc.returncode == 1 and "m/1/model.plan is missing — run" in proc.stderr and not record.exists()
    (repo / "m" / "1" / "model.plan").write_bytes(b"engine")
    proc = run_script(repo / "start_triton.sh", bin_dir, record, "--log-verbose=1")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(record.read_text())
    assert seen["argv"] == [f"--model-repository={repo}", "--log-verbose=1"]
    assert seen["LD_PRELOAD"] == str(bin_dir / "polygraphy")
    assert f'PLUGIN_LIB="${{HPS_PLUGIN_LIB:-{deploy.DEFAULT_PLUGIN_LIB}}}"' in \
        (repo / "start_triton.sh").read_text()


def test_force_replaces_the_model_and_keeps_the_others(dlrm_rw, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "m").mkdir()
    (repo / "m" / "stale.txt").write_text("old")
    assert run_cli("deploy", dlrm_rw, "--repo", repo, "--name", "m", "--force").returncode == 0
    assert (repo / "other" / "1").is_dir() and not (repo / "m" / "stale.txt").exists()
    assert (repo / "m" / "config.pbtxt").is_file() and (repo / "start_triton.sh").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- bad input: one line, exit 2, nothing written ------------------------------------------------

def _copy(rw: Path, tmp_path: Path) -> Path:
    return copy_rewrite(rw, tmp_path / "broken")


@pytest.mark.parametrize("case, expected", [
    ("missing folder", "no such rewrite folder"),
    ("missing config", "hps_config.json: missing from the rewrite folder"),
    ("missing model", "model.onnx: missing from the rewrite folder"),
    ("missing table", "has no key and emb_vector files"),
    ("no HPS_TRT node", "has no HPS_TRT node"),
    ("max batch", "--max-batch 2048 exceeds max_batch_size 1024"),
    ("non-empty repo", "folder is not empty (has keep.txt) — pass --force"),
    ("bad gpus", "--gpus 'a,b': not a comma-separated list"),
    ("batch order", "needs 1 <= min <= opt <= max"),
    ("relative root", "--deploy-root 'models': must be an absolute path"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, expected, dlrm_rw, tmp_path):
    rw, repo, extra = dlrm_rw, tmp_path / "out" / "repo", []
    if case == "missing folder":
        rw = tmp_path / "nowhere"
    elif case == "missing config":
        rw = _copy(dlrm_rw, tmp_path)
        (rw / "hps_config.json").unlink()
    elif case == "missing model":
        rw = _copy(dlrm_rw, tmp_path)
        (rw / "model.onnx").unlink()
    elif case == "missing table":
        rw = _copy(dlrm_rw, tmp_path)
        (next((rw / "tables").iterdir()) / "key").unlink()
    elif case == "no HPS_TRT node":
        rw = _copy(dlrm_rw, tmp_path)
        shutil.copy(FIXTURES / "torch" / "dlrm_small_legacy.onnx", rw / "model.onnx")
    elif case == "max batch":
        extra = ["--max-batch", "2048"]
    elif case == "non-empty repo":
        repo.mkdir(parents=True)
        (repo / "keep.txt").write_text("mine")
    elif case == "bad gpus":
        extra = ["--gpus", "a,b"]
    elif case == "batch order":
        extra = ["--min-batch", "64", "--opt-batch", "8"]
    elif case == "relative root":
        extra = ["--deploy-root", "models"]
    before = listing(tmp_path / "out") if (tmp_path / "out").exists() else None
    proc = run_cli("deploy", rw, "--repo", repo, *extra)
    assert proc.returncode == 2, proc.stderr
    assert expected in error_line(proc)
    after = listing(tmp_path / "out") if (tmp_path / "out").exists() else None
    assert after == before


def test_dynamic_non_batch_axis_is_refused(tmp_path):
    source = lookup_model(tmp_path / "src" / "dyn.onnx", key_shape=("B", "N"))
    rw = tmp_path / "rw"
    assert hps_surgeon.rewrite(source, rw, max_keys_per_sample=4).written
    proc = run_cli("deploy", rw, "--repo", tmp_path / "repo")
    assert proc.returncode == 2
    assert "input 'keys' of " in error_line(proc) and "axis 1 is dynamic" in error_line(proc)
    assert not (tmp_path / "repo").exists()


def test_failure_while_writing_leaves_nothing(dlrm_rw, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deploy, "_link_or_copy", broken)
    with pytest.raises(SurgeonError, match=f"--repo {tmp_path / 'repo'}: cannot write the repository: No space left "
                                           "on device; nothing was changed"):
        deploy.deploy(dlrm_rw, tmp_path / "repo", deploy.DeployOptions())
    assert not (tmp_path / "repo").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
