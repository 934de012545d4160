"""Engines built by a real NVIDIA builder (TensorRT-RTX, ahead of time, no GPU) with our C++ plugin (issue 13).

For every fixture `rewrite` changes, the rewritten model goes through TensorRT-RTX's ONNX parser
and builder with libhps_plugin.so in its registry. Asserted from what the builder and the plugin
report, never from a stand-in: no parser error, one plugin layer per HPS_TRT node, a non-empty
serialized engine that names HPS_TRT, and our build-time methods called (the plugin logs each one
through TensorRT's own logger).

Some fixtures cannot be built by TensorRT-RTX 1.7.1 because of nodes the rewrite leaves alone
(TensorRT has no sequence ops; TensorRT-RTX has no NonZero; its builder asserts inside the Loop of
torch's legacy EmbeddingBag). For those, the rewritten model must fail exactly as the original
does, at the same nodes with the same messages, and never at an HPS_TRT node.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import hps_surgeon
from hps_surgeon.deploy import engine, rewrite_folder, triton
from hps_surgeon.hps.native import library_path
from hps_surgeon.machine.libraries import read_library

from support import FIXTURES, skip_unless_required


@pytest.fixture(autouse=True)
def _builder_installed():
    if importlib.util.find_spec("tensorrt_rtx") is None:
        skip_unless_required("TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13==1.7.1.116; .ci/run does)")


NOTHING_TO_REWRITE = {"torch/embedding_max_norm_dynamo.onnx", "hugectr/dlrm_nonconstant_default.onnx",
                      "hugectr/dlrm_sparse_input.onnx",
                      # third-party models whose keys need rewrite options (a dynamic number per sample)
                      *(f"thirdparty/models/{name}.onnx" for name in (
                          "keras3_hashing_tf_ops", "keras3_integerlookup_tf_ops", "rechub_din_dynamic_history_dynamo",
                          "tf_feature_column_hash_bucket_tf_ops"))}
#: fixture -> why TensorRT-RTX 1.7.1 cannot build it, original or rewritten
RTX_CANNOT_BUILD = {
    **{f"tf/tf_nn_{safe}embedding_lookup_sparse_{c}.onnx": "NonZero: not in TensorRT-RTX's parser"
       for safe in ("", "safe_") for c in ("mean", "sqrtn", "sum")},
    **{f"torch/embedding_bag_{k}_{layout}_dynamo.onnx": "SequenceEmpty/ConcatFromSequence: no TensorRT has sequences"
       for k in ("max", "mean", "sum", "sum_psw") for layout in ("2d", "offsets")},
    **{f"torch/embedding_bag_{k}_{layout}_legacy.onnx": "the builder asserts in the Loop (makeScopeNodesContiguous)"
       for k in ("max", "mean", "sum", "sum_psw") for layout in ("2d", "offsets")},
    "thirdparty/models/keras3_stringlookup_category_mapper.onnx": "string inputs, CategoryMapper: not in TensorRT",
    "thirdparty/models/tfrs_dcn_stringlookup.onnx": "string inputs, CategoryMapper: not in TensorRT",
    "thirdparty/models/tf_feature_column_identity_embedding.onnx": "NonZero: not in TensorRT-RTX's parser",
    "thirdparty/models/torchrec_dlrm_kjt_static_dynamo.onnx": "SequenceEmpty/ConcatFromSequence: no TensorRT has them",
    "thirdparty/models/torchrec_dlrm_kjt_static_legacy.onnx": "the builder asserts in a Loop (makeScopeNodesContiguous)",
}
REWRITABLE = sorted(p.relative_to(FIXTURES).as_posix() for p in [*FIXTURES.glob("*/*.onnx"),
                                                                   *FIXTURES.glob("thirdparty/models/*.onnx")]
                    if p.relative_to(FIXTURES).as_posix() not in NOTHING_TO_REWRITE)
BUILDABLE = [f for f in REWRITABLE if f not in RTX_CANNOT_BUILD]
#: the methods of IPluginV3OneBuild/IPluginV3OneRuntime a builder must call for each plugin layer
BUILD_METHODS = ("getOutputDataTypes", "getOutputShapes", "supportsFormatCombination", "configurePlugin",
                 "getFieldsToSerialize")


#: Python code that makes this interpreter one without tensorrt or tensorrt_rtx installed
HIDE_BUILDERS = ("import importlib.machinery, sys\n"
                 "class Hide(importlib.machinery.PathFinder):\n"
                 "    @classmethod\n"
                 "    def find_spec(cls, name, path=None, target=None):\n"
                 "        if name.split('.')[0].startswith('tensorrt'): return None\n"
                 "        return super().find_spec(name, path, target)\n"
                 "sys.meta_path[:] = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]\n")


def plugin_with_glue() -> str:
    lib = library_path()[0]
    if not lib.is_file():
        skip_unless_required(f"{lib} is not built (hps-surgeon build-native --tensorrt-root DIR)")
    if not read_library(lib).tensorrt_glue:
        skip_unless_required(f"{lib} has no TensorRT glue: it was built without TensorRT headers (NvInfer.h), which "
                             "no package registry ships; see README 'What runs where'")
    return str(lib)


def profile_of(model: onnx.ModelProto, where: str, batch: triton.Batch) -> triton.Profile:
    return triton.profile(triton.model_io(model, where)[0], batch, where)


def build_rewritten(fixture: str, tmp_path: Path) -> tuple[engine.EngineBuild, Path]:
    lib = plugin_with_glue()
    out = tmp_path / "rw"
    assert hps_surgeon.rewrite(FIXTURES / fixture, out, quiet=True).written
    source = rewrite_folder.read_rewrite(out)
    prof = profile_of(source.model, str(out), rewrite_folder.batch_range(source))
    options = engine.EngineOptions(compute_capabilities=("8.6",), plugin_lib=lib)
    return engine.build_serialized(out / "model.onnx", prof, options), out


def where_and_message(build: engine.EngineBuild) -> list[tuple[str, str]]:
    return [(p.where, p.message) for p in build.problems]


@pytest.mark.parametrize("fixture", BUILDABLE)
def test_engine_for_every_buildable_fixture(fixture, tmp_path):
    build, out = build_rewritten(fixture, tmp_path)
    hps_nodes = sum(n.op_type == "HPS_TRT" for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert build.problems == ()
    assert build.hps_nodes == build.plugin_layers == hps_nodes > 0
    assert build.plan and b"HPS_TRT" in build.plan
    assert build.builder.startswith("TensorRT-RTX ")
    for method in BUILD_METHODS:
        assert build.plugin_calls.get(method, 0) >= hps_nodes, (method, build.plugin_calls)


@pytest.mark.parametrize("fixture", sorted(RTX_CANNOT_BUILD))
def test_unbuildable_fixture_fails_as_its_original(fixture, tmp_path):
    """The rewrite adds no failure: same nodes, same messages as the untouched original."""
    rewritten, out = build_rewritten(fixture, tmp_path)
    original_model = onnx.load(str(FIXTURES / fixture), load_external_data=False)
    prof = profile_of(original_model, fixture, triton.Batch(1, 1024, 1024))
    original = engine.build_serialized(FIXTURES / fixture, prof, engine.EngineOptions(
        compute_capabilities=("8.6",), plugin_lib=plugin_with_glue()))
    assert rewritten.plan is None and original.plan is None
    assert where_and_message(rewritten) == where_and_message(original) != []
    hps_names = {n.name for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "HPS_TRT"}
    assert not hps_names & {p.where for p in rewritten.problems}
    if rewritten.problems[0].where == "(build)":  # parsed: our layer is in, the builder used it
        assert rewritten.plugin_layers == rewritten.hps_nodes == len(hps_names)
        assert rewritten.plugin_calls.get("getOutputShapes", 0) >= len(hps_names)


def test_every_rewriting_pattern_is_built(tmp_path):
    """The buildable fixtures cover every pattern that rewrites, but the legacy EmbeddingBag Loop."""
    covered = {lookup.pattern for f in BUILDABLE for lookup in hps_surgeon.scan(FIXTURES / f).lookups}
    assert covered == {"generic.embedding.gather", "hugectr2onnx.embedding.hashed",
                       "tf2onnx.embedding_lookup.flat_keys"}
    bag = {lookup.pattern for f in RTX_CANNOT_BUILD for lookup in hps_surgeon.scan(FIXTURES / f).lookups}
    assert "torch.embedding_bag.loop_slice" in bag


# --- what the plugin says through the builder --------------------------------------------------

def test_emb_vec_size_disagreeing_with_the_config_names_the_node(tmp_path):
    out = tmp_path / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, quiet=True)
    config = json.loads((out / "hps_config.json").read_text())
    config["models"][0]["embedding_vecsize_per_table"] = [32]
    (out / "hps_config.json").write_text(json.dumps(config))
    node = next(n.name for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "HPS_TRT")
    prof = triton.Profile({"keys": ([1, 26], [8, 26], [8, 26])})
    build = engine.build_serialized(out / "model.onnx", prof, engine.EngineOptions(plugin_lib=plugin_with_glue()))
    assert build.plan is None and build.plugin_layers == 0
    [problem] = build.problems
    assert problem.where == node
    assert problem.message.startswith("node attribute emb_vec_size = 16 but table 0 of model "
                                      "'embedding_int64_legacy' in ")
    assert "has vectors of 32 floats; re-run the rewrite or fix embedding_vecsize_per_table" in problem.message


def test_missing_table_file_names_the_file(tmp_path):
    out = tmp_path / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, quiet=True)
    key = next((out / "tables").glob("*/key"))
    key.unlink()
    prof = triton.Profile({"keys": ([1, 26], [8, 26], [8, 26])})
    build = engine.build_serialized(out / "model.onnx", prof, engine.EngineOptions(plugin_lib=plugin_with_glue()))
    [problem] = build.problems
    assert problem.message.startswith(f"{key}: cannot open the key file of table ")


def test_compute_capabilities_and_fp16_options(tmp_path):
    build, _ = build_rewritten("torch/embedding_int32_legacy.onnx", tmp_path)
    assert build.targets == "compute capability 8.6"
    prof = triton.Profile({"keys": ([1, 26], [8, 26], [8, 26])})
    model = tmp_path / "rw" / "model.onnx"
    with pytest.raises(hps_surgeon.SurgeonError, match=r"^--compute-capability 9\.0: this builder targets "
                                                        r"7\.5, 8\.0, 8\.6, 8\.9, 12\.0, 12\.1 — pick from those$"):
        engine.build_serialized(model, prof, engine.EngineOptions(compute_capabilities=("9.0",),
                                                                  plugin_lib=plugin_with_glue()))
    with pytest.raises(hps_surgeon.SurgeonError, match=r"^--fp16: TensorRT-RTX .* builds strongly typed networks"):
        engine.build_serialized(model, prof, engine.EngineOptions(fp16=True, plugin_lib=plugin_with_glue()))


# --- the library and the builder, found or not ---------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_plain_dlopen_registers_once_with_tensorrt_rtx(tmp_path):
    """HugeCTR's notebooks load the plugin with ctypes (issue 12.3): registered by the load alone,
    parsed through it, and still once after loadLibrary."""
    out = tmp_path / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, quiet=True)
    proc = run_python(f"""
import ctypes
from hps_surgeon.deploy.builders import find_builder
trt = find_builder().trt
def count(registry):
    return sum(c.name == "HPS_TRT" for c in registry.all_creators)
ctypes.CDLL({plugin_with_glue()!r}, mode=ctypes.RTLD_GLOBAL)
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(0)
parsed = trt.OnnxParser(network, logger).parse_from_file({str(out / "model.onnx")!r})
layers = [network.get_layer(i).type for i in range(network.num_layers)].count(trt.LayerType.PLUGIN_V3)
print(count(trt.get_plugin_registry()), parsed, layers)
builder.get_plugin_registry().load_library({plugin_with_glue()!r})
print(count(trt.get_plugin_registry()) + count(builder.get_plugin_registry()))
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["1 True 1", "1"]


def test_tensorrt_rtx_imported_first_is_refused_not_aborted():
    proc = run_python("import tensorrt_rtx\nfrom hps_surgeon.deploy.builders import find_builder\nfind_builder()")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "hps_surgeon.errors.SurgeonError: tensorrt_rtx was loaded before hps-surgeon could make libtensorrt_rtx.so "
        "findable, and its ONNX parser aborts the process without it — use hps-surgeon before importing "
        "tensorrt_rtx, or put a libtensorrt_rtx.so -> libtensorrt_rtx.so.1 symlink in a folder on LD_LIBRARY_PATH")


def test_without_our_symlink_tensorrt_rtx_aborts(tmp_path):
    """Why builders.py exists: the parser's dlopen of libtensorrt_rtx.so ends in std::terminate.
    When a TensorRT-RTX release fixes that, this test fails and the workaround can go."""
    out = tmp_path / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, quiet=True)
    proc = run_python(f"""
import tensorrt_rtx as trt
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
builder.get_plugin_registry().load_library({plugin_with_glue()!r})
network = builder.create_network(0)
trt.OnnxParser(network, logger).parse_from_file({str(out / "model.onnx")!r})
""")
    assert proc.returncode == -6  # SIGABRT
    assert "terminate called" in proc.stderr


def test_no_builder_installed_says_what_to_install():
    proc = run_python(HIDE_BUILDERS + "from hps_surgeon.deploy.builders import find_builder\nfind_builder()")
    assert proc.stderr.strip().splitlines()[-1] == (
        "hps_surgeon.errors.SurgeonError: no NVIDIA engine builder is installed — pip install tensorrt-rtx-cu13 "
        "(TensorRT-RTX: builds ahead of time, no GPU needed) or tensorrt (the version your Triton serves; builds "
        "on a GPU)")


def test_library_without_glue_is_named(tmp_path):
    libm = Path("/lib/x86_64-linux-gnu/libm.so.6")
    if not libm.is_file():
        pytest.skip("no /lib/x86_64-linux-gnu/libm.so.6 to stand for a library without getCreators")
    with pytest.raises(hps_surgeon.SurgeonError) as info:
        engine.plugin_library(str(libm))
    assert str(info.value) == (f"{libm}: built without the TensorRT glue (no getCreators) — rebuild it with "
                               "hps-surgeon build-native --tensorrt-root <folder with include/NvInfer.h>")
    with pytest.raises(hps_surgeon.SurgeonError, match=r"plugin library not found — build it"):
        engine.plugin_library(str(tmp_path / "nothing.so"))


# --- the commands ------------------------------------------------------------------------------

def cli(*args, code_before: str = "") -> subprocess.CompletedProcess:
    return run_python(f"{code_before}import sys\nfrom hps_surgeon.cli import main\nsys.exit(main({list(map(str, args))!r}))")


@pytest.fixture(scope="module")
def dlrm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dlrm") / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/dlrm_small_legacy.onnx", out, quiet=True)
    return out


def test_build_engine_command_on_the_bundled_dlrm(dlrm, tmp_path):
    lib = plugin_with_glue()
    plan = tmp_path / "engines" / "dlrm.plan"
    proc = cli("build-engine", dlrm, "--out", plan, "--max-batch", 512, "--opt-batch", 64,
               "--compute-capability", "8.6,8.9", "--plugin-lib", lib)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"builder: TensorRT-RTX 1.7.1.116 (tensorrt_rtx), for compute capability 8.6, 8.9; plugin {lib}"
    assert lines[1] == ("profile: dense_features [1, 13]..[512, 13] (opt [64, 13]), "
                        "sparse_keys [1, 26]..[512, 26] (opt [64, 26])")
    assert lines[2].startswith(f"built {plan} (") and lines[2].endswith(": 26 HPS_TRT plugin layer(s) for 26 node(s)")
    assert proc.stderr == "building engine ...\n"  # the progress line, said once when not on a terminal
    assert plan.stat().st_size > 1 << 20 and b"HPS_TRT" in plan.read_bytes()
    assert sorted(p.name for p in plan.parent.iterdir()) == ["dlrm.plan"]  # no staging left behind

    again = cli("build-engine", dlrm, "--out", plan, "--plugin-lib", lib)
    assert (again.returncode, again.stderr) == (2, f"hps-surgeon: error: --out {plan}: exists — pass --force to "
                                                   "replace it\n")


def test_build_engine_command_reports_each_problem_and_writes_nothing(tmp_path):
    lib = plugin_with_glue()
    rw = tmp_path / "rw"
    hps_surgeon.rewrite(FIXTURES / "tf/tf_nn_embedding_lookup_sparse_sum.onnx", rw, quiet=True)
    proc = cli("build-engine", rw, "--out", tmp_path / "x.plan", "--plugin-lib", lib, "--quiet")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == (
        f"{rw / 'model.onnx'}:sparse_lookup/Where: Assertion failed: creator && getPluginCreatorVersion(creator) == "
        "CreatorVersion::kV3ONE: NonZero plugin creator version 1 was not found in plugin registry. "
        "(NonZero; UNSUPPORTED_NODE)")
    assert proc.stderr == "hps-surgeon: build-engine FAILED: 1 problem(s); no engine written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rw"]


@pytest.mark.parametrize("args, message", [
    (("--out", "{tmp}/x.plan", "--max-batch", "4096"), "--max-batch 4096 exceeds max_batch_size 1024 in {rw}/"
     "hps_config.json (HPS sizes its buffers for that batch) — lower --max-batch or re-run rewrite with "
     "--max-batch-size 4096"),
    (("--out", "{tmp}/x.plan", "--fp16"), "--fp16: TensorRT-RTX 1.7.1.116 (tensorrt_rtx) builds strongly typed "
     "networks, so precision comes from the model's own types — export the model in fp16 instead, or leave out "
     "--fp16"),
    (("--out", "{tmp}"), "--out {tmp}: is a folder — name the engine file"),
])
def test_build_engine_command_bad_input(dlrm, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, rw=dlrm) for a in args]
    proc = cli("build-engine", dlrm, *args, "--plugin-lib", plugin_with_glue())
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"hps-surgeon: error: {message.format(tmp=tmp_path, rw=dlrm)}\n"
    assert not (tmp_path / "x.plan").exists()


def test_check_engine_is_a_gate_without_a_gpu(dlrm, tmp_path):
    lib = plugin_with_glue()
    clean = cli("check", dlrm / "model.onnx", "--engine", "--plugin-lib", lib, "--compute-capability", "8.6")
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")
    sparse = tmp_path / "sparse"
    hps_surgeon.rewrite(FIXTURES / "tf/tf_nn_embedding_lookup_sparse_mean.onnx", sparse, quiet=True)
    proc = cli("check", dlrm / "model.onnx", sparse / "model.onnx", "--engine", "--plugin-lib", lib)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{sparse / 'model.onnx'}:sparse_lookup/Where: Assertion failed: creator && getPluginCreatorVersion(creator)"
        " == CreatorVersion::kV3ONE: NonZero plugin creator version 1 was not found in plugin registry. "
        "(NonZero; UNSUPPORTED_NODE)"]
    # without --engine the same model is clean: only the builder finds this
    assert cli("check", sparse / "model.onnx").returncode == 0


def test_commands_without_a_builder_say_what_to_install(dlrm, tmp_path):
    want = ("hps-surgeon: error: no NVIDIA engine builder is installed — pip install tensorrt-rtx-cu13 (TensorRT-RTX: "
            "builds ahead of time, no GPU needed) or tensorrt (the version your Triton serves; builds on a GPU)\n")
    for args in (("build-engine", dlrm, "--out", tmp_path / "x.plan"), ("check", dlrm / "model.onnx", "--engine")):
        proc = cli(*args, code_before=HIDE_BUILDERS)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", want)


def test_deploy_build_engine_needs_tensorrt_and_the_repo_at_its_deploy_root(dlrm, tmp_path):
    repo = tmp_path / "repo"
    elsewhere = cli("deploy", dlrm, "--repo", repo, "--build-engine")
    assert elsewhere.returncode == 2
    assert elsewhere.stderr == (
        "hps-surgeon: error: --build-engine: the HPS_TRT plugin opens /models/dlrm_small_legacy/hps/hps_config.json "
        f"while the engine builds, but --repo {repo} is not at --deploy-root /models on this machine — pass "
        f"--deploy-root {repo} (and mount the repository there in the container), or leave out --build-engine and "
        "run build_engine.sh in the container\n")
    rtx = cli("deploy", dlrm, "--repo", repo, "--build-engine", "--deploy-root", repo)
    assert rtx.returncode == 2
    assert rtx.stderr == (
        "hps-surgeon: error: --build-engine: the builder installed here is TensorRT-RTX 1.7.1.116 (tensorrt_rtx), "
        "whose engines do not load in Triton's TensorRT backend — install tensorrt (the version your Triton serves), "
        "or run build_engine.sh in the container (hps-surgeon build-engine and check --engine build with "
        "TensorRT-RTX to prove the model builds)\n")
    assert not repo.exists()


def test_readme_engine_commands_run_as_written(tmp_path):
    """The README's "Engines without a GPU" block, after the quickstart's rewrite into out/dlrm."""
    lib = plugin_with_glue()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Engines without a GPU.*?```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert block[0].startswith("pip install tensorrt-rtx-cu13")
    hps_surgeon.rewrite(FIXTURES / "torch/dlrm_small_legacy.onnx", tmp_path / "out" / "dlrm", quiet=True)
    for line in block[1:]:
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "hps-surgeon"
        proc = subprocess.run([sys.executable, "-m", "hps_surgeon", *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "HPS_SURGEON_PLUGIN_LIB": lib})
        assert proc.returncode == 0, (line, proc.stderr)
    assert b"HPS_TRT" in (tmp_path / "out" / "dlrm.plan").read_bytes()
