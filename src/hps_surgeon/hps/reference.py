"""CPU reference of HPS_TRT: what the plugin must return, read from hps_config.json and its files.

A key stored in the table returns its vector; any other key returns the table's default value
in every component (HugeCTR HPS semantics, unlike ONNX Gather, which fails or wraps around).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SurgeonError, errors
from . import config as hps_config
from .tables import table_files, table_rows


@dataclass(frozen=True)
class _Table:
    sorted_keys: np.ndarray
    rows_in_key_order: np.ndarray  #: row of each sorted key in emb_vector
    vectors: np.ndarray  #: memory-mapped emb_vector, [rows, dim]
    default: float


class ReferenceLookup:
    """Looks keys up in the tables an `hps_config.json` names, on the CPU."""

    def __init__(self, config_path: str | Path):
        self.config_path = Path(config_path)
        config, problems = hps_config.load(self.config_path)
        if config is None:
            raise SurgeonError(f"HPS config cannot be used: {errors(problems)[0]}")
        self.config = config
        self._tables: dict[tuple[str, int], _Table] = {}

    def lookup(self, model_name: str, table_id: int, keys: np.ndarray) -> np.ndarray:
        """Vectors for `keys` (any shape, integer): float32 of shape keys.shape + [dim]."""
        table = self._table(model_name, table_id)
        flat = np.asarray(keys).astype(np.int64).ravel()
        dim = table.vectors.shape[1]
        out = np.full((flat.size, dim), table.default, dtype=np.float32)
        if table.sorted_keys.size:  # an empty table answers every key with the default
            pos = np.minimum(np.searchsorted(table.sorted_keys, flat), table.sorted_keys.size - 1)
            found = table.sorted_keys[pos] == flat
            out[found] = table.vectors[table.rows_in_key_order[pos[found]]]
        return out.reshape(*np.shape(keys), dim)

    def _table(self, model_name: str, table_id: int) -> _Table:
        key = (model_name, table_id)
        if key not in self._tables:
            self._tables[key] = self._open(model_name, table_id)
        return self._tables[key]

    def _open(self, model_name: str, table_id: int) -> _Table:
        model = hps_config.model_entry(self.config, model_name)
        if model is None:
            raise SurgeonError(f"{self.config_path}: no model '{model_name}' in the config")
        files = model["sparse_files"]
        if not 0 <= table_id < len(files):
            raise SurgeonError(f"{self.config_path}: model '{model_name}' has {len(files)} tables, no table_id {table_id}")
        folder = hps_config.table_folder(self.config_path, model, table_id)
        key_file, vector_file = table_files(self.config_path, folder, f"model '{model_name}' table {table_id}")
        dim = int(model["embedding_vecsize_per_table"][table_id])
        table_rows(key_file, vector_file, dim)  # the sizes agree, or one line naming the file
        keys = np.fromfile(key_file, dtype="<i8")
        vectors = np.memmap(vector_file, dtype="<f4", mode="r").reshape(-1, dim)
        order = np.argsort(keys, kind="stable")
        return _Table(keys[order], order, vectors, hps_config.table_default(model, table_id))
