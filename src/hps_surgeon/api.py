"""The Python API `scan` and `rewrite`: wires the stages load -> match -> plan -> rewrite -> export."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from . import export, outputs, staging
from .attach import SparseModelInput, is_embedding_input, parse_sparse_model, plan_attached, with_own_keys
from .errors import SurgeonError
from .graph import all_tensors, dtype_name
from .hps import config as hps_config
from .hps.contract import CONFIG_NAME, DEFAULT_DOMAIN, MODEL_NAME, REPORT_NAME
from .load import LoadedModel, foreign_ops, load_proto, read_model
from .match import MatchResult, NearMiss, find_matches
from .plan import (Options, Plan, apply_plan_file, default_model_name, hold_fixed_keys, plan_rewrites, read_plan_file,
                   resolve, write_plan_file)
from .rewrite import removed_table_inputs, rewrite_model
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
        return self.out_dir / MODEL_NAME

    @property
    def config_path(self) -> Path:
        return self.out_dir / CONFIG_NAME


def scan(model: ModelLike, *, patterns: str | os.PathLike | None = None, key_dtype: str = "int32") -> ScanResult:
    """List the embedding lookups `rewrite` would replace, and those it would not (with the reason)."""
    loaded = _load(model)
    found = _match(loaded, load_patterns(patterns), Options(key_dtype=key_dtype))
    result = hold_fixed_keys(loaded.graph, resolve(found))
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
            ps_config_file: str | None = None, default_value: float = 0.0, min_table_rows: int = 0,
            relative_paths: bool = False, rewrite_fixed_keys: bool = False, force: bool = False, quiet: bool = True,
            patterns: str | os.PathLike | None = None,
            hugectr_sparse_models: Sequence[str | SparseModelInput] = (), dry_run: bool = False,
            plan_file: str | os.PathLike | None = None, plan_out: str | os.PathLike | None = None) -> RewriteResult:
    """Rewrite every embedding lookup into an HPS_TRT node and write the deployable folder.

    `out_dir` receives model.onnx (+ model.onnx.data when large), hps_config.json, tables/<name>/
    {key, emb_vector} and report.json, all at once: on any error nothing is left behind.
    `ps_config_file` defaults to the absolute path of `out_dir/hps_config.json`; sparse_files are
    absolute too (HugeCTR opens them relative to its working directory), or relative to the config
    with `relative_paths` (a relocatable folder; our plugin reads both).
    `hugectr_sparse_models` ("NAME=FOLDER[:combiner][:nnz]") attach lookups to embedding outputs that
    are graph inputs (HugeCTR models converted with convert_embedding=False), or make the table of
    embedding NAME (convert_embedding=True) store exactly the folder's keys instead of every key of
    hugectr2onnx's shared key map.
    `min_table_rows` keeps tables with fewer rows inside the model.
    `rewrite_fixed_keys` also moves tables whose keys no graph input's values reach (a position table
    read through Range); by default they stay in the model, with the reason in report.json.
    `plan_out` writes the plan as an editable YAML file; `plan_file` applies such a file (tables dropped,
    renamed, given another key dtype) and refuses one that no longer fits the model.
    `dry_run` plans everything (and finds every error) but writes nothing else: `report` is what
    report.json would hold.
    Raises SurgeonError with a one-line message on bad input.
    """
    out_dir = outputs.output_folder(out_dir)
    with _no_gc_pauses():
        loaded = _load(model)
        folders = [parse_sparse_model(s) if isinstance(s, str) else s for s in hugectr_sparse_models]
        inputs = _inputs(loaded, folders)
        outputs.output_folder(out_dir, "--out", [*inputs, *([Path(plan_file)] if plan_file is not None else [])])
        if plan_out is not None:  # may be the --plan file: a plan edited in place
            plan_out = _plan_output(plan_out, inputs, None if dry_run else out_dir)
        options = Options(
            model_name=model_name or default_model_name(loaded.path), key_dtype=key_dtype,
            max_batch_size=max_batch_size, max_keys_per_sample=max_keys_per_sample, gpucache_ratio=gpucache_ratio,
            domain=domain, nul_strings=nul_strings, default_value=default_value, min_table_rows=min_table_rows,
            relative_paths=relative_paths, rewrite_fixed_keys=rewrite_fixed_keys,
            ps_config_file=ps_config_file or os.path.abspath(out_dir / CONFIG_NAME)).check()
        edits = read_plan_file(Path(plan_file)) if plan_file is not None else None
        attached = tuple(plan_attached(loaded, s, options) for s in folders if is_embedding_input(loaded, s))
        plan = plan_rewrites(loaded, _match(loaded, load_patterns(patterns), options), options, attached)
        plan = with_own_keys(loaded, plan, [s for s in folders if not is_embedding_input(loaded, s)])
        if edits is not None:
            plan = apply_plan_file(plan, edits, Path(plan_file))
        if plan.lookups:  # before anything is written: a model onnx.checker refuses is the source's fault
            export.check_source(loaded)
        if plan_out is not None:
            write_plan_file(plan, Path(plan_out))
        report = export.report(loaded.path, plan, removed_table_inputs(loaded.proto, plan))
        if not plan.lookups or dry_run:
            return RewriteResult(written=False, out_dir=out_dir, plan=plan, report=report)
        _write(loaded, plan, report, out_dir, force, quiet)
    return RewriteResult(written=True, out_dir=out_dir, plan=plan, report=report)


def _inputs(loaded: LoadedModel, sparse_models: list[SparseModelInput]) -> list[Path]:
    """What a rewrite reads, which no output may replace: the model (unless in memory), its external data,
    the sparse-model folders."""
    found = [loaded.path, *(s.file for s in loaded.sources.values() if s.file is not None)]
    return [p for p in found if os.path.lexists(p)] + [Path(s.folder) for s in sparse_models]


def _plan_output(plan_out, inputs: list[Path], out_dir: Path | None) -> Path:
    path = outputs.output_file(plan_out, "--plan-out", inputs)
    if out_dir is not None and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(out_dir)):
        raise SurgeonError(f"--plan-out {plan_out}: lies inside --out {out_dir}, which the rewrite replaces whole; "
                           "write the plan elsewhere")
    return path


def _write(loaded: LoadedModel, plan: Plan, report: dict[str, Any], out_dir: Path, force: bool, quiet: bool) -> None:
    rewritten = rewrite_model(loaded, plan)
    with staging.staged_output(out_dir, force) as stage:
        model_path = export.write_model(rewritten, loaded, stage)
        export.write_tables(loaded, plan, stage, quiet=quiet)
        # Checked with paths relative to the staging folder, then pointed at where the folder will be.
        staging.write_json(stage / CONFIG_NAME, hps_config.build(plan))
        staging.write_json(stage / REPORT_NAME, report)
        export.check_written(model_path, stage / CONFIG_NAME, plan.options.domain, loaded.path)
        if not plan.options.relative_paths:
            staging.write_json(stage / CONFIG_NAME, hps_config.build(plan, Path(os.path.abspath(out_dir))))


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


def _load(model: ModelLike) -> LoadedModel:
    if isinstance(model, onnx.ModelProto):
        loaded = load_proto(model, Path.cwd() / "<in-memory>.onnx")
    else:
        loaded = read_model(model)
    unknown = foreign_ops(loaded.proto)
    if unknown:
        raise SurgeonError(f"{loaded.path}: {unknown[0]}" + (f" ({len(unknown) - 1} more such node(s))"
                                                             if len(unknown) > 1 else ""))
    return loaded


def _match(loaded: LoadedModel, specs: list[PatternSpec], options: Options) -> MatchResult:
    return find_matches(loaded.graph, specs, options.as_match_options(), tables=loaded.sources)
