"""A Triton model repository from a `rewrite` output folder.

    REWRITE_DIR/{model.onnx, hps_config.json, tables/}  ->  MODEL_REPO/
        start_triton.sh                    tritonserver with LD_PRELOAD of the plugin
        NAME/config.pbtxt                  platform tensorrt_plan, I/O from the model
        NAME/build_engine.sh               polygraphy convert -> NAME/1/model.plan
        NAME/perf_data.json                perf_analyzer --input-data, keys from the tables
        NAME/1/                            where the engine goes (--build-engine: NAME/1/model.plan)
        NAME/hps/{hps_config.json, model.onnx, tables/}   paths valid under --deploy-root

Everything is read, checked and generated first; then written into a folder beside MODEL_REPO and
moved into place, so an error leaves MODEL_REPO as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import AttributeProto, TensorProto

from ..errors import SurgeonError, errors
from ..hps import validate
from ..hps.contract import CONFIG_NAME, MODEL_NAME, field_text
from ..hps.tables import KEY_FILE, VECTOR_FILE
from ..staging import make_stage
from ..verify import keyspace
from . import triton

if TYPE_CHECKING:
    from .engine import EngineBuild

#: Where HugeCTR's HPS containers install the plugin (HPS_TRT creator, version "1").
DEFAULT_PLUGIN_LIB = "/usr/local/hps_trt/lib/libhps_plugin.so"
_TRITON_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DeployOptions:
    name: str | None = None  #: Triton model name (default: the HPS model_name)
    min_batch: int = 1
    opt_batch: int | None = None  #: default min(1024, max_batch)
    max_batch: int | None = None  #: default the HPS config's max_batch_size
    fp16: bool = False
    instances: int = 1
    gpus: tuple[int, ...] = ()
    deploy_root: str = "/models"  #: where MODEL_REPO is mounted in the serving container
    plugin_lib: str = DEFAULT_PLUGIN_LIB
    force: bool = False
    build_engine: bool = False  #: also build NAME/1/model.plan here, with TensorRT (engine.py)


@dataclass(frozen=True)
class RewriteFolder:
    """A checked `rewrite` output."""

    path: Path
    model: onnx.ModelProto  #: without external data
    config: dict
    entries: tuple[dict, ...]  #: the config's models used by the HPS_TRT nodes

    @property
    def max_batch_size(self) -> int:
        return min(e["max_batch_size"] for e in self.entries)


@dataclass(frozen=True)
class DeployResult:
    repo: Path
    model_dir: Path
    name: str
    batch: triton.Batch
    engine: EngineBuild | None = None  #: with --build-engine


# --- the whole step ------------------------------------------------------------------------------

def deploy(rewrite_dir: str | os.PathLike, repo: str | os.PathLike,
           options: DeployOptions | None = None, progress: Callable[[str], None] | None = None) -> DeployResult:
    """Write a Triton model repository for a rewrite folder; raises SurgeonError on bad input.

    With `options.build_engine`, NAME/1/model.plan is then built from the deployed model (its
    problems, if any, are in `DeployResult.engine`; the repository stays written).
    """
    options = options or DeployOptions()
    source = read_rewrite(Path(rewrite_dir))
    name = _model_name(options.name, source)
    root = _deploy_root(options.deploy_root)
    batch = batch_range(options, source)
    where = str(source.path / MODEL_NAME)
    inputs, outputs = triton.model_io(source.model, where)
    prof = triton.profile(inputs, batch, where)
    if options.instances < 1:
        raise SurgeonError(f"--instances {options.instances}: must be at least 1")
    repo = Path(repo)
    _check_repo(repo, name, options.force)
    deployed_config = posixpath.join(root, name, "hps", CONFIG_NAME)
    if options.build_engine:
        _check_engine_build(repo, root, deployed_config, options.fp16)
    tables = _table_folders(source)
    files = {
        "config.pbtxt": triton.config_pbtxt(name, inputs, outputs, options.instances, options.gpus),
        "build_engine.sh": triton.build_engine_sh(name, deployed_config, options.plugin_lib, prof, options.fp16),
        "perf_data.json": json.dumps(triton.perf_data(
            inputs, batch.opt, keyspace.rewritten_key_ranges(source.model, source.path / CONFIG_NAME))),
    }
    hps_config = _deployed_hps_config(source, tables, posixpath.join(root, name, "hps"), options.gpus)
    model = _deployed_model(source.model, deployed_config)
    with _staged(repo, name) as stage:
        folder = stage / name
        (folder / "1").mkdir(parents=True)
        for file_name, text in files.items():
            (folder / file_name).write_text(text)
        _write_hps(folder / "hps", source, model, hps_config, tables)
        (stage / "start_triton.sh").write_text(triton.start_triton_sh(root, options.plugin_lib))
        for script in (folder / "build_engine.sh", stage / "start_triton.sh"):
            script.chmod(0o755)
    built = None
    if options.build_engine:
        from .engine import EngineOptions, build_engine

        built = build_engine(repo / name / "hps", repo / name / "1" / triton.PLAN_NAME, EngineOptions(fp16=options.fp16),
                             batch.min, batch.opt, batch.max, force=True, progress=progress)
    return DeployResult(repo=repo, model_dir=repo / name, name=name, batch=batch, engine=built)


def _check_engine_build(repo: Path, root: str, deployed_config: str, fp16: bool) -> None:
    """--build-engine builds here what Triton will load there: the same paths, and TensorRT itself."""
    from .builders import find_builder
    from .engine import EngineOptions, ready

    if Path(root) != Path(os.path.abspath(repo)):
        raise SurgeonError(f"--build-engine: the HPS_TRT plugin opens {deployed_config} while the engine builds, "
                           f"but --repo {repo} is not at --deploy-root {root} on this machine — pass --deploy-root "
                           f"{os.path.abspath(repo)} (and mount the repository there in the container), or leave out "
                           "--build-engine and run build_engine.sh in the container")
    nvidia = find_builder()
    if nvidia.rtx:
        raise SurgeonError(f"--build-engine: the builder installed here is {nvidia.title}, whose engines do not load "
                           "in Triton's TensorRT backend — install tensorrt (the version your Triton serves), or run "
                           "build_engine.sh in the container (hps-surgeon build-engine and check --engine build with "
                           "TensorRT-RTX to prove the model builds)")
    ready(EngineOptions(fp16=fp16))


# --- reading and checking the rewrite folder -----------------------------------------------------

def read_rewrite(path: Path) -> RewriteFolder:
    """The rewrite folder's model and config, checked with `validate` (tables included)."""
    fix = "run hps-surgeon rewrite MODEL --out DIR first and pass DIR"
    if not path.is_dir():
        raise SurgeonError(f"{path}: no such rewrite folder — {fix}")
    model_path, config_path = path / MODEL_NAME, path / CONFIG_NAME
    for needed in (model_path, config_path):
        if not needed.is_file():
            raise SurgeonError(f"{needed}: missing from the rewrite folder — {fix}")
    try:
        model = onnx.load_model(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError or its own errors for a bad file
        raise SurgeonError(f"{model_path}: not a readable ONNX model ({str(exc).splitlines()[0]}) — {fix}") from None
    nodes = validate.hps_nodes(model)
    if not nodes:
        raise SurgeonError(f"{model_path}: has no HPS_TRT node, so there is nothing for the HPS plugin to serve — "
                           f"{fix}")
    _check_external_data(model, path)
    problems = errors(validate.validate(model_path, config_path, model=model))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SurgeonError(f"rewrite folder fails validation: {problems[0]}{more}")
    config = json.loads(config_path.read_text())
    return RewriteFolder(path=path, model=model, config=config, entries=used_entries(model, config))


def used_entries(model: onnx.ModelProto, config: dict) -> tuple[dict, ...]:
    """The config's `models` entries that the model's HPS_TRT nodes name."""
    used = {field_text(onnx.helper.get_node_attr_value(n, "model_name")) for n in validate.hps_nodes(model)}
    return tuple(m for m in config["models"] if m["model"] in used)


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    for location in _external_files(model):
        if not (folder / location).is_file():
            raise SurgeonError(f"{folder / location}: external data of {MODEL_NAME} is missing — copy it next to "
                               "the model or re-run hps-surgeon rewrite")


def _external_files(model: onnx.ModelProto) -> list[str]:
    locations = set()
    for tensor in model.graph.initializer:  # rewrite writes external data for initializers only
        if tensor.data_location == TensorProto.EXTERNAL:
            locations.add(next(e.value for e in tensor.external_data if e.key == "location"))
    return sorted(locations)


def _model_name(name: str | None, source: RewriteFolder) -> str:
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.entries[0]["model"]).lstrip(".") or "model"
    if not _TRITON_NAME.match(name):
        raise SurgeonError(f"--name '{name}': a Triton model name is a folder name of letters, digits, '_', '.' "
                           "and '-', not starting with '.' or '-' — choose another --name")
    return name


def _deploy_root(root: str) -> str:
    if not root.startswith("/"):
        raise SurgeonError(f"--deploy-root '{root}': must be an absolute path inside the serving container — "
                           "e.g. --deploy-root /models")
    return posixpath.normpath(root)


def batch_range(options: DeployOptions, source: RewriteFolder) -> triton.Batch:
    """--min/--opt/--max-batch, checked against the HPS config's max_batch_size."""
    limit = source.max_batch_size
    high = limit if options.max_batch is None else options.max_batch
    if high > limit:
        raise SurgeonError(
            f"--max-batch {high} exceeds max_batch_size {limit} in {source.path / CONFIG_NAME} (HPS sizes its "
            f"buffers for that batch) — lower --max-batch or re-run rewrite with --max-batch-size {high}")
    low = options.min_batch
    opt = min(1024, high) if options.opt_batch is None else options.opt_batch
    if not 1 <= low <= opt <= high:
        raise SurgeonError(f"batch range --min-batch {low} --opt-batch {opt} --max-batch {high}: needs "
                           "1 <= min <= opt <= max — adjust the three options")
    return triton.Batch(low, opt, high)


def _check_repo(repo: Path, name: str, force: bool) -> None:
    if repo.exists() and not repo.is_dir():
        raise SurgeonError(f"--repo {repo}: exists and is not a folder — choose another --repo")
    if repo.is_dir() and not force:
        present = sorted(p.name for p in repo.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise SurgeonError(f"--repo {repo}: folder is not empty (has {shown}) — pass --force to replace "
                               f"model '{name}' and start_triton.sh in it, or choose an empty --repo")


# --- the deployed copies -------------------------------------------------------------------------

def _table_folders(source: RewriteFolder) -> dict[tuple[str, int], tuple[Path, str]]:
    """(model, table index) -> (source folder, folder relative to hps/), names made unique."""
    folders: dict[tuple[str, int], tuple[Path, str]] = {}
    taken: dict[str, Path] = {}
    for entry in source.config["models"]:
        for index, file in enumerate(entry["sparse_files"]):
            src = (source.path / file).resolve()
            base = f"tables/{Path(file).name}"
            rel, n = base, 1
            while rel in taken and taken[rel] != src:
                rel, n = f"{base}_{n}", n + 1
            taken[rel] = src
            folders[(entry["model"], index)] = (src, rel)
    return folders


def _deployed_hps_config(source: RewriteFolder, tables: dict, hps_dir: str, gpus: tuple[int, ...]) -> dict:
    # HugeCTR opens sparse_files relative to the server's working directory, not to the config:
    # absolute paths under --deploy-root are the ones valid inside the container.
    config = json.loads(json.dumps(source.config))
    for entry in config["models"]:
        entry["sparse_files"] = [posixpath.join(hps_dir, tables[(entry["model"], i)][1])
                                 for i in range(len(entry["sparse_files"]))]
        if gpus:
            # Every GPU that runs an instance needs the HPS cache of the tables on it.
            entry["deployed_device_list"] = list(gpus)
    return config


def _deployed_model(model: onnx.ModelProto, deployed_config: str) -> onnx.ModelProto:
    """A copy whose HPS_TRT nodes open the deployed config (NUL kept where rewrite put one)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in validate.hps_nodes(copy):
        for attr in node.attribute:
            if attr.name == "ps_config_file" and attr.type == AttributeProto.STRING:
                nul = "\0" if attr.s.endswith(b"\0") else ""
                attr.s = (deployed_config + nul).encode()
    return copy


def _write_hps(folder: Path, source: RewriteFolder, model: onnx.ModelProto, config: dict, tables: dict) -> None:
    folder.mkdir()
    onnx.save_model(model, str(folder / MODEL_NAME))
    for location in _external_files(source.model):
        _link_or_copy(source.path / location, folder / location)
    for rel, src in {rel: src for src, rel in tables.values()}.items():
        for file in (KEY_FILE, VECTOR_FILE):
            _link_or_copy(src / file, folder / rel / file)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no copy of large tables) when on the same filesystem, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _staged(repo: Path, name: str) -> Iterator[Path]:
    """A folder beside `repo` to write into; on success NAME/ and start_triton.sh move into `repo`."""
    stage = make_stage(repo, "deploy", f"--repo {repo}: cannot write there ({{reason}}) — choose a writable --repo")
    try:
        yield stage
        _move_into_place(stage, repo, name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(stage: Path, repo: Path, name: str) -> None:
    if not repo.exists():
        os.rename(stage, repo)
        return
    old = stage / ".replaced"
    if (repo / name).exists():
        os.rename(repo / name, old)
    os.rename(stage / name, repo / name)
    os.replace(stage / "start_triton.sh", repo / "start_triton.sh")
