"""fixtures/thirdparty: the models exist, are small, and MANIFEST.yaml tells the truth about them.

The manifest (written by fixtures/make_thirdparty.py) is what issue 10's verify work is measured
against, so its facts that need no torch or TF are checked here against the files themselves:
graph inputs, ONNX validity, and at which batch sizes onnxruntime runs the original.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from support import FIXTURES

THIRDPARTY = FIXTURES / "thirdparty"
MODELS = THIRDPARTY / "models"
ENTRIES = {e["file"]: e for e in yaml.safe_load((THIRDPARTY / "MANIFEST.yaml").read_text())["fixtures"]}
STRUCTURES = range(1, 14)  # fixtures/README.md, "Third-party libraries" (11-13: issue 20)


def graph_inputs(model: onnx.ModelProto) -> list[dict]:
    inits = {t.name for t in model.graph.initializer}
    rows = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        rows.append({"name": value.name, "dtype": "string" if dtype == "object" else dtype,
                     "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim]})
    return rows


def is_valid(entry: dict) -> bool:
    return not entry["framework_check"].startswith("not valid ONNX")


def test_manifest_has_one_entry_per_model():
    assert sorted(p.name for p in MODELS.glob("*.onnx")) == sorted(ENTRIES)


def test_models_are_small():
    sizes = {p.name: p.stat().st_size for p in MODELS.iterdir()}
    assert max(sizes.values()) < 1 << 20, sizes
    assert max(p.stat().st_size for p in (THIRDPARTY / "samples").iterdir()) < 1 << 20
    assert sum(p.stat().st_size for p in THIRDPARTY.rglob("*") if p.is_file()) < 5 << 20


def test_every_structure_has_a_fixture():
    covered = {n for e in ENTRIES.values() for n in e["structures"]}
    assert set(STRUCTURES) <= covered, sorted(set(STRUCTURES) - covered)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_manifest_inputs_are_the_graph_inputs(name):
    model = onnx.load_model(str(MODELS / name))
    assert ENTRIES[name]["inputs"] == graph_inputs(model)
    as_inputs = {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}
    assert ENTRIES[name].get("initializers_also_inputs", 0) == len(as_inputs)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_validity_is_as_recorded(name):
    path = str(MODELS / name)
    if is_valid(ENTRIES[name]):
        onnx.checker.check_model(path, full_check=True)
        return
    with pytest.raises(onnx.checker.ValidationError) as failure:
        onnx.checker.check_model(path, full_check=True)
    # the manifest names the TF ops tf2onnx left behind; the checker rejects one of them
    assert any(op in str(failure.value) for op in ("LookupTableFindV2", "HashTableV2", "StringToHashBucketFast"))


def feeds_for(entry: dict, batch: int) -> dict[str, np.ndarray]:
    """Zeros (id 0, empty string) at `batch`; other symbolic dims 2. The failures recorded are shape failures."""
    feeds = {}
    for spec in entry["inputs"]:
        shape = [batch if i == 0 else (d if isinstance(d, int) else 2) for i, d in enumerate(spec["shape"])]
        feeds[spec["name"]] = (np.full(shape, "", dtype=object) if spec["dtype"] == "string"
                               else np.zeros(shape, dtype=spec["dtype"]))
    return feeds


DYNAMIC_BATCH = sorted(n for n, e in ENTRIES.items()
                       if is_valid(e) and all(isinstance(i["shape"][0], str) for i in e["inputs"]))


@pytest.mark.parametrize("name", DYNAMIC_BATCH)
def test_onnxruntime_runs_the_original_where_the_manifest_says(name):
    session = ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])
    for label, outcome in ENTRIES[name]["ort_original"].items():
        feeds = feeds_for(ENTRIES[name], int(label.split()[1]))
        if outcome.startswith("ok"):
            session.run(None, feeds)
        else:
            assert outcome.startswith("FAILS")
            with pytest.raises(Exception):
                session.run(None, feeds)


def test_torchrec_models_have_static_inputs():
    """torchrec exports bake the jagged sizes in: every input dim is a number (why batch 1/2/8 fail)."""
    names = [n for n in ENTRIES if n.startswith("torchrec_")]
    assert names
    for name in names:
        dims = [d for spec in graph_inputs(onnx.load_model(str(MODELS / name))) for d in spec["shape"]]
        assert all(isinstance(d, int) and d > 0 for d in dims), (name, dims)
