"""Table/config writers and the CPU reference for the native-plugin GPU tests (imported by tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_table(folder: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    """HugeCTR sparse-model folder: key (int64 LE), emb_vector (float32 LE, row-major)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(keys, dtype="<i8").tofile(folder / "key")
    np.ascontiguousarray(vectors, dtype="<f4").tofile(folder / "emb_vector")


def write_config(path: Path, models: dict[str, dict]) -> Path:
    """hps_config.json with one single-table model per entry: name -> {sparse, dim, default, ratio}."""
    entries = []
    for name, m in models.items():
        entries.append({
            "model": name,
            "sparse_files": [m["sparse"]],
            "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": ["t0"],
            "embedding_vecsize_per_table": [m["dim"]],
            "maxnum_catfeature_query_per_table_per_sample": [26],
            "default_value_for_each_table": [m.get("default", 0.0)],
            "deployed_device_list": [0],
            "max_batch_size": 1024,
            "cache_refresh_percentage_per_iteration": 0.2,
            "hit_rate_threshold": 1.0,
            "gpucacheper": m.get("ratio", 1.0),
            "gpucache": m.get("gpucache", True),
        })
    path.write_text(json.dumps({"supportlonglong": True, "models": entries}, indent=1))
    return path


def lookup_cuda(torch, handle, keys: np.ndarray, dim: int) -> np.ndarray:
    """handle.lookup of keys copied to the GPU; the output is poisoned with NaN first, so an element
    the kernel forgot to write cannot pass."""
    out = torch.full(keys.shape + (dim,), float("nan"), dtype=torch.float32, device="cuda")
    handle.lookup(torch.from_numpy(keys).cuda(), out=out)
    torch.cuda.synchronize()
    return out.cpu().numpy()


class RandomTable:
    """A random table on disk plus its CPU reference lookup. identity: keys 0..rows-1 in row order
    (every table a rewrite exports; the library serves it by direct index), else random distinct keys
    in random order (the hash index)."""

    def __init__(self, root: Path, rows: int, dim: int, seed: int, int32_keys: bool = False, default: float = -3.5,
                 identity: bool = False):
        rng = np.random.default_rng(seed)
        hi = 2**31 - 1 if int32_keys else 2**62
        if identity:
            keys = np.arange(rows, dtype=np.int64)
        else:
            keys = np.unique(rng.integers(-hi, hi, size=rows + rows // 10, dtype=np.int64))
            rng.shuffle(keys)
        self.keys = keys[:rows]
        self.identity = identity
        self.vectors = rng.standard_normal((rows, dim), dtype=np.float32)
        self.dim, self.default, self.rng, self.hi = dim, default, rng, hi
        self._order = np.argsort(self.keys)
        self._sorted = self.keys[self._order]
        self.folder = root / "tables" / "t0"
        write_table(self.folder, self.keys, self.vectors)
        self.config = write_config(root / "hps_config.json", {
            f"r{ratio}".replace(".", "_"): {"sparse": "tables/t0", "dim": dim, "default": default, "ratio": ratio}
            for ratio in (1.0, 0.2, 0.01, 0.0)})

    def draw(self, n: int, absent_fraction: float = 0.0, zipf: float | None = None) -> np.ndarray:
        """n keys: present ones (uniform or Zipf over rows) mixed with absent random keys."""
        if zipf:
            rows = (self.rng.zipf(zipf, size=n) - 1) % len(self.keys)
        else:
            rows = self.rng.integers(0, len(self.keys), size=n)
        keys = self.keys[rows].copy()
        absent = self.rng.random(n) < absent_fraction
        if self.identity:  # just outside the table on either side, or anywhere below 0 / past the end
            m = int(absent.sum())
            near = self.rng.choice([-1, len(self.keys)], size=m)
            far = np.where(self.rng.random(m) < 0.5, self.rng.integers(-self.hi, 0, size=m),
                           self.rng.integers(len(self.keys), self.hi, size=m))
            cand = np.where(self.rng.random(m) < 0.3, near, far)
        else:
            cand = self.rng.integers(-self.hi, self.hi, size=int(absent.sum()), dtype=np.int64)
        keys[absent] = cand  # a random 63-bit key collides with a random table with negligible chance
        return keys

    def reference(self, keys: np.ndarray) -> np.ndarray:
        flat = np.asarray(keys, dtype=np.int64).reshape(-1)
        pos = np.minimum(np.searchsorted(self._sorted, flat), len(self._sorted) - 1)
        rows = np.where(self._sorted[pos] == flat, self._order[pos], -1)
        out = np.where(rows[:, None] >= 0, self.vectors[np.maximum(rows, 0)], np.float32(self.default))
        return out.reshape(np.asarray(keys).shape + (self.dim,)).astype(np.float32)
