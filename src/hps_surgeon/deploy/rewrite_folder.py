"""The rewrite folder `deploy` and `build-engine` start from: read, checked (`wellformed`, `validate`,
tables included), and the engine's batch range its config allows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import wellformed
from ..errors import SurgeonError, errors
from ..hps import config as hps_config
from ..hps import validate
from ..hps.contract import CONFIG_NAME, MODEL_NAME, TABLES_DIR, field_text
from ..load import external_tensors, read_proto
from . import triton


@dataclass(frozen=True)
class RewriteFolder:
    """A checked `rewrite` output."""

    path: Path
    model: onnx.ModelProto  #: without external data
    config: dict
    entries: tuple[dict, ...]  #: the config's models used by the HPS_TRT nodes
    external: dict[str, Path]  #: external-data files of the model: path relative to `path` -> real path

    @property
    def max_batch_size(self) -> int:
        return min(e["max_batch_size"] for e in self.entries)


def read_rewrite(path: Path) -> RewriteFolder:
    """The rewrite folder's model and config, checked with `wellformed` and `validate` (tables included)."""
    fix = "run hps-surgeon rewrite MODEL --out DIR first and pass DIR"
    model_path, config_path = path / MODEL_NAME, path / CONFIG_NAME
    try:
        if not path.is_dir():
            raise SurgeonError(f"{path}: no such rewrite folder — {fix}")
        for needed in (model_path, config_path):
            if not needed.is_file():
                what = "not a regular file in" if needed.exists() else "missing from"
                raise SurgeonError(f"{needed}: {what} the rewrite folder — {fix}")
            real = Path(os.path.realpath(needed))
            if not real.is_relative_to(Path(os.path.realpath(path))):
                # deploy writes what the folder holds into the repository: nothing from elsewhere
                raise SurgeonError(f"{needed}: a symbolic link out of the rewrite folder (to {real}); refusing to "
                                   "deploy it — copy the file into the folder")
    except OSError as exc:
        raise SurgeonError(f"{path}: cannot read the rewrite folder ({exc.strerror}) — {fix}") from None
    model = read_proto(model_path)  # external data: confined to the folder, regular files, sizes right
    nodes = validate.hps_nodes(model)
    if not nodes:
        raise SurgeonError(f"{model_path}: has no HPS_TRT node, so there is nothing for the HPS plugin to serve — "
                           f"{fix}")
    problems = errors(validate.validate(model_path, config_path, model=model))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SurgeonError(f"rewrite folder fails validation: {problems[0]}{more}")
    config, _ = hps_config.load(config_path)  # valid (checked above), with HugeCTR's defaults filled in
    return RewriteFolder(path=path, model=model, config=config, entries=used_entries(model, config),
                         external=_external_files(model, model_path))


def used_entries(model: onnx.ModelProto, config: dict) -> tuple[dict, ...]:
    """The config's `models` entries that the model's HPS_TRT nodes name."""
    used = {field_text(onnx.helper.get_node_attr_value(n, "model_name")) for n in validate.hps_nodes(model)}
    return tuple(m for m in config["models"] if m.get("model", "") in used)


def _external_files(model: onnx.ModelProto, model_path: Path) -> dict[str, Path]:
    """Each external-data file of the model, by its path relative to the model's folder (its deployed name)."""
    root = Path(os.path.realpath(model_path.parent))
    files = {}
    for tensor in external_tensors(model.graph):
        real = wellformed.external_range(tensor, model_path, f"tensor '{tensor.name}'").file
        rel = real.relative_to(root).as_posix()
        if rel in (MODEL_NAME, CONFIG_NAME) or rel.split("/")[0] == TABLES_DIR:
            raise SurgeonError(f"{model_path}: tensor '{tensor.name}': external data '{rel}' is a file deploy writes "
                               "itself; re-run hps-surgeon rewrite")
        files[rel] = real
    return files


def batch_range(source: RewriteFolder, min_batch: int = 1, opt_batch: int | None = None,
                max_batch: int | None = None) -> triton.Batch:
    """--min/--opt/--max-batch, checked against the HPS config's max_batch_size (defaults: opt min(1024,
    max), max the config's)."""
    limit = source.max_batch_size
    high = limit if max_batch is None else max_batch
    if high > limit:
        raise SurgeonError(
            f"--max-batch {high} exceeds max_batch_size {limit} in {source.path / CONFIG_NAME} (HPS sizes its "
            f"buffers for that batch) — lower --max-batch or re-run rewrite with --max-batch-size {high}")
    low = min_batch
    opt = min(1024, high) if opt_batch is None else opt_batch
    if not 1 <= low <= opt <= high:
        raise SurgeonError(f"batch range --min-batch {low} --opt-batch {opt} --max-batch {high}: needs "
                           "1 <= min <= opt <= max — adjust the three options")
    return triton.Batch(low, opt, high)
