"""Stage 6: prove with Polygraphy that the rewritten model computes what the original computes.

Two runners go through Polygraphy's `Comparator`: its onnxruntime runner on the original model,
and `HpsRunner` on the rewritten model (HPS_TRT nodes served by a lookup backend, the rest by
onnxruntime). The feeds are the user's samples (`--inputs`, `--data-loader-script`) or generated
(`feeds`: Polygraphy's `DataLoader`, with every traced key column drawn from keys that exist in the
tables). The verdict needs both: outputs equal within tolerance (NaN where both have NaN counts as
equal, NaN in one only as a mismatch), and enough distinct keys reaching every table (`coverage`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import SurgeonError, errors
from ..hps import config as hps_config
from ..hps import validate
from ..hps.contract import HPS_OP
from ..load import foreign_ops, read_proto
from . import coverage as coverage_mod
from . import feeds as feeds_mod
from . import lookups as lookups_mod
from .coverage import MIN_DISTINCT_KEYS, NodeCoverage, TableCoverage
from .keyspace import ColumnKeys
from .lookups import LookupCheck, LookupSource
from .split import BACKENDS, SplitRunner, lookup_backend

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
DEFAULT_BATCH_SIZES = (1, 64)


@dataclass(frozen=True)
class OutputError:
    """The largest differences seen on one output over every feed."""

    name: str
    max_abs: float
    max_rel: float
    nan_original_only: int = 0  #: positions where only the original's output is NaN
    nan_rewritten_only: int = 0  #: positions where only the rewritten model's output is NaN
    shape_mismatch: bool = False

    @property
    def nan_mismatches(self) -> int:
        return self.nan_original_only + self.nan_rewritten_only


@dataclass(frozen=True)
class VerifyReport:
    verdict: str  #: passed, failed (outputs differ) or inconclusive (too few keys reached a table)
    iterations: int  #: feeds compared
    batch_sizes: tuple[int, ...]  #: batch sizes the feeds had
    outputs: tuple[OutputError, ...]
    coverage: tuple[NodeCoverage, ...]  #: keys that reached each HPS_TRT node
    tables: tuple[TableCoverage, ...]  #: keys that reached each table, against the floor
    columns: tuple[ColumnKeys, ...]  #: key columns traced (generated feeds only)
    untraced: tuple[str, ...]  #: HPS_TRT nodes key tracing could not reach (generated feeds only)
    inputs: str  #: where the feeds came from: generated, --inputs FILE, --data-loader-script S
    notes: tuple[str, ...]  #: batch sizes dropped and why, and the like
    atol: float
    rtol: float
    failure: str = ""  #: why the rewritten model failed to run, when it did
    shapes: dict[str, list[list[int]]] = field(default_factory=dict)  #: the shapes each input was fed at
    lookups: tuple[LookupCheck, ...] = ()  #: each HPS_TRT node against the original lookup it replaced
    outputs_match: bool = False  #: the model outputs agree within atol/rtol (whatever the lookups say)

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    @property
    def worst(self) -> OutputError | None:
        return max(self.outputs, key=lambda o: (o.shape_mismatch, o.nan_mismatches > 0, o.max_abs), default=None)

    @property
    def wrong_lookups(self) -> tuple[LookupCheck, ...]:
        return tuple(c for c in self.lookups if c.failed)

    @property
    def short_tables(self) -> tuple[TableCoverage, ...]:
        return tuple(t for t in self.tables if not t.enough)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict, "feeds": self.iterations, "batch_sizes": list(self.batch_sizes),
            "inputs": self.inputs, "atol": self.atol, "rtol": self.rtol, "failure": self.failure,
            "outputs": [vars(o) | {"nan_mismatches": o.nan_mismatches} for o in self.outputs],
            "coverage": [c.to_dict() for c in self.coverage], "tables": [t.to_dict() for t in self.tables],
            "key_columns": [c.to_dict() for c in self.columns], "untraced_nodes": list(self.untraced),
            "notes": list(self.notes), "shapes": self.shapes, "lookups": [c.to_dict() for c in self.lookups],
            "outputs_match": self.outputs_match,
        }


def verify(original: str | Path, rewritten: str | Path, config: str | Path, *, backend: str = "reference",
           iterations: int = 2, batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
           max_keys_per_sample: int | None = None, inputs: str | Path | None = None,
           data_loader_script: str | None = None, min_distinct_keys: int = MIN_DISTINCT_KEYS,
           table_floors: dict[str, int] | None = None, atol: float = 1e-6, rtol: float = 1e-5, seed: int = 1,
           verbose: bool = False) -> VerifyReport:
    """Compare the two models on the same feeds, each HPS_TRT node with the lookup it replaced, and
    measure the keys each table saw (`coverage`: `min_distinct_keys` and per-table `table_floors`).

    Raises SurgeonError (one line) on unusable input: a file that is missing or not the model it
    should be, samples that do not fit the model, an original that runs at none of the batch sizes.
    """
    original, rewritten, config = Path(original), Path(rewritten), Path(config)
    _check_options(iterations, batch_sizes, min_distinct_keys, table_floors, inputs, data_loader_script, backend)
    source, target = _read_pair(original, rewritten, config)
    floors = coverage_mod.Floors(min_distinct_keys, dict(table_floors or {}))
    floors.check_tables(sorted(set(coverage_mod.table_names(config).values())), config)
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # also silences the "'colored' module is not installed" warning
    with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL + 1):
        return _verify(source, target, original, rewritten, config, backend=backend, iterations=iterations,
                       batch_sizes=tuple(batch_sizes), max_keys_per_sample=max_keys_per_sample, inputs=inputs,
                       data_loader_script=data_loader_script, floors=floors, atol=atol, rtol=rtol, seed=seed)


@dataclass(frozen=True)
class _Feeds:
    """The feeds a comparison runs on, and what is known of them."""

    feeds: list
    batch_sizes: tuple[int, ...]
    source: str  #: generated, --inputs FILE, --data-loader-script S
    notes: tuple[str, ...] = ()
    columns: tuple[ColumnKeys, ...] = ()
    untraced: tuple[str, ...] = ()
    #: per traced node, the keys generated feeds could reach, and whether they are all it can reach
    reachable: dict[str, tuple[np.ndarray, bool]] | None = None


def _verify(source: onnx.ModelProto, target: onnx.ModelProto, original: Path, rewritten: Path, config: Path, *,
            backend: str, iterations: int, batch_sizes: tuple[int, ...], max_keys_per_sample: int | None,
            inputs, data_loader_script, floors: coverage_mod.Floors, atol: float, rtol: float,
            seed: int) -> VerifyReport:
    from polygraphy.comparator import Comparator

    specs = feeds_mod.InputSpecs.of(source, config, max_keys_per_sample)
    lookup_backend(config, backend)  # a missing plugin library fails here, before anything runs
    session, sources = _original_session(original, source, target)
    split = SplitRunner(rewritten, None)  # the path: external data resolves next to it
    tables = feeds_mod.node_tables(split, config)
    if inputs is not None or data_loader_script is not None:
        fed = _user_feeds(session, specs, inputs, data_loader_script)
    else:
        aims = {node: coverage_mod.floor(keys.size, floors.default) for node, keys in tables.items()}
        generated = feeds_mod.generate(target, config, specs, batch_sizes, iterations, seed, aims, split)
        fed = _runnable(session, original, generated, specs.batched)
    results, seen, failure = _run(session, original, rewritten, config, backend, fed.feeds)
    node_coverage, table_coverage = coverage_mod.measure(split.nodes, seen, tables, config, floors, fed.reachable,
                                                         split.fixed_keys)
    outputs, checks, verdict, matched = (), (), FAILED, False
    if not failure:
        results, checks = _check_lookups(results, sources, tables)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in Polygraphy's statistics
            matched = bool(Comparator.compare_accuracy(results, compare_func=nan_aware(atol, rtol)))
        outputs = output_errors(results[0][1], results[1][1])
        exact = matched and not any(c.failed for c in checks)
        verdict = FAILED if not exact else PASSED if all(t.enough for t in table_coverage) else INCONCLUSIVE
    return VerifyReport(verdict, len(fed.feeds), fed.batch_sizes, outputs, node_coverage, table_coverage, fed.columns,
                        fed.untraced, fed.source, fed.notes, atol, rtol, failure, _shapes(fed.feeds), checks,
                        outputs_match=matched)


def _check_lookups(results, sources: tuple[LookupSource, ...], tables: dict[str, np.ndarray]):
    """The results without the per-lookup extra outputs, and each HPS_TRT node checked against them."""
    from polygraphy.comparator import RunResults

    (name_a, run_a), (name_b, run_b) = results
    plain_a, expected = lookups_mod.split_results(run_a)
    plain_b, actual = lookups_mod.split_results(run_b)
    plain = RunResults()
    plain.append((name_a, plain_a))
    plain.append((name_b, plain_b))
    return plain, lookups_mod.check(sources, expected, actual, tables)


def _user_feeds(session, specs: feeds_mod.InputSpecs, inputs, data_loader_script) -> _Feeds:
    """The user's samples, each of which the original must run on."""
    where = f"--inputs {inputs}" if inputs is not None else f"--data-loader-script {data_loader_script}"
    feeds = (feeds_mod.load_inputs(inputs, specs) if inputs is not None
             else feeds_mod.load_script(data_loader_script, specs))
    for index, feed in enumerate(feeds):
        problem = _runs(session, feed)
        if problem:
            raise SurgeonError(f"{where}: feed {index}: the original model fails on it: {problem}")
    return _Feeds(feeds, tuple(dict.fromkeys(feeds_mod.feed_batch(f) for f in feeds)), where)


def _runnable(session, original: Path, generated: feeds_mod.GeneratedFeeds, batched: bool) -> _Feeds:
    """The generated feeds at the batch sizes the original runs at (the others dropped, with a note)."""
    feeds, used, failures, notes = [], [], [], []
    for batch, batch_feeds in generated.by_batch.items():
        problem = _runs(session, batch_feeds[0])
        if problem:
            failures.append(f"batch {batch}: {problem}")
            notes.append(f"batch size {batch} skipped: the original model fails at it ({problem})")
            continue
        feeds += batch_feeds
        used.append(feeds_mod.feed_batch(batch_feeds[0]))
    if not feeds:
        raise SurgeonError(f"{original}: the original model fails on the generated inputs at every batch size "
                           f"tried ({'; '.join(failures)}); pass --batch-sizes it runs at, or real samples "
                           "with --inputs FILE or --data-loader-script SCRIPT")
    if not batched:
        notes.append("every input has static dims: one feed shape, whatever --batch-sizes asks for")
    keys: dict[str, list[np.ndarray]] = {}
    complete: dict[str, bool] = {}
    for found in generated.space.columns:
        for node in found.nodes:
            keys.setdefault(node, []).append(np.asarray(found.keys, dtype=np.int64))
            complete[node] = complete.get(node, True) and found.complete
    return _Feeds(feeds, tuple(used), "generated", tuple(notes), generated.space.columns, generated.space.untraced,
                  {node: (np.concatenate(k), complete[node]) for node, k in keys.items()})


def _run(session, original: Path, rewritten: Path, config: Path, backend: str, feeds: list):
    """Both runners through Polygraphy's Comparator, one after the other, so a failure names its model.

    Returns the results, the keys each HPS_TRT node received, and why the rewritten model failed ("" if not).
    """
    from polygraphy.comparator import Comparator, RunResults

    from .runner import HpsRunner, OriginalRunner

    results = RunResults()
    try:
        results.extend(Comparator.run([OriginalRunner(session, name="onnxrt-original")], data_loader=feeds))
    except Exception as exc:
        raise SurgeonError(f"{original}: the original model fails on a feed: {_first_line(exc)}") from None
    hps = HpsRunner(rewritten, config, backend, name=f"hps-{backend}", lookups=True)
    try:
        results.extend(Comparator.run([hps], data_loader=feeds))
    except SurgeonError:
        raise
    except Exception as exc:
        return results, hps.seen, f"the rewritten model fails where the original runs: {_first_line(exc)}"
    return results, hps.seen, ""


def _shapes(feeds: list[dict[str, np.ndarray]]) -> dict[str, list[list[int]]]:
    shapes: dict[str, list[list[int]]] = {}
    for feed in feeds:
        for name, value in feed.items():
            shape = list(np.shape(value))
            if shape not in shapes.setdefault(name, []):
                shapes[name].append(shape)
    return shapes


def _check_options(iterations, batch_sizes, min_distinct_keys, table_floors, inputs, data_loader_script,
                   backend) -> None:
    if iterations < 1:
        raise SurgeonError(f"--iterations {iterations}: must be at least 1")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise SurgeonError(f"--batch-sizes {','.join(map(str, batch_sizes))}: each must be at least 1")
    if min_distinct_keys < 0:
        raise SurgeonError(f"--min-distinct-keys {min_distinct_keys}: must be at least 0")
    negative = [f"{name}={count}" for name, count in (table_floors or {}).items() if count < 0]
    if negative:
        raise SurgeonError(f"--min-distinct-keys {negative[0]}: must be at least 0")
    if inputs is not None and data_loader_script is not None:
        raise SurgeonError("--inputs and --data-loader-script: pass one of them, not both")
    if backend not in BACKENDS:
        raise SurgeonError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")


def _read_pair(original: Path, rewritten: Path, config: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Both models parsed, the rewritten one validated against the config, and the pair checked to belong together."""
    for path in (original, rewritten, config):
        if not path.is_file():
            raise SurgeonError(f"{path}: no such file")
    unreadable = hps_config.parse(config)[1]
    if unreadable is not None:
        raise SurgeonError(str(unreadable))
    source, target = read_proto(original), read_proto(rewritten)
    unknown = foreign_ops(source)
    if unknown:
        raise SurgeonError(f"{original}: {unknown[0]}")
    if not any(n.op_type == HPS_OP for n in target.graph.node):
        hint = " (it looks like the original: pass rewrite's model.onnx second)" if any(
            n.op_type == HPS_OP for n in source.graph.node) else ""
        raise SurgeonError(f"{rewritten}: has no {HPS_OP} node{hint}; pass the model.onnx written by "
                           "hps-surgeon rewrite as REWRITTEN")
    problems = errors(validate.validate(rewritten, config, model=target))
    if problems:
        raise SurgeonError(f"{problems[0]} (and {len(problems) - 1} more)" if len(problems) > 1 else str(problems[0]))
    _check_related(source, target, original, rewritten)
    return source, target


def _check_related(source: onnx.ModelProto, target: onnx.ModelProto, original: Path, rewritten: Path) -> None:
    def io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
        initializers = {t.name for t in model.graph.initializer}
        return ([i.name for i in model.graph.input if i.name not in initializers],
                [o.name for o in model.graph.output])

    (inputs_a, outputs_a), (inputs_b, outputs_b) = io(source), io(target)
    if outputs_a != outputs_b:
        raise SurgeonError(f"{rewritten} is not a rewrite of {original}: its outputs ({', '.join(outputs_b)}) are "
                           f"not the original's ({', '.join(outputs_a)}); pass the model it was rewritten from")
    if sorted(inputs_a) != sorted(inputs_b):
        extra = sorted(set(inputs_b) - set(inputs_a))
        what = (f"takes input '{extra[0]}', which {original.name} does not (a --hugectr-sparse-model rewrite "
                "replaces an embedding input with keys: compare it with SplitRunner on your own embeddings)"
                if extra else f"lacks input '{sorted(set(inputs_a) - set(inputs_b))[0]}' of the original")
        raise SurgeonError(f"{rewritten} {what}; verify compares models that take the same inputs")


def _original_session(original: Path, source: onnx.ModelProto, target: onnx.ModelProto):
    """onnxruntime on the original, with every replaced lookup's rows as extra outputs (`lookups.expose`).

    Where the model with those outputs does not load, the original as it is, every lookup compared
    through the model outputs only, with onnxruntime's reason.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions; no second copy on stderr
    exposed, sources = lookups_mod.expose(source, target)
    reason = ""
    if any(s.how != lookups_mod.OUTPUTS_ONLY for s in sources):
        # external data resolves next to the original, as it does when the session reads the file
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(original.parent))
        try:
            session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
            return session, sources
        except Exception as exc:
            reason = f"onnxruntime cannot load the original with the lookups as outputs: {_first_line(exc)}"
    try:
        plain = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SurgeonError(f"{original}: onnxruntime cannot load the original model: {_first_line(exc)}") from None
    return plain, tuple(LookupSource(s.node, s.original, lookups_mod.OUTPUTS_ONLY, s.reason or reason)
                        for s in sources)


def _runs(session, feed: dict[str, np.ndarray]) -> str:
    """Empty when the original runs on `feed`, else onnxruntime's reason in one line."""
    try:
        session.run(None, dict(feed))
    except Exception as exc:
        return _first_line(exc)
    return ""


def _first_line(exc: BaseException) -> str:
    """An exception in one line; onnxruntime's run failures as `node 'N' (Op): reason`."""
    text = str(exc).strip()
    # onnxruntime prefixes "[ONNXRuntimeError] : 1 : FAIL : "; the rest is the reason
    text = text.split(" : ", 3)[-1] if text.startswith("[ONNXRuntimeError]") else text
    failed = _ORT_NODE_FAILURE.search(text)
    if failed:
        reason = _ORT_SOURCE_LOCATION.sub("", failed.group(3)).strip()
        text = f"node '{failed.group(2)}' ({failed.group(1)}): {reason}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_ORT_NODE_FAILURE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.S)
#: onnxruntime's "/onnxruntime_src/...concatbase.h:120 <C++ signature> " before the reason
_ORT_SOURCE_LOCATION = re.compile(r"/\S+\.(?:h|cc|cpp):\d+ .*?\)(?: const)?(?: \[with [^\]]*\])? ")


# --- comparison -----------------------------------------------------------------------------------

def nan_aware(atol: float, rtol: float):
    """Polygraphy's simple comparison, with NaN in the same position of both outputs counted as equal.

    Polygraphy's absolute difference of NaN and NaN is NaN, which fails any tolerance; NaN in one
    output only must still fail, so only positions NaN in both are set to 0 before comparing.
    """
    from polygraphy.comparator import SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult

    simple = SimpleCompareFunc(atol=atol, rtol=rtol, infinities_compare_equal=True)

    def masked(result, other) -> IterationResult:
        outputs = OrderedDict()
        for name, value in result.items():
            value = np.asarray(value)
            twin = np.asarray(other[name]) if name in other else None
            if twin is not None and twin.shape == value.shape and np.issubdtype(value.dtype, np.floating):
                both = np.isnan(value) & np.isnan(twin.astype(np.float64))
                if both.any():
                    value = np.where(both, 0, value).astype(value.dtype)
            outputs[name] = value
        return IterationResult(outputs=outputs, runtime=result.runtime, runner_name=result.runner_name)

    def compare(first, second):
        return simple(masked(first, second), masked(second, first))

    return compare


def output_errors(expected_runs, actual_runs) -> tuple[OutputError, ...]:
    """Per output, the largest absolute and relative differences over every feed (the NaN rule above)."""
    worst: dict[str, OutputError] = {}
    for a, b in zip(expected_runs, actual_runs):
        for name, expected in a.items():
            expected, actual = np.asarray(expected), np.asarray(b[name])
            old = worst.get(name, OutputError(name, 0.0, 0.0))
            if expected.shape != actual.shape:
                worst[name] = OutputError(name, float("inf"), float("inf"), old.nan_original_only,
                                          old.nan_rewritten_only, shape_mismatch=True)
                continue
            expected, actual = expected.astype(np.float64), actual.astype(np.float64)
            nan_a, nan_b = np.isnan(expected), np.isnan(actual)
            same = (expected == actual) | (nan_a & nan_b)  # equal infinities too
            comparable = ~(nan_a | nan_b)
            with np.errstate(invalid="ignore"):
                diff = np.where(same | ~comparable, 0.0, np.abs(expected - actual))
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float((diff / np.maximum(np.abs(np.nan_to_num(expected)), 1e-30)).max()) if diff.size else 0.0
            worst[name] = OutputError(name, max(old.max_abs, max_abs), max(old.max_rel, max_rel),
                                      old.nan_original_only + int((nan_a & ~nan_b).sum()),
                                      old.nan_rewritten_only + int((nan_b & ~nan_a).sum()), old.shape_mismatch)
    return tuple(worst.values())
