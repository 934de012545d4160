"""Test helpers: run models with onnxruntime, draw valid keys, build small models."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
#: set by .ci/run's full run, where every native part is built or installed: one that is missing there
#: fails its tests instead of skipping them (a GPU is never required)
REQUIRE_NATIVE_ENV = "HPS_SURGEON_REQUIRE_NATIVE"


def skip_unless_required(reason: str) -> NoReturn:
    """Skip a test whose native part (library, server, tool, builder) is absent, or fail where it is required."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    if os.environ.get(REQUIRE_NATIVE_ENV):
        pytest.fail(f"{reason} (${REQUIRE_NATIVE_ENV} is set: this run requires it)")
    pytest.skip(reason)


def copy_rewrite(source: Path, target: Path) -> Path:
    """A copy of a rewrite folder whose config names the copied tables (rewrite writes absolute paths)."""
    shutil.copytree(source, target)
    config_path = target / "hps_config.json"
    config = json.loads(config_path.read_text())
    for model in config["models"]:
        model["sparse_files"] = [str(target / Path(f).relative_to(source)) if Path(f).is_absolute() else f
                                 for f in model["sparse_files"]]
    config_path.write_text(json.dumps(config))
    return target


def set_string_attribute(source: Path, name: str, value: bytes, target: Path | None = None) -> Path:
    """The model at source with attribute `name` of every node that has one set to value (raw bytes, NUL
    included where wanted), saved to target (default: in place)."""
    model = onnx.load(str(source))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == name:
                attr.s = value
    target = target or source
    onnx.save(model, str(target))
    return target


def run_onnxruntime(model_path: Path | str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def random_feeds(model_path: Path | str, batch: int, key_high: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs: keys (integer inputs, or any input named *keys*) from [0, key_high), others N(0, 1)."""
    rng = np.random.default_rng(seed)
    model = onnx.load_model(str(model_path), load_external_data=False)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer) or "keys" in value.name:
            feeds[value.name] = rng.integers(0, key_high, size=dims).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def tampered_copy(rewrite_dir: Path, dest: Path, change=lambda rows: rows + 1.0) -> Path:
    """A copy of a rewrite folder whose every table has every row except row 0 changed (`change`).

    What a verification that only ever feeds key 0 (HugeCTR's own test draws randint(0, 1)) cannot see.
    """
    copy_rewrite(rewrite_dir, dest)
    entry = json.loads((dest / "hps_config.json").read_text())["models"][0]
    for folder, dim in zip(entry["sparse_files"], entry["embedding_vecsize_per_table"]):
        path = dest / folder / "emb_vector"
        vectors = np.fromfile(path, dtype="<f4").reshape(-1, dim)
        vectors[1:] = change(vectors[1:])
        vectors.astype("<f4").tofile(path)
    return dest


def tampered_row(rewrite_dir: Path, dest: Path, table: str, row: int) -> Path:
    """A copy of a rewrite folder where one element of one row of one table is one ulp larger.

    The smallest wrong table there is: no model output moves, only the lookup itself shows it.
    """
    copy_rewrite(rewrite_dir, dest)
    entry = json.loads((dest / "hps_config.json").read_text())["models"][0]
    table_id = entry["embedding_table_names"].index(table)
    path = dest / entry["sparse_files"][table_id] / "emb_vector"
    vectors = np.fromfile(path, dtype="<f4").reshape(-1, entry["embedding_vecsize_per_table"][table_id])
    vectors[row, 0] = np.nextafter(vectors[row, 0], np.float32(np.inf))
    vectors.astype("<f4").tofile(path)
    return dest


def lookup_model(path: Path, rows: int = 100, dim: int = 8, key_dtype=TensorProto.INT64,
                 table_dtype=np.float32, key_shape=("B", 4), axis: int | None = None,
                 external: bool = False, seed: int = 0) -> Path:
    """A one-lookup model: Gather(table, keys) -> out. Written to `path`."""
    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.standard_normal((rows, dim)).astype(table_dtype), "table")
    attrs = {} if axis is None else {"axis": axis}
    out_type = helper.np_dtype_to_tensor_dtype(np.dtype(table_dtype))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "keys"], ["out"], name="lookup", **attrs)], "g",
        [helper.make_tensor_value_info("keys", key_dtype, list(key_shape))],
        # a shape of unknown dims: onnx.checker requires one on every graph output
        [helper.make_tensor_value_info("out", out_type, [None] * (len(key_shape) + 1))], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data",
                        size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


@dataclass(frozen=True)
class CliRun:
    """What one in-process `hps-surgeon` run printed and returned."""

    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The one line of an exit-2 run (asserts there is exactly one)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("hps-surgeon: error: "), lines[0]
        return lines[0]


def run_in_process(capfd, argv) -> CliRun:
    """`hps-surgeon ARGV` in this process (no interpreter start-up: about 20x faster than a subprocess).

    Output is captured at the file-descriptor level, so C++ libraries' prints count too. Callers set
    HPS_SURGEON_DEBUG=1 (the `cli` fixture does), so an unexpected exception fails the test with its
    traceback instead of becoming the CLI's one-line "internal error".
    """
    from hps_surgeon import cli

    capfd.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capfd.readouterr()
    return CliRun(code, out, err)


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` (symlinks not followed), by absolute path: what it is and, for files,
    their size and mtime. A folder's own mtime is left out: it changes when an output moves into it."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = os.lstat(path)
            found[str(path)] = (st.st_mode, st.st_ino) if name in dirs else (st.st_mode, st.st_size,
                                                                             st.st_mtime_ns, st.st_ino)
    return found
