"""`polygraphy run --hps`: HpsRunner inside Polygraphy's own CLI.

Registered through Polygraphy's extension entry point `polygraphy.run.plugins` (pyproject.toml);
`polygraphy run` calls `argument_groups()` and adds the groups to its parser. onnxruntime cannot
run HPS_TRT, so `--onnxrt` on a rewritten model fails; compare against the original model with
`--hps-original ORIGINAL.onnx` (an onnxruntime runner on it), or against outputs saved by
`polygraphy run ORIGINAL.onnx --onnxrt --save-outputs` with `--load-outputs`.

Unless the user chooses the data (`--load-inputs`, `--data-loader-script`, `--val-range`,
`--input-shapes`), the feeds come from `HpsDataLoader`: the same traced keys as `hps-surgeon verify`
(`--hps-batch-sizes`, `--hps-max-keys-per-sample`; static dims kept). HpsRunner reports the keys
each table saw, and below `--hps-min-distinct-keys` ends the run as INCONCLUSIVE instead of letting
it pass. Bad input is one line, `hps-surgeon: error: ...`, exit 2, before anything runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import MethodType

from polygraphy.tools.args import DataLoaderArgs, ModelArgs
from polygraphy.tools.args.base import BaseRunnerArgs
from polygraphy.tools.script import make_invocable

from ..errors import EXIT_INPUT, SurgeonError, one_line
from .coverage import MIN_DISTINCT_KEYS
from .runner import BACKENDS, HpsRunner

DEFAULT_ITERATIONS = 2


class HpsRunnerArgs(BaseRunnerArgs):
    """
    HPS: run HPS_TRT nodes with hps-surgeon's lookup backends and the rest with ONNX-Runtime.

    Depends on:

        - ModelArgs
        - DataLoaderArgs
    """

    def get_name_opt_impl(self):
        return "HPS", "hps"

    def add_parser_args_impl(self):
        self.group.add_argument("--hps-config", help="hps_config.json of the rewritten model", default=None)
        self.group.add_argument("--hps-backend", choices=BACKENDS, default="reference",
                                help="who serves HPS_TRT lookups: the CPU reference or the CUDA plugin library")
        self.group.add_argument("--hps-original", default=None,
                                help="also run ONNX-Runtime on this original (pre-rewrite) model, to compare with")
        self.group.add_argument("--hps-batch-sizes", default="1,64",
                                help="batch sizes of the generated feeds, e.g. 1,64 (inputs with static dims keep "
                                     "them); used unless --load-inputs, --data-loader-script, --val-range or "
                                     "--input-shapes choose the data")
        self.group.add_argument("--hps-max-keys-per-sample", type=int, default=None,
                                help="size of open dims past the batch; default: the config's largest "
                                     "maxnum_catfeature_query_per_table_per_sample")
        self.group.add_argument("--hps-min-distinct-keys", type=int, default=MIN_DISTINCT_KEYS,
                                help="floor of distinct existing keys per table (or all its rows when fewer); "
                                     "below it the run ends INCONCLUSIVE")

    def parse_impl(self, args):
        self.config = args.hps_config
        self.backend = args.hps_backend
        self.original = args.hps_original
        self.batch_sizes = args.hps_batch_sizes
        self.max_keys_per_sample = args.hps_max_keys_per_sample
        self.min_distinct_keys = args.hps_min_distinct_keys

    def add_to_script_impl(self, script):
        model = self.arg_groups[ModelArgs].path
        try:
            batch_sizes = self._checked(model)
        except SurgeonError as exc:
            # Polygraphy would print a traceback for anything but its own exception: one line, as our CLI does.
            print(f"hps-surgeon: error: {one_line(str(exc))}", file=sys.stderr)
            sys.exit(EXIT_INPUT)
        if self.original:
            script.add_import(imports=["OriginalRunner"], frm="hps_surgeon.verify.runner")
            script.add_import(imports=["SessionFromOnnx"], frm="polygraphy.backend.onnxrt")
            session = script.add_loader(make_invocable("SessionFromOnnx", self.original), "build_original_session")
            script.add_runner(make_invocable("OriginalRunner", session, name="onnxrt-original"))
        script.add_import(imports=[HpsRunner.__name__], frm=HpsRunner.__module__)
        script.add_runner(make_invocable(HpsRunner.__name__, model, self.config, backend=self.backend,
                                         name=f"hps-{self.backend}", min_distinct_keys=self.min_distinct_keys))
        self._draw_keys_from_tables(model, batch_sizes)

    def _checked(self, model: str | None) -> tuple[int, ...]:
        """Everything `--hps` needs, checked before Polygraphy runs anything."""
        from ..hps.validate import validate
        from ..load import read_proto
        from .split import lookup_backend

        if not self.config:
            raise SurgeonError("--hps needs --hps-config hps_config.json (written by hps-surgeon rewrite)")
        for path in (model, self.config, self.original):
            if path and not Path(path).is_file():
                raise SurgeonError(f"{path}: no such file")
        for path in (model, self.original):
            if path:
                read_proto(Path(path))
        problems = [p for p in validate(Path(model), Path(self.config)) if p.severity == "error"]
        if problems:
            raise SurgeonError(str(problems[0]))
        if self.max_keys_per_sample is not None and self.max_keys_per_sample < 1:
            raise SurgeonError(f"--hps-max-keys-per-sample {self.max_keys_per_sample}: must be at least 1")
        try:
            batch_sizes = tuple(int(b) for b in self.batch_sizes.split(",") if b.strip())
        except ValueError:
            batch_sizes = ()
        if not batch_sizes or min(batch_sizes) < 1:
            raise SurgeonError(f"--hps-batch-sizes {self.batch_sizes}: expected positive integers such as 1,64")
        lookup_backend(self.config, self.backend)  # a missing plugin library is reported here, not mid-run
        return batch_sizes

    def _draw_keys_from_tables(self, model: str, batch_sizes: tuple[int, ...]) -> None:
        """Make Polygraphy's data loader HpsDataLoader, unless the user chose the data."""
        data = self.arg_groups[DataLoaderArgs]
        if not data.is_using_random_data() or data.val_range or self.arg_groups[ModelArgs].input_shapes:
            return
        settings = dict(batch_sizes=batch_sizes, iterations=data.iterations or DEFAULT_ITERATIONS,
                        max_keys_per_sample=self.max_keys_per_sample, min_distinct_keys=self.min_distinct_keys,
                        seed=data.seed if data.seed is not None else 1)

        def add_to_script_impl(_, script, user_input_metadata_str=None):
            script.add_import(imports=[HpsDataLoader.__name__], frm=HpsDataLoader.__module__)
            return script.set_data_loader(make_invocable(HpsDataLoader.__name__, model, self.config, **settings))

        # Polygraphy asks its DataLoaderArgs group for the data loader; no other hook chooses it.
        data.add_to_script_impl = MethodType(add_to_script_impl, data)


class HpsDataLoader:
    """Polygraphy data loader (a sequence of feeds) with keys traced from a rewritten model's tables.

    The feeds `hps-surgeon verify` generates, built on first use.
    """

    def __init__(self, model: str, config: str, batch_sizes=(1, 64), iterations: int = DEFAULT_ITERATIONS,
                 max_keys_per_sample: int | None = None, min_distinct_keys: int = MIN_DISTINCT_KEYS, seed: int = 1):
        self.model, self.config = Path(model), Path(config)
        self.batch_sizes, self.iterations, self.seed = tuple(batch_sizes), iterations, seed
        self.max_keys_per_sample, self.min_distinct_keys = max_keys_per_sample, min_distinct_keys
        self._feeds = None

    def _load(self) -> list:
        if self._feeds is None:
            import onnx

            from . import coverage, feeds
            from .split import SplitRunner

            proto = onnx.load_model(str(self.model))
            specs = feeds.InputSpecs.of(proto, self.config, self.max_keys_per_sample)
            split = SplitRunner(proto, None)
            floors = {n: coverage.floor(k.size, self.min_distinct_keys)
                      for n, k in feeds.node_tables(split, self.config).items()}
            generated = feeds.generate(proto, self.config, specs, self.batch_sizes, self.iterations, self.seed,
                                       floors, split)
            self._feeds = [f for batch in generated.by_batch.values() for f in batch]
        return self._feeds

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, index: int):
        return self._load()[index]

    def __iter__(self):
        return iter(self._load())


def argument_groups():
    """Entry point for `polygraphy.run.plugins`."""
    return [HpsRunnerArgs()]
