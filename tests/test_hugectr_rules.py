"""Every fixture's rewrite, checked against HugeCTR's own rules (issue 12): what its HPS parser,
its HPS start-up and its HPS_TRT plugin would check or assume, written here from HugeCTR's source
(NVIDIA-Merlin/HugeCTR at af9025667e, the last commit with HPS) and independent of our own
validation. Each rule cites the file and line it mirrors (under HugeCTR/src/hps/ unless given).

HugeCTR opens sparse_files and ps_config_file relative to the process's working directory
(HugeCTR/src/io/local_filesystem.cpp:31-36), so the rules run from the output folder and from an
unrelated one. Our plugin's own parser (`test_host --check`, built with the plugin) reads each
table the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto

import hps_surgeon

from support import FIXTURES, ROOT, set_string_attribute

NOTHING_TO_REWRITE = {"torch/embedding_max_norm_dynamo.onnx", "hugectr/dlrm_nonconstant_default.onnx",
                      "hugectr/dlrm_sparse_input.onnx",
                      # keys of unknown rank: rewrite refuses them (issue 10's third-party work)
                      "thirdparty/models/keras3_hashing_tf_ops.onnx", "thirdparty/models/keras3_integerlookup_tf_ops.onnx",
                      "thirdparty/models/tf_feature_column_hash_bucket_tf_ops.onnx"}
#: fixture (and a label) -> rewrite options; thirdparty models with a dynamic number of keys per sample
#: need --max-keys-per-sample
DYNAMIC = {"rechub_din_dynamic_history_dynamo"}
CASES = {p.relative_to(FIXTURES).as_posix(): {"max_keys_per_sample": 64} if p.stem in DYNAMIC else {}
         for p in sorted([*FIXTURES.glob("*/*.onnx"), *FIXTURES.glob("thirdparty/models/*.onnx")])
         if p.relative_to(FIXTURES).as_posix() not in NOTHING_TO_REWRITE}
CASES["hugectr/dlrm_sparse_input.onnx"] = {"hugectr_sparse_models": [
    f"sparse_embedding1={FIXTURES / 'hugectr/sparse_embedding1_sparse_0.model'}"]}
CASES["hugectr/wdl_convert_embedding.onnx own keys"] = {"hugectr_sparse_models": [
    f"wide_embedding={FIXTURES / 'hugectr/wdl_wide_sparse_0.model'}",
    f"deep_embedding={FIXTURES / 'hugectr/wdl_deep_sparse_1.model'}"]}
CHECK_TOOL = ROOT / "build" / "plugin" / "test_host"

#: hier_parameter_server.cpp:34, checked for every model and table name at start-up (:280-281)
TAG_SYNTAX = re.compile(r"[a-zA-Z0-9_\-]{1,120}")
#: HPS_TRT's creator fields and types (hps_trt/hps_plugin/hps_plugin.cpp:179-182)
PLUGIN_FIELDS = {"ps_config_file": AttributeProto.STRING, "model_name": AttributeProto.STRING,
                 "table_id": AttributeProto.INT, "emb_vec_size": AttributeProto.INT}


class Broken(list):
    """Rules broken: 'file:line: what'."""

    def rule(self, holds: bool, cite: str, what: str) -> bool:
        if not holds:
            self.append(f"{cite}: {what}")
        return holds


@dataclass
class Params:
    """InferenceParams as parameter_server_config::init fills them (inference_utils.cpp:510-690)."""

    model_name: str
    max_batchsize: int
    sparse_model_files: list[str]
    deployed_devices: list[int]
    maxnum_catfeature_query_per_table_per_sample: list[int]
    embedding_vecsize_per_table: list[int]
    default_value_for_each_table: list[float]
    embedding_table_names: list[str] = field(default_factory=list)


def has_key(obj: dict, key: str, broken: Broken) -> bool:
    """HAS_KEY_: "[Parser] No Such Key" (HugeCTR/include/parser.hpp:109-115)."""
    return broken.rule(key in obj, "HugeCTR/include/parser.hpp:114", f"[Parser] No Such Key: {key}")


def hugectr_parse(path: str, broken: Broken) -> tuple[bool, bool, list[Params]]:
    """parameter_server_config::init (inference_utils.cpp:366-691): (i64 keys, fused, models)."""
    with open(path) as f:  # read_json_file, relative to the working directory
        config = json.load(f)
    fuse = bool(config.get("fuse_embedding_table", False))  # :376
    if not has_key(config, "supportlonglong", broken) or not has_key(config, "models", broken):  # :383, :507
        return False, fuse, []
    i64 = config["supportlonglong"]
    broken.rule(isinstance(i64, bool), "inference_utils.cpp:383", "supportlonglong is read as a bool")
    models = config["models"]
    broken.rule(len(models) > 0, "inference_utils.cpp:508", "No model configurations in JSON")
    params = []
    for model in models:
        required = ("sparse_files", "deployed_device_list", "maxnum_catfeature_query_per_table_per_sample",
                    "embedding_vecsize_per_table", "default_value_for_each_table")  # :521, :557, :567, :579, :590
        if not all([has_key(model, key, broken) for key in required]):
            continue
        devices = list(model["deployed_device_list"])
        broken.rule(len(devices) > 0, "inference_utils.cpp:564", "deployed_devices.back() of an empty list")
        vecsize = [int(v) for v in model["embedding_vecsize_per_table"]]
        defaults = [float(v) for v in model["default_value_for_each_table"]][:len(vecsize)]  # :593-600
        defaults += [0.0] * (len(vecsize) - len(defaults))  # :601-604
        files = list(model["sparse_files"])
        names = model.get("embedding_table_names", [f"sparse_embedding{i}" for i in range(len(files))])  # :617-632
        params.append(Params(model_name=model.get("model", ""),  # :513
                             max_batchsize=int(model.get("max_batch_size", 64)),  # :519
                             sparse_model_files=files, deployed_devices=devices,
                             maxnum_catfeature_query_per_table_per_sample=[int(n) for n in model[required[2]]],
                             embedding_vecsize_per_table=vecsize, default_value_for_each_table=defaults,
                             embedding_table_names=list(names)))
    return i64, fuse, params


def hugectr_start(i64: bool, params: list[Params], broken: Broken) -> None:
    """HierParameterServer's constructor and the embedding caches it builds (hier_parameter_server.cpp:82-233)."""
    for p in params:
        tables = len(p.sparse_model_files)
        broken.rule(len(p.embedding_vecsize_per_table) == tables, "hier_parameter_server.cpp:259",
                    f"model {p.model_name}: embedding tables in the config don't match the model files")
        broken.rule(len(p.maxnum_catfeature_query_per_table_per_sample) >= tables, "embedding_cache.cpp:180-182",
                    "max_feature_num_per_sample[i] read for every table")
        broken.rule(bool(TAG_SYNTAX.fullmatch(p.model_name)), "hier_parameter_server.cpp:36",
                    f"The provided 'model_name' is invalid: {p.model_name!r}")
        for j, folder in enumerate(p.sparse_model_files):
            if broken.rule(j < len(p.embedding_table_names), "hier_parameter_server.cpp:281",
                           f"no embedding_table_names[{j}]"):
                broken.rule(bool(TAG_SYNTAX.fullmatch(p.embedding_table_names[j])), "hier_parameter_server.cpp:37",
                            f"The provided 'embedding_table_name' is invalid: {p.embedding_table_names[j]!r}")
            load_table(folder, p.embedding_vecsize_per_table[j] if j < len(p.embedding_vecsize_per_table) else 0,
                       i64, broken)


def load_table(folder: str, dim: int, i64: bool, broken: Broken) -> None:
    """RawModelLoader::load / getkeys / getvectors (modelloader.cpp:126-195, 287-338)."""
    key_file, vec_file = f"{folder}/key", f"{folder}/emb_vector"
    for file in (key_file, vec_file):  # get_file_size opens the path as given (io/local_filesystem.cpp:31-36)
        if not broken.rule(os.path.isfile(file), "HugeCTR/src/io/local_filesystem.cpp:33",
                           f"File not open: {file} (working directory {os.getcwd()})"):
            return
    key_bytes, vec_bytes = os.path.getsize(key_file), os.path.getsize(vec_file)
    broken.rule(key_bytes > 0, "modelloader.cpp:143-145", "embeddings key file is empty")
    broken.rule(vec_bytes > 0, "modelloader.cpp:146-148", "embeddings vector file is empty")
    broken.rule(key_bytes % 8 == 0, "modelloader.cpp:149-151", "embeddings key file size is not correct")
    broken.rule(vec_bytes % 4 == 0, "modelloader.cpp:152-154", "embeddings vector file size is not correct")
    broken.rule(vec_bytes == key_bytes // 8 * dim * 4, "modelloader.cpp:320-328",
                f"key i's vector is read at float i x {dim}: {vec_bytes} bytes for {key_bytes // 8} keys")
    keys = np.fromfile(key_file, dtype="<i8")
    if not i64:  # HierParameterServer<unsigned int>: keys cast to uint32 (modelloader.cpp:298-303)
        keys = keys.astype(np.uint32)
    broken.rule(np.unique(keys).size == keys.size, "modelloader.cpp:298-303",
                f"{key_file}: keys collide as {'int64' if i64 else 'uint32'} HPS keys")
    empty = np.iinfo(keys.dtype).max  # the GPU cache's empty key (HugeCTR/include/hps/embedding_cache.hpp:83)
    broken.rule(not np.any(keys == empty), "HugeCTR/include/hps/embedding_cache.hpp:83",
                f"{key_file} holds the cache's empty key {empty}")


def hugectr_plugin(node: onnx.NodeProto, key_type: tuple[int, list], i64: bool, fuse: bool, params: list[Params],
                   broken: Broken) -> None:
    """HpsPluginCreator::createPlugin, LookupManager::init_check and forward_check for one HPS_TRT node."""
    attrs = {a.name: a for a in node.attribute}
    broken.rule(len(attrs) == 4, "hps_trt/hps_plugin/hps_plugin.cpp:203", "The number of fields for HPS plugin "
                "should 4")
    for name, kind in PLUGIN_FIELDS.items():
        if not broken.rule(name in attrs and attrs[name].type == kind, "hps_trt/hps_plugin/hps_plugin.cpp:201-218",
                           f"field {name} missing or of the wrong type"):
            return
    # kCHAR fields are read as C strings: up to the first NUL (hps_plugin.cpp:208, :211)
    config_file = attrs["ps_config_file"].s.split(b"\0")[0].decode()
    model_name = attrs["model_name"].s.split(b"\0")[0].decode()
    table_id, emb_vec_size = attrs["table_id"].i, attrs["emb_vec_size"].i
    broken.rule(os.path.isfile(config_file), "HugeCTR/src/hps/plugin/facade.cpp:36",
                f"ps_config_file {config_file} not found from {os.getcwd()}")
    broken.rule(not i64, "plugin/lookup_manager.cpp:133-137", "i64_input_key must be false for HPS TensorRT plugin")
    broken.rule(not fuse, "plugin/lookup_manager.cpp:138-142", "fuse_embedding_table must be false for HPS TensorRT "
                "plugin")
    dtype, shape = key_type
    broken.rule(len(node.input) == 1 and shape is not None and len(shape) == 2, "hps_trt/hps_plugin/hps_plugin.cpp:73-74",
                f"The dimensions of inputs[0] should be 2 (got {shape})")
    model = next((p for p in params if p.model_name == model_name), None)
    if not broken.rule(model is not None, "plugin/lookup_manager.cpp:164-166", f"Cannot find the model {model_name}"):
        return
    if not broken.rule(0 <= table_id < len(model.sparse_model_files), "plugin/lookup_manager.cpp:188-192",
                       f"table_id {table_id} out of range"):
        return
    # enqueue: num_keys = B x N, the product of the dims (hps_plugin.cpp:127-130), with B up to max_batchsize;
    # a dynamic N is bounded by what the config declares (--max-keys-per-sample), checked at run time
    per_sample = shape[1] if shape and len(shape) == 2 else None
    maxnum = model.maxnum_catfeature_query_per_table_per_sample[table_id]
    broken.rule(maxnum >= 1 and (not isinstance(per_sample, int) or per_sample <= maxnum),
                "plugin/lookup_manager.cpp:197-204",
                f"num_keys must be no larger than max_batchsize x {maxnum} ({per_sample} keys per sample)")
    broken.rule(emb_vec_size == model.embedding_vecsize_per_table[table_id], "plugin/lookup_manager.cpp:206-210",
                f"emb_vec_size must be equal to {model.embedding_vecsize_per_table[table_id]}")
    # i64_input_key = !(type == kINT32) (hps_plugin.cpp:133), compared with the config (lookup_manager.cpp:212)
    broken.rule((dtype != TensorProto.INT32) == i64, "plugin/lookup_manager.cpp:212-216",
                "Input tensor dtype should be consistent with HPS configuration")


def key_types(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        types[value.name] = (t.elem_type, shape)
    return types


def hugectr_rules(out: Path) -> Broken:
    """Every HugeCTR rule above, for a rewrite folder, from the current working directory."""
    broken = Broken()
    model = onnx.load_model(str(out / "model.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "HPS_TRT"]
    i64, fuse, params = hugectr_parse(str(out / "hps_config.json"), broken)
    hugectr_start(i64, params, broken)
    types = key_types(model)
    for node in nodes:
        hugectr_plugin(node, types.get(node.input[0], (0, None)), i64, fuse, params, broken)
    return broken


def our_plugin_reads(out: Path) -> list[str]:
    """Our plugin's parser and table checks (what hps_open checks before the GPU), per table."""
    config = json.loads((out / "hps_config.json").read_text())
    lines = []
    for model in config["models"]:
        for t, folder in enumerate(model["sparse_files"]):
            proc = subprocess.run([str(CHECK_TOOL), "--check", str(out / "hps_config.json"), model["model"], str(t)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            rows = os.path.getsize(os.path.join(folder, "key")) // 8
            lines.append(proc.stdout.strip())
            assert proc.stdout.split()[:2] == [f"rows={rows}", f"dim={model['embedding_vecsize_per_table'][t]}"]
    return lines


@pytest.fixture(scope="module")
def rewrites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hugectr_rules")
    outs = {}
    for index, (case, options) in enumerate(CASES.items()):
        outs[case] = hps_surgeon.rewrite(FIXTURES / case.split(" ")[0], root / f"out{index}", **options).out_dir
        assert (outs[case] / "model.onnx").is_file(), case
    return outs


@pytest.mark.parametrize("where", ["output folder", "unrelated folder"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_rewrite_passes_hugectrs_rules(rewrites, case, where, tmp_path, monkeypatch):
    out = rewrites[case]
    monkeypatch.chdir(out if where == "output folder" else tmp_path)
    model = onnx.load_model(str(out / "model.onnx"), load_external_data=False)
    assert {a.s for n in model.graph.node for a in n.attribute if a.name == "ps_config_file"} == \
        {f"{out / 'hps_config.json'}\0".encode()}  # absolute, so HugeCTR finds it from anywhere
    assert hugectr_rules(out) == []
    if CHECK_TOOL.exists():  # built by `cmake --build build/plugin` (CI builds it before pytest)
        assert our_plugin_reads(out)


def test_the_rules_catch_what_they_describe(rewrites, tmp_path, monkeypatch):
    """The checker fails on each kind of break (so a pass above means something)."""
    out = Path(rewrites["torch/dlrm_small_legacy.onnx"])
    broken_dir = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(out), str(broken_dir)], check=True)
    config_path = broken_dir / "hps_config.json"
    config = json.loads(config_path.read_text())
    model = config["models"][0]
    model["embedding_table_names"][3] = "emb_l.3.weight"
    model["sparse_files"] = [os.path.relpath(f, out) for f in model["sparse_files"]]  # relative to the folder
    del model["deployed_device_list"]
    config["supportlonglong"] = True
    config_path.write_text(json.dumps(config))
    set_string_attribute(broken_dir / "model.onnx", "ps_config_file", (str(config_path) + "\0").encode())
    monkeypatch.chdir(tmp_path)
    broken = Broken()
    hugectr_parse(str(config_path), broken)
    assert broken == ["HugeCTR/include/parser.hpp:114: [Parser] No Such Key: deployed_device_list"]
    model["deployed_device_list"] = [0]
    config_path.write_text(json.dumps(config))
    broken = hugectr_rules(broken_dir)
    assert "hier_parameter_server.cpp:37: The provided 'embedding_table_name' is invalid: 'emb_l.3.weight'" in broken
    assert "plugin/lookup_manager.cpp:133-137: i64_input_key must be false for HPS TensorRT plugin" in broken
    assert "plugin/lookup_manager.cpp:212-216: Input tensor dtype should be consistent with HPS configuration" in broken
    assert f"HugeCTR/src/io/local_filesystem.cpp:33: File not open: tables/emb_l_0_weight/key (working directory " \
           f"{tmp_path})" in broken
    monkeypatch.chdir(broken_dir)  # relative paths work from the folder only
    assert not any("File not open" in b for b in hugectr_rules(broken_dir))


def test_bundled_dlrm_names_are_hugectr_names(rewrites):
    config = json.loads((rewrites["torch/dlrm_small_legacy.onnx"] / "hps_config.json").read_text())
    model = config["models"][0]
    report = json.loads((rewrites["torch/dlrm_small_legacy.onnx"] / "report.json").read_text())
    tensors = [t["tensor"] for t in report["tables"]]
    assert model["model"] == "dlrm_small_legacy"
    assert sorted(tensors) == sorted(f"emb_l.{i}.weight" for i in range(26))
    assert model["embedding_table_names"] == [t.replace(".", "_") for t in tensors]
    assert all(TAG_SYNTAX.fullmatch(name) for name in [model["model"], *model["embedding_table_names"]])
