"""One parametrized walk over patterns/*/: every pattern proves itself on the fixtures beside it.

match_<what>.onnx.txt   -> matches; plan equals match_<what>.plan.yaml; rewrite passes the checker and
                           computes what onnxruntime computes on the original
refuse_<what>.onnx.txt  -> matches, then refused: nothing rewritten; (node, reason) equals refuse_<what>.expect.yaml
nomatch_<what>.onnx.txt -> nothing rewritten; near miss (node, reason) equals nomatch_<what>.expect.yaml

Snapshots change only with HPS_SURGEON_UPDATE_SNAPSHOTS=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import hps_surgeon
from hps_surgeon.verify.runner import SplitRunner
from hps_surgeon.load import load_proto
from hps_surgeon.match import find_matches
from hps_surgeon.plan import Options, plan_rewrites, resolve
from hps_surgeon.hps.reference import ReferenceLookup
from hps_surgeon.spec import builtin_patterns_dir, load_pattern

from support import random_feeds, run_onnxruntime

PATTERNS = builtin_patterns_dir()
UPDATE = os.environ.get("HPS_SURGEON_UPDATE_SNAPSHOTS") == "1"


def _cases(prefix: str) -> list:
    return [pytest.param(path, id=f"{path.parent.name}/{path.name}")
            for path in sorted(PATTERNS.glob(f"*/{prefix}_*.onnx.txt"))]


def _load(path: Path):
    proto = onnx.parser.parse_model(path.read_text())
    onnx.checker.check_model(proto)
    return load_proto(proto, path)


def _plan_snapshot(plan) -> dict:
    keep = ("pattern", "variant", "replaced_nodes", "table", "table_id", "keys", "source_key_dtype", "key_shape",
            "rows", "emb_vec_size", "output", "out_shape")
    return {"lookups": [{k: v for k, v in lookup.items() if k in keep} for lookup in plan.to_dict()["hps_trt_nodes"]]}


def test_every_pattern_has_positive_and_negative_fixtures():
    for folder in sorted(p.parent for p in PATTERNS.glob("*/pattern.yaml")):
        positive = [*folder.glob("match_*.onnx.txt"), *folder.glob("refuse_*.onnx.txt")]
        assert positive, f"{folder.name}: no match_*.onnx.txt or refuse_*.onnx.txt"
        assert list(folder.glob("nomatch_*.onnx.txt")), f"{folder.name}: no nomatch_*.onnx.txt"


@pytest.mark.parametrize("fixture", _cases("match"))
def test_positive_fixture(fixture: Path, tmp_path):
    spec = load_pattern(fixture.parent / "pattern.yaml")
    loaded = _load(fixture)
    result = find_matches(loaded.graph, [spec], {"key_dtype": "int32"}, tables=loaded.sources)
    assert result.matches, f"{spec.id} did not match {fixture.name}: {result.near_misses}"
    plan = plan_rewrites(loaded, result, Options(model_name="m"))
    snapshot = fixture.with_name(fixture.name.replace(".onnx.txt", ".plan.yaml"))
    if UPDATE or not snapshot.exists():
        assert UPDATE, f"{snapshot.name} missing: run with HPS_SURGEON_UPDATE_SNAPSHOTS=1 and review it"
        snapshot.write_text(yaml.safe_dump(_plan_snapshot(plan), sort_keys=False))
    assert _plan_snapshot(plan) == yaml.safe_load(snapshot.read_text())

    source = tmp_path / "source.onnx"
    onnx.save(onnx.parser.parse_model(fixture.read_text()), str(source))
    out = hps_surgeon.rewrite(source, tmp_path / "out", patterns=_only(spec, tmp_path))
    assert out.written
    rows = min(t.rows for t in out.plan.tables)
    runner = SplitRunner(out.model_path, ReferenceLookup(out.config_path).lookup)
    for batch in (1, 5):
        feeds = random_feeds(source, batch, key_high=rows, seed=batch)
        expected = run_onnxruntime(source, feeds)
        for name, value in runner.run(feeds).items():
            np.testing.assert_array_equal(value, expected[name])


@pytest.mark.parametrize("fixture", _cases("nomatch") + _cases("refuse"))
def test_negative_fixture(fixture: Path):
    spec = load_pattern(fixture.parent / "pattern.yaml")
    loaded = _load(fixture)
    result = resolve(find_matches(loaded.graph, [spec], {"key_dtype": "int32"}, explain=True, tables=loaded.sources))
    assert not result.matches
    expect = yaml.safe_load(fixture.with_name(fixture.name.replace(".onnx.txt", ".expect.yaml")).read_text())
    misses = {m.node: m for m in result.near_misses}
    assert misses[expect["node"]].reason == expect["reason"]
    assert misses[expect["node"]].refused == fixture.name.startswith("refuse_")


def _only(spec, tmp_path: Path) -> Path:
    """A patterns folder holding just `spec`, so the rewrite proves this pattern alone."""
    folder = tmp_path / "patterns" / spec.id
    folder.mkdir(parents=True)
    (folder / "pattern.yaml").write_text(spec.path.read_text())
    return folder.parent
