"""`polygraphy run --hps`: HpsRunner inside Polygraphy's own CLI.

Registered through Polygraphy's extension entry point `polygraphy.run.plugins` (pyproject.toml);
`polygraphy run` calls `argument_groups()` and adds the groups to its parser. onnxruntime cannot
run HPS_TRT, so `--onnxrt` on a rewritten model fails; compare against the original model with
`--hps-original ORIGINAL.onnx` (an onnxruntime runner on it), or against outputs saved by
`polygraphy run ORIGINAL.onnx --onnxrt --save-outputs` with `--load-outputs`.
"""

from __future__ import annotations

from polygraphy.tools.args import ModelArgs
from polygraphy.tools.args.base import BaseRunnerArgs
from polygraphy.tools.script import make_invocable

from .runner import BACKENDS, HpsRunner


class HpsRunnerArgs(BaseRunnerArgs):
    """
    HPS: run HPS_TRT nodes with hps-surgeon's lookup backends and the rest with ONNX-Runtime.

    Depends on:

        - ModelArgs
    """

    def get_name_opt_impl(self):
        return "HPS", "hps"

    def add_parser_args_impl(self):
        self.group.add_argument("--hps-config", help="hps_config.json of the rewritten model", default=None)
        self.group.add_argument("--hps-backend", choices=BACKENDS, default="reference",
                                help="who serves HPS_TRT lookups: the CPU reference or the CUDA plugin library")
        self.group.add_argument("--hps-original", default=None,
                                help="also run ONNX-Runtime on this original (pre-rewrite) model, to compare with")

    def parse_impl(self, args):
        self.config = args.hps_config
        self.backend = args.hps_backend
        self.original = args.hps_original

    def add_to_script_impl(self, script):
        if not self.config:
            from polygraphy.logger import G_LOGGER

            G_LOGGER.critical("--hps needs --hps-config hps_config.json (written by hps-surgeon rewrite)")
        if self.original:
            script.add_import(imports=["OnnxrtRunner", "SessionFromOnnx"], frm="polygraphy.backend.onnxrt")
            session = script.add_loader(make_invocable("SessionFromOnnx", self.original), "build_original_session")
            script.add_runner(make_invocable("OnnxrtRunner", session, name="onnxrt-original"))
        script.add_import(imports=[HpsRunner.__name__], frm=HpsRunner.__module__)
        script.add_runner(make_invocable(HpsRunner.__name__, self.arg_groups[ModelArgs].path, self.config,
                                         backend=self.backend))


def argument_groups():
    """Entry point for `polygraphy.run.plugins`."""
    return [HpsRunnerArgs()]
