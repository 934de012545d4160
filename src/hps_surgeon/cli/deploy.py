"""`hps-surgeon deploy REWRITE_DIR --repo REPO`: a Triton model repository from a rewrite folder."""

from __future__ import annotations

import argparse
import posixpath

from ..deploy import DEFAULT_PLUGIN_LIB, DeployOptions, deploy
from ..deploy.triton import PLAN_NAME
from ..errors import EXIT_OK, SurgeonError
from . import _options, build_engine


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("deploy", help="make a Triton model repository (TensorRT engine recipe, HPS "
                            "plugin) from a rewrite folder")
    p.add_argument("rewrite_dir", metavar="REWRITE_DIR", help="output folder of hps-surgeon rewrite")
    p.add_argument("--repo", required=True, help="Triton model repository to write (empty or absent; see --force)")
    p.add_argument("--name", help="Triton model name (default: the HPS model_name)")
    _options.add_batch(p)
    p.add_argument("--fp16", action="store_true", help="let TensorRT use FP16 kernels")
    p.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1)")
    p.add_argument("--gpus", help="comma-separated GPU ids for Triton's instances and the HPS config's deployed_device_list "
                        "(default: the config's deployed_device_list)")
    p.add_argument("--deploy-root", default="/models",
                   help="where --repo is mounted inside the serving container (default /models)")
    p.add_argument("--plugin-lib", default=DEFAULT_PLUGIN_LIB,
                   help=f"libhps_plugin.so inside the container (default {DEFAULT_PLUGIN_LIB})")
    p.add_argument("--build-engine", action="store_true",
                   help="also build NAME/1/model.plan here with TensorRT (the repository must be at --deploy-root)")
    _options.add_allow_path(p)
    _options.add_force(p, "write into a non-empty repository, replacing model NAME and start_triton.sh")
    return p


def run(args: argparse.Namespace) -> int:
    options = DeployOptions(
        name=args.name, min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        fp16=args.fp16, instances=args.instances, gpus=_parse_gpus(args.gpus), deploy_root=args.deploy_root,
        plugin_lib=args.plugin_lib, force=args.force, build_engine=args.build_engine)
    progress = _options.progress_line() if args.build_engine else None
    result = deploy(args.rewrite_dir, args.repo, options, progress=progress)
    batch = result.batch
    print(f"deployed '{result.name}' -> {result.model_dir} (batch {batch.min}..{batch.max}, opt {batch.opt})")
    print(f"  1. inside the container, with {result.repo} mounted at {options.deploy_root}:")
    print(f"       {posixpath.join(options.deploy_root, result.name, 'build_engine.sh')}")
    print(f"  2.   {posixpath.join(options.deploy_root, 'start_triton.sh')}")
    print(f"  measure: perf_analyzer -m {result.name} --input-data "
          f"{posixpath.join(options.deploy_root, result.name, 'perf_data.json')}")
    if result.engine is None:
        return EXIT_OK
    progress.done()
    return build_engine.report(result.engine, str(result.model_dir / "1" / PLAN_NAME))


def _parse_gpus(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SurgeonError(f"--gpus '{text}': not a comma-separated list of GPU ids — e.g. --gpus 0,1") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise SurgeonError(f"--gpus '{text}': ids must be distinct and >= 0 — e.g. --gpus 0,1")
    return gpus
