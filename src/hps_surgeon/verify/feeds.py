"""The inputs a verification runs on: generated from the traced key space, or the user's own samples.

Generated feeds start from Polygraphy's `DataLoader` (dense inputs, and every dim the model leaves
open: the first is the batch, the others take the tables' `maxnum_catfeature_query_per_table_per_sample`
or `--max-keys-per-sample`; static dims stay as the model declares them); string inputs come from
the model's vocabularies; then every traced key column is filled from `keyspace` with stratified
draws (each column cycles through the values found, so N draws reach min(N, found) distinct keys).
User samples are read with Polygraphy's own `from_json` for `--inputs` (the format of `polygraphy run
--save-inputs`/`--load-inputs`), and for `--data-loader-script` (`script.py[:function]`, `load_data`
by default, Polygraphy's convention) from the script run under a module name of its own; both bounded
in size (`bounded`, FEEDS_MAX_BYTES).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import bounded
from ..errors import SurgeonError
from ..hps import config as hps_config
from ..hps.contract import MODEL_NAME
from ..hps.tables import table_files
from . import keyspace
from .keyspace import ColumnKeys, KeySpace
from .split import SplitRunner

#: feeds added at the largest batch size, at most, until every traced table reaches its floor
MAX_EXTRA_FEEDS = 64
#: bytes of one generated input at one batch size (a keys input declaring a static dim of 2^31 would
#: take 16 GiB), and of every feed a verification generates or reads from the user, together
INPUT_MAX_BYTES = 256 << 20
FEEDS_MAX_BYTES = 2 << 30
#: feeds read from a --data-loader-script, at most (a generator may never end)
MAX_SCRIPT_FEEDS = 10_000
_FIX_SIZE = "lower --batch-sizes or --max-keys-per-sample, or pass your own samples with --inputs or --data-loader-script"

Feed = OrderedDict  #: input name -> array, in the model's input order


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]  #: an int is static; a str or None is left open by the model


@dataclass(frozen=True)
class InputSpecs:
    """A model's graph inputs (initializer-backed ones excluded) and how open dims are sized."""

    inputs: tuple[InputSpec, ...]
    sequence_length: int  #: size of every open dim after the first

    @classmethod
    def of(cls, model: onnx.ModelProto, config: Path, max_keys_per_sample: int | None = None) -> InputSpecs:
        initializers = {t.name for t in model.graph.initializer}
        inputs = []
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
            inputs.append(InputSpec(value.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
        if max_keys_per_sample is not None and max_keys_per_sample < 1:
            raise SurgeonError(f"--max-keys-per-sample {max_keys_per_sample}: must be at least 1")
        length = max_keys_per_sample or _configured_keys_per_sample(config)
        return cls(tuple(inputs), length)

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {spec.name: tuple(d if isinstance(d, int) else (batch if i == 0 else self.sequence_length)
                                 for i, d in enumerate(spec.dims)) for spec in self.inputs}

    def check_size(self, batch: int) -> int:
        """Bytes of one generated feed at `batch`; SurgeonError naming the input and its largest dim when
        one input would take more than INPUT_MAX_BYTES."""
        total = 0
        for spec in self.inputs:
            shape = self.shapes(batch)[spec.name]
            nbytes = int(np.prod(shape, dtype=object)) * spec.dtype.itemsize
            if nbytes > INPUT_MAX_BYTES:
                axis = int(np.argmax(shape))
                how = "static in the model" if isinstance(spec.dims[axis], int) else (
                    "the batch" if axis == 0 else "--max-keys-per-sample or the config's largest "
                                                  "maxnum_catfeature_query_per_table_per_sample")
                at = "" if spec.dims and isinstance(spec.dims[0], int) else f" at batch {batch}"
                raise SurgeonError(f"input '{spec.name}': shape {list(shape)}{at} is {_size(nbytes)} "
                                   f"(dim {axis} = {shape[axis]}, {how}); verify generates at most "
                                   f"{_size(INPUT_MAX_BYTES)} per input — {_FIX_SIZE}")
            total += nbytes
        return total

    @property
    def batched(self) -> bool:
        """Whether any input leaves its first dim open (otherwise every batch size gives the same feed)."""
        return any(spec.dims and not isinstance(spec.dims[0], int) for spec in self.inputs)

    def check_feed(self, feed: dict[str, np.ndarray], where: str) -> None:
        """Raise SurgeonError naming the input when a user's feed does not fit the model."""
        names = [spec.name for spec in self.inputs]
        missing = [n for n in names if n not in feed]
        extra = [n for n in feed if n not in names]
        if missing or extra:
            what = f"lacks input '{missing[0]}'" if missing else f"has input '{extra[0]}', which the model does not take"
            raise SurgeonError(f"{where} {what} (the model takes {', '.join(names)})")
        for spec in self.inputs:
            try:
                value = np.asarray(feed[spec.name])
            except (ValueError, TypeError) as exc:  # a ragged list, an object numpy cannot hold
                raise SurgeonError(f"{where}: input '{spec.name}' is not an array ({_first_line(exc)})") from None
            text = keyspace.is_text(spec.dtype)
            if keyspace.is_text(value.dtype) != text or (not text and value.dtype != spec.dtype):
                raise SurgeonError(f"{where}: input '{spec.name}' is {_dtype(value.dtype)}, the model takes "
                                   f"{_dtype(spec.dtype)}")
            if len(value.shape) != len(spec.dims) or any(
                    isinstance(d, int) and d != s for d, s in zip(spec.dims, value.shape)):
                raise SurgeonError(f"{where}: input '{spec.name}' has shape {list(value.shape)}, the model takes "
                                   f"{[d if isinstance(d, int) else (d or '?') for d in spec.dims]}")


def _configured_keys_per_sample(config: Path) -> int:
    """The config's largest maxnum_catfeature_query_per_table_per_sample: what rewrite was told a sample holds."""
    try:
        data = json.loads(Path(config).read_text())
    except (OSError, ValueError):
        return 1
    counts = [c for m in data.get("models", []) for c in m.get("maxnum_catfeature_query_per_table_per_sample", [])
              if isinstance(c, int)]
    return max(counts, default=1)


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes >> 20} MiB"


def _dtype(dtype: np.dtype) -> str:
    return "string" if keyspace.is_text(dtype) else np.dtype(dtype).name


# --- tables ---------------------------------------------------------------------------------------

def table_keys(config: Path, model_name: str, table_id: int) -> np.ndarray:
    """The sorted keys of one table of the config (memory-mapped when already sorted, as rewrite writes them)."""
    data = json.loads(Path(config).read_text())
    entry = hps_config.model_entry(data, model_name)
    folder = hps_config.table_folder(Path(config), entry, table_id)
    path = table_files(Path(config), folder, f"model '{model_name}' table {table_id}")[0]
    keys = np.memmap(path, dtype="<i8", mode="r") if path.stat().st_size else np.zeros(0, dtype=np.int64)
    increasing = all(bool(np.all(np.diff(keys[i:i + (1 << 22) + 1]) > 0)) for i in range(0, keys.size, 1 << 22))
    return keys if increasing else np.unique(np.asarray(keys))


def node_tables(split: SplitRunner, config: Path) -> dict[str, np.ndarray]:
    cache: dict[tuple[str, int], np.ndarray] = {}
    tables = {}
    for node in split.nodes:
        key = (node.model_name, node.table_id)
        if key not in cache:
            cache[key] = table_keys(config, *key)
        tables[node.name] = cache[key]
    return tables


def rewritten_key_ranges(model: onnx.ModelProto, config: Path) -> list[keyspace.KeyRange]:
    """Per numeric column of a rewritten model's inputs, the span of input values found to reach
    existing keys (empty when the key subgraph cannot be traced)."""
    try:
        specs = InputSpecs.of(model, Path(config))
        # the rewrite folder's model file when there is one: its external data resolves next to it
        beside = Path(config).parent / MODEL_NAME
        split = SplitRunner(beside if beside.is_file() else model, None)
        space = trace_model(model, Path(config), specs, batch=8, seed=0, split=split)
    except Exception:  # perf data is a convenience: without traced keys, deploy falls back to zeros
        return []
    ranges = {}
    for found in space.columns:
        if found.values.size and not keyspace.is_text(found.values.dtype):
            key = (found.column.input, found.column.index)
            low, high = int(found.values.min()), int(found.values.max())
            old = ranges.get(key, (low, high))
            ranges[key] = (min(low, old[0]), max(high, old[1]))
    return [keyspace.KeyRange(name, column, low, high) for (name, column), (low, high) in sorted(
        ranges.items(), key=lambda item: (item[0][0], -1 if item[0][1] is None else item[0][1]))]


# --- generated feeds ------------------------------------------------------------------------------

def base_feeds(specs: InputSpecs, batch: int, count: int, seed: int,
               vocabularies: dict[str, list[str]]) -> list[Feed]:
    """`count` feeds from Polygraphy's DataLoader at `batch`; string inputs take vocabulary words."""
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    specs.check_size(batch)
    shapes = specs.shapes(batch)
    meta = TensorMetadata()
    for spec in specs.inputs:
        if not keyspace.is_text(spec.dtype):  # Polygraphy's DataLoader cannot make strings
            meta.add(spec.name, dtype=spec.dtype, shape=shapes[spec.name])
    loader = DataLoader(seed=seed + batch, iterations=count, input_metadata=meta)
    rng = np.random.default_rng(seed + batch)
    feeds = []
    for index in range(count):
        generated = loader[index] if len(meta) else {}
        feed = OrderedDict()
        for spec in specs.inputs:
            if keyspace.is_text(spec.dtype):
                words = vocabularies.get(spec.name) or [""]
                feed[spec.name] = rng.choice(np.asarray(words, dtype=object), size=shapes[spec.name])
            else:
                feed[spec.name] = np.asarray(generated[spec.name])
        feeds.append(feed)
    return feeds


def trace_model(model: onnx.ModelProto, config: Path, specs: InputSpecs, batch: int, seed: int,
                split: SplitRunner | None = None) -> KeySpace:
    """The key space of a rewritten model, traced on feeds of `batch` (see `keyspace`)."""
    split = split or SplitRunner(model, None)
    words = keyspace.vocabularies(model)
    (base,) = base_feeds(specs, batch, 1, seed, words)
    return keyspace.trace_keys(_probe(split), base, node_tables(split, config), key_inputs(split, specs),
                               words, seed)


def key_inputs(split: SplitRunner, specs: InputSpecs) -> list[str]:
    """The graph inputs the HPS_TRT nodes' keys are computed from."""
    used = {i.name for i in split.pre.get_inputs()} if split.pre is not None else set()
    used |= {node.keys for node in split.nodes}
    return [spec.name for spec in specs.inputs if spec.name in used]


def _probe(split: SplitRunner):
    def probe(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        try:
            return split.keys(feed)
        except Exception:  # onnxruntime rejects this candidate: tracing treats it as no key
            return None

    return probe


class KeyDraws:
    """Fills the traced key columns of feeds; each column cycles through its values in a shuffled order."""

    def __init__(self, space: KeySpace, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.orders = {id(c): self.rng.permutation(c.values.size) for c in space.columns}
        self.cursor = {id(c): 0 for c in space.columns}
        self.planned: dict[str, set[int]] = {n: set() for c in space.columns for n in c.nodes}

    def fill(self, feed: Feed) -> Feed:
        for name in {c.column.input for c in self.space.columns}:
            text = keyspace.is_text(feed[name].dtype)
            array = np.array(feed[name], dtype=object if text else None, copy=True)
            flat = array.reshape(-1)
            for found, elements in self._placements(self.space.of_input(name), array.shape):
                values, keys = self._next(found, elements.size)
                flat[elements] = keyspace.cast_values(values, array.dtype)
                for node in found.nodes:
                    self.planned[node].update(int(k) for k in keys if k != keyspace.MISSING)
            feed[name] = array
        return feed

    @staticmethod
    def _placements(found: list[ColumnKeys], shape: tuple[int, ...]):
        by_column: dict[keyspace.Column, list[ColumnKeys]] = {}
        for c in found:
            if c.values.size:
                by_column.setdefault(c.column, []).append(c)
        for column, groups in by_column.items():
            if groups[0].shape == tuple(shape):
                yield from ((g, np.asarray(g.elements, dtype=np.int64)) for g in groups)
            else:  # another batch: the elements moved, the column did not
                widest = max(groups, key=lambda g: len(g.elements))
                yield widest, keyspace.column_elements(column, tuple(shape))

    def _next(self, found: ColumnKeys, count: int) -> tuple[np.ndarray, np.ndarray]:
        order, start = self.orders[id(found)], self.cursor[id(found)]
        picks = order[(start + np.arange(count)) % order.size]
        self.cursor[id(found)] = (start + count) % order.size
        return found.values[picks], found.keys[picks]


@dataclass(frozen=True)
class GeneratedFeeds:
    """Feeds per batch size (in the order asked), and the key space they were drawn from."""

    by_batch: dict[int, list[Feed]]
    space: KeySpace


def generate(model: onnx.ModelProto, config: Path, specs: InputSpecs, batch_sizes: tuple[int, ...],
             iterations: int, seed: int, floors: dict[str, int], split: SplitRunner) -> GeneratedFeeds:
    """`iterations` feeds per batch size, keys drawn from the traced space; more feeds at the largest
    batch while a traced table's planned distinct keys stay below `floors[node]`."""
    if not specs.batched:
        batch_sizes = batch_sizes[:1]  # every input is static: one feed shape whatever the batch
    _check_total(specs, batch_sizes, iterations)
    words = keyspace.vocabularies(model)
    space = KeySpace(untraced=tuple(n.name for n in split.nodes))
    # Trace at the largest batch the key subgraph runs on (more candidates per run), at most 256.
    for batch in sorted(batch_sizes, key=lambda b: (b > 256, -b if b <= 256 else b)):
        space = trace_model(model, config, specs, batch, seed, split)
        if space.columns:
            break
    draws = KeyDraws(space, seed)
    by_batch = {b: [draws.fill(f) for f in base_feeds(specs, b, iterations, seed, words)] for b in batch_sizes}
    largest = max(batch_sizes)
    reachable = {n: len({int(k) for c in space.columns if n in c.nodes for k in c.keys if k != keyspace.MISSING})
                 for n in draws.planned}
    for extra in range(MAX_EXTRA_FEEDS):
        if all(len(draws.planned[n]) >= min(floors.get(n, 0), reachable[n]) for n in draws.planned):
            break
        (feed,) = base_feeds(specs, largest, 1, seed + 7919 + extra, words)
        by_batch[largest].append(draws.fill(feed))
    return GeneratedFeeds(by_batch, space)


def _check_total(specs: InputSpecs, batch_sizes: tuple[int, ...], iterations: int) -> None:
    total = sum(iterations * specs.check_size(b) for b in batch_sizes) + MAX_EXTRA_FEEDS * specs.check_size(
        max(batch_sizes))
    if total > FEEDS_MAX_BYTES:
        raise SurgeonError(f"--iterations {iterations} at --batch-sizes {','.join(map(str, batch_sizes))} (and up to "
                           f"{MAX_EXTRA_FEEDS} more feeds at the largest) would generate {_size(total)} of feeds; "
                           f"verify holds at most {_size(FEEDS_MAX_BYTES)} — lower --iterations or --batch-sizes")


# --- user samples ---------------------------------------------------------------------------------

def load_inputs(path: str | Path, specs: InputSpecs) -> list[Feed]:
    """Feeds from a JSON file in Polygraphy's --load-inputs format, read with Polygraphy's load_json
    (after bounded's checks: a regular UTF-8 file of at most INPUTS_MAX_BYTES, nested at most MAX_DEPTH)."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.json import from_json

    label = f"--inputs {path}"
    fix = "pass a JSON file written by `polygraphy run --save-inputs` or polygraphy.json.save_json"
    text = bounded.read_text(path, label, bounded.INPUTS_MAX_BYTES, fix)
    bounded.check_json(text, label, "Polygraphy's input data nests 5", fix)
    try:
        loaded = from_json(text)
    except (PolygraphyException, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise SurgeonError(f"{label}: not Polygraphy input data ({_first_line(exc)}); {fix}") from None
    return _checked(loaded, specs, label)


def load_script(spec: str, specs: InputSpecs) -> list[Feed]:
    """Feeds from a data loader script (`script.py[:function]`, `load_data` by default), Polygraphy's convention.

    The script is the user's code, run in this process as `polygraphy run --data-loader-script` runs it;
    what goes wrong in it is said as what it is (a syntax error and its line, an exception, a call of
    sys.exit); Ctrl-C stops verify (exit 130). At most MAX_SCRIPT_FEEDS feeds and FEEDS_MAX_BYTES are read.
    """
    from polygraphy.tools.args import util as args_util

    path, function = args_util.parse_script_and_func_name(spec, default_func_name="load_data")
    where = f"--data-loader-script {spec}"
    source = bounded.read_text(path, where, bounded.SCRIPT_MAX_BYTES, "pass a Python script, SCRIPT.py[:FUNCTION]")
    # as Polygraphy runs it: the script's folder first on sys.path, for the modules it keeps beside it
    folder = str(Path(path).absolute().parent)
    sys.path.insert(0, folder)
    try:
        loader = getattr(_run_script(Path(path), source, where), function, None)
        if not callable(loader):
            raise SurgeonError(f"{where}: the script defines no function {function}(); name one with "
                               "SCRIPT:FUNCTION")
        feeds = _script_feeds(loader, f"{where}: {function}()")
    finally:
        if folder in sys.path:  # unless the script took it out itself
            sys.path.remove(folder)
    return _checked(feeds, specs, where)


def _run_script(path: Path, source: str, where: str):
    """The module of the script `source` (read from `path`), under a name of its own (no module it shadows
    is imported instead)."""
    module_spec = importlib.util.spec_from_file_location(f"_hps_surgeon_data_loader_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        code = compile(source, str(path), "exec")
        exec(code, module.__dict__)  # noqa: S102 (the user's own data loader, as Polygraphy runs it)
    except SyntaxError as exc:
        raise SurgeonError(f"{where}: syntax error at line {exc.lineno} ({exc.msg}); fix the script") from None
    except SystemExit as exc:
        raise SurgeonError(f"{where}: the script called sys.exit({exc.code!r}) while loading; a data loader defines "
                           "a function verify calls") from None
    except Exception as exc:
        raise SurgeonError(f"{where}: the script failed while loading: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
    return module


def _script_feeds(loader, where: str) -> list:
    produced = _users_code(loader, where)
    if not hasattr(produced, "__iter__") or isinstance(produced, (str, bytes, dict)):
        raise SurgeonError(f"{where} returned {type(produced).__name__}, not a list or generator of feeds (input "
                           "name -> array)")
    iterator = iter(produced)
    feeds, total = [], 0
    while (feed := _users_code(lambda: next(iterator, None), where)) is not None:
        if len(feeds) == MAX_SCRIPT_FEEDS:
            raise SurgeonError(f"{where}: yielded more than {MAX_SCRIPT_FEEDS} feeds, the most verify reads; yield "
                               "fewer")
        total += sum(v.nbytes for v in feed.values() if isinstance(v, np.ndarray)) if isinstance(feed, dict) else 0
        if total > FEEDS_MAX_BYTES:
            raise SurgeonError(f"{where}: yielded more than {_size(FEEDS_MAX_BYTES)} of feeds, the most verify "
                               "holds; yield fewer or smaller feeds")
        feeds.append(feed)
    return feeds


def _users_code(call, where: str):
    """`call()`, with what the user's code raises said in one line (Ctrl-C still stops verify)."""
    try:
        return call()
    except SystemExit as exc:
        raise SurgeonError(f"{where} called sys.exit({exc.code!r}); a data loader returns or yields its feeds") \
            from None
    except Exception as exc:
        raise SurgeonError(f"{where} failed: {type(exc).__name__}: {_first_line(exc)}") from None


def _checked(loaded, specs: InputSpecs, where: str) -> list[Feed]:
    if not isinstance(loaded, (list, tuple)):
        got = "a mapping" if isinstance(loaded, dict) else type(loaded).__name__
        raise SurgeonError(f"{where}: expected a list of feeds (input name -> array), got {got}")
    bad = next((i for i, f in enumerate(loaded) if not isinstance(f, dict)), None)
    if bad is not None:
        raise SurgeonError(f"{where}: feed {bad} is {type(loaded[bad]).__name__}, not a mapping of input name -> "
                           "array")
    if not loaded:
        raise SurgeonError(f"{where}: holds no feeds")
    feeds = []
    for index, feed in enumerate(loaded):
        specs.check_feed(feed, f"{where}: feed {index}")
        feeds.append(OrderedDict((spec.name, _as_fed(feed[spec.name], spec)) for spec in specs.inputs))
    return feeds


def _as_fed(value, spec: InputSpec) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(object) if keyspace.is_text(spec.dtype) else value


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def feed_batch(feed: dict[str, np.ndarray]) -> int:
    """The first dim of a feed's first input with one (for reporting user samples)."""
    for value in feed.values():
        if np.ndim(value):
            return int(np.shape(value)[0])
    return 1
