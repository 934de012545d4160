"""GPU tests of the hierarchical tables' copy-engine miss path (staged_lookup.cu): misses listed on
the GPU, gathered from the host tier on host threads, copied in by the copy engine. It must return
exactly what the zero-copy kernel returns, keep the same counters and cache policy, stay out of
CUDA-graph capture, and serve concurrent streams. HPS_COPY_ENGINE_MIN_KEYS (read when a table
opens) chooses it: 0 = every batch.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hps_gpu_helpers import RandomTable, lookup_cuda

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def table64(tmp_path_factory, gpu_lib):
    return RandomTable(tmp_path_factory.mktemp("ce64"), rows=60_000, dim=32, seed=21)


@pytest.fixture(scope="module")
def table32(tmp_path_factory, gpu_lib):
    # dim 7: 4-byte elements instead of 16-byte ones; keys fit int32.
    return RandomTable(tmp_path_factory.mktemp("ce32"), rows=30_000, dim=7, seed=22, int32_keys=True)


def _open(gpu_lib, monkeypatch, table: RandomTable, model: str, threshold: str):
    monkeypatch.setenv("HPS_COPY_ENGINE_MIN_KEYS", threshold)
    return gpu_lib.HpsTable.open(table.config, model, 0)


@pytest.mark.parametrize("model", ["r0_2", "r0_01", "r0_0"])
def test_copy_engine_path_exact(table64, table32, torch_cuda, gpu_lib, monkeypatch, model):
    for t, key_dtype in ((table64, np.int64), (table32, np.int32), (table32, np.int64)):
        with _open(gpu_lib, monkeypatch, t, model, "0") as h:
            for rnd in range(4):
                keys = t.draw(80_000, absent_fraction=0.2, zipf=1.1 if rnd % 2 else None).astype(key_dtype)
                np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, t.dim), t.reference(keys))
            s = h.stats()
            assert s.lookups == s.cache_hits + s.host_hits + s.not_found == 4 * 80_000
            if model != "r0_0":
                assert s.insertions > 0 and s.cache_hits > 0
            else:
                assert s.insertions == s.cache_hits == 0


def test_same_hit_rate_as_the_zero_copy_kernel(table64, torch_cuda, gpu_lib, monkeypatch):
    rates = {}
    for threshold in ("0", "never"):
        with _open(gpu_lib, monkeypatch, table64, "r0_2", threshold) as h:
            rng_state = table64.rng.bit_generator.state
            hits = looked = 0
            for rnd in range(8):
                keys = table64.draw(100_000, zipf=1.05)
                s0 = h.stats()
                np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, 32), table64.reference(keys))
                s1 = h.stats()
                if rnd >= 4:
                    hits += s1.cache_hits - s0.cache_hits
                    looked += s1.lookups - s0.lookups
            table64.rng.bit_generator.state = rng_state  # the same batches for the other path
            rates[threshold] = hits / looked
    assert abs(rates["0"] - rates["never"]) < 0.02, rates


def test_graph_capture_takes_the_zero_copy_kernel(table64, torch_cuda, gpu_lib, monkeypatch):
    torch, t = torch_cuda, table64
    with _open(gpu_lib, monkeypatch, t, "r0_2", "0") as h:
        keys = torch.from_numpy(t.draw(50_000, absent_fraction=0.1)).cuda()
        out = torch.empty((50_000, 32), device="cuda")
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            h.lookup(keys, out=out)  # copy-engine path, outside capture
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            h.lookup(keys, out=out)  # would fail if it waited for the host
        for _ in range(3):
            new = t.draw(50_000, absent_fraction=0.1)
            keys.copy_(torch.from_numpy(new))
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            np.testing.assert_array_equal(out.cpu().numpy(), t.reference(new))


def test_threshold_mixes_both_paths_on_threads_and_streams(table64, torch_cuda, gpu_lib, monkeypatch):
    torch, t = torch_cuda, table64
    batches = [t.draw(n, absent_fraction=0.1, zipf=1.1) for n in (3_000, 30_000) * 8]
    errors: list[str] = []
    with _open(gpu_lib, monkeypatch, t, "r0_2", "10000") as h:
        def worker(w: int) -> None:
            stream = torch.cuda.Stream()
            for keys in batches[w::4]:
                with torch.cuda.stream(stream):
                    dk = torch.from_numpy(keys).cuda()
                    out = torch.full(keys.shape + (32,), float("nan"), device="cuda")
                    h.lookup(dk, out=out, stream=stream)
                stream.synchronize()
                if not np.array_equal(out.cpu().numpy(), t.reference(keys)):
                    errors.append(f"worker {w}: batch of {keys.size} keys differs")

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        s = h.stats()
        assert s.lookups == s.cache_hits + s.host_hits + s.not_found == sum(b.size for b in batches)


def test_bad_threshold_is_one_clear_error(table64, gpu_lib, monkeypatch):
    with pytest.raises(gpu_lib.NativeError, match=r"HPS_COPY_ENGINE_MIN_KEYS='lots' is not a number of keys"):
        _open(gpu_lib, monkeypatch, table64, "r0_01", "lots")
