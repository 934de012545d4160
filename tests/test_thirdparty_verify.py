"""verify on the issue 20 fixtures (fixtures/thirdparty, made by make_thirdparty.py deepctr-torch-din, fuxictr,
recbole): a model whose output hides its tables, real samples with padding and reserved ids, keys no input
reaches. Every fixture's pass / tamper / one-row pairs, generated and with its samples, are in test_fixtures.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import onnx
import pytest
import yaml
from polygraphy.json import load_json, save_json

import hps_surgeon
from hps_surgeon.verify import verify

from support import FIXTURES, tampered_copy

THIRDPARTY = FIXTURES / "thirdparty"
MODELS = THIRDPARTY / "models"
MANIFEST = {e["file"]: e for e in yaml.safe_load((THIRDPARTY / "MANIFEST.yaml").read_text())["fixtures"]}
DIN = ["deepctr_torch_din_insensitive_legacy", "deepctr_torch_din_insensitive_dynamo"]
FUXICTR = "fuxictr_dnn_padding_idx_legacy"
SASREC = "recbole_sasrec_positions_legacy"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)


def samples_of(name: str):
    return THIRDPARTY / MANIFEST[f"{name}.onnx"]["samples"]["file"]


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    done = {}

    def get(name: str, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in done:
            done[key] = hps_surgeon.rewrite(MODELS / f"{name}.onnx", tmp_path_factory.mktemp(name) / "rw", **options)
        return done[key]

    return get


def test_every_sampled_fixture_ships_256_real_samples():
    sampled = {name: e["samples"] for name, e in MANIFEST.items() if "samples" in e}
    assert sorted(sampled) == sorted(f"{n}.onnx" for n in [*DIN, FUXICTR, SASREC])
    for name, record in sampled.items():
        feeds = load_json(str(THIRDPARTY / record["file"]))
        assert len(feeds) == record["feeds"] == 8 and all(len(next(iter(f.values()))) == 32 for f in feeds)
        inputs = [i["name"] for i in MANIFEST[name]["inputs"]]
        assert all(list(f) == inputs for f in feeds)


# --- 1. a model whose output does not move: each lookup is checked on its own --------------------------

@pytest.mark.parametrize("name", DIN)
@pytest.mark.parametrize("feeds", ["generated", "samples"])
def test_din_tables_plus_one_fail_although_the_output_does_not_move(name, feeds, rewritten, tmp_path):
    """Issue 20's case: +1.0 on every row but rows 0 and 1 of every table of an untrained deepctr-torch DIN
    (output ~0.505 for any input). Outputs agree within rtol; every node's vectors do not."""
    result = rewritten(name)
    inputs = samples_of(name) if feeds == "samples" else None
    copy = tampered_copy(result.out_dir, tmp_path / "rw", lambda rows: np.concatenate([rows[:1], rows[1:] + 1.0]))
    report = verify(MODELS / f"{name}.onnx", copy / "model.onnx", copy / "hps_config.json", inputs=inputs)
    (output,) = report.outputs
    assert report.outputs_match and output.max_abs < 1e-6
    assert report.verdict == "failed" and len(report.wrong_lookups) == len(report.lookups) == 6
    assert all(c.key >= 2 and c.row == c.key and abs(c.max_abs - 1.0) < 1e-6 for c in report.wrong_lookups)
    proc = run("verify", MODELS / f"{name}.onnx", copy / "model.onnx", "--config", copy / "hps_config.json",
               *(["--inputs", inputs] if inputs else []))
    first = report.wrong_lookups[0]
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"hps-surgeon: verify FAILED: HPS_TRT node '{first.node}' returns another vector "
                                  f"than the original lookup '{first.original}' for key {first.key} (row {first.row}")
    assert proc.stderr.rstrip().endswith("(and 5 more node(s)); the model outputs agree within atol 1e-06, rtol "
                                         "1e-05: only the per-lookup comparison sees this")


# --- 2. real samples: padding and reserved ids, a floor they can meet, advice that works ---------------------

def test_fuxictr_real_samples_pass_without_seeing_padding_or_every_id(rewritten):
    """fuxictr's vocabularies: __PAD__ 0 (an all-zero row) never comes, __OOV__ hardly; the 62 cities are
    not all in 256 samples. Half of each small table's other rows is the floor, and it is met."""
    result = rewritten(FUXICTR)
    report = verify(MODELS / f"{FUXICTR}.onnx", result.model_path, result.config_path, inputs=samples_of(FUXICTR))
    assert report.verdict == "passed" and all(c.exact for c in report.lookups)
    tables = {t.table.rsplit("_", 2)[-2]: t for t in report.tables}
    city, cate = tables["city"], tables["cate"]
    assert (city.rows, city.padding, city.floor) == (64, 1, 32) and 32 <= city.existing < 63
    assert (cate.rows, cate.padding, cate.floor) == (14, 1, 7) and cate.existing < 13
    assert city.rule == "half of its 63 rows; 1 all-zero padding row(s) not counted"
    assert all(c.missing == 0 for c in report.coverage)


def _fuxictr_feeds(path, feeds):
    save_json(feeds, str(path))
    return path


def test_too_few_samples_is_inconclusive_and_both_ways_out_work(rewritten, tmp_path):
    """Two feeds of the fuxictr samples: user_id and item_id stay below 64. The second feed still found
    keys, so the advice says more samples help: all 8 feeds PASS. The flags it names PASS too."""
    result = rewritten(FUXICTR)
    samples = load_json(str(samples_of(FUXICTR)))
    few = _fuxictr_feeds(tmp_path / "few.json", samples[:2])
    args = ["verify", MODELS / f"{FUXICTR}.onnx", result.model_path, "--config", result.config_path]
    proc = run(*args, "--inputs", few)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("hps-surgeon: verify INCONCLUSIVE: the outputs and every compared lookup match, but "
                              "table 'm_embedding_layer_embedding_layer_embedding_layers_item_id_weight'")
    assert "below its floor of 64 (--min-distinct-keys 64) (and 1 more table(s)); the second half of the 2 feeds " \
           "added " in message and "more feeds of the same traffic would reach the floor" in message
    assert run(*args, "--inputs", samples_of(FUXICTR)).returncode == 0
    accept = message.split("to accept what every short table saw: ")[1].split()
    assert accept[::2] == ["--min-distinct-keys"] * 2 and len(accept) == 4
    proc = run(*args, "--inputs", few, *accept)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_traffic_that_stopped_finding_keys_is_told_so(rewritten, tmp_path):
    """The same feed eight times: the second half adds nothing, so 'more of the same' is not advised;
    generated feeds (drop --inputs) and the per-table flag both PASS."""
    result = rewritten(FUXICTR)
    (first, *_) = load_json(str(samples_of(FUXICTR)))
    same = _fuxictr_feeds(tmp_path / "same.json", [OrderedDict(first) for _ in range(8)])
    args = ["verify", MODELS / f"{FUXICTR}.onnx", result.model_path, "--config", result.config_path]
    proc = run(*args, "--inputs", same)
    assert proc.returncode == 3
    assert ("the second half of the 8 feeds added no new key: more of the same traffic will not raise it; pass "
            "samples that reach other rows, or drop --inputs/--data-loader-script to generate feeds drawn from the "
            "table; or accept what it saw with --min-distinct-keys ") in proc.stderr
    assert run(*args).returncode == 0
    accept = proc.stderr.strip().split("to accept what every short table saw: ")[1].split()
    assert run(*args, "--inputs", same, *accept).returncode == 0


def test_a_table_floor_never_passes_keys_it_did_not_test(rewritten, tmp_path):
    """--min-distinct-keys TABLE=0 accepts a table that saw nothing; the report still says it saw nothing,
    and a wrong row among the keys it did see still fails."""
    result = rewritten(FUXICTR)
    (first, *_) = load_json(str(samples_of(FUXICTR)))
    one = _fuxictr_feeds(tmp_path / "one.json", [first])
    floors = {t: 0 for t in json.loads(result.config_path.read_text())["models"][0]["embedding_table_names"]}
    report = verify(MODELS / f"{FUXICTR}.onnx", result.model_path, result.config_path, inputs=one,
                    table_floors=floors)
    assert report.verdict == "passed"
    assert all(t.floor == 0 and t.rule.endswith("=0") and 0 < t.existing <= 32 * 5 for t in report.tables)
    copy = tampered_copy(result.out_dir, tmp_path / "rw")
    report = verify(MODELS / f"{FUXICTR}.onnx", copy / "model.onnx", copy / "hps_config.json", inputs=one,
                    table_floors=floors)
    assert report.verdict == "failed"


# --- 3. keys no input reaches: SASRec's position table ---------------------------------------------------

def test_a_position_table_read_through_range_stays_in_the_model_with_its_reason(rewritten):
    found = hps_surgeon.scan(MODELS / f"{SASREC}.onnx")
    assert [e.node for e in found.lookups] == ["/m/item_embedding/Gather"]
    (held,) = found.not_rewritable
    assert held.reason == (
        "node '/m/position_embedding/Gather' (Gather): its keys '/m/Expand_output_0' depend on no graph input's "
        "values (constants and shapes only, such as positions from Range): every inference reads the same rows of "
        "'m.position_embedding.weight', which HPS would serve for nothing; kept in the model. Pass "
        "--rewrite-fixed-keys to move it to HPS anyway")
    result = rewritten(SASREC)
    report = json.loads((result.out_dir / "report.json").read_text())
    assert [n["node"] for n in report["hps_trt_nodes"]] == ["hps_trt//m/item_embedding/Gather"]
    assert [m["reason"] for m in report["not_rewritten"]] == [held.reason]
    graph = onnx.load(str(result.model_path)).graph
    assert "m.position_embedding.weight" in {t.name for t in graph.initializer}
    proc = run("scan", MODELS / f"{SASREC}.onnx")
    assert proc.returncode == 0 and f"  [generic.embedding.gather] {held.reason}" in proc.stdout


@pytest.mark.parametrize("feeds", ["generated", "samples"])
def test_rewrite_fixed_keys_moves_it_and_verify_takes_every_key_it_can_receive(feeds, rewritten, tmp_path):
    result = rewritten(SASREC, rewrite_fixed_keys=True, max_keys_per_sample=8)
    assert len(result.plan.lookups) == 2 and result.plan.not_rewritten == ()
    inputs = samples_of(SASREC) if feeds == "samples" else None
    report = verify(MODELS / f"{SASREC}.onnx", result.model_path, result.config_path, inputs=inputs)
    assert report.verdict == "passed"
    (positions,) = [t for t in report.tables if "position" in t.table]
    assert (positions.rows, positions.existing, positions.floor) == (8, 8, 8)
    assert positions.rule == "its keys depend on no input: every key it can receive"
    assert [c.fixed for c in report.coverage] == [False, True]
    proc = run("verify", MODELS / f"{SASREC}.onnx", result.model_path, "--config", result.config_path,
               *(["--inputs", inputs] if inputs else []))
    assert proc.returncode == 0
    assert ("keys of hps_trt//m/position_embedding/Gather: depend on no input's values; the 8 it received are every "
            "key it can receive") in proc.stdout
    copy = tampered_copy(result.out_dir, tmp_path / "rw")
    report = verify(MODELS / f"{SASREC}.onnx", copy / "model.onnx", copy / "hps_config.json", inputs=inputs)
    assert {c.node for c in report.wrong_lookups} == {"hps_trt//m/item_embedding/Gather",
                                                      "hps_trt//m/position_embedding/Gather"}
