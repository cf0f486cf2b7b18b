"""examples/custom_model.py runs end to end on generated data (issue 17 "done when")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ensemblekit

REPO = Path(__file__).resolve().parents[1]


def test_custom_model_example(tmp_path):
    src = str(Path(ensemblekit.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = ["--out", str(tmp_path), "--epochs", "1", "--images-per-class", "8"]
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "custom_model.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for method in ("deep_ensemble", "batch_ensemble"):
        record = json.loads((tmp_path / method / "metrics.json").read_text())
        assert record["method"] == method and record["backbone"] == "custom" and record["num_members"] == 3
        assert (tmp_path / f"{method}.torchscript.pt").is_file()
        assert f"{method:15s} exported to" in done.stdout
    assert done.stdout.count("(p=") == 8  # 4 test images predicted by each ensemble
