"""HugeCTR's HPS configuration (`hps_config.json`): build it for a plan, load and validate it, find a table.

Validation follows HugeCTR's own parser (`config_fields.FIELDS` says field by field what it accepts,
refuses and fills in): first `hps_config.schema.json` for the shape of the file, then checks across
fields (one entry per table in every per-table list, names, table folders), then notes on what
HugeCTR would do differently from us. `load` returns the config with HugeCTR's defaults filled in.
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from .. import bounded, confine
from ..errors import Problem
from .config_fields import BY_NAME, MODEL_DEFAULTS, UNSERVED_SECTIONS, default_table_name
from .contract import NAME_SYNTAX
from .tables import KEY_FILE, VECTOR_FILE

if TYPE_CHECKING:
    from ..plan import Plan

#: Lists of a `models` entry that hold one item per table, in `sparse_files` order, and the line of
#: HugeCTR that reads one item per table from each.
PER_TABLE_FIELDS = {
    "embedding_table_names": "hier_parameter_server.cpp:281 reads one name per table",
    "embedding_vecsize_per_table": "hier_parameter_server.cpp:259 refuses another count",
    "maxnum_catfeature_query_per_table_per_sample": "embedding_cache.cpp:180-182 reads one per table",
}
#: entries of any list of a config (the schema's largest maxItems: tables per model)
MAX_LIST_ITEMS = 65536
#: schema problems reported of one config (a 20,000-model config with one bad field each is 20,000)
_SCHEMA_PROBLEMS = 20
_FORMAT = "see the README's table of HPS config fields"
_SCHEMA_HINTS = {
    ("models", "minItems"): "HugeCTR refuses it (\"No model configurations in JSON\", inference_utils.cpp:508) — "
                            "add a model entry",
    ("deployed_device_list", "minItems"): "HugeCTR reads its last entry (inference_utils.cpp:564) — list the GPUs "
                                          "HPS serves, e.g. [0]",
    ("deployed_device_list", "maxItems"): "HugeCTR makes an embedding cache on every GPU listed "
                                          "(hier_parameter_server.cpp:646-649) — list the GPUs HPS serves",
    ("models", "maxItems"): "one HPS serves them all from one process — split the config",
}


def build(plan: Plan, tables_root: Path | None = None) -> dict[str, Any]:
    """HugeCTR HPS configuration for the plan's tables (one `models` entry).

    `tables_root`: the absolute folder the table folders live in (HugeCTR opens sparse_files relative
    to its working directory); None writes them relative to the config's folder.
    """
    options = plan.options
    return {
        # HugeCTR: false = 32-bit keys in the HPS backend, which its HPS_TRT plugin requires.
        "supportlonglong": any(t.key_dtype == "int64" for t in plan.tables),
        "models": [{
            "model": options.model_name,
            "sparse_files": [str(tables_root / t.folder) if tables_root else t.folder for t in plan.tables],
            "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": [t.name for t in plan.tables],
            "embedding_vecsize_per_table": [t.dim for t in plan.tables],
            "maxnum_catfeature_query_per_table_per_sample": [t.max_keys_per_sample for t in plan.tables],
            "default_value_for_each_table": [t.default_value for t in plan.tables],
            "deployed_device_list": [0],
            "max_batch_size": options.max_batch_size,
            "cache_refresh_percentage_per_iteration": 0.2,
            # 1.0: always insert misses synchronously, so lookups stay exact at any hit rate.
            "hit_rate_threshold": 1.0,
            "gpucacheper": options.gpucache_ratio,
            "gpucache": True,
        }],
    }


def model_entry(config: dict, model_name: str) -> dict | None:
    """The `models` entry named `model_name` (an entry without `model` is named ""), or None."""
    return next((m for m in config.get("models", []) if m.get("model", "") == model_name), None)


def table_folder(config_path: Path, entry: dict, table_id: int) -> Path:
    """Real path of the folder of table `table_id` of a `models` entry: the one place sparse_files become folders.

    Absolute paths are used as they are; relative ones are taken relative to the config's folder
    (what our plugin does; HugeCTR takes them relative to its working directory, `check` warns).
    Relative or absolute, the folder must lie inside the config's folder or a trusted root (else
    `confine.PathRefused`).
    """
    value = entry["sparse_files"][table_id]
    # rewrite writes absolute paths: a folder copied or moved elsewhere still names the old tables
    named_elsewhere = isinstance(value, str) and os.path.isabs(value) and "\0" not in value and not Path(
        os.path.normpath(value)).is_relative_to(Path(os.path.abspath(config_path)).parent)
    moved = (" (an absolute path, as rewrite writes them: point it at this folder, or rewrite with "
             "--relative-paths for a folder that moves)") if named_elsewhere else ""
    return confine.inside(Path(config_path), f"model '{entry.get('model')}' sparse_files[{table_id}]", value,
                          hint=moved, trusted=True)


def table_default(entry: dict, table_id: int) -> float:
    """default_value_for_each_table[table_id], 0.0 past the list's end (HugeCTR pads it, inference_utils.cpp:601)."""
    values = entry.get("default_value_for_each_table", [])
    return float(values[table_id]) if table_id < len(values) else 0.0


def unserved_sections(config: dict) -> list[str]:
    """Sections of the config asking for something we do not serve yet (a Kafka update_source)."""
    return [name for name, inert in UNSERVED_SECTIONS.items()
            if isinstance(config.get(name), dict) and str(config[name].get("type", inert[0])).lower() not in inert]


@cache
def _schema() -> dict:
    return json.loads(resources.files("hps_surgeon.hps").joinpath("hps_config.schema.json").read_text())


def load(path: Path) -> tuple[dict | None, list[Problem]]:
    """The config with HugeCTR's defaults filled in, and its problems (errors, warnings, notes).

    The config is None when it cannot be used at all (unreadable, not an HPS config, or per-table
    lists of different lengths).
    """
    return read(path)[1:]


def read(path: Path) -> tuple[Any, dict | None, list[Problem]]:
    """`load`, and the file's JSON value as written (what publish edits and writes back): one read."""
    where = str(path)
    raw, unreadable = parse(path)
    if unreadable is not None:
        return raw, None, [unreadable]
    found = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(raw),
                   key=lambda e: [str(p) for p in e.absolute_path])
    problems = [_schema_problem(where, e) for e in found[:_SCHEMA_PROBLEMS]]
    if problems:
        return raw, None, problems
    config = _with_defaults(raw)
    miscounted = [p for index, model in enumerate(config["models"]) for p in _count_problems(where, index, model)]
    if miscounted:
        return raw, None, miscounted
    for index, model in enumerate(config["models"]):
        problems += _check_model_entry(path, index, model)
    return raw, config, problems + _hugectr_differences(where, config)


def parse(path: Path) -> tuple[Any, Problem | None]:
    """The JSON value of `path` (any shape), or the one problem that keeps it from being read: not a
    regular file, over CONFIG_MAX_BYTES, not UTF-8, nested deeper than MAX_DEPTH (checked before
    parsing) or holding an integer of more than MAX_INT_DIGITS digits, not JSON, a list past
    MAX_LIST_ITEMS entries, a lone surrogate in a string."""
    where = str(path)
    try:
        text = bounded.read_text(path, where, bounded.CONFIG_MAX_BYTES, "pass the hps_config.json that rewrite wrote")
        bounded.check_json(text, where, "an HPS config nests 4", "this is not an HPS config")
    except bounded.Unreadable as exc:
        return None, Problem(where, "(file)", exc.problem)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, Problem(where, f"line {exc.lineno}", f"not valid JSON ({exc.msg}) — fix the file or re-run "
                                                           "hps-surgeon rewrite")
    long = bounded.long_list(value, MAX_LIST_ITEMS)
    if long is not None:
        return None, Problem(where, long[0], f"a list of {long[1]} entries; HPS config lists hold one entry per table "
                                             f"or GPU, at most {MAX_LIST_ITEMS} are read — fix the file")
    bad = bounded.bad_string(value)
    if bad is not None:
        return None, Problem(where, bad, "holds a lone surrogate (\\ud800-\\udfff), which is no character and can "
                                         "name no file — fix the string")
    return value, None


def _schema_problem(where: str, error: jsonschema.ValidationError) -> Problem:
    at = _json_path(error.absolute_path)
    if error.validator == "required":
        name = next(n for n in error.validator_value if n not in error.instance)
        field = BY_NAME[name]
        return Problem(where, at, f"'{name}' is missing; HugeCTR's HPS refuses the config (\"[Parser] No Such Key: "
                                  f"{name}\", {field.required}) — add it")
    field_name = next((str(p) for p in reversed(error.absolute_path) if isinstance(p, str)), "")
    hint = _SCHEMA_HINTS.get((field_name, error.validator), _FORMAT)
    if error.validator == "maxItems":  # jsonschema's message quotes the whole list
        return Problem(where, at, f"has {len(error.instance)} entries, more than the {error.validator_value} read — "
                                  f"{hint}")
    return Problem(where, at, f"{error.message} — {hint}")


def _json_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _with_defaults(config: dict) -> dict:
    """A copy with what HugeCTR fills in for absent fields (inference_utils.cpp:513-632)."""
    config = copy.deepcopy(config)
    for model in config["models"]:
        for name, value in MODEL_DEFAULTS.items():
            model.setdefault(name, value)
        count = len(model["sparse_files"])
        model.setdefault("embedding_table_names", [default_table_name(i) for i in range(count)])
    return config


def _count_problems(where: str, index: int, model: dict) -> list[Problem]:
    count = len(model["sparse_files"])
    return [Problem(where, f"models[{index}].{field}", f"has {len(model[field])} entries, sparse_files has {count}; "
                    f"HugeCTR needs one per table ({reason}) — give one per table")
            for field, reason in PER_TABLE_FIELDS.items() if len(model[field]) != count]


def _check_model_entry(path: Path, index: int, model: dict) -> list[Problem]:
    where = str(path)
    at = f"models[{index}]"
    problems = []
    count = len(model["sparse_files"])
    defaults = len(model["default_value_for_each_table"])
    if defaults != count:
        what = (f"tables {defaults}..{count - 1} get 0.0, as HugeCTR pads the list" if defaults < count else
                f"the {defaults - count} extra entries are ignored, as HugeCTR ignores them")
        problems.append(Problem(where, f"{at}.default_value_for_each_table", f"has {defaults} entries for {count} "
                                f"tables: {what} (inference_utils.cpp:593-605)", "note"))
    problems += _check_names(where, at, model)
    relative = [f for f in model["sparse_files"] if not os.path.isabs(f)]
    if relative:
        problems.append(Problem(where, f"{at}.sparse_files", f"{len(relative)} relative path(s) (e.g. '{relative[0]}'): "
                                "HugeCTR's HPS opens them relative to its working directory (io/local_filesystem.cpp:"
                                "31-36), our plugin relative to this config's folder — rewrite without "
                                "--relative-paths to write absolute paths", "warning"))
    for t, file in enumerate(model["sparse_files"]):
        try:
            folder = table_folder(path, model, t)
        except confine.PathRefused as exc:
            problems.append(Problem(str(path), f"models[{index}].sparse_files[{t}]", exc.problem))
            continue
        if not (folder / KEY_FILE).is_file() or not (folder / VECTOR_FILE).is_file():
            problems.append(Problem(where, f"{at}.sparse_files[{t}]", f"'{file}' has no key and emb_vector files "
                                    f"(looked in {folder}) — copy the table folder there or fix the path"))
    return problems


def _check_names(where: str, at: str, model: dict) -> list[Problem]:
    """HugeCTR aborts on names outside [a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-38)."""
    problems = []
    named = [(f"{at}.model", model["model"], "model")]
    named += [(f"{at}.embedding_table_names[{t}]", name, "table")
              for t, name in enumerate(model["embedding_table_names"])]
    for field, name, kind in named:
        if not NAME_SYNTAX.fullmatch(name):
            shown = f"'{name}'" + (" (the default when 'model' is absent)" if name == "" and kind == "model" else "")
            fix = "the HPS_TRT nodes' model_name with it" if kind == "model" else "its folder may keep its name"
            problems.append(Problem(where, field, f"{shown} is not a valid HugeCTR {kind} name: HugeCTR's HPS aborts "
                                    "unless names match [a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-38) — "
                                    f"rename it (letters, digits, '_' and '-'; {fix})"))
    return problems


def _hugectr_differences(where: str, config: dict) -> list[Problem]:
    """Warnings and notes where HugeCTR's HPS would behave differently from ours on this config."""
    problems = []
    if config["supportlonglong"]:
        problems.append(Problem(where, "supportlonglong", "true: HugeCTR's HPS_TRT plugin refuses it (\"i64_input_key "
                                "must be false for HPS TensorRT plugin\", plugin/lookup_manager.cpp:133-137) and then "
                                "serves no lookup; our plugin takes int64 keys — rewrite with --key-dtype int32 "
                                "to stay loadable by HugeCTR", "warning"))
    if config.get("fuse_embedding_table"):
        problems.append(Problem(where, "fuse_embedding_table", "true: HugeCTR's HPS_TRT plugin refuses it "
                                "(plugin/lookup_manager.cpp:138-142); our plugin serves each table on its own — "
                                "set it to false for HugeCTR", "warning"))
    for section in unserved_sections(config):
        problems.append(Problem(where, section, f"the '{section}' section (type {config[section]['type']}) is not "
                                "consumed by hps-surgeon yet: tables change only through `publish --update` and "
                                "refresh — remove the section, or expect its updates to be ignored", "warning"))
    for index, model in enumerate(config["models"]):
        threshold = model["hit_rate_threshold"]
        if threshold < 1:
            problems.append(Problem(where, f"models[{index}].hit_rate_threshold", f"{threshold}: in HugeCTR, a batch "
                                    "whose GPU-cache hit rate reaches it gets the default value for every miss "
                                    "(embedding_cache.cpp:398-429), so results are approximate; our plugin always "
                                    "returns the stored vectors", "note"))
    return problems
