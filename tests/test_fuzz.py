"""Fuzz: mutated and hostile inputs through every command, each held to one contract.

Every input is built from our fixtures by one seeded mutation of one of these kinds:

    bytes    a model file with bytes flipped, cut, inserted, repeated or zeroed
    proto    one thing changed through the onnx API: a table's dims, data or dtype, external-data
             entries, names (invalid UTF-8, shared, long), graph edges (cycles, double producers,
             dangling inputs), input types, opsets, the HPS_TRT node's attributes
    paths    a rewrite folder whose config, table files or external data lead outside it (../,
             absolute paths, symlinks), are FIFOs or folders, or whose config is malformed or
             oversized (megabyte strings and lists, thousands of models, 5000-digit numbers,
             unterminated strings of escapes, lone surrogates, database sections of wrong types)
    outputs  --out / --repo / --name / --plan-out values that cannot name an output
    plans    a --plan file: edited fields (names, key dtypes, mappings where names belong), YAML
             alias bombs, deep nesting, long integers, other encodings, bytes mutated, special files;
             the same YAML as a pattern file of --patterns DIR
    samples  verify's own traffic: --inputs JSON (nested, long numbers, wrong shapes and dtypes,
             bytes mutated) and --data-loader-script scripts (syntax errors, sys.exit, Ctrl-C,
             exceptions, endless generators, wrong return types)
    options  numbers no command can honour: batch sizes, iterations, keys per sample, cache ratios
             (0, negative, 2^40, 2^64, NaN, infinity)
    targets  publish's targets: --persistent-db folders that are no place for a database (the root,
             the inputs and their folders, a non-empty folder, special files), --volatile-db URLs,
             --num-partitions, and --update into the database a config's persistent_db.path names

and run through the commands that read it (`_model_runs`, `_folder_runs`; build-engine only where
a builder and a plugin with its TensorRT glue are installed). For every input and command:

- no exception escapes (HPS_SURGEON_DEBUG=1 turns the CLI's last-resort handler off), and no
  command runs longer than COMMAND_TIMEOUT_S (a FIFO opened for reading would block forever);
- the exit code is one the command documents (EXIT_CODES);
- exit 2 prints exactly one line, `hps-surgeon: error: ...`, naming a file of the input or the
  option at fault; exit 130 (a script's Ctrl-C) one `interrupted` line; check prints only
  `path:where: message` lines about the input; verify's exit 1 is one `verify FAILED` line;
- nothing outside the requested outputs (--out, --repo, the database and config publish writes) is
  created, changed or removed;
- no output (files written, stdout, stderr) holds bytes of SECRET, a file planted outside every
  input's folder at which the hostile paths point: neither a run of its bytes nor a number made
  of 8 of them (the review saw `stored keys reach 8460079263663478611`).

The contract holds with and without the native libraries (publish checks every input before it
loads its library; without it, a valid input ends in one line naming the config): CI runs both.

HPS_SURGEON_FUZZ_INPUTS inputs per run (default 500), from seed HPS_SURGEON_FUZZ_SEED (default 11);
HPS_SURGEON_FUZZ_LOG=FILE appends every run (recipe, command, exit code, output) to FILE as JSON lines.
Input N is the same for a given seed whatever the count: a failure names N and its recipe; rerun
it alone with `pytest tests/test_fuzz.py -k "input[N]"`. A new command joins by adding its exit
codes to EXIT_CODES and its command line (and the outputs it may write) to `_model_runs` or
`_folder_runs`.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon

from support import FIXTURES, copy_rewrite, run_in_process, tree

INPUTS = int(os.environ.get("HPS_SURGEON_FUZZ_INPUTS", "500"))
SEED = int(os.environ.get("HPS_SURGEON_FUZZ_SEED", "11"))
COMMAND_TIMEOUT_S = 60

#: exit codes each command documents (README, `hps-surgeon -h`)
EXIT_CODES = {"scan": {0, 2}, "rewrite": {0, 2}, "check": {0, 1}, "verify": {0, 1, 2, 3, 130}, "deploy": {0, 2},
              "publish": {0, 2, 130}, "build-engine": {0, 1, 2}}
#: what an exit-2 line may name besides the input's files: the option at fault, or the database it names
_OPTIONS = ("--out ", "--repo ", "--name ", "--plan ", "--plan-out ", "--inputs ", "--data-loader-script ",
            "--persistent-db ", "--volatile-db ", "--num-partitions ", "--update ", "redis_cluster ", "rocks_db ")
#: small models from every exporter: tables, bags, loops, tf2onnx sparse lookups, HugeCTR
MODELS = ["torch/embedding_int64_legacy.onnx", "torch/embedding_bag_sum_offsets_legacy.onnx",
          "torch/embedding_bag_mean_2d_legacy.onnx", "tf/keras_embedding_reduce_sum.onnx",
          "tf/tf_nn_embedding_lookup_sparse_sum.onnx", "hugectr/wdl_convert_embedding.onnx",
          "torch/dlrm_small_legacy.onnx"]
SOURCE = "torch/embedding_int64_legacy.onnx"  #: the model the rewrite folders come from
#: SECRET: 16-byte blocks, each "SECRET" + a counter, so any copied run of 32 bytes holds the marker
SECRET = b"".join(b"SECRET" + i.to_bytes(10, "little") for i in range(4096))
_SECRET_NUMBERS = {str(v) for i in range(0, len(SECRET), 8)
                   for v in (int.from_bytes(SECRET[i:i + 8], "little", signed=True),
                             int.from_bytes(SECRET[i:i + 8], "little"))
                   if abs(v) >= 1 << 32}


@dataclass
class Input:
    """One fuzz input: what it is, and the command lines to run on it with the outputs each may write."""

    index: int
    recipe: list[str] = field(default_factory=list)
    runs: list[tuple[list[str], tuple[Path, ...]]] = field(default_factory=list)


# --- the corpus: built once per run --------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """corpus/ (fixture models, rewrite folders), outside/ (SECRET and a table made of it); inputs beside."""
    root = tmp_path_factory.mktemp("fuzz")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in MODELS:
        shutil.copy(FIXTURES / name, corpus / name.replace("/", "__"))
    rewrite_folder = corpus / "rw"
    hps_surgeon.rewrite(FIXTURES / SOURCE, rewrite_folder, model_name="demo")
    # the same folder with part of its model in external data, which deploy copies
    with_data = corpus / "rw_data"
    copy_rewrite(rewrite_folder, with_data)
    model = onnx.load(str(with_data / "model.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(32, 32), "big"))
    model.graph.node.append(helper.make_node("Identity", ["big"], ["big_out"], name="big_identity"))
    model.graph.output.append(helper.make_tensor_value_info("big_out", TensorProto.FLOAT, [32, 32]))
    onnx.save_model(model, str(with_data / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=1024)
    hps_surgeon.rewrite(FIXTURES / SOURCE, corpus / "plan_out", dry_run=True, plan_out=corpus / "plan.yaml")
    from polygraphy.json import save_json

    keys = np.random.default_rng(0).integers(0, 1000, size=(64, 26)).astype(np.int64)
    save_json([{"keys": keys}], str(corpus / "inputs.json"))
    outside = root / "outside"
    (outside / "table").mkdir(parents=True)
    (outside / "SECRET").write_bytes(SECRET)
    (outside / "table/key").write_bytes(SECRET[:8000])
    (outside / "table/emb_vector").write_bytes(SECRET[:64000])
    return root


# --- building one input --------------------------------------------------------------------------

def build(index: int, root: Path) -> Input:
    rng = random.Random(f"{SEED}-{index}")
    case = root / f"input{index}"
    case.mkdir()
    item = Input(index)
    kind = rng.choices(["bytes", "proto", "paths", "outputs", "plans", "samples", "targets", "options"],
                       weights=[20, 27, 25, 8, 7, 5, 5, 3])[0]
    {"bytes": _bytes_input, "proto": _proto_input, "paths": _paths_input, "outputs": _outputs_input,
     "plans": _plans_input, "samples": _samples_input, "targets": _targets_input, "options": _options_input}[kind](
        rng, root, case, item)
    return item


# The commands that read each kind of input, with the outputs each may write. A new command joins here.

def _model_runs(item: Input, model: Path, case: Path) -> None:
    item.runs += [(["scan", model], ()), (["check", model], ()),
                  (["rewrite", model, "--out", case / "out"], (case / "out",))]


def _folder_runs(item: Input, folder: Path, case: Path, original: Path) -> None:
    item.runs += [(["check", folder / "model.onnx"], ()),
                  (["deploy", folder, "--repo", case / "repo"], (case / "repo",)),
                  (["verify", original, folder / "model.onnx", "--config", folder / "hps_config.json",
                    "--iterations", "1", "--batch-sizes", "2"], ()),
                  # publish records the database in the folder's config
                  (["publish", folder, "--persistent-db", case / "db", "--quiet"],
                   (case / "db", folder / "hps_config.json"))]
    if _engine_builder_ready():
        item.runs.append((["build-engine", folder, "--out", case / "engine.plan", "--quiet"], (case / "engine.plan",)))


@functools.cache
def _engine_builder_ready() -> bool:
    """Whether build-engine can build here: a builder and a plugin built with its TensorRT glue."""
    from hps_surgeon.deploy.engine import ready
    from hps_surgeon.errors import SurgeonError

    try:
        ready()
    except SurgeonError:  # it would stop at that check, after the same read_rewrite as deploy
        return False
    return True


def _pick_model(rng: random.Random, root: Path) -> Path:
    # the 26-table DLRM is the slowest to rewrite: one input in ten
    name = rng.choice(MODELS[:-1]) if rng.random() < 0.9 else MODELS[-1]
    return root / "corpus" / name.replace("/", "__")


def _bytes_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    source = _pick_model(rng, root)
    data = bytearray(source.read_bytes())
    op = rng.choice(["flip", "cut", "insert", "repeat", "zero", "ones"])
    at = rng.randrange(len(data))
    size = rng.choice([1, 2, 4, 8, 64, 1024])
    if op == "flip":
        for _ in range(size):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == "cut":
        data = data[:at]
    elif op == "insert":
        data[at:at] = rng.randbytes(size)
    elif op == "repeat":
        data[at:at] = data[at:at + size]
    elif op == "zero":
        data[at:at + size] = bytes(len(data[at:at + size]))
    else:  # varints of 0xff bytes: huge lengths and field numbers
        data[at:at + size] = b"\xff" * len(data[at:at + size])
    item.recipe.append(f"bytes {op} {size} at {at} of {source.name}")
    model = case / "in" / "m.onnx"
    model.parent.mkdir()
    model.write_bytes(bytes(data))
    _model_runs(item, model, case)


# --- protobuf mutations --------------------------------------------------------------------------

#: where an external-data location may point: outside the folder (half the draws), or at what is no data file
_OUTSIDE_LOCATIONS = ["../../outside/SECRET", "{outside}/SECRET", "/etc/passwd", "link", "sub/../../../outside/SECRET"]
_ODD_LOCATIONS = [".", "", "sub", "fifo", "absent.data", "m.onnx", "m.onnx.data\0x", "{inside}",
                  "sub/../m.onnx.data", "hardlink"]
_HOSTILE_NUMBERS = ["-1", "1.5", "", "0x10", " 8", str(2**63), str(2**64), "99999999999", "1e3", "٣"]


def _table(model: onnx.ModelProto, rng: random.Random) -> TensorProto:
    tables = [t for t in model.graph.initializer if len(t.dims) == 2] or list(model.graph.initializer)
    return rng.choice(tables)


def _proto_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    folder = case / "in"
    folder.mkdir()
    if rng.random() < 0.25:  # the HPS_TRT side: a rewrite folder's model
        rw = case / "rw"
        copy_rewrite(root / "corpus/rw", rw)
        model = onnx.load(str(rw / "model.onnx"))
        item.recipe.append(_mutate_hps_node(model, rng))
        onnx.save(model, str(rw / "model.onnx"))
        _folder_runs(item, rw, case, FIXTURES / SOURCE)
        return
    source = _pick_model(rng, root)
    model = onnx.load(str(source))
    path = folder / "m.onnx"
    op = rng.choice(["dims", "data", "dtype", "segment", "external", "external", "external", "text", "names", "graph",
                     "types", "opset", "constant"])
    item.recipe.append(f"proto {op} on {source.name}")
    if op == "external":
        onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=256)
        model = onnx.load_model(str(path), load_external_data=False)
        item.recipe.append(_mutate_external(model, rng, root, folder))
        onnx.save_model(model, str(path))
    elif op == "text":
        placeholder = "Q" * rng.choice([4, 9])
        item.recipe.append(_set_text(model, rng, placeholder))
        data = model.SerializeToString()
        bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])
        path.write_bytes(data.replace(placeholder.encode(), (bad * len(placeholder))[:len(placeholder)]))
    else:
        item.recipe.append(globals()[f"_mutate_{op}"](model, rng))
        onnx.save_model(model, str(path))
    _model_runs(item, path, case)


def _mutate_dims(model, rng):
    table = _table(model, rng)
    dims = list(table.dims) or [1]
    choice = rng.choice(["rows+1", "rows-1", "dim*2", "zero", "2^40", "negative", "extra", "drop", "huge rank"])
    new = {"rows+1": [dims[0] + 1, *dims[1:]], "rows-1": [max(dims[0] - 1, 0), *dims[1:]],
           "dim*2": [*dims[:-1], dims[-1] * 2], "zero": [0, *dims[1:]], "2^40": [dims[0], 2**40],
           "negative": [-d for d in dims], "extra": [*dims, 1], "drop": dims[:-1], "huge rank": [1] * 64}[choice]
    del table.dims[:]
    table.dims.extend(new)
    return f"dims of '{table.name}' {dims} -> {choice}"


def _mutate_data(model, rng):
    table = _table(model, rng)
    choice = rng.choice(["halve", "clear", "typed short", "append", "both raw and typed"])
    if choice == "halve":
        table.raw_data = table.raw_data[:len(table.raw_data) // 2]
    elif choice == "clear":
        table.ClearField("raw_data")
    elif choice == "typed short":
        table.ClearField("raw_data")
        table.float_data.extend([1.0] * rng.randrange(1, 50))
    elif choice == "append":
        table.raw_data = table.raw_data + rng.randbytes(rng.choice([1, 3, 4, 64]))
    else:
        table.float_data.extend([1.0] * 3)
    return f"data of '{table.name}': {choice}"


def _mutate_dtype(model, rng):
    table = _table(model, rng)
    new = rng.choice([0, 999, -3, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT64,
                      TensorProto.INT8, TensorProto.STRING, TensorProto.UINT4, TensorProto.COMPLEX64, TensorProto.BOOL])
    table.data_type = new
    return f"data_type of '{table.name}' -> {new}"


def _mutate_segment(model, rng):
    table = _table(model, rng)
    table.segment.begin, table.segment.end = rng.choice([(0, 1), (0, 0), (5, 1), (-1, 2**62)])
    return f"segment on '{table.name}'"


def _mutate_external(model, rng, root: Path, folder: Path) -> str:
    tensors = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if not tensors:
        return "no external tensor"
    tensor = rng.choice(tensors)
    entries = {e.key: e for e in tensor.external_data}
    key = rng.choice(["location"] * 4 + ["offset", "length", "duplicate", "unknown", "drop length"])
    if key == "location":
        value = rng.choice(_OUTSIDE_LOCATIONS if rng.random() < 0.5 else _ODD_LOCATIONS)
        if value == "sub" or value.startswith("sub/"):
            (folder / "sub").mkdir()
        elif value == "fifo":
            os.mkfifo(folder / "fifo")
        elif value == "link":
            os.symlink(root / "outside/SECRET", folder / "link")
        elif value == "hardlink":
            os.link(folder / entries["location"].value, folder / "hardlink")
        value = value.format(outside=root / "outside", inside=folder / "m.onnx.data")
        entries["location"].value = value
    elif key in ("offset", "length"):
        value = rng.choice(_HOSTILE_NUMBERS)
        if key in entries:
            entries[key].value = value
        else:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    elif key == "duplicate":
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "../../outside/SECRET"
        value = "second location"
    elif key == "unknown":
        entry = tensor.external_data.add()
        entry.key, entry.value = "basepath", "/"
        value = "basepath /"
    else:
        tensor.external_data.remove(entries["length"])
        offset = entries["offset"] if "offset" in entries else tensor.external_data.add()
        offset.key, offset.value = "offset", str(rng.choice([10**9, 7, 1]))
        value = offset.value
    return f"external {key} of '{tensor.name}' = {value!r}"


def _set_text(model, rng, placeholder: str) -> str:
    where = rng.choice(["node name", "op_type", "node input", "node output", "initializer", "graph input",
                        "dim_param", "doc_string", "domain", "metadata", "attribute name"])
    node = rng.choice(model.graph.node)
    if where == "node name":
        node.name = placeholder
    elif where == "op_type":
        node.op_type = placeholder
    elif where == "node input" and node.input:
        node.input[0] = placeholder
    elif where == "node output":
        node.output[0] = placeholder
    elif where == "initializer":
        tensor = _table(model, rng)
        for reader in model.graph.node:
            reader.input[:] = [placeholder if name == tensor.name else name for name in reader.input]
        tensor.name = placeholder
    elif where == "graph input":
        model.graph.input[0].name = placeholder
    elif where == "dim_param":
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = placeholder
    elif where == "doc_string":
        model.graph.doc_string = placeholder
    elif where == "domain":
        node.domain = placeholder
    elif where == "metadata":
        prop = model.metadata_props.add()
        prop.key, prop.value = "k", placeholder
    elif node.attribute:
        node.attribute[0].name = placeholder
    return f"invalid UTF-8 in {where} (node '{node.name}')"


def _mutate_names(model, rng):
    choice = rng.choice(["all the same", "all empty", "300 characters", "table 300 characters", "same as a tensor"])
    if choice == "table 300 characters":
        tensor = _table(model, rng)
        long = "t" * 300
        for node in model.graph.node:
            node.input[:] = [long if name == tensor.name else name for name in node.input]
        tensor.name = long
    for index, node in enumerate(model.graph.node):
        if choice == "all the same":
            node.name = "same"
        elif choice == "all empty":
            node.name = ""
        elif choice == "300 characters":
            node.name = f"{index}" + "n" * 300
        elif choice == "same as a tensor" and node.output:
            node.name = node.output[0]
    return f"node names: {choice}"


def _mutate_graph(model, rng):
    nodes = model.graph.node
    choice = rng.choice(["cycle", "self loop", "double producer", "drop node", "reverse", "dangling input",
                         "drop graph inputs", "gather axis", "drop value_info", "output is input"])
    if choice == "cycle" and len(nodes) > 1:
        nodes[0].input.append(nodes[-1].output[0])
    elif choice == "self loop":
        nodes[-1].input.append(nodes[-1].output[0])
    elif choice == "double producer":
        nodes.append(helper.make_node("Identity", [model.graph.input[0].name], [nodes[0].output[0]], name="twice"))
    elif choice == "drop node":
        del nodes[rng.randrange(len(nodes))]
    elif choice == "reverse":
        reordered = list(nodes)[::-1]
        del nodes[:]
        nodes.extend(reordered)
    elif choice == "dangling input":
        rng.choice(nodes).input.append("nowhere")
    elif choice == "drop graph inputs":
        del model.graph.input[:]
    elif choice == "gather axis":
        for node in nodes:
            if node.op_type == "Gather":
                node.attribute.append(helper.make_attribute("axis", rng.choice([1, -1, 7, -9])))
    elif choice == "drop value_info":
        del model.graph.value_info[:]
        for value in [*model.graph.input, *model.graph.output]:
            value.type.tensor_type.ClearField("shape")
    else:
        nodes[-1].output[0] = model.graph.input[0].name
    return f"graph: {choice}"


def _mutate_types(model, rng):
    value = rng.choice(list(model.graph.input))
    choice = rng.choice([0, TensorProto.FLOAT, TensorProto.STRING, TensorProto.BOOL, TensorProto.UINT64, 999,
                         "rank 0", "rank 5", "dim 0", "dim 2^40", "negative dim"])
    tensor_type = value.type.tensor_type
    if isinstance(choice, int):
        tensor_type.elem_type = choice
    else:
        dims = {"rank 0": [], "rank 5": [1, 2, 1, 2, 1], "dim 0": [0, 0], "dim 2^40": [2**40, 2**40],
                "negative dim": [-4, -4]}[choice]
        tensor_type.shape.ClearField("dim")
        for d in dims:
            tensor_type.shape.dim.add().dim_value = d
    return f"input '{value.name}' type -> {choice}"


def _mutate_opset(model, rng):
    choice = rng.choice(["opset 0", "opset 1", "opset 999", "no opset", "ir 0", "ir 999", "two default opsets"])
    if choice.startswith("opset"):
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = int(choice.split()[1])
    elif choice == "no opset":
        del model.opset_import[:]
    elif choice.startswith("ir"):
        model.ir_version = int(choice.split()[1])
    else:
        model.opset_import.append(helper.make_opsetid("", 7))
    return choice


def _mutate_constant(model, rng):
    table = _table(model, rng)
    value = TensorProto()
    value.CopyFrom(table)
    value.dims[0] = rng.choice([0, 1, value.dims[0] * 3 if value.dims else 5, 2**33])
    model.graph.initializer.remove(table)
    model.graph.node.insert(0, helper.make_node("Constant", [], [table.name], name="as_constant", value=value))
    return f"'{table.name}' as a Constant node with dims {list(value.dims)}"


def _mutate_hps_node(model, rng) -> str:
    node = next(n for n in model.graph.node if n.op_type == "HPS_TRT")
    attrs = {a.name: a for a in node.attribute}
    choice = rng.choice(["model_name invalid UTF-8", "model_name other", "table_id -1", "table_id 2^40", "table_id 7",
                         "emb_vec_size 0", "emb_vec_size -16", "emb_vec_size 17", "attribute type", "drop attribute",
                         "extra attribute", "two inputs", "keys float", "no keys input", "ps_config_file NUL"])
    if choice == "model_name invalid UTF-8":
        attrs["model_name"].s = b"\xff\xfe\0"
    elif choice == "model_name other":
        attrs["model_name"].s = b"other\0"
    elif choice.startswith(("table_id", "emb_vec_size")):
        name, number = choice.split()
        attrs[name].i = 2**40 if number == "2^40" else int(number)
    elif choice == "attribute type":
        attrs["table_id"].type = onnx.AttributeProto.STRING
        attrs["table_id"].s = b"0"
    elif choice == "drop attribute":
        node.attribute.remove(attrs[rng.choice(list(attrs))])
    elif choice == "extra attribute":
        node.attribute.append(helper.make_attribute("evil", "x"))
    elif choice == "two inputs":
        node.input.append(node.input[0])
    elif choice == "keys float":
        for value in model.graph.input:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    elif choice == "no keys input":
        del node.input[:]
    else:
        attrs["ps_config_file"].s = b"/etc/passwd\0../../x"
    return f"HPS_TRT node: {choice}"


# --- hostile paths and configs around a rewrite folder -------------------------------------------

def _paths_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    base = root / "corpus" / ("rw_data" if rng.random() < 0.3 else "rw")
    rw = case / "rw"
    copy_rewrite(base, rw)
    op = rng.choice(["sparse_files", "sparse_files", "table file", "table file", "config field", "config bytes",
                     "config size", "model file"] + (["external"] * 4 if base.name == "rw_data" else []))
    item.recipe.append(f"paths {op} on {base.name}")
    item.recipe.append(globals()[f"_paths_{op.replace(' ', '_')}"](rng, root, rw))
    _folder_runs(item, rw, case, FIXTURES / SOURCE)


def _edit_config(rw: Path, change) -> None:
    config = json.loads((rw / "hps_config.json").read_text())
    change(config)
    (rw / "hps_config.json").write_text(json.dumps(config))


def _paths_sparse_files(rng, root, rw):
    outside = ["../../outside/table", "{outside}/table", "tables/../../../outside/table", "/etc"]
    odd = ["{inside}", "", ".", "tables", "/", "x\0y", "tables/" + "t" * 300, 5, None, ["tables/emb_weight"] * 2,
           "../rw/tables/emb_weight", "tables/emb_weight/key"]
    value = rng.choice(outside if rng.random() < 0.5 else odd)
    value = value.format(outside=root / "outside", inside=rw / "tables/emb_weight") if isinstance(value, str) \
        else value

    def change(config):
        config["models"][0]["sparse_files"] = value if isinstance(value, list) else [value]
    _edit_config(rw, change)
    return f"sparse_files = {value!r}"


def _paths_table_file(rng, root, rw):
    table = rw / "tables/emb_weight"
    name = rng.choice(["key", "emb_vector"])
    choice = rng.choice(["symlink to SECRET"] * 3 + ["folder symlink outside"] * 3 + [
        "FIFO", "folder", "missing", "truncated", "duplicate keys", "keys beyond int32", "NaN vectors",
        "hard link outside"])
    file = table / name
    if choice == "symlink to SECRET":
        file.unlink()
        os.symlink(root / "outside/SECRET", file)
    elif choice == "folder symlink outside":
        shutil.rmtree(table)
        os.symlink(root / "outside/table", table)
    elif choice == "FIFO":
        file.unlink()
        os.mkfifo(file)
    elif choice == "folder":
        file.unlink()
        file.mkdir()
    elif choice == "missing":
        file.unlink()
    elif choice == "truncated":
        file.write_bytes(file.read_bytes()[:-rng.choice([1, 4, 8, 64])])
    elif choice == "duplicate keys":
        keys = np.fromfile(table / "key", dtype="<i8")
        keys[1] = keys[0]
        keys.tofile(table / "key")
    elif choice == "keys beyond int32":
        keys = np.fromfile(table / "key", dtype="<i8")
        keys[-1] = 2**40
        keys.tofile(table / "key")
    elif choice == "NaN vectors":
        (table / "emb_vector").write_bytes(np.full(16000, np.nan, np.float32).tobytes())
    else:  # a hard link is the file itself: readable, but outside bytes it is not (same inode)
        os.link(file, rw.parent / f"linked_{name}")
    return f"table {name}: {choice}"


def _paths_config_field(rng, root, rw):
    fields = ["supportlonglong", "models", "model", "sparse_files", "embedding_table_names",
              "embedding_vecsize_per_table", "maxnum_catfeature_query_per_table_per_sample",
              "default_value_for_each_table", "deployed_device_list", "max_batch_size", "gpucacheper"]
    name = rng.choice(fields)
    value = rng.choice(["drop", None, -1, 0, 2**63, 1.5, float("nan"), float("inf"), "text", [], [[]], {}, True,
                        [-1], [0.0], [2**40], ["a", "b", "c"], [None]])

    def change(config):
        where = config if name in ("supportlonglong", "models") else config["models"][0]
        if value == "drop":
            where.pop(name, None)
        else:
            where[name] = value
    _edit_config(rw, change)
    return f"config {name} = {value!r}"


def _paths_config_bytes(rng, root, rw):
    config = rw / "hps_config.json"
    choice = rng.choice(["empty", "not JSON", "invalid UTF-8", "truncated", "a list", "nested 200 deep",
                         "nested 100,000 deep", "two models", "no models", "FIFO", "folder"])
    text = config.read_text()
    if choice == "empty":
        config.write_bytes(b"")
    elif choice == "not JSON":
        config.write_text("{supportlonglong: yes}")
    elif choice == "invalid UTF-8":
        config.write_bytes(text.encode().replace(b"demo", b"\xff\xfe\xfd\xfc"))
    elif choice == "truncated":
        config.write_text(text[:len(text) // 2])
    elif choice == "a list":
        config.write_text("[1, 2, 3]")
    elif choice == "nested 200 deep":  # past hps/config.py's depth limit, within json's recursion
        config.write_text(json.dumps({**json.loads(text), "extra": json.loads("[" * 200 + "]" * 200)}))
    elif choice == "nested 100,000 deep":  # past the recursion of any recursive JSON parser
        config.write_text("[" * 100000 + "]" * 100000)
    elif choice == "two models":
        _edit_config(rw, lambda c: c["models"].append(dict(c["models"][0])))
    elif choice == "no models":
        _edit_config(rw, lambda c: c.update(models=[]))
    elif choice == "FIFO":
        config.unlink()
        os.mkfifo(config)
    else:
        config.unlink()
        config.mkdir()
    return f"config: {choice}"


def _paths_config_size(rng, root, rw):
    """Configs that cost unbounded work to read, or hold what no path or output can carry."""
    choice = rng.choice(["unterminated escapes", "5000-digit number", "3 MB name", "lone surrogate name",
                         "lone surrogate sparse_files", "2000 models", "2^20 devices", "5 MB", "num_threads many",
                         "num_threads 10^9", "ANSI and newline name", "volatile_db address list"])
    config = rw / "hps_config.json"
    if choice == "unterminated escapes":
        config.write_text('{"models": "' + '\\"' * 50_000)
    elif choice == "5000-digit number":
        config.write_text(config.read_text().replace('"max_batch_size": 1024', '"max_batch_size": ' + "9" * 5000))
    elif choice == "5 MB":
        _edit_config(rw, lambda c: c.update(padding="x" * (5 << 20)))
    else:
        def change(c):
            entry = c["models"][0]
            if choice == "3 MB name":
                entry["model"] = "n" * (3 << 20)
            elif choice == "lone surrogate name":
                entry["model"] = "de\ud800mo"
            elif choice == "lone surrogate sparse_files":
                entry["sparse_files"] = ["tables/emb\udfff"]
            elif choice == "2000 models":
                c["models"] = [dict(entry, model=f"m{i}") for i in range(2000)]
            elif choice == "2^20 devices":
                entry["deployed_device_list"] = [0] * (1 << 20)
            elif choice.startswith("num_threads"):
                c["persistent_db"] = {"type": "rocks_db", "path": "db",
                                      "num_threads": "many" if choice.endswith("many") else 10**9}
            elif choice == "ANSI and newline name":
                entry["model"] = "\x1b[2J\nhps-surgeon: ok"
            else:
                c["volatile_db"] = {"type": "redis_cluster", "address": "[::1" + ",h:1" * 1000}
        _edit_config(rw, change)
    return f"config: {choice}"


def _paths_model_file(rng, root, rw):
    model = rw / "model.onnx"
    choice = rng.choice(["no HPS_TRT node", "garbage", "empty", "symlink to SECRET", "folder", "FIFO"])
    if choice == "no HPS_TRT node":
        shutil.copy(FIXTURES / SOURCE, model)
    elif choice == "garbage":
        model.write_bytes(SECRET[:4096])
    elif choice == "empty":
        model.write_bytes(b"")
    elif choice == "symlink to SECRET":
        model.unlink()
        os.symlink(root / "outside/SECRET", model)
    elif choice == "folder":
        model.unlink()
        model.mkdir()
    else:
        model.unlink()
        os.mkfifo(model)
    return f"model.onnx: {choice}"


def _paths_external(rng, root, rw):
    model = onnx.load_model(str(rw / "model.onnx"), load_external_data=False)
    recipe = _mutate_external(model, rng, root, rw)
    onnx.save_model(model, str(rw / "model.onnx"))
    return recipe


# --- output folders ------------------------------------------------------------------------------

def _outputs_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    (case / "file").write_text("a file")
    (case / "full").mkdir()
    (case / "full/keep.txt").write_text("keep")
    os.symlink(case / "nowhere", case / "dangling")
    os.symlink(case / "loop", case / "loop")
    values = {"''": "", ".": ".", "dangling symlink": case / "dangling", "symlink loop": case / "loop",
              "300-byte name": case / ("x" * 300), "a file": case / "file", "through a file": case / "file/sub",
              "non-empty": case / "full", "root": "/", "the input's folder": case / "rw",
              "a name that is not UTF-8": Path(os.fsdecode(bytes(case) + b"/\xffout"))}
    label = rng.choice(list(values))
    copy_rewrite(root / "corpus/rw", case / "rw")
    model = case / "rw/model.onnx"
    item.recipe.append(f"output folder: {label}")
    target = values[label]
    requested = () if target in ("", "/") else (Path(os.path.abspath(case / target)),)
    draw = rng.random()
    if draw < 0.2:  # the plan written where nobody asked: over the source, a folder, a special file
        source = case / "src.onnx"
        shutil.copy(FIXTURES / SOURCE, source)
        os.mkfifo(case / "fifo")
        plan_out = rng.choice([source, case / "fifo", case, case / "full", "", "/dev/null", case / "out/plan.yaml"])
        item.recipe.append(f"--plan-out {plan_out}")
        named = () if plan_out in ("", "/dev/null") or Path(plan_out).is_dir() else (Path(plan_out),)
        item.runs.append((["rewrite", source, "--out", case / "out", "--plan-out", plan_out,
                           *(["--dry-run"] if rng.random() < 0.7 else [])], (*named, case / "out")))
    elif draw < 0.6:
        item.runs.append((["rewrite", FIXTURES / SOURCE, "--out", target, *(["--force"] if rng.random() < 0.3 else [])],
                          requested))
    else:
        name = rng.choice([None, "..", "../x", "a/b", "", ".hidden", "n" * 300, "start_triton.sh"])
        extra = [] if name is None else ["--name", name]
        item.recipe.append(f"--name {name!r}")
        item.runs.append((["deploy", case / "rw", "--repo", target, *extra,
                           *(["--force"] if rng.random() < 0.3 else [])], requested))
    item.runs.append((["check", model], ()))


# --- plan files --------------------------------------------------------------------------------------

_PLAN_FIELDS = ["name", "key_dtype", "rows", "dim", "tensor", "table_id", "source_dtype", "max_keys_per_sample"]
_PLAN_VALUES = ["", "a b", "x" * 200, "emb_weight", "int16", {"a": 1}, [1, 2], None, -1, 2**70, 1.5, True, "\u00e9",
                "\x1b[2J", "line\nbreak"]


def _plans_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    """A --plan file for the model it was written for: edited, broken, or no file at all."""
    plan = case / "plan.yaml"
    shutil.copy(root / "corpus/plan.yaml", plan)
    op = rng.choice(["field", "field", "field", "drop", "duplicate", "yaml", "yaml", "bytes", "file"])
    text = plan.read_text()
    if op in ("field", "drop", "duplicate"):
        data = yaml.safe_load(text)
        tables = data["tables"]
        if op == "field":
            field, value = rng.choice(_PLAN_FIELDS), rng.choice(_PLAN_VALUES)
            tables[0][field] = value
            item.recipe.append(f"plan: tables[0].{field} = {value!r}"[:200])
        elif op == "drop":
            key = rng.choice(["tables", "hps_trt_nodes", "options", "notes", "not_rewritten"])
            data.pop(key)
            item.recipe.append(f"plan: no {key}")
        else:
            tables.append(dict(tables[0]))
            item.recipe.append("plan: a table listed twice")
        plan.write_text(yaml.safe_dump(data, allow_unicode=True))
    elif op == "yaml":
        choice = rng.choice(["alias bomb", "1000 deep", "5000 digits", "a list", "empty", "tabs", "surrogate",
                             "custom tag"])
        plan.write_text({
            "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
            "1000 deep": "[" * 1000 + "]" * 1000, "5000 digits": text.replace("rows: 1000", "rows: " + "9" * 5000),
            "a list": "[1, 2, 3]", "empty": "", "tabs": "\t" + text, "surrogate": 'name: "\\ud800"',
            "custom tag": "!!python/object/apply:os.system ['echo owned > owned']\n"}[choice])
        item.recipe.append(f"plan: {choice}")
    elif op == "bytes":
        data = bytearray(text.encode())
        choice = rng.choice(["flip", "cut", "utf-16", "latin-1", "nul"])
        if choice == "flip":
            for _ in range(rng.choice([1, 8, 64])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == "cut":
            data = data[:rng.randrange(len(data))]
        elif choice == "utf-16":
            data = bytearray(text.encode("utf-16"))
        elif choice == "latin-1":
            data = bytearray(("\u00e9" + text).encode("latin-1"))
        else:
            data[rng.randrange(len(data)):0] = b"\0"
        plan.write_bytes(bytes(data))
        item.recipe.append(f"plan bytes: {choice}")
    else:
        choice = rng.choice(["FIFO", "folder", "/dev/zero", "missing", "symlink to SECRET"])
        plan.unlink()
        if choice == "FIFO":
            os.mkfifo(plan)
        elif choice == "folder":
            plan.mkdir()
        elif choice == "/dev/zero":
            plan = Path("/dev/zero")
        elif choice == "symlink to SECRET":
            os.symlink(root / "outside/SECRET", plan)
        item.recipe.append(f"plan file: {choice}")
    extra = ["--dry-run"] if rng.random() < 0.5 else []
    item.runs.append((["rewrite", FIXTURES / SOURCE, "--out", case / "out", "--plan", plan, *extra], (case / "out",)))
    if op in ("yaml", "bytes") and rng.random() < 0.5:  # the same YAML as a pattern file of --patterns DIR
        pattern = case / "patterns/user.pattern/pattern.yaml"
        pattern.parent.mkdir(parents=True)
        shutil.copy(plan, pattern)
        item.runs.append((["scan", FIXTURES / SOURCE, "--patterns", case / "patterns"], ()))


# --- verify's own samples ----------------------------------------------------------------------------

_SCRIPTS = {
    "syntax error": "def load_data(:\n    pass\n",
    "sys.exit(0) while loading": "import sys\nsys.exit(0)\n",
    "sys.exit(3) in load_data": "def load_data():\n    import sys\n    sys.exit(3)\n",
    "Ctrl-C": "def load_data():\n    raise KeyboardInterrupt\n",
    "raises": "def load_data():\n    raise RuntimeError('no traffic')\n",
    "endless": "import numpy as np\ndef load_data():\n    while True:\n        yield {'keys': np.zeros((1, 26), np.int64)}\n",
    "strings": "def load_data():\n    return ['a', 'b']\n",
    "None": "def load_data():\n    return None\n",
    "no load_data": "x = 1\n",
    "ragged": "def load_data():\n    return [{'keys': [[1, 2], [3]]}]\n",
    "wrong dtype": "import numpy as np\ndef load_data():\n    return [{'keys': np.zeros((2, 26), np.float32)}]\n",
    "huge": "import numpy as np\ndef load_data():\n    while True:\n        yield {'keys': np.zeros((1 << 24, 26), np.int64)}\n",
    "valid": "import numpy as np\ndef load_data():\n    rng = np.random.default_rng(0)\n    return [{'keys': "
             "rng.integers(0, 1000, size=(64, 26)).astype(np.int64)}]\n",
}


def _samples_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    """--inputs files and --data-loader-script scripts for a valid rewrite folder."""
    rw = case / "rw"
    copy_rewrite(root / "corpus/rw", rw)
    verify = ["verify", FIXTURES / SOURCE, rw / "model.onnx", "--config", rw / "hps_config.json", "--iterations", "1"]
    if rng.random() < 0.4:
        name = rng.choice(list(_SCRIPTS))
        # a module name a script could shadow (Polygraphy imports scripts by their file's stem)
        script = case / rng.choice(["traffic.py", "json.py", "numpy.py", "os.py"])
        script.write_text(_SCRIPTS[name])
        item.recipe.append(f"--data-loader-script {script.name}: {name}")
        item.runs.append(([*verify, "--data-loader-script", script], ()))
        return
    inputs = case / "inputs.json"
    shutil.copy(root / "corpus/inputs.json", inputs)
    choice = rng.choice(["100000 deep", "5000 digits", "not JSON", "ints", "mapping", "empty list", "flip", "cut",
                         "FIFO", "folder", "surrogate name", "wrong shape", "wrong dtype", "extra input"])
    text = inputs.read_text()
    if choice in ("FIFO", "folder"):
        inputs.unlink()
        os.mkfifo(inputs) if choice == "FIFO" else inputs.mkdir()
    elif choice in ("flip", "cut"):
        data = bytearray(text.encode())
        if choice == "flip":
            for _ in range(rng.choice([1, 8, 64])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data = data[:rng.randrange(len(data))]
        inputs.write_bytes(bytes(data))
    elif choice in ("wrong shape", "wrong dtype", "extra input"):
        from polygraphy.json import save_json

        keys = {"wrong shape": np.zeros((2, 25), np.int64), "wrong dtype": np.zeros((2, 26), np.float64),
                "extra input": np.zeros((2, 26), np.int64)}[choice]
        feed = {"keys": keys, **({"extra": keys} if choice == "extra input" else {})}
        save_json([feed], str(inputs))
    else:
        inputs.write_text({"100000 deep": "[" * 100_000 + "]" * 100_000, "5000 digits": "[" + "9" * 5000 + "]",
                           "not JSON": "{keys: 1", "ints": "[1, 2, 3]", "mapping": '{"keys": 1}',
                           "empty list": "[]", "surrogate name": '[{"\\ud800": 1}]'}[choice])
    item.recipe.append(f"--inputs: {choice}")
    item.runs.append(([*verify, "--inputs", inputs], ()))


# --- publish targets -----------------------------------------------------------------------------

_REDIS_URLS = ["redis://", "redis://[::1", "redis://[::1]:x", "redis://host:0", "redis://host:99999999999999",
               "redis://h:1,,", "redis://h:\u0661", "rediss://h:1", "http://h:1", "redis://user@:1", "redis://\x1b[2J:1"]


def _targets_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    """Where publish would write: --persistent-db folders, --volatile-db URLs, a config's persistent_db.path."""
    rw = case / "rw"
    copy_rewrite(root / "corpus/rw", rw)
    (case / "photos").mkdir()
    (case / "photos/keep.txt").write_text("keep")
    (case / "file").write_text("a file")
    os.mkfifo(case / "fifo")
    os.symlink(case / "loop", case / "loop")
    config = rw / "hps_config.json"
    op = rng.choice(["persistent", "persistent", "volatile", "partitions", "update"])
    if op == "persistent":
        target = rng.choice(["/", "", ".", rw, rw / "tables", rw / "tables/emb_weight", case, case / "photos",
                             case / "file", case / "fifo", case / "loop", case / "db", rw / "db", "/dev/null"])
        item.recipe.append(f"--persistent-db {target!s}")
        named = () if target in ("/", "", ".", "/dev/null") else (Path(target),)
        item.runs.append((["publish", rw, "--persistent-db", target, "--quiet"], (*named, config)))
    elif op == "volatile":
        url = rng.choice(_REDIS_URLS)
        item.recipe.append(f"--volatile-db {url!r}")
        item.runs.append((["publish", rw, "--volatile-db", url, "--quiet"], (config,)))
    elif op == "partitions":
        count = rng.choice(["0", "-1", str(10**9), str(2**64)])
        item.recipe.append(f"--num-partitions {count}")
        item.runs.append((["publish", rw, "--persistent-db", case / "db", "--num-partitions", count, "--quiet"],
                          (case / "db", config)))
    else:
        where = rng.choice(["../photos", str(case / "photos"), "tables", ".", "/", "db", "../../outside", "", 5,
                            str(case / "fifo")])
        _edit_config(rw, lambda c: c.update(persistent_db={"type": "rocks_db", "path": where}))
        changed = case / "delta/emb_weight"
        changed.mkdir(parents=True)
        for name in ("key", "emb_vector"):
            shutil.copy(rw / "tables/emb_weight" / name, changed / name)
        item.recipe.append(f"--update into persistent_db.path {where!r}")
        item.runs.append((["publish", rw, "--update", changed, "--quiet"], (rw / "db",)))


# --- numeric options ---------------------------------------------------------------------------

_NUMBERS = ["0", "-1", str(2**31), str(2**40), str(2**64), "nan", "inf", "-inf", "1e308"]


def _options_input(rng: random.Random, root: Path, case: Path, item: Input) -> None:
    """Numbers past what a command can honour: refused in one line, or honoured within bounded work."""
    rw = case / "rw"
    copy_rewrite(root / "corpus/rw", rw)
    value = rng.choice(_NUMBERS)
    integer = value.lstrip("-").isdigit()
    rewrite = ["rewrite", FIXTURES / SOURCE, "--out", case / "out"]
    verify = ["verify", FIXTURES / SOURCE, rw / "model.onnx", "--config", rw / "hps_config.json"]
    choices = [(rewrite, "--gpucache-ratio", (case / "out",))]
    if integer:
        choices += [(rewrite, option, (case / "out",))
                    for option in ("--max-batch-size", "--max-keys-per-sample", "--min-table-rows")]
        choices += [(verify, option, ()) for option in ("--iterations", "--max-keys-per-sample", "--min-distinct-keys")]
        if not value.startswith(("-", "0")):  # argparse's own type check refuses the others, with its usage
            choices.append((verify, "--batch-sizes", ()))
        choices.append((["deploy", rw, "--repo", case / "repo"], "--max-batch", (case / "repo",)))
    argv, option, requested = rng.choice(choices)
    item.recipe.append(f"option {option}={value} of {argv[0]}")
    item.runs.append(([*argv, f"{option}={value}"], requested))  # `=`: argparse would take -1 for an option


# --- the contract --------------------------------------------------------------------------------

def _changed_outside(before: dict, after: dict, requested: tuple[Path, ...]) -> list[str]:
    allowed = [str(path) for path in requested] + [os.path.realpath(path) for path in requested]
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    return sorted(p for p in changed if not any(p == a or p.startswith(a + "/") for a in allowed))


def _secret_in_outputs(requested: tuple[Path, ...], text: str) -> list[str]:
    found = [number for number in re.findall(r"-?\d{10,}", text) if number in _SECRET_NUMBERS]
    for output in requested:
        files = [Path(f) / n for f, _, names in os.walk(output) for n in names] if os.path.isdir(output) else [output]
        found += [str(path) for path in files if os.path.isfile(path) and b"SECRET" in path.read_bytes()]
    return found


class Hang(BaseException):
    """A command ran longer than COMMAND_TIMEOUT_S (a BaseException: no `except OSError` may swallow it)."""


def _timeout(signum, frame):
    raise Hang(f"a command ran longer than {COMMAND_TIMEOUT_S} s")


def check_contract(argv: list[str], requested: tuple[Path, ...], result, before: dict, after: dict,
                   root: Path) -> list[str]:
    command = argv[0]
    broken = []
    if result.code not in EXIT_CODES[command]:
        broken.append(f"exit {result.code}, documented: {sorted(EXIT_CODES[command])}")
    err = result.err.strip().splitlines()
    names_input = lambda line: any(  # noqa: E731
        subject in line for subject in (str(root), str(FIXTURES), *_OPTIONS)) or re.search(
        r"(: |[ (])(--[a-z][a-z-]* |input ')", line)
    if result.code == 2:
        if len(err) != 1 or not err[0].startswith("hps-surgeon: error: ") or not names_input(err[0]):
            broken.append(f"exit 2 needs one line `hps-surgeon: error: ...` naming the input; stderr: {result.err!r}")
    elif result.code == 130:
        if len(err) != 1 or not re.match(r"hps-surgeon: error: \w+ interrupted", err[0]):
            broken.append(f"exit 130 needs one `interrupted` line; stderr: {result.err!r}")
    elif command == "check":
        lines = result.out.strip().splitlines()
        if result.err or not all(line.startswith(str(root)) and ": " in line for line in lines):
            broken.append(f"check prints `path:where: message` lines only; stdout {result.out!r}, stderr "
                          f"{result.err!r}")
        if result.code == 1 and not lines:
            broken.append("check exit 1 without a problem line")
    elif command == "verify" and result.code == 1:
        if len(err) != 1 or not err[0].startswith("hps-surgeon: verify FAILED: "):
            broken.append(f"verify exit 1 needs one `verify FAILED` line; stderr: {result.err!r}")
    elif result.code == 0 and any("error" in line for line in err):
        broken.append(f"exit 0 with errors on stderr: {result.err!r}")
    outside = _changed_outside(before, after, requested)
    if outside:
        broken.append(f"changed outside the requested output: {outside[:5]}")
    leaks = _secret_in_outputs(requested, result.out + result.err)
    if leaks:
        broken.append(f"bytes of SECRET in the output: {leaks[:5]}")
    return broken


@pytest.mark.parametrize("index", range(INPUTS), ids=lambda i: f"input[{i}]")
def test_fuzz(index, root, capfd, monkeypatch):
    monkeypatch.setenv("HPS_SURGEON_DEBUG", "1")  # an unexpected exception fails here, with its traceback
    item = build(index, root)
    case = root / f"input{index}"
    monkeypatch.chdir(case)
    previous = signal.signal(signal.SIGALRM, _timeout)
    try:
        for argv, requested in item.runs:
            before = tree(root)
            signal.alarm(COMMAND_TIMEOUT_S)
            started = time.monotonic()
            try:
                result = run_in_process(capfd, argv)
            except BaseException as exc:
                exc.add_note(f"fuzz input {index} ({'; '.join(item.recipe)}), command {[str(a) for a in argv]}")
                raise
            finally:
                signal.alarm(0)
            if os.environ.get("HPS_SURGEON_FUZZ_LOG"):
                with open(os.environ["HPS_SURGEON_FUZZ_LOG"], "a") as log:
                    log.write(json.dumps({"index": index, "recipe": item.recipe, "argv": [str(a) for a in argv],
                                          "seconds": round(time.monotonic() - started, 3),
                                          "code": result.code, "err": result.err[-300:], "out": result.out[-300:]})
                              + "\n")
            broken = check_contract([str(a) for a in argv], requested, result, before, tree(root), root)
            assert not broken, (f"input {index} ({'; '.join(item.recipe)}), command {[str(a) for a in argv]}:\n  "
                                + "\n  ".join(broken))
    finally:
        signal.signal(signal.SIGALRM, previous)
        monkeypatch.chdir(root)
        shutil.rmtree(case, ignore_errors=True)
