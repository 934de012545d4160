"""A serialized engine from a rewritten model, built by a real NVIDIA builder with our HPS_TRT plugin.

    REWRITE_DIR --(rewrite_folder: checked folder, the profile deploy derives)--> model.onnx + Profile
    model.onnx + Profile  --(builders.find_builder: TensorRT or TensorRT-RTX)-->  EngineBuild
      1. the plugin library goes into the builder's plugin registry (IPluginRegistry::loadLibrary)
      2. TensorRT's ONNX parser creates one plugin layer per HPS_TRT node (our createPlugin, build phase)
      3. the builder optimizes for the profile and serializes (our build-time methods)

Every failure the parser or builder reports becomes a `Problem` naming the node, with the message
our plugin logged for that node when there is one (it says what to fix). The plugin logs each
build-time method a builder calls at verbose level; those lines are counted in `plugin_calls`.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import Problem, SurgeonError
from ..hps import config as hps_config
from ..hps import validate
from ..hps.contract import CONFIG_NAME, MODEL_NAME
from ..outputs import output_file
from ..staging import replace_file
from . import triton
from .builders import NvidiaBuilder, find_builder
from .rewrite_folder import RewriteFolder, batch_range, read_rewrite, used_entries

#: What our plugin writes before each message (trt_plugin.cpp: log).
PLUGIN_PREFIX = "HPS_TRT: "


@dataclass(frozen=True)
class EngineOptions:
    compute_capabilities: tuple[str, ...] = ()  #: e.g. ("8.6", "8.9"); TensorRT-RTX only (default: all it knows)
    fp16: bool = False  #: TensorRT's FP16 flag, where the builder has one
    plugin_lib: str | None = None  #: default: the library `hps_surgeon.native` finds


@dataclass(frozen=True)
class EngineBuild:
    """What one build did; `plan` is None when a problem stopped it."""

    builder: str  #: e.g. "TensorRT-RTX 1.7.1.116 (tensorrt_rtx)"
    targets: str  #: the compute capabilities built for, in words
    plugin_lib: Path
    hps_nodes: int  #: HPS_TRT nodes in the ONNX graph
    plugin_layers: int  #: plugin layers the parser made
    problems: tuple[Problem, ...]
    plan: bytes | None
    seconds: float  #: parse + build
    profile: triton.Profile
    plugin_calls: dict[str, int] = field(default_factory=dict)  #: our build-time methods the builder called

    @property
    def ok(self) -> bool:
        return self.plan is not None and not self.problems


def build_serialized(model_path: str | Path, profile: triton.Profile, options: EngineOptions = EngineOptions(),
                     progress: Callable[[str], None] | None = None) -> EngineBuild:
    """Parse `model_path` with the plugin loaded and build an engine for `profile`.

    Raises SurgeonError for what is not the model's fault (no builder, no plugin library, bad
    options); returns the model's problems in `EngineBuild.problems`.
    """
    model_path = Path(model_path)
    nvidia, lib = ready(options)
    hps_nodes = len(validate.hps_nodes(onnx.load_model(str(model_path), load_external_data=False)))
    trt = nvidia.trt
    logger = _logger(trt)
    started = time.monotonic()
    try:
        builder = trt.Builder(logger)
    except Exception:  # pybind11 raises when TensorRT hands back no builder
        builder = None
    if builder is None:
        raise SurgeonError(f"{nvidia.title} could not start a builder ({logger.last_error() or 'no reason given'}) — "
                           "TensorRT builds on a GPU; without one, build with TensorRT-RTX")
    if not builder.get_plugin_registry().load_library(str(lib)):
        raise SurgeonError(f"{lib}: the {nvidia.name} plugin registry refused the library "
                           f"({logger.last_error() or 'no reason given'}) — rebuild it against this builder's headers")
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(model_path))
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_layers = sum(layer.type == trt.LayerType.PLUGIN_V3 for layer in layers)
    problems = [_parser_problem(model_path, parser.get_error(i), logger) for i in range(parser.num_errors)]
    if parsed and plugin_layers != hps_nodes:
        problems.append(Problem(str(model_path), "(graph)", f"{hps_nodes} HPS_TRT node(s) but the parser made "
                                f"{plugin_layers} plugin layer(s) — another plugin library took over HPS_TRT?"))
    plan = None
    targets = _targets(nvidia, options)
    if parsed and not problems:
        config = _config(nvidia, builder, profile, options)
        monitor = _progress_monitor(trt, progress) if progress else None  # alive for the whole build
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            problems.append(Problem(str(model_path), "(build)", f"{nvidia.title} could not build the engine: "
                                    f"{logger.last_error() or 'no reason given'}"))
        else:
            plan = bytes(serialized)
    return EngineBuild(builder=nvidia.title, targets=targets, plugin_lib=lib, hps_nodes=hps_nodes,
                       plugin_layers=plugin_layers, problems=tuple(problems), plan=plan,
                       seconds=time.monotonic() - started, profile=profile, plugin_calls=logger.plugin_calls())


def build_engine(rewrite_dir: str | os.PathLike, out: str | os.PathLike, options: EngineOptions = EngineOptions(),
                 min_batch: int = 1, opt_batch: int | None = None, max_batch: int | None = None,
                 force: bool = False, progress: Callable[[str], None] | None = None) -> EngineBuild:
    """Build `out` (a serialized engine) from a `rewrite` folder with the profile `deploy` derives.

    Nothing is written unless the build succeeds; SurgeonError for bad input.
    """
    source = read_rewrite(Path(rewrite_dir))
    batch = batch_range(source, min_batch, opt_batch, max_batch)
    where = str(source.path / MODEL_NAME)
    prof = triton.profile(triton.model_io(source.model, where)[0], batch, where)
    out = Path(out)
    if out.is_dir() or (out.exists() and not force):
        raise SurgeonError(f"--out {out}: {'is a folder' if out.is_dir() else 'exists'} — "
                           f"{'name the engine file' if out.is_dir() else 'pass --force to replace it'}")
    out = output_file(out, "--out", [source.path / MODEL_NAME, source.path / CONFIG_NAME, *source.external.values()])
    build = build_serialized(source.path / MODEL_NAME, prof, options, progress)
    if build.ok:
        replace_file(out, build.plan, f"--out {out}: cannot write there ({{reason}}) — choose a writable --out")
    return build


def check_engine(model_path: Path, config_path: Path, options: EngineOptions = EngineOptions()) -> list[Problem]:
    """`check --engine`: parse and build `model_path` with the profile `deploy` would give it; its problems."""
    model = onnx.load_model(str(model_path), load_external_data=False)
    config, _ = hps_config.load(Path(config_path))  # HugeCTR's defaults filled in
    if config is None:
        return []  # an unusable config: `check` reports why through validate
    # only for the batch range: nothing is copied, so its external-data files are not listed
    folder = RewriteFolder(model_path.parent, model, config, used_entries(model, config), external={})
    try:
        batch = batch_range(folder)
        prof = triton.profile(triton.model_io(model, str(model_path))[0], batch, str(model_path))
    except SurgeonError as exc:
        return [Problem(str(model_path), "(engine)", str(exc))]
    return list(build_serialized(model_path, prof, options).problems)


def ready(options: EngineOptions = EngineOptions()) -> tuple[NvidiaBuilder, Path]:
    """The builder and plugin library a build would use, with `options` checked against the builder."""
    nvidia = find_builder()
    _check_options(nvidia, options)
    return nvidia, plugin_library(options.plugin_lib)


def plugin_library(path: str | None) -> Path:
    """The plugin library to load, checked to carry the TensorRT glue (its getCreators entry point)."""
    from ..hps.native import library_path  # the search order `verify --backend native` documents

    lib = Path(path) if path else library_path()[0]
    if not lib.is_file():
        raise SurgeonError(f"{lib}: plugin library not found — build it (hps-surgeon build-native --tensorrt-root "
                           "<TensorRT>) or pass --plugin-lib")
    try:
        loaded = ctypes.CDLL(str(lib))
    except OSError as exc:
        raise SurgeonError(f"{lib}: cannot load the plugin library ({exc}) — rebuild it or pass another "
                           "--plugin-lib") from None
    if not hasattr(loaded, "getCreators"):
        raise SurgeonError(f"{lib}: built without the TensorRT glue (no getCreators) — rebuild it with "
                           "hps-surgeon build-native --tensorrt-root <folder with include/NvInfer.h>")
    return lib


def _targets(nvidia: NvidiaBuilder, options: EngineOptions) -> str:
    if options.compute_capabilities:
        return "compute capability " + ", ".join(options.compute_capabilities)
    return "every compute capability it supports" if nvidia.rtx else "the GPU of this machine"


def _check_options(nvidia: NvidiaBuilder, options: EngineOptions) -> None:
    """Options the builder cannot honour, refused before anything is parsed."""
    if options.compute_capabilities and not nvidia.rtx:
        raise SurgeonError(f"--compute-capability: {nvidia.title} builds for the GPU it runs on; leave it out "
                           "or build with TensorRT-RTX")
    for value in options.compute_capabilities:
        _compute_capability(nvidia.trt, value)
    if options.fp16 and getattr(nvidia.trt.BuilderFlag, "FP16", None) is None:
        raise SurgeonError(f"--fp16: {nvidia.title} builds strongly typed networks, so precision comes from the "
                           "model's own types — export the model in fp16 instead, or leave out --fp16")


def _config(nvidia: NvidiaBuilder, builder, profile: triton.Profile, options: EngineOptions):
    trt = nvidia.trt
    config = builder.create_builder_config()
    if options.compute_capabilities:
        config.num_compute_capabilities = len(options.compute_capabilities)
        for index, value in enumerate(options.compute_capabilities):
            config.set_compute_capability(_compute_capability(trt, value), index)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for name, (low, mid, high) in profile.shapes.items():
        opt.set_shape(name, low, mid, high)
    config.add_optimization_profile(opt)
    return config


def _compute_capability(trt, text: str):
    known = {f"{m.value // 10}.{m.value % 10}": m for name, m in trt.ComputeCapability.__members__.items()
             if name.startswith("SM")}
    if text not in known:
        raise SurgeonError(f"--compute-capability {text}: this builder targets {', '.join(known)} — pick from those")
    return known[text]


def _parser_problem(model_path: Path, error, logger) -> Problem:
    node = error.node_name() or f"node #{error.node()}"
    said = logger.plugin_errors(node)
    message = said[-1] if said else error.desc()
    return Problem(str(model_path), node, f"{message} ({error.node_operator() or 'no op'}; {error.code().name})")


def _logger(trt):
    """A TensorRT logger that keeps every message; the plugin's own lines are read back per node."""
    error = int(trt.ILogger.Severity.ERROR)

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[tuple[int, str]] = []

        def log(self, severity, message) -> None:
            self.messages.append((int(severity), message))

        def last_error(self) -> str:
            errors = [m for s, m in self.messages if s <= error]
            return errors[-1] if errors else ""

        def plugin_errors(self, node: str) -> list[str]:
            prefix = f"{PLUGIN_PREFIX}node '{node}': "
            return [m.removeprefix(prefix) for s, m in self.messages if s <= error and m.startswith(prefix)]

        def plugin_calls(self) -> dict[str, int]:
            calls = Counter(m.rsplit(": ", 1)[-1] for _, m in self.messages if m.startswith(f"{PLUGIN_PREFIX}node '"))
            return {method: n for method, n in calls.items() if method.isidentifier()}

    return Logger()


def _progress_monitor(trt, progress: Callable[[str], None]):
    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            super().__init__()
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            self.steps[phase_name] = num_steps
            progress(f"{phase_name} (0/{num_steps})")

        def step_complete(self, phase_name, step) -> bool:
            progress(f"{phase_name} ({step + 1}/{self.steps.get(phase_name, '?')})")
            return True

        def phase_finish(self, phase_name) -> None:
            self.steps.pop(phase_name, None)

    return Monitor()
