"""HugeCTR's HPS configuration (`hps_config.json`): build it for a plan, load and validate it, find a table.

Validation has two layers, as for patterns: `hps_config.schema.json` for the shape of the file, then
checks across fields (one entry per table in every per-table list, table folders present).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from .. import confine
from ..errors import Problem
from .tables import KEY_FILE, VECTOR_FILE

if TYPE_CHECKING:
    from ..plan import Plan

#: Lists of a `models` entry that hold one item per table, in `sparse_files` order.
PER_TABLE_FIELDS = ("embedding_table_names", "embedding_vecsize_per_table",
                    "maxnum_catfeature_query_per_table_per_sample", "default_value_for_each_table")


def build(plan: Plan) -> dict[str, Any]:
    """HugeCTR HPS configuration for the plan's tables (one `models` entry)."""
    options = plan.options
    return {
        # HugeCTR: false = 32-bit keys in the HPS backend, which its HPS_TRT plugin requires.
        "supportlonglong": any(t.key_dtype == "int64" for t in plan.tables),
        "models": [{
            "model": options.model_name,
            "sparse_files": [t.folder for t in plan.tables],
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
    """The `models` entry named `model_name`, or None."""
    return next((m for m in config.get("models", []) if m.get("model") == model_name), None)


def table_folder(config_path: Path, entry: dict, table_id: int) -> Path:
    """Real path of the folder of table `table_id` of a `models` entry: relative sparse_files are relative to
    the config; relative or absolute, it must lie inside the config's folder (else `confine.PathRefused`)."""
    return confine.inside(Path(config_path), f"model '{entry.get('model')}' sparse_files[{table_id}]",
                          entry["sparse_files"][table_id])


@cache
def _schema() -> dict:
    return json.loads(resources.files("hps_surgeon.hps").joinpath("hps_config.schema.json").read_text())


def load(path: Path) -> tuple[dict | None, list[Problem]]:
    """The config and its problems; the config is None when it cannot be used at all."""
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        return None, [Problem(str(path), "(file)", f"cannot read the HPS config ({exc.strerror}) — pass the "
                                                    "hps_config.json that rewrite wrote")]
    except json.JSONDecodeError as exc:
        return None, [Problem(str(path), f"line {exc.lineno}", f"not valid JSON ({exc.msg}) — fix the file or "
                                                                "re-run hps-surgeon rewrite")]
    except UnicodeDecodeError as exc:
        return None, [Problem(str(path), f"byte {exc.start}", "not UTF-8 text, so not JSON — fix the file or "
                                                               "re-run hps-surgeon rewrite")]
    found = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(config),
                   key=lambda e: [str(p) for p in e.absolute_path])
    problems = [Problem(str(path), _json_path(e.absolute_path), f"{e.message} — see HugeCTR's HPS configuration "
                                                                 "format") for e in found]
    if problems:
        return None, problems
    for index, model in enumerate(config["models"]):
        problems += _check_model_entry(path, index, model)
    return config, problems


def _json_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _check_model_entry(path: Path, index: int, model: dict) -> list[Problem]:
    problems = []
    count = len(model["sparse_files"])
    for field in PER_TABLE_FIELDS:
        if len(model[field]) != count:
            problems.append(Problem(str(path), f"models[{index}].{field}",
                                    f"has {len(model[field])} entries, sparse_files has {count} — one per table"))
    for t, file in enumerate(model["sparse_files"]):
        try:
            folder = table_folder(path, model, t)
        except confine.PathRefused as exc:
            problems.append(Problem(str(path), f"models[{index}].sparse_files[{t}]", exc.problem))
            continue
        if not (folder / KEY_FILE).is_file() or not (folder / VECTOR_FILE).is_file():
            problems.append(Problem(str(path), f"models[{index}].sparse_files[{t}]",
                                    f"'{file}' has no key and emb_vector files (looked in {folder}) — "
                                    "copy the table folder next to the config"))
    return problems
