"""GPU tests of the native lookup core through hps_surgeon.native (issue 4).

Every result is compared exactly (bitwise) with a numpy reference: the plugin copies vectors, it
never computes on them, so any difference is a bug. Outputs are poisoned with NaN before each
lookup so an element the kernel forgot to write cannot pass.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hps_gpu_helpers import RandomTable, lookup_cuda, write_config, write_table

pytestmark = pytest.mark.gpu

RATIOS = ["r1_0", "r0_2", "r0_01"]


# Every table test runs on both indexes: random keys (hash) and keys 0..rows-1 (direct index).
KEYINGS = ["hashed", "identity"]


@pytest.fixture(scope="module", params=KEYINGS)
def table64(request, tmp_path_factory, gpu_lib):
    return RandomTable(tmp_path_factory.mktemp("t64"), rows=50_000, dim=32, seed=1,
                       identity=request.param == "identity")


@pytest.fixture(scope="module", params=KEYINGS)
def table32(request, tmp_path_factory, gpu_lib):
    # dim 7: exercises the scalar (non-16-byte) path; keys fit int32.
    return RandomTable(tmp_path_factory.mktemp("t32"), rows=20_000, dim=7, seed=2, int32_keys=True,
                       identity=request.param == "identity")


@pytest.mark.parametrize("model", RATIOS + ["r0_0"])
def test_index_chosen_from_the_keys(table64, gpu_lib, model):
    with gpu_lib.HpsTable.open(table64.config, model, 0) as table:
        assert table.identity_keys == table64.identity


@pytest.mark.parametrize("keys", ["permuted", "one_swap", "from_one", "gap"])
def test_almost_identity_keys_take_the_hash(torch_cuda, gpu_lib, tmp_path, keys):
    """Keys 0..N-1 out of row order, or not exactly 0..N-1, are not the identity: still exact."""
    rows, rng = 3000, np.random.default_rng(7)
    ids = np.arange(rows, dtype=np.int64)
    if keys == "permuted":
        rng.shuffle(ids)
    elif keys == "one_swap":
        ids[[10, 2000]] = ids[[2000, 10]]
    elif keys == "from_one":
        ids += 1
    else:
        ids[-1] += 5
    vecs = rng.standard_normal((rows, 8), dtype=np.float32)
    write_table(tmp_path / "tables" / "t0", ids, vecs)
    cfg = write_config(tmp_path / "hps_config.json", {
        "res": {"sparse": "tables/t0", "dim": 8, "default": -1.0, "ratio": 1.0},
        "hier": {"sparse": "tables/t0", "dim": 8, "default": -1.0, "ratio": 0.1}})
    query = np.concatenate([rng.integers(-2, rows + 6, size=20_000), ids[:50]])
    lookup = dict(zip(ids.tolist(), range(rows)))
    want = np.stack([vecs[lookup[k]] if k in lookup else np.full(8, -1.0, np.float32) for k in query.tolist()])
    for model in ("res", "hier"):
        with gpu_lib.HpsTable.open(cfg, model, 0) as table:
            assert not table.identity_keys
            for _ in range(2):
                np.testing.assert_array_equal(lookup_cuda(torch_cuda, table, query, 8), want)


@pytest.mark.parametrize("identity", [False, True], ids=KEYINGS)
def test_hierarchical_misses_of_a_large_table(torch_cuda, gpu_lib, tmp_path, identity):
    """Over 2^16 rows, the miss list's buckets hold several rows each (host_tier_kernels.cuh): every
    miss still lands on its own output row, duplicates included, at every batch size, also past the
    2^24 keys of one pass (gpu_table.cu)."""
    t = RandomTable(tmp_path, rows=300_000, dim=12, seed=5, identity=identity)
    with gpu_lib.HpsTable.open(t.config, "r0_01", 0) as table:
        for n in (1, 31, 33, 5_000, 700_000, (1 << 24) + 77):
            keys = t.draw(n, absent_fraction=0.1, zipf=1.05 if n % 2 else None)
            s0 = table.stats()
            np.testing.assert_array_equal(lookup_cuda(torch_cuda, table, keys, t.dim), t.reference(keys))
            s1 = table.stats()
            assert s1.lookups - s0.lookups == n
        assert s1.host_hits > 0 and s1.insertions > 0


@pytest.mark.parametrize("model", RATIOS)
@pytest.mark.parametrize("absent", [0.0, 0.3, 1.0], ids=["all_hit", "mixed", "all_missing"])
def test_lookup_matches_reference_int64(table64, torch_cuda, gpu_lib, model, absent):
    t = table64
    with gpu_lib.HpsTable.open(t.config, model, 0) as table:
        assert table.dim == 32 and table.rows == 50_000
        # Several rounds with Zipf keys: the hierarchical cache inserts and evicts between them.
        for rnd in range(4):
            keys = t.draw(40_000, absent_fraction=absent, zipf=1.1 if rnd % 2 else None)
            got = lookup_cuda(torch_cuda, table, keys, t.dim)
            np.testing.assert_array_equal(got, t.reference(keys))
        s = table.stats()
        assert s.lookups == s.cache_hits + s.host_hits + s.not_found
        if absent == 1.0:
            assert s.not_found >= 4 * 40_000 and s.cache_hits == 0


@pytest.mark.parametrize("model", RATIOS)
@pytest.mark.parametrize("key_dtype", [np.int32, np.int64])
def test_lookup_int32_keys_scalar_path(table32, torch_cuda, gpu_lib, model, key_dtype):
    t = table32
    with gpu_lib.HpsTable.open(t.config, model, 0) as table:
        for _ in range(3):
            keys = t.draw(30_000, absent_fraction=0.2, zipf=1.05).astype(key_dtype).reshape(300, 100)
            got = lookup_cuda(torch_cuda, table, keys, t.dim)
            assert got.shape == (300, 100, 7)
            np.testing.assert_array_equal(got, t.reference(keys))


@pytest.mark.parametrize("model", ["r1_0", "r0_2"])
def test_n_zero_one_and_millions(table64, torch_cuda, gpu_lib, model):
    torch, t = torch_cuda, table64
    with gpu_lib.HpsTable.open(t.config, model, 0) as table:
        empty = table.lookup(torch.empty((0, 26), dtype=torch.int64, device="cuda"))
        assert tuple(empty.shape) == (0, 26, 32)
        one = t.draw(1)
        np.testing.assert_array_equal(lookup_cuda(torch, table, one, t.dim), t.reference(one))
        many = t.draw(4_000_000, absent_fraction=0.1, zipf=1.2)
        np.testing.assert_array_equal(lookup_cuda(torch, table, many, t.dim), t.reference(many))
        assert table.lookup_host(np.empty(0, dtype=np.int64)).shape == (0, 32)


@pytest.mark.parametrize("model", ["r1_0", "r0_01"])
def test_lookup_host_matches(table64, gpu_lib, model):
    t = table64
    with gpu_lib.HpsTable.open(t.config, model, 0) as table:
        keys = t.draw(10_000, absent_fraction=0.3).reshape(100, 100)
        np.testing.assert_array_equal(table.lookup_host(keys), t.reference(keys))
        k32 = (t.draw(1000) & 0x7FFFFFFF).astype(np.int32)  # mostly absent, exercises int32 host path
        np.testing.assert_array_equal(table.lookup_host(k32), t.reference(k32.astype(np.int64)))


def test_gpucache_off_serves_everything_from_host(table64, torch_cuda, gpu_lib):
    t = table64
    with gpu_lib.HpsTable.open(t.config, "r0_0", 0) as table:
        assert table.cache_slots == 0 and not table.resident
        keys = t.draw(20_000, absent_fraction=0.1)
        np.testing.assert_array_equal(lookup_cuda(torch_cuda, table, keys, t.dim), t.reference(keys))
        assert table.stats().cache_hits == 0


@pytest.mark.parametrize("model", ["r1_0", "r0_2", "r0_01"])
def test_eight_streams_eight_threads_identical(table64, torch_cuda, gpu_lib, model):
    """8 threads, each on its own stream, hammer one shared table; all results exact."""
    torch, t = torch_cuda, table64
    keys = t.draw(200_000, absent_fraction=0.05, zipf=1.05)
    ref = t.reference(keys)
    dk = torch.from_numpy(keys).cuda()
    errors: list[str] = []
    results: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(8)

    def worker(w: int) -> None:
        try:
            with gpu_lib.HpsTable.open(t.config, model, 0) as table:  # shares the loaded table
                stream = torch.cuda.Stream()
                outs = []
                start.wait()
                with torch.cuda.stream(stream):
                    for _ in range(6):
                        out = torch.full((len(keys), 32), float("nan"), device="cuda")
                        table.lookup(dk, out=out, stream=stream)
                        outs.append(out)
                stream.synchronize()
                results[w] = [o.cpu().numpy() for o in outs]
        except Exception as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(f"worker {w}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for w in range(8):
        for got in results[w]:
            np.testing.assert_array_equal(got, ref)


def test_table_shared_between_handles(table64, torch_cuda, gpu_lib):
    t = table64
    a = gpu_lib.HpsTable.open(t.config, "r1_0", 0)
    b = gpu_lib.HpsTable.open(t.config, "r1_0", 0)
    before = a.stats().lookups
    b.lookup_host(t.draw(1234))
    assert a.stats().lookups == before + 1234  # one table, one set of counters
    a.close()
    b.lookup_host(t.draw(10))  # still open through b
    b.close()
    b.close()  # idempotent
    with pytest.raises(gpu_lib.NativeError, match="closed"):
        b.stats()


@pytest.mark.parametrize("model", ["r1_0", "r0_2"])
def test_cuda_graph_capture_and_replay(table64, torch_cuda, gpu_lib, model):
    """No host synchronisation, no cudaMalloc: capturable, also with the host tier (whose miss list
    comes from a stream-ordered pool: memory nodes of the graph)."""
    torch, t = torch_cuda, table64
    with gpu_lib.HpsTable.open(t.config, model, 0) as table:
        keys = torch.from_numpy(t.draw(50_000, absent_fraction=0.1)).cuda()
        out = torch.empty((50_000, 32), device="cuda")
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            table.lookup(keys, out=out)  # warm-up outside capture
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            table.lookup(keys, out=out)
        for _ in range(3):
            new = t.draw(50_000, absent_fraction=0.1)
            keys.copy_(torch.from_numpy(new))
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            np.testing.assert_array_equal(out.cpu().numpy(), t.reference(new))


def test_cupy_and_dlpack_inputs(table64, torch_cuda, gpu_lib):
    torch, t = torch_cuda, table64
    keys = t.draw(5000, absent_fraction=0.2)
    ref = t.reference(keys)
    with gpu_lib.HpsTable.open(t.config, "r0_2", 0) as table:

        class DLPackOnly:  # no __cuda_array_interface__: forces the DLPack path
            def __init__(self, x):
                self.x = x

            def __dlpack__(self, stream=None):
                return self.x.__dlpack__()

        dk = torch.from_numpy(keys).cuda()
        out = torch.full((5000, 32), float("nan"), device="cuda")
        table.lookup(DLPackOnly(dk), out=DLPackOnly(out), stream=0)
        torch.cuda.synchronize()
        np.testing.assert_array_equal(out.cpu().numpy(), ref)
        try:
            import cupy
        except Exception:
            return
        got = table.lookup(cupy.asarray(keys))
        cupy.cuda.get_current_stream().synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(got), ref)


def test_argument_errors(table64, torch_cuda, gpu_lib, tmp_path):
    torch, t = torch_cuda, table64
    with gpu_lib.HpsTable.open(t.config, "r1_0", 0) as table:
        with pytest.raises(gpu_lib.NativeError, match="int32 or int64"):
            table.lookup(torch.zeros(4, dtype=torch.float32, device="cuda"))
        with pytest.raises(gpu_lib.NativeError, match="int32 or int64"):
            table.lookup(torch.zeros(4, dtype=torch.int16, device="cuda"))
        with pytest.raises(gpu_lib.NativeError, match="shape"):
            table.lookup(torch.zeros(4, dtype=torch.int64, device="cuda"), out=torch.empty((4, 31), device="cuda"))
        with pytest.raises(gpu_lib.NativeError, match="not a CUDA array|not CUDA"):
            table.lookup(np.zeros(4, dtype=np.int64))
        with pytest.raises(gpu_lib.NativeError, match="C-contiguous"):
            table.lookup(torch.zeros((4, 4), dtype=torch.int64, device="cuda").t())
    with pytest.raises(gpu_lib.NativeError, match="no model named"):
        gpu_lib.HpsTable.open(t.config, "nope", 0)
    (tmp_path / "tables" / "t0").mkdir(parents=True)
    (tmp_path / "tables" / "t0" / "key").write_bytes(np.arange(10, dtype="<i8").tobytes())
    (tmp_path / "tables" / "t0" / "emb_vector").write_bytes(np.zeros(10 * 32 - 1, dtype="<f4").tobytes())
    cfg = write_config(tmp_path / "c.json", {"m": {"sparse": "tables/t0", "dim": 32}})
    with pytest.raises(gpu_lib.NativeError, match="expected 1280"):
        gpu_lib.HpsTable.open(cfg, "m", 0)
    np.arange(10, dtype="<i8").repeat(2)[:10].tofile(tmp_path / "tables" / "t0" / "key")  # duplicate keys
    np.zeros(10 * 32, dtype="<f4").tofile(tmp_path / "tables" / "t0" / "emb_vector")
    with pytest.raises(gpu_lib.NativeError, match="more than once"):
        gpu_lib.HpsTable.open(cfg, "m", 0)


def test_hierarchical_cache_learns_hot_keys(table64, torch_cuda, gpu_lib):
    """After warm-up on Zipf keys the 20% cache serves most lookups (policy sanity check)."""
    torch, t = torch_cuda, table64
    with gpu_lib.HpsTable.open(t.config, "r0_2", 0) as table:
        for _ in range(30):
            table.lookup(torch.from_numpy(t.draw(100_000, zipf=1.2)).cuda())
        torch.cuda.synchronize()
        s0 = table.stats()
        keys = t.draw(100_000, zipf=1.2)
        np.testing.assert_array_equal(lookup_cuda(torch, table, keys, t.dim), t.reference(keys))
        s1 = table.stats()
        hit = (s1.cache_hits - s0.cache_hits) / 100_000
        assert hit > 0.8, f"hit rate {hit:.3f} after warm-up"


def test_extreme_keys(torch_cuda, gpu_lib, tmp_path):
    """int64 min/max and -1 are ordinary keys (the hash's empty marker is handled aside)."""
    torch = torch_cuda
    keys = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 7], dtype=np.int64)
    vecs = np.arange(5 * 4, dtype=np.float32).reshape(5, 4) + 0.5
    write_table(tmp_path / "tables" / "t0", keys, vecs)
    cfg = write_config(tmp_path / "hps_config.json", {
        "res": {"sparse": "tables/t0", "dim": 4, "default": 9.0, "ratio": 1.0},
        "hier": {"sparse": "tables/t0", "dim": 4, "default": 9.0, "ratio": 0.4}})
    query = np.array([[7, np.iinfo(np.int64).min], [-1, 3], [np.iinfo(np.int64).max, 0]], dtype=np.int64)
    want = np.stack([vecs[4], vecs[0], vecs[2], np.full(4, 9.0, np.float32), vecs[1], vecs[3]]).reshape(3, 2, 4)
    for model in ("res", "hier"):
        with gpu_lib.HpsTable.open(cfg, model, 0) as table:
            for _ in range(3):
                got = table.lookup(torch.from_numpy(query).cuda())
                torch.cuda.synchronize()
                np.testing.assert_array_equal(got.cpu().numpy(), want)
            np.testing.assert_array_equal(table.lookup_host(query), want)
