"""The notebooks in examples/ run top to bottom in a real kernel (nbclient), on the committed exports.

Each notebook's code cells are tagged with their step; the test reads what each step printed. A step that
needs a native part (build-engine: a builder and the plugin's TensorRT glue; publish: libhps_storage.so
and redis-server) may say "skipped: <reason>" where that part is missing, and must run where it is
required (HPS_SURGEON_REQUIRE_NATIVE=1, CI's full run).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from support import REQUIRE_NATIVE_ENV, ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = ROOT / "examples"
STEPS = ["setup", "export", "scan", "rewrite", "verify", "check", "build-engine", "deploy", "publish"]
#: notebook -> (lookups its model has, the framework whose absence skips the export)
NOTEBOOKS = {"01_pytorch_dlrm.ipynb": (26, "torch"), "02_keras_tf2onnx.ipynb": (8, "tensorflow"),
             "03_hugectr_hugectr2onnx.ipynb": (2, "hugectr2onnx")}


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_example_is_listed_and_stripped_of_outputs():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        notebook = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(notebook)
        assert [cell.metadata.get("tags") for cell in code_cells(notebook)] == [[step] for step in STEPS], name
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells(notebook)), \
            f"{name}: commit notebooks without outputs (jupyter nbconvert --clear-output --inplace)"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    lookups, framework = NOTEBOOKS[name]
    monkeypatch.setenv("HPS_EXAMPLES_WORK", str(tmp_path))
    # the kernel is this interpreter's (ipykernel's kernelspec runs `python` from PATH)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    printed = {cell.metadata.tags[0]: "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
               for cell in code_cells(notebook)}

    assert printed["setup"].startswith(f"outputs go to {tmp_path}/")
    if importlib.util.find_spec(framework) is None:
        assert printed["export"].startswith("Note: "), printed["export"]
    assert printed["scan"].startswith(f"{lookups} lookup(s) to rewrite, 0 not rewritable\n")
    assert printed["rewrite"].startswith(f"{lookups} HPS_TRT node(s), {lookups} table(s)")
    assert re.search(r"^PASSED: \d+ feeds", printed["verify"], re.M), printed["verify"]
    assert printed["check"].endswith("check: exit 0, nothing blocks a commit\n")
    assert re.search(r"^deployed '\w+' -> ", printed["deploy"], re.M), printed["deploy"]
    assert "config.pbtxt" in printed["deploy"]
    for step, done in (("build-engine", rf"^built .*: {lookups} HPS_TRT plugin layer\(s\) for {lookups} node\(s\)$"),
                       ("publish", rf"^published {lookups} table\(s\)")):
        if printed[step].startswith("skipped: "):
            assert not os.environ.get(REQUIRE_NATIVE_ENV), f"{name}: {printed[step]}"
            continue
        assert re.search(done, printed[step], re.M), printed[step]
    if not printed["publish"].startswith("skipped: "):
        assert printed["publish"].endswith("volatile_db: redis_cluster | persistent_db: rocks_db\n")

