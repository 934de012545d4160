"""The Python API: `scan` and `rewrite`, wiring the stages load -> match -> plan -> rewrite -> export."""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from . import export, validate
from .contract import DEFAULT_DOMAIN, DOMAIN_VERSION, HPS_OP
from .attach import SparseModelInput, parse_sparse_model, plan_attached
from .errors import SurgeonError
from .load import LoadedModel, load_model, load_proto
from .graph import all_tensors, dtype_name
from .match import MatchResult, NearMiss, find_matches
from .plan import Options, Plan, plan_rewrites
from .rewrite import rewrite_model
from .spec import PatternSpec, load_patterns

ModelLike = str | os.PathLike | onnx.ModelProto


@dataclass(frozen=True)
class ScanEntry:
    """A lookup `rewrite` would replace."""

    node: str
    pattern: str
    table: str
    rows: int
    dim: int
    nbytes: int
    table_dtype: str
    keys: str
    key_dtype: str


@dataclass(frozen=True)
class ScanResult:
    model: str
    lookups: tuple[ScanEntry, ...]
    not_rewritable: tuple[NearMiss, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RewriteResult:
    """What `rewrite` did. `written` is False when the model had no rewritable lookup."""

    written: bool
    out_dir: Path
    plan: Plan
    report: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.out_dir / export.MODEL_NAME

    @property
    def config_path(self) -> Path:
        return self.out_dir / export.CONFIG_NAME


def scan(model: ModelLike, *, patterns: str | os.PathLike | None = None, key_dtype: str = "int32") -> ScanResult:
    """List the embedding lookups `rewrite` would replace, and those it would not (with the reason)."""
    loaded = _load(model)
    result = _match(loaded, load_patterns(patterns), Options(key_dtype=key_dtype))
    tensors = all_tensors(loaded.graph)
    entries = []
    for match in result.matches:
        table, keys = tensors[match.table], tensors[match.keys]
        rows, dim = (int(d) for d in table.shape)
        entries.append(ScanEntry(node=match.anchor, pattern=match.pattern, table=table.name, rows=rows, dim=dim,
                                 nbytes=loaded.sources[match.table].nbytes,
                                 table_dtype=dtype_name(table) or "unknown", keys=keys.name,
                                 key_dtype=dtype_name(keys) or "unknown"))
    return ScanResult(model=str(loaded.path), lookups=tuple(entries), not_rewritable=result.near_misses)


def rewrite(model: ModelLike, out_dir: str | os.PathLike, *, model_name: str | None = None,
            key_dtype: str = "int32", max_batch_size: int = 1024, max_keys_per_sample: int | None = None,
            gpucache_ratio: float = 1.0, domain: str = DEFAULT_DOMAIN, nul_strings: bool = True,
            ps_config_file: str | None = None, default_value: float = 0.0, force: bool = False,
            quiet: bool = True, patterns: str | os.PathLike | None = None,
            hugectr_sparse_models: Sequence[str | SparseModelInput] = (), dry_run: bool = False) -> RewriteResult:
    """Rewrite every embedding lookup into an HPS_TRT node and write the deployable folder.

    `out_dir` receives model.onnx (+ model.onnx.data when large), hps_config.json, tables/<name>/
    {key, emb_vector} and report.json, all at once: on any error nothing is left behind.
    `ps_config_file` defaults to the absolute path of `out_dir/hps_config.json`.
    `hugectr_sparse_models` ("INPUT=FOLDER[:combiner][:nnz]") attach lookups to embedding outputs that
    are graph inputs (HugeCTR models converted with convert_embedding=False).
    `dry_run` plans everything (and finds every error) but writes nothing: `report` is what report.json
    would hold.
    Raises SurgeonError with a one-line message on bad input.
    """
    out_dir = Path(out_dir)
    _check_numbers(max_batch_size, max_keys_per_sample, gpucache_ratio)
    with _no_gc_pauses():
        loaded = _load(model)
        _check_out_dir_spares_source(out_dir, loaded.path)
        options = Options(
            model_name=model_name or _default_model_name(loaded.path), key_dtype=key_dtype,
            max_batch_size=max_batch_size, max_keys_per_sample=max_keys_per_sample, gpucache_ratio=gpucache_ratio,
            domain=domain, nul_strings=nul_strings, default_value=default_value,
            ps_config_file=ps_config_file or str((out_dir / export.CONFIG_NAME).absolute()))
        return _rewrite_loaded(loaded, out_dir, options, load_patterns(patterns), hugectr_sparse_models, force, quiet,
                               dry_run)


@contextlib.contextmanager
def _no_gc_pauses():
    # A graph IR of 100k nodes is millions of objects, none of them garbage: the cyclic collector
    # would rescan them over and over (measured: the graph part scales 13x per 10x nodes with it,
    # 11x without). The IR's node <-> tensor cycles are collected once the collector is back on.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rewrite_loaded(loaded: LoadedModel, out_dir: Path, options: Options, specs: list[PatternSpec],
                    sparse_models: Sequence[str | SparseModelInput], force: bool, quiet: bool,
                    dry_run: bool) -> RewriteResult:
    result = _match(loaded, specs, options)
    attached = tuple(plan_attached(loaded, parse_sparse_model(s) if isinstance(s, str) else s, options)
                     for s in sparse_models)
    plan = plan_rewrites(loaded, result.matches, result.near_misses, options, attached)
    report = _report(loaded, plan)
    if not plan.lookups or dry_run:
        return RewriteResult(written=False, out_dir=out_dir, plan=plan, report=report)
    rewritten = rewrite_model(loaded, plan)
    with export.staged_output(out_dir, force) as stage:
        model_path = export.save_model(rewritten, loaded, stage)
        export.write_tables(loaded, plan, stage, quiet=quiet)
        export.write_json(stage / export.CONFIG_NAME, export.hps_config(plan))
        export.write_json(stage / export.REPORT_NAME, report)
        check_onnx(model_path, options.domain)
        _check_valid(model_path, stage / export.CONFIG_NAME)
    return RewriteResult(written=True, out_dir=out_dir, plan=plan, report=report)


def check_onnx(path: Path, domain: str) -> None:
    """`onnx.checker` with full_check on the saved model (path form, so external data works)."""
    target = path
    if domain == "":
        # The checker rejects unknown ops in the default domain; check a copy with the nodes moved.
        proto = onnx.load_model(str(path), load_external_data=False)
        for node in proto.graph.node:
            if node.op_type == HPS_OP:
                node.domain = DEFAULT_DOMAIN
        proto.opset_import.append(onnx.helper.make_opsetid(DEFAULT_DOMAIN, DOMAIN_VERSION))
        target = path.with_name(f".{path.name}.checked")
        onnx.save_model(proto, str(target))
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise SurgeonError(f"{path}: rewritten model fails onnx.checker ({str(exc).splitlines()[0]}); "
                           "nothing was written. Please report this with the source model.") from None
    finally:
        if target != path:
            target.unlink(missing_ok=True)


def _check_valid(model_path: Path, config_path: Path) -> None:
    found = validate.errors(validate.validate(model_path, config_path))
    if found:
        raise SurgeonError(f"rewritten output fails validation, nothing was written: {found[0]}")


def _load(model: ModelLike) -> LoadedModel:
    if isinstance(model, onnx.ModelProto):
        return load_proto(model, Path.cwd() / "<in-memory>.onnx")
    return load_model(model)


def _match(loaded: LoadedModel, specs: list[PatternSpec], options: Options) -> MatchResult:
    return find_matches(loaded.graph, specs, options.as_match_options(), tables=loaded.sources)


def _default_model_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "model"


def _check_out_dir_spares_source(out_dir: Path, source: Path) -> None:
    # --force replaces the whole folder: it must not be the one the model (and its external data) lives in.
    if source.absolute().resolve().is_relative_to(out_dir.absolute().resolve()):
        raise SurgeonError(f"{out_dir}: holds the source model {source}; choose another --out (--force would "
                           "delete the source)")


def _check_numbers(max_batch_size: int, max_keys_per_sample: int | None, gpucache_ratio: float) -> None:
    if max_batch_size < 1:
        raise SurgeonError(f"--max-batch-size {max_batch_size}: must be at least 1")
    if max_keys_per_sample is not None and max_keys_per_sample < 1:
        raise SurgeonError(f"--max-keys-per-sample {max_keys_per_sample}: must be at least 1")
    if not 0.0 < gpucache_ratio <= 1.0:
        raise SurgeonError(f"--gpucache-ratio {gpucache_ratio}: must be in (0, 1]")


def _report(loaded: LoadedModel, plan: Plan) -> dict[str, Any]:
    options = plan.options
    return {
        "source_model": str(loaded.path),
        "model": export.MODEL_NAME,
        "config": export.CONFIG_NAME,
        "model_name": options.model_name,
        "ps_config_file": options.ps_config_file,
        "domain": options.domain,
        "hps_trt_nodes": [{
            "node": lp.node, "pattern": lp.pattern, "variant": list(lp.variant), "replaced_nodes": list(lp.replaced),
            "table": lp.table, "table_id": lp.table_id, "rows": lp.rows, "emb_vec_size": lp.emb_vec_size,
            "key_dtype": options.key_dtype, "source_key_dtype": lp.key_dtype, "keys": lp.keys,
            "keys_per_sample": lp.keys_per_sample, "output": lp.output, "consumers": list(lp.consumers),
            "notes": list(lp.notes)} for lp in plan.lookups],
        "tables": [{
            "table_id": t.table_id, "tensor": t.tensor, "name": t.name, "folder": t.folder, "rows": t.rows,
            "dim": t.dim, "source_dtype": t.dtype, "bytes": t.nbytes, "kept_in_model": t.kept,
            "max_keys_per_sample": t.max_keys_per_sample} for t in plan.tables],
        "not_rewritten": [{"node": n.node, "op": n.op, "pattern": n.pattern, "reason": n.reason,
                           "refused": n.refused} for n in plan.not_rewritten],
        "notes": list(plan.notes),
    }


