"""Keys where HugeCTR's HPS and ours differ (issue 12, item 6), decided and tested.

Ours: an int32 key is a signed number, widened to int64 and compared exactly with the int64 keys
stored in the table; a key the table does not store returns the table's default value, -1 included.
HugeCTR on its int32 path reads int32 keys as uint32 (HierParameterServer<unsigned int>,
HugeCTR/src/hps/hier_parameter_server.cpp:69), casts the stored keys to uint32
(HugeCTR/src/hps/modelloader.cpp:120), and reserves uint32 0xFFFFFFFF (int32 -1) as its GPU cache's
empty-slot key (HugeCTR/include/hps/embedding_cache.hpp:83). So a stored key of 2^31 or more is not
reachable by our int32 nodes (check refuses the table), and a stored -1 is served by us but not by
HugeCTR (check warns).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import hps_surgeon
from hps_surgeon.errors import errors
from hps_surgeon.hps.reference import ReferenceLookup
from hps_surgeon.hps.validate import validate

from support import lookup_model


def rewrite_with_keys(tmp_path, keys, key_dtype=TensorProto.INT32, hps_key_dtype="int32"):
    """A one-table rewrite whose key file is replaced by `keys` (one per row)."""
    source = lookup_model(tmp_path / "m.onnx", rows=len(keys), dim=4, key_dtype=key_dtype)
    result = hps_surgeon.rewrite(source, tmp_path / "rw", key_dtype=hps_key_dtype)
    np.asarray(keys, dtype="<i8").tofile(result.out_dir / result.plan.tables[0].folder / "key")
    return result


def messages(problems, severity):
    return [p.message for p in problems if p.severity == severity]


def test_int32_keys_are_signed_and_exact(tmp_path):
    stored = [-1, 7, 2**31 - 1, -(2**31)]
    result = rewrite_with_keys(tmp_path, stored)
    vectors = np.fromfile(result.out_dir / result.plan.tables[0].folder / "emb_vector", dtype="<f4").reshape(4, 4)
    keys = np.array([[-1, 7, 2**31 - 1, -(2**31), 5, -2]], dtype=np.int32)
    got = ReferenceLookup(result.config_path).lookup(result.plan.options.model_name, 0, keys)
    np.testing.assert_array_equal(got[0, :4], vectors)
    np.testing.assert_array_equal(got[0, 4:], 0.0)  # not stored: the default value
    problems = validate(result.model_path, result.config_path)
    assert errors(problems) == []
    (warning,) = messages(problems, "warning")
    assert "stores key -1, which HugeCTR's GPU cache reserves as its empty-slot marker " \
           "(include/hps/embedding_cache.hpp:83; its gpu_cache/ReadMe.md: never a real key); our plugin serves it" \
           in warning


def test_stored_keys_beyond_int32_are_refused_for_int32_nodes(tmp_path):
    # HugeCTR would cast 2^31 to uint32 and reach it with int32 key -2^31 (modelloader.cpp:120); ours
    # compares signed keys, so such a row would never be found: refused rather than silently unreachable.
    result = rewrite_with_keys(tmp_path, [0, 1, 2**31])
    (error,) = [p.message for p in errors(validate(result.model_path, result.config_path))]
    assert error.endswith("stored keys reach 2147483648, beyond int32 keys of this node — rewrite with "
                          "--key-dtype int64")


def test_int64_empty_marker_is_warned_about(tmp_path):
    result = rewrite_with_keys(tmp_path, [0, 2**63 - 1], TensorProto.INT64, "int64")
    problems = validate(result.model_path, result.config_path)
    assert errors(problems) == []
    assert any(f"stores key {2**63 - 1}, which HugeCTR's GPU cache reserves" in m for m in messages(problems, "warning"))
    got = ReferenceLookup(result.config_path).lookup(result.plan.options.model_name, 0,
                                                     np.array([2**63 - 1], dtype=np.int64))
    vectors = np.fromfile(result.out_dir / result.plan.tables[0].folder / "emb_vector", dtype="<f4").reshape(2, 4)
    np.testing.assert_array_equal(got[0], vectors[1])


@pytest.mark.parametrize("key", [-1, -(2**31), 2**31 - 1])
def test_absent_edge_keys_return_the_default_value(tmp_path, key):
    result = hps_surgeon.rewrite(lookup_model(tmp_path / "m.onnx", rows=10, dim=3, key_dtype=TensorProto.INT32),
                                 tmp_path / "rw", default_value=-2.5)
    got = ReferenceLookup(result.config_path).lookup(result.plan.options.model_name, 0,
                                                     np.array([key], dtype=np.int32))
    np.testing.assert_array_equal(got, np.full((1, 3), -2.5, dtype=np.float32))


def test_empty_table_is_served_but_warned_about(tmp_path):
    # HugeCTR/src/hps/modelloader.cpp:143-145 throws "embeddings key file is empty"
    result = rewrite_with_keys(tmp_path, [0])
    folder = result.out_dir / result.plan.tables[0].folder
    (folder / "key").write_bytes(b"")
    (folder / "emb_vector").write_bytes(b"")
    problems = validate(result.model_path, result.config_path)
    assert errors(problems) == []
    assert any("is empty: HugeCTR's HPS refuses it (\"embeddings key file is empty\", modelloader.cpp:143-145)" in m
               for m in messages(problems, "warning"))
