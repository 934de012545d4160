"""Every field of `hps_config.json`: what HugeCTR's HPS does with it (rule, default, the line of its
source that does it: NVIDIA-Merlin/HugeCTR at af9025667e, the last commit with HPS) and what we do.

The README's "HPS config fields" table is `markdown_table()` of this data (a test keeps them equal);
`config.load` applies the defaults and the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: where HugeCTR's parser reads each field; paths relative to HugeCTR/src/hps/ unless given
PARSER = "inference_utils.cpp"


@dataclass(frozen=True)
class Field:
    name: str
    scope: str  #: "top" (the file) or "model" (an entry of `models`)
    hugectr: str  #: HugeCTR's rule and default, citing its source
    ours: str
    required: str | None = None  #: where HugeCTR's parser demands it ("[Parser] No Such Key", parser.hpp:114)
    default: Any = None  #: HugeCTR's default when absent (None: no default, or computed)


FIELDS: tuple[Field, ...] = (
    Field("supportlonglong", "top", "required bool (inference_utils.cpp:383); its TensorRT plugin refuses true "
          "(plugin/lookup_manager.cpp:133)", "required bool; true when a table takes int64 keys; our plugin takes "
          "int32 and int64 keys either way, `check` warns when true", required=f"{PARSER}:383"),
    Field("models", "top", "required, at least one entry (inference_utils.cpp:507-509)", "same; at most 1024 "
          "entries", required=f"{PARSER}:507"),
    Field("fuse_embedding_table", "top", "optional, false (inference_utils.cpp:376); its TensorRT plugin refuses "
          "true (plugin/lookup_manager.cpp:138)", "accepted; each table is served on its own, `check` warns when true",
          default=False),
    Field("volatile_db, persistent_db", "top", "optional database tiers (inference_utils.cpp:386-500)",
          "read as HugeCTR reads them; a redis_cluster volatile_db or a rocks_db persistent_db serves the tables "
          "(README \"Storage tiers\"); hash_map types mean host memory; numbers of the right type and range "
          "(num_threads 1 to 1024, num_partitions 1 to 65536), persistent_db.path a string"),
    Field("update_source", "top", "optional, type null (inference_utils.cpp:386-408)", "read as HugeCTR reads it; "
          "a kafka_message_queue source is not consumed: `check` and the plugin's log warn, naming the section"),
    Field("model", "model", "optional, \"\" (inference_utils.cpp:513); must match [a-zA-Z0-9_-]{1,120} or HPS "
          "aborts (hier_parameter_server.cpp:34-36), so \"\" aborts", "same default and rule; `check` names the "
          "field", default=""),
    Field("max_batch_size", "model", "optional, 64 (inference_utils.cpp:519); a lookup of more than max_batch_size "
          "x maxnum_catfeature_query_per_table_per_sample keys is skipped, leaving the output unwritten "
          "(plugin/lookup_manager.cpp:197-204)", "optional, 64, at least 1; our plugin serves lookups of any size; "
          "`deploy` keeps the engine's batch within it", default=64),
    Field("sparse_files", "model", "required, one folder per table (inference_utils.cpp:521), opened relative to "
          "the process's working directory (io/local_filesystem.cpp:31-36)", "required, at most 65536 tables; "
          "`rewrite` writes absolute paths (`--relative-paths`: relative to the config's folder, which our plugin "
          "accepts and `check` warns about); inside the config's folder or one trusted with `--allow-path` (README "
          "Security)", required=f"{PARSER}:521"),
    Field("gpucache", "model", "optional, true (inference_utils.cpp:529)", "same", default=True),
    Field("hit_rate_threshold", "model", "optional, 0.9 (inference_utils.cpp:531); when a batch's GPU-cache hit "
          "rate reaches it, misses return the default value (embedding_cache.cpp:398-429)", "any number; lookups are "
          "always exact, `check` notes a value below 1", default=0.9),
    Field("gpucacheper", "model", "optional, 0.2 (inference_utils.cpp:533); the cache holds at least 2048 vectors "
          "(embedding_cache.cpp:193)", "optional, 0.2, at least 0; 1 or more = the whole table on the GPU",
          default=0.2),
    Field("num_of_worker_buffer_in_pool", "model", "optional, 1 (inference_utils.cpp:546)",
          "unused; an integer of at least 1 when given", default=1),
    Field("cache_refresh_percentage_per_iteration", "model", "optional, 0 (inference_utils.cpp:554)",
          "unused; a number when given", default=0.0),
    Field("deployed_device_list", "model", "required and not empty: its last entry is read "
          "(inference_utils.cpp:557-564); lookups on other GPUs are skipped, leaving the output unwritten "
          "(plugin/lookup_manager.cpp:168-172); an embedding cache is made on every GPU listed "
          "(hier_parameter_server.cpp:646-649)", "required, not empty, at most 1024 GPU ids; our plugin serves any "
          "GPU; `deploy` gives Triton's instance groups these GPUs", required=f"{PARSER}:557"),
    Field("maxnum_catfeature_query_per_table_per_sample", "model", "required (inference_utils.cpp:567), one per "
          "table (embedding_cache.cpp:180-182)", "required, one per table, each at least 1 and at least the keys "
          "per sample of every HPS_TRT node of the table", required=f"{PARSER}:567"),
    Field("embedding_vecsize_per_table", "model", "required (inference_utils.cpp:579), one per table "
          "(hier_parameter_server.cpp:259), equal to the node's emb_vec_size (plugin/lookup_manager.cpp:206)",
          "same", required=f"{PARSER}:579"),
    Field("default_value_for_each_table", "model", "required (inference_utils.cpp:590); a short list is padded "
          "with 0.0, extra entries are ignored (inference_utils.cpp:593-605)", "same; `check` notes the padding",
          required=f"{PARSER}:590"),
    Field("embedding_table_names", "model", "optional, sparse_embedding<i> (inference_utils.cpp:617-632), one per "
          "table (hier_parameter_server.cpp:281), each matching [a-zA-Z0-9_-]{1,120} or HPS aborts "
          "(hier_parameter_server.cpp:37)", "same; `check` names the field"),
    Field("any other field", "model", "read for other modes (inference_utils.cpp:607-674)", "accepted, ignored"),
)

BY_NAME = {f.name: f for f in FIELDS}
#: per-model fields HugeCTR fills in when absent
MODEL_DEFAULTS = {f.name: f.default for f in FIELDS if f.scope == "model" and f.default is not None}
#: config sections naming something we do not serve yet, and the types that ask for nothing
#: (HugeCTR's names and aliases); drop a section here once it is served
UNSERVED_SECTIONS = {"update_source": ("null", "none")}


def default_table_name(index: int) -> str:
    """HugeCTR's name for table `index` when `embedding_table_names` is absent (inference_utils.cpp:630)."""
    return f"sparse_embedding{index}"


def markdown_table() -> str:
    """The README's table of config fields."""
    lines = ["| field | HugeCTR's HPS (rule, default, source) | hps-surgeon |", "| --- | --- | --- |"]
    for f in FIELDS:
        label = f.name if f.name == "any other field" else ", ".join(f"`{n}`" for n in f.name.split(", "))
        lines.append(f"| {label}{' (top level)' if f.scope == 'top' else ''} | {f.hugectr} | {f.ours} |")
    return "\n".join(lines)
