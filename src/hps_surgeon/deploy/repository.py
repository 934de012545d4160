"""A Triton model repository from a `rewrite` output folder.

    REWRITE_DIR/{model.onnx, hps_config.json, tables/}  ->  MODEL_REPO/
        start_triton.sh                    tritonserver with LD_PRELOAD of the plugin
        NAME/config.pbtxt                  platform tensorrt_plan, I/O from the model
        NAME/build_engine.sh               polygraphy convert -> NAME/1/model.plan
        NAME/perf_data.json                perf_analyzer --input-data, keys from the tables
        NAME/1/                            where the engine goes (--build-engine: NAME/1/model.plan)
        NAME/hps/{hps_config.json, model.onnx, tables/}   paths valid under --deploy-root

Everything is read, checked and generated first; then written into a staging folder inside
MODEL_REPO and moved into place, so an error leaves MODEL_REPO as it was, and nothing is ever
created outside it. Every file copied from REWRITE_DIR is found under the confinement rule
(`confine`: real paths inside the folder of the file that names them), and every path written
into the deployed config lies under --deploy-root.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import AttributeProto

from .. import confine, wellformed
from ..errors import SurgeonError
from ..hps import config as hps_config
from ..hps import validate
from ..hps.contract import CONFIG_NAME, MODEL_NAME, TABLES_DIR
from ..hps.tables import KEY_FILE, VECTOR_FILE, table_files
from ..load import external_tensors
from ..outputs import output_folder
from ..verify import feeds
from . import triton
from .builders import find_builder
from .engine import EngineBuild, EngineOptions, build_engine, ready
from .rewrite_folder import RewriteFolder, batch_range, read_rewrite

#: Where HugeCTR's HPS containers install the plugin (HPS_TRT creator, version "1").
DEFAULT_PLUGIN_LIB = "/usr/local/hps_trt/lib/libhps_plugin.so"
_TRITON_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: file names are at most 255 bytes; the staging folder is ".NAME.deploy-" + 8 characters
_NAME_LIMIT = 255 - 22


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
    batch = batch_range(source, options.min_batch, options.opt_batch, options.max_batch)
    where = str(source.path / MODEL_NAME)
    inputs, outputs = triton.model_io(source.model, where)
    prof = triton.profile(inputs, batch, where)
    if options.instances < 1:
        raise SurgeonError(f"--instances {options.instances}: must be at least 1")
    tables = _table_folders(source)
    read = [source.path, *source.external.values(), *(file for files, _ in tables.values() for file in files)]
    repo = output_folder(repo, "--repo", read)
    _check_repo(repo, name, options.force, source.path)
    deployed_config = posixpath.join(root, name, "hps", CONFIG_NAME)
    if options.build_engine:
        _check_engine_build(repo, root, deployed_config, options.fp16)
    gpus = serving_gpus(options, source)
    files = {
        "config.pbtxt": triton.config_pbtxt(name, inputs, outputs, options.instances, gpus),
        "build_engine.sh": triton.build_engine_sh(name, deployed_config, options.plugin_lib, prof, options.fp16),
        "perf_data.json": json.dumps(triton.perf_data(
            inputs, batch.opt, feeds.rewritten_key_ranges(source.model, source.path / CONFIG_NAME))),
    }
    deployed = _deployed_hps_config(source, tables, posixpath.join(root, name, "hps"), gpus)
    model = _deployed_model(source, deployed_config)
    with _staged(repo, name) as stage:
        folder = stage / name
        (folder / "1").mkdir(parents=True)
        for file_name, text in files.items():
            (folder / file_name).write_text(text)
        _write_hps(folder / "hps", source, model, deployed, tables)
        (stage / "start_triton.sh").write_text(triton.start_triton_sh(root, options.plugin_lib))
        for script in (folder / "build_engine.sh", stage / "start_triton.sh"):
            script.chmod(0o755)
    built = None
    if options.build_engine:
        built = build_engine(repo / name / "hps", repo / name / "1" / triton.PLAN_NAME, EngineOptions(fp16=options.fp16),
                             batch.min, batch.opt, batch.max, force=True, progress=progress)
    return DeployResult(repo=repo, model_dir=repo / name, name=name, batch=batch, engine=built)


def _check_engine_build(repo: Path, root: str, deployed_config: str, fp16: bool) -> None:
    """--build-engine builds here what Triton will load there: the same paths, and TensorRT itself."""
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


def _model_name(name: str | None, source: RewriteFolder) -> str:
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.entries[0]["model"]).lstrip(".") or "model"
    if len(name) > _NAME_LIMIT:
        raise SurgeonError(f"--name '{name[:40]}...': {len(name)} characters; a Triton model name is a folder name "
                           f"and deploy stages it under a longer one — at most {_NAME_LIMIT}")
    if not _TRITON_NAME.match(name):
        raise SurgeonError(f"--name '{name}': a Triton model name is a folder name of letters, digits, '_', '.' "
                           "and '-', not starting with '.' or '-' — choose another --name")
    return name


def _deploy_root(root: str) -> str:
    if not root.startswith("/"):
        raise SurgeonError(f"--deploy-root '{root}': must be an absolute path inside the serving container — "
                           "e.g. --deploy-root /models")
    return posixpath.normpath(root)


def _check_repo(repo: Path, name: str, force: bool, source: Path) -> None:
    try:
        if repo.exists() and not repo.is_dir():
            raise SurgeonError(f"--repo {repo}: exists and is not a folder — choose another --repo")
        present = sorted(p.name for p in repo.iterdir()) if repo.is_dir() else []
    except OSError as exc:
        raise SurgeonError(f"--repo {repo}: cannot use it ({exc.strerror}) — choose another --repo") from None
    if present and not force:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise SurgeonError(f"--repo {repo}: folder is not empty (has {shown}) — pass --force to replace "
                           f"model '{name}' and start_triton.sh in it, or choose an empty --repo")
    if Path(os.path.realpath(source)).is_relative_to(Path(os.path.realpath(repo / name))):
        raise SurgeonError(f"--repo {repo}: model folder '{name}' holds the rewrite folder {source}, which deploy "
                           "would replace — choose another --repo or --name")


# --- the deployed copies -------------------------------------------------------------------------

def _table_folders(source: RewriteFolder) -> dict[tuple[str, int], tuple[tuple[Path, Path], str]]:
    """(model, table index) -> ((key, emb_vector) real paths, folder relative to hps/), folder names made unique."""
    config_path = source.path / CONFIG_NAME
    folders: dict[tuple[str, int], tuple[tuple[Path, Path], str]] = {}
    taken: dict[str, Path] = {}
    for entry in source.config["models"]:
        for index in range(len(entry["sparse_files"])):
            folder = hps_config.table_folder(config_path, entry, index)  # confined to the rewrite folder
            files = table_files(config_path, folder, f"model '{entry['model']}' sparse_files[{index}]")
            base = f"{TABLES_DIR}/{_safe_name(folder.name)}"
            rel, n = base, 1
            while rel in taken and taken[rel] != folder:
                rel, n = f"{base}_{n}", n + 1
            taken[rel] = folder
            folders[(entry["model"], index)] = (files, rel)
    return folders


def _safe_name(name: str) -> str:
    """A folder name that stays one path component inside hps/tables/ and in the deployed config."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") or "table"


def serving_gpus(options: DeployOptions, source: RewriteFolder) -> tuple[int, ...]:
    """The GPUs Triton's instances run on, which must be the config's deployed_device_list: HugeCTR
    skips lookups on any other GPU and returns success (plugin/lookup_manager.cpp:168-172).
    --gpus decides both; without it, the deployed_device_list of the models the nodes use."""
    if options.gpus:
        return options.gpus
    return tuple(sorted({d for entry in source.entries for d in entry["deployed_device_list"]}))


def _deployed_hps_config(source: RewriteFolder, tables: dict, hps_dir: str, gpus: tuple[int, ...]) -> dict:
    # HugeCTR opens sparse_files relative to the server's working directory, not to the config:
    # absolute paths under --deploy-root are the ones valid inside the container.
    config = json.loads(json.dumps(source.config))
    for entry in config["models"]:
        entry["sparse_files"] = [posixpath.join(hps_dir, tables[(entry["model"], i)][1])
                                 for i in range(len(entry["sparse_files"]))]
        for file in entry["sparse_files"]:
            if not confine.inside_posix(hps_dir, file):  # by construction; the rule deploy promises
                raise SurgeonError(f"deployed sparse_files entry {file} is outside {hps_dir}; please report this")
        entry["deployed_device_list"] = list(gpus)
    return config


def _deployed_model(source: RewriteFolder, deployed_config: str) -> onnx.ModelProto:
    """A copy whose HPS_TRT nodes open the deployed config (NUL kept where rewrite put one) and whose
    external data names the copies deploy makes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(source.model)
    _relocate_external(copy, source)
    for node in validate.hps_nodes(copy):
        for attr in node.attribute:
            if attr.name == "ps_config_file" and attr.type == AttributeProto.STRING:
                nul = "\0" if attr.s.endswith(b"\0") else ""
                attr.s = (deployed_config + nul).encode()
    return copy


def _write_hps(folder: Path, source: RewriteFolder, model: onnx.ModelProto, config: dict, tables: dict) -> None:
    folder.mkdir()
    onnx.save_model(model, str(folder / MODEL_NAME))
    for rel, real in source.external.items():
        # copied, never linked: onnx.load refuses external data with more than one hard link
        _link_or_copy(real, folder / rel, folder, link=False)
    for rel, files in {rel: files for files, rel in tables.values()}.items():
        for real, name in zip(files, (KEY_FILE, VECTOR_FILE)):
            _link_or_copy(real, folder / rel / name, folder)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def _relocate_external(model: onnx.ModelProto, source: RewriteFolder) -> None:
    """Point the deployed copy's external data at the copies: each file's path relative to the model."""
    model_path = source.path / MODEL_NAME
    root = Path(os.path.realpath(source.path))
    for tensor in external_tensors(model.graph):
        real = wellformed.external_range(tensor, model_path, f"tensor '{tensor.name}'").file
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = real.relative_to(root).as_posix()


def _link_or_copy(src: Path, dst: Path, within: Path, link: bool = True) -> None:
    """Hard link (no copy of large tables) when on the same filesystem, else a copy; only inside `within`."""
    if not Path(os.path.abspath(dst)).is_relative_to(Path(os.path.abspath(within))):
        raise SurgeonError(f"deploy would write {dst}, outside {within}; please report this")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not link:
            raise OSError("copy asked for")
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _staged(repo: Path, name: str) -> Iterator[Path]:
    """A folder inside `repo` to write into; on success NAME/ and start_triton.sh move into place.

    Nothing is created outside `repo` (bar the folders leading to it, removed again on failure).
    """
    created = _make_folders(repo)
    stage = None
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.deploy-", dir=repo))
        stage.chmod(0o755)  # mkdtemp makes 0700; Triton may run as another user
        yield stage
        _move_into_place(stage, repo, name)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SurgeonError(f"--repo {repo}: cannot write the repository: {exc.strerror}{where}; nothing was "
                           "changed — free space or choose a writable --repo") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if not os.path.lexists(repo / name):  # failed: remove the folders this run created
            for made in reversed(created):
                with contextlib.suppress(OSError):
                    made.rmdir()


def _make_folders(repo: Path) -> list[Path]:
    """Create `repo` and missing parents; the folders created, outermost first."""
    missing = []
    for folder in (repo, *repo.parents):
        if folder.exists():
            break
        missing.append(folder)
    missing.reverse()
    try:
        for folder in missing:
            folder.mkdir()
    except OSError as exc:
        for made in reversed(missing):
            with contextlib.suppress(OSError):
                made.rmdir()
        raise SurgeonError(f"--repo {repo}: cannot write there ({exc.strerror}) — choose a writable --repo") from None
    return missing


def _move_into_place(stage: Path, repo: Path, name: str) -> None:
    target, old = repo / name, stage / ".replaced"
    replaced = os.path.lexists(target)
    if replaced:
        os.rename(target, old)
    try:
        os.rename(stage / name, target)
        try:
            os.replace(stage / "start_triton.sh", repo / "start_triton.sh")
        except OSError:
            os.rename(target, stage / name)
            raise
    except OSError:
        if replaced:  # put the previous model back
            os.rename(old, target)
        raise
