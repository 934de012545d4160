"""hps_config.json parity with HugeCTR's parser, both directions (issue 12, item 4): what HugeCTR
accepts loads here with HugeCTR's defaults, what it refuses is refused with its reason. Each case
cites the line of NVIDIA-Merlin/HugeCTR (af9025667e) it mirrors; paths are under HugeCTR/src/hps/
unless given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hps_surgeon
from hps_surgeon.errors import errors
from hps_surgeon.hps import config as hps_config
from hps_surgeon.hps.config_fields import markdown_table

from support import FIXTURES, ROOT, copy_rewrite, set_string_attribute


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rw") / "out"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, model_name="demo")
    return out


def edited(rewritten: Path, tmp_path: Path, change) -> Path:
    """The config of a copy of the rewrite (its tables must lie in the config's folder: confine.py), changed."""
    path = copy_rewrite(rewritten, tmp_path / "rw") / "hps_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return path


def model_edit(**fields):
    def change(config):
        for name, value in fields.items():
            if value is DROP:
                del config["models"][0][name]
            else:
                config["models"][0][name] = value
    return change


DROP = object()


def lines(problems) -> list[str]:
    return [f"{p.where}: {p.severity}: {p.message}" for p in problems]


# --- accepted as HugeCTR accepts it, with HugeCTR's defaults -------------------------------------

@pytest.mark.parametrize("change, field, value", [
    # gpucacheper 0: the cache is raised to its minimum size (embedding_cache.cpp:191-199)
    (model_edit(gpucacheper=0), "gpucacheper", 0),
    # any float is read (inference_utils.cpp:533); above 1 = more than the table
    (model_edit(gpucacheper=3.0), "gpucacheper", 3.0),
    # any float is read (inference_utils.cpp:531); above 1 = every miss inserted synchronously
    (model_edit(hit_rate_threshold=1.5), "hit_rate_threshold", 1.5),
    (model_edit(max_batch_size=DROP), "max_batch_size", 64),  # inference_utils.cpp:519
    (model_edit(gpucache=DROP), "gpucache", True),  # inference_utils.cpp:529
    (model_edit(gpucacheper=DROP), "gpucacheper", 0.2),  # inference_utils.cpp:533
    (model_edit(embedding_table_names=DROP), "embedding_table_names", ["sparse_embedding0"]),  # :617-632
    (model_edit(num_of_worker_buffer_in_pool=DROP), "num_of_worker_buffer_in_pool", 1),  # :546
    (model_edit(cache_refresh_percentage_per_iteration=DROP), "cache_refresh_percentage_per_iteration", 0.0),  # :554
    (model_edit(dense_file="", refresh_delay=0.0, use_static_table=False), "use_static_table", False),  # :607-674
], ids=["gpucacheper 0", "gpucacheper 3", "hit_rate_threshold 1.5", "no max_batch_size", "no gpucache",
        "no gpucacheper", "no embedding_table_names", "no worker buffers", "no refresh percentage", "other fields"])
def test_accepted_with_hugectrs_default(rewritten, tmp_path, change, field, value):
    config, problems = hps_config.load(edited(rewritten, tmp_path, change))
    assert config is not None and errors(problems) == []
    assert config["models"][0][field] == value


def test_absent_model_name_is_hugectrs_empty_name_which_its_name_rule_refuses(rewritten, tmp_path):
    # inference_utils.cpp:513 reads a missing "model" as ""; hier_parameter_server.cpp:34-36 aborts on it
    path = edited(rewritten, tmp_path, model_edit(model=DROP))
    config, problems = hps_config.load(path)
    assert config["models"][0]["model"] == ""
    assert lines(errors(problems)) == [
        "models[0].model: error: '' (the default when 'model' is absent) is not a valid HugeCTR model name: HugeCTR's "
        "HPS aborts unless names match [a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-38) — rename it (letters, "
        "digits, '_' and '-'; the HPS_TRT nodes' model_name with it)"]


def test_short_default_values_are_padded_with_zero(rewritten, tmp_path):
    # inference_utils.cpp:593-605: entries past the list's end are 0.0
    path = edited(rewritten, tmp_path, model_edit(default_value_for_each_table=[]))
    config, problems = hps_config.load(path)
    assert errors(problems) == []
    assert hps_config.table_default(config["models"][0], 0) == 0.0
    assert "models[0].default_value_for_each_table: note: has 0 entries for 1 tables: tables 0..0 get 0.0, as " \
           "HugeCTR pads the list (inference_utils.cpp:593-605)" in lines(problems)


# --- refused as HugeCTR refuses it, with its reason ----------------------------------------------

def _drop_top(name):
    def change(config):
        del config[name]
    return change


MISSING = ("is missing; HugeCTR's HPS refuses the config (\"[Parser] No Such Key: {name}\", inference_utils.cpp:{line}) "
           "— add it")


@pytest.mark.parametrize("change, where, message", [
    (_drop_top("supportlonglong"), "(top level)", f"'supportlonglong' {MISSING.format(name='supportlonglong', line=383)}"),
    (_drop_top("models"), "(top level)", f"'models' {MISSING.format(name='models', line=507)}"),
    (model_edit(sparse_files=DROP), "models[0]", f"'sparse_files' {MISSING.format(name='sparse_files', line=521)}"),
    (model_edit(deployed_device_list=DROP), "models[0]",
     f"'deployed_device_list' {MISSING.format(name='deployed_device_list', line=557)}"),
    (model_edit(maxnum_catfeature_query_per_table_per_sample=DROP), "models[0]",
     f"'maxnum_catfeature_query_per_table_per_sample' "
     f"{MISSING.format(name='maxnum_catfeature_query_per_table_per_sample', line=567)}"),
    (model_edit(embedding_vecsize_per_table=DROP), "models[0]",
     f"'embedding_vecsize_per_table' {MISSING.format(name='embedding_vecsize_per_table', line=579)}"),
    (model_edit(default_value_for_each_table=DROP), "models[0]",
     f"'default_value_for_each_table' {MISSING.format(name='default_value_for_each_table', line=590)}"),
    # inference_utils.cpp:564 takes deployed_devices.back()
    (model_edit(deployed_device_list=[]), "models[0].deployed_device_list",
     "[] should be non-empty — HugeCTR reads its last entry (inference_utils.cpp:564) — list the GPUs HPS serves, "
     "e.g. [0]"),
    # inference_utils.cpp:508
    (lambda c: c.update(models=[]), "models", "[] should be non-empty — HugeCTR refuses it (\"No model "
     "configurations in JSON\", inference_utils.cpp:508) — add a model entry"),
    # hier_parameter_server.cpp:259
    (model_edit(embedding_vecsize_per_table=[16, 16]), "models[0].embedding_vecsize_per_table",
     "has 2 entries, sparse_files has 1; HugeCTR needs one per table (hier_parameter_server.cpp:259 refuses another "
     "count) — give one per table"),
    # hier_parameter_server.cpp:281
    (model_edit(embedding_table_names=[]), "models[0].embedding_table_names",
     "has 0 entries, sparse_files has 1; HugeCTR needs one per table (hier_parameter_server.cpp:281 reads one name "
     "per table) — give one per table"),
    # embedding_cache.cpp:180-182
    (model_edit(maxnum_catfeature_query_per_table_per_sample=[]), "models[0].maxnum_catfeature_query_per_table_per_sample",
     "has 0 entries, sparse_files has 1; HugeCTR needs one per table (embedding_cache.cpp:180-182 reads one per "
     "table) — give one per table"),
    # hier_parameter_server.cpp:37
    (model_edit(embedding_table_names=["emb.weight"]), "models[0].embedding_table_names[0]",
     "'emb.weight' is not a valid HugeCTR table name: HugeCTR's HPS aborts unless names match [a-zA-Z0-9_-]{1,120} "
     "(hier_parameter_server.cpp:34-38) — rename it (letters, digits, '_' and '-'; its folder may keep its name)"),
], ids=["supportlonglong", "models", "sparse_files", "deployed_device_list", "maxnum", "vecsize", "default_value",
        "empty device list", "no models", "vecsize count", "names count", "maxnum count", "table name"])
def test_refused_with_hugectrs_reason(rewritten, tmp_path, change, where, message):
    path = edited(rewritten, tmp_path, change)
    _, problems = hps_config.load(path)
    assert [(p.where, p.message) for p in errors(problems)] == [(where, message)]
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "check", str(rewritten / "model.onnx"), "--config",
                           str(path)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr == ""
    assert f"{path}:{where}: {message}" in proc.stdout.splitlines()


# --- what HugeCTR would do differently from us: warnings and notes ------------------------------

@pytest.mark.parametrize("change, line", [
    (lambda c: c.update(supportlonglong=True),
     "supportlonglong: warning: true: HugeCTR's HPS_TRT plugin refuses it (\"i64_input_key must be false for HPS "
     "TensorRT plugin\", plugin/lookup_manager.cpp:133-137) and then serves no lookup; our plugin takes int64 keys — "
     "rewrite with --key-dtype int32 to stay loadable by HugeCTR"),
    (lambda c: c.update(fuse_embedding_table=True),
     "fuse_embedding_table: warning: true: HugeCTR's HPS_TRT plugin refuses it (plugin/lookup_manager.cpp:138-142); "
     "our plugin serves each table on its own — set it to false for HugeCTR"),
    (model_edit(hit_rate_threshold=0.5),
     "models[0].hit_rate_threshold: note: 0.5: in HugeCTR, a batch whose GPU-cache hit rate reaches it gets the "
     "default value for every miss (embedding_cache.cpp:398-429), so results are approximate; our plugin always "
     "returns the stored vectors"),
    (model_edit(hit_rate_threshold=DROP),  # HugeCTR's default, 0.9 (inference_utils.cpp:531)
     "models[0].hit_rate_threshold: note: 0.9: in HugeCTR, a batch whose GPU-cache hit rate reaches it gets the "
     "default value for every miss (embedding_cache.cpp:398-429), so results are approximate; our plugin always "
     "returns the stored vectors"),
    (lambda c: c.update(update_source={"type": "kafka_message_queue"}, volatile_db={"type": "redis_cluster"},
                        persistent_db={"type": "rocks_db"}),  # the two tiers are served (README "Storage tiers")
     "update_source: warning: the 'update_source' section (type kafka_message_queue) is not consumed by hps-surgeon "
     "yet: tables change only through `publish --update` and refresh — remove the section, or expect its updates to "
     "be ignored"),
], ids=["supportlonglong", "fuse", "hit rate 0.5", "hit rate default", "update_source"])
def test_differences_from_hugectr_are_stated(rewritten, tmp_path, change, line):
    # update_source: inference_utils.cpp:386-408; the others cite their lines above
    config, problems = hps_config.load(edited(rewritten, tmp_path, change))
    assert config is not None and errors(problems) == []
    assert lines(problems) == [line]


def test_relative_sparse_files_warn_and_resolve_against_the_config(tmp_path):
    # io/local_filesystem.cpp:31-36: HugeCTR opens them relative to its working directory
    out = tmp_path / "out"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, relative_paths=True)
    config, problems = hps_config.load(out / "hps_config.json")
    assert config["models"][0]["sparse_files"] == ["tables/emb_weight"]
    assert hps_config.table_folder(out / "hps_config.json", config["models"][0], 0) == out / "tables/emb_weight"
    assert lines(problems) == [
        "models[0].sparse_files: warning: 1 relative path(s) (e.g. 'tables/emb_weight'): HugeCTR's HPS opens them "
        "relative to its working directory (io/local_filesystem.cpp:31-36), our plugin relative to this config's "
        "folder — rewrite without --relative-paths to write absolute paths"]


# --- robustness: one problem line, never a traceback ---------------------------------------------

def test_deeply_nested_json_is_one_problem_line(rewritten, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "check", str(rewritten / "model.onnx"), "--config",
                           str(path)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.splitlines() == [f"{path}:(file): JSON nested 100000 levels deep; an HPS config nests 4 and at "
                                        "most 32 are read — this is not an HPS config"]


def test_brackets_inside_strings_do_not_count_as_nesting(rewritten, tmp_path):
    path = edited(rewritten, tmp_path, model_edit(dense_file="[" * 100 + '"{'))
    config, problems = hps_config.load(path)
    assert config is not None and errors(problems) == []


def test_lists_of_other_lengths_are_problems_not_index_errors(rewritten, tmp_path):
    path = edited(rewritten, tmp_path, model_edit(embedding_vecsize_per_table=[], default_value_for_each_table=[]))
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "check", str(rewritten / "model.onnx"), "--config",
                           str(path)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.splitlines() == [
        f"{path}:models[0].embedding_vecsize_per_table: has 0 entries, sparse_files has 1; HugeCTR needs one per table "
        "(hier_parameter_server.cpp:259 refuses another count) — give one per table"]


# --- names --------------------------------------------------------------------------------------

def test_model_name_option_is_validated_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "rewrite", str(FIXTURES / "torch/dlrm_small_legacy.onnx"),
                           "--out", str(tmp_path / "out"), "--model-name", "dlrm.v2"], capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.splitlines() == [
        "hps-surgeon: error: --model-name 'dlrm.v2': HugeCTR's HPS aborts on model names outside [a-zA-Z0-9_-]{1,120} "
        "(hier_parameter_server.cpp:34-36); use letters, digits, '_' and '-', at most 120"]


def test_node_model_name_is_checked_without_a_config(rewritten, tmp_path):
    path = set_string_attribute(rewritten / "model.onnx", "model_name", b"my model\0", tmp_path / "model.onnx")
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{path}:hps_trt//emb/Gather: attribute model_name 'my model' is not a valid HugeCTR model name: HugeCTR's HPS "
        "aborts unless names match [a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-36) — rewrite with a valid "
        "--model-name"]


def test_readme_table_is_the_field_data():
    assert markdown_table() in (ROOT / "README.md").read_text()


# --- HugeCTR's plugin limits and key width, as check sees them per node -------------------------

def test_int64_keys_are_reported_and_warned_about(tmp_path):
    # HugeCTR/src/hps/plugin/lookup_manager.cpp:133: its TensorRT plugin refuses supportlonglong true
    result = hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", tmp_path / "out", key_dtype="int64")
    assert ("int64 keys make the config's supportlonglong true, which HugeCTR's HPS_TRT plugin refuses "
            "(plugin/lookup_manager.cpp:133); hps-surgeon's plugin takes them — --key-dtype int32 for HugeCTR"
            in result.plan.lookups[0].notes)
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "check", str(result.model_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [f"{result.config_path}:supportlonglong: warning: true: HugeCTR's HPS_TRT "
                                        "plugin refuses it (\"i64_input_key must be false for HPS TensorRT plugin\", "
                                        "plugin/lookup_manager.cpp:133-137) and then serves no lookup; our plugin takes "
                                        "int64 keys — rewrite with --key-dtype int32 to stay loadable by HugeCTR"]


def test_static_lookups_beyond_hugectrs_limits_are_warned_about(tmp_path):
    from support import lookup_model
    source = lookup_model(tmp_path / "m.onnx", key_shape=(2048, 4))
    result = hps_surgeon.rewrite(source, tmp_path / "out", max_batch_size=1024)
    config = json.loads(result.config_path.read_text())
    config["supportlonglong"] = True
    result.config_path.write_text(json.dumps(config))
    problems = [p for p in hps_surgeon.check([str(result.model_path)]) if p.where == "hps_trt/lookup"]
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "keys are int32 but supportlonglong is true: HugeCTR's plugin skips such lookups (\"Input tensor "
                    "dtype should be consistent with HPS configuration\", plugin/lookup_manager.cpp:212); ours serves "
                    "them"),
        ("warning", "looks up 2048 x 4 keys, more than max_batch_size 1024 x "
                    "maxnum_catfeature_query_per_table_per_sample[0] = 4096: HugeCTR's plugin skips such lookups "
                    "(plugin/lookup_manager.cpp:197-204); ours serves them — raise max_batch_size")]
