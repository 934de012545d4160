"""The README's quickstart main job runs as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

from support import ROOT


def test_quickstart_has_exactly_two_setup_commands_and_the_first_one_works():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert block[1] == "pip install -e '.[test]' && pytest"
    main_job = block[0].split(" && ", 1)[1]
    proc = subprocess.run(shlex.split(main_job), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "rewrote 26 lookup(s) into HPS_TRT nodes, 26 table(s)" in proc.stdout
    out = ROOT / "out/dlrm"
    assert "out/dlrm/model.onnx" in proc.stdout
    assert len(json.loads((out / "report.json").read_text())["hps_trt_nodes"]) == 26
