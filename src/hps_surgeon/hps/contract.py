"""The HPS_TRT plugin contract every stage agrees on (HugeCTR's hps_trt, creator HPS_TRT v1),
and the names of the files a rewrite folder holds."""

import re
from collections.abc import Sequence

from onnx import AttributeProto

HPS_OP = "HPS_TRT"
#: ONNX Runtime's TensorRT execution provider looks for TensorRT plugin nodes in this domain.
DEFAULT_DOMAIN = "trt.plugins"
DOMAIN_VERSION = 1
#: HugeCTR's HPS_TRT v1 creator declares exactly these fields (hps_plugin.cpp).
ATTRIBUTES = {"ps_config_file": AttributeProto.STRING, "model_name": AttributeProto.STRING,
              "table_id": AttributeProto.INT, "emb_vec_size": AttributeProto.INT}
#: key dtypes an HPS_TRT node takes; HugeCTR's own plugin takes int32 only.
KEY_DTYPES = ("int32", "int64")

#: HugeCTR aborts unless model and table names match this (HugeCTR/src/hps/hier_parameter_server.cpp:34,
#: HierParameterServerBase::make_tag_name, called for every table when HPS starts).
NAME_SYNTAX = re.compile(r"[a-zA-Z0-9_\-]{1,120}")
NAME_LIMIT = 120

# A rewrite folder: MODEL_NAME (+ .data), CONFIG_NAME, REPORT_NAME, TABLES_DIR/<name>/{key, emb_vector}.
MODEL_NAME = "model.onnx"
CONFIG_NAME = "hps_config.json"
REPORT_NAME = "report.json"
TABLES_DIR = "tables"
#: metadata_props keys stamped on every node a rewrite inserts (provenance, as onnxscript's rewriter does).
PROVENANCE_PATTERN = "hps_surgeon.pattern"
PROVENANCE_REPLACED = "hps_surgeon.replaced_nodes"
PROVENANCE_LOOKUP = "hps_surgeon.lookup"


def hugectr_name(text: str, fallback: str) -> str:
    """`text` in HugeCTR's name syntax, readable: `emb_l.0.weight` -> `emb_l_0_weight` (`fallback` if nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")[:NAME_LIMIT] or fallback


def hugectr_names(names: Sequence[str]) -> list[str]:
    """Distinct table names in HugeCTR's syntax, in the order given: the one place they are made.

    A valid name is kept as it is; any other becomes `hugectr_name(name)`, with `_2`, `_3`... when that
    is taken or is another entry's own name (a valid name is never taken from the entry that has it).
    """
    out: list[str] = []
    taken, given = set(), set(names)
    for name in names:
        candidate = name
        if not (isinstance(name, str) and NAME_SYNTAX.fullmatch(name) and name not in taken):
            base = candidate = hugectr_name(name, "table")
            suffix = 1
            while candidate in taken or (candidate != name and candidate in given):
                suffix += 1
                tail = f"_{suffix}"
                candidate = base[:NAME_LIMIT - len(tail)] + tail
        out.append(candidate)
        taken.add(candidate)
    return out


def field_text(value: bytes | str) -> str:
    """A string attribute as text, without the trailing NUL HugeCTR's samples (and we) append."""
    return (value.decode() if isinstance(value, bytes) else str(value)).rstrip("\0")
