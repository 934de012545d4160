"""Pattern files are validated on load; every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hps_surgeon import expr
from hps_surgeon.errors import SurgeonError
from hps_surgeon.spec import builtin_patterns_dir, load_pattern, load_patterns

GOOD = yaml.safe_load((builtin_patterns_dir() / "generic.embedding.gather/pattern.yaml").read_text())


def write(tmp_path: Path, data, folder: str = "generic.embedding.gather") -> Path:
    path = tmp_path / folder / "pattern.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def changed(**top):
    data = yaml.safe_load(yaml.safe_dump(GOOD, sort_keys=False))
    data.update(top)
    return data


def test_every_shipped_pattern_loads():
    ids = [spec.id for spec in load_patterns()]
    assert "generic.embedding.gather" in ids and len(ids) == len(set(ids))


@pytest.mark.parametrize("data,message", [
    ("id: [unclosed", "not valid YAML ("),
    ({k: v for k, v in GOOD.items() if k != "summary"}, "(top level): 'summary' is a required property"),
    (changed(priority="high"), "priority: 'high' is not of type 'integer'"),
    (changed(id="generic.embedding.other"), "id: 'generic.embedding.other' differs from the folder name"),
    (changed(nodes={**GOOD["nodes"], "lookup": {"op": "Gathr", "in": ["weight", "to_int"]}}),
     "nodes.lookup.op: 'Gathr' is not an ONNX operator"),
    (changed(nodes={**GOOD["nodes"], "lookup": {"op": "Gather", "in": ["weight", "to_int"], "attrs": {"axes": 0}}}),
     "nodes.lookup.attrs.axes: Gather has no attribute 'axes' (it has: axis)"),
    (changed(nodes={**GOOD["nodes"], "lookup": {"op": "Gather", "in": ["tabel", "to_int"]}}),
     "nodes.lookup.in[0] uses 'tabel', not declared (declared: keys, table, weight, to_int, lookup)"),
    (changed(where=["dim(tabel, 1) == 16"]),
     "where: 'dim(tabel, 1) == 16': 'dim(tabel, 1) == 16' uses 'tabel', not declared"),
    (changed(where=["__import__('os')"]), "calls something other than dim, rank"),
    (changed(refuse=[{"if": "True", "reason": "{tabel} is odd"}]), "refuse[0].reason: 'tabel' uses 'tabel'"),
    (changed(rewrite={"keys": "keys", "table": "keys", "out": "emb"}),
     "rewrite.table: 'keys' must be listed under constants"),
])
def test_bad_pattern_files_name_file_and_field(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(SurgeonError) as err:
        load_pattern(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_empty_patterns_folder(tmp_path):
    with pytest.raises(SurgeonError, match="no \\*/pattern.yaml files"):
        load_patterns(tmp_path)


@pytest.mark.parametrize("text,value", [
    ("dim(t, 0) > 5", None),          # unknown dim: undecided
    ("dim(t, 0) > 5 and False", False),  # a decided False wins
    ("dim(t, 0) > 5 or True", True),
    ("value(t)[1:] == [26, 16]", True),
    ("0 not in value(t)", True),
    ("not (1 + 2 * 3 == 7)", False),
])
def test_expressions_are_three_valued(text, value):
    tree = expr.parse(text, ["t"])
    functions = {"dim": lambda t, i: None, "value": lambda t: [-1, 26, 16]}
    assert expr.evaluate(tree, lambda name: "T", lambda name, args: functions[name](*args)) == value
