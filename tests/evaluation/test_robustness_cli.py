"""ensemblekit evaluate --corruptions / --ood on a tiny synthetic run (in-process CLI calls, for speed)."""

from __future__ import annotations

import json
import math

import pytest

from ensemblekit.cli import main
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "run"
    cfg = tiny_config(
        data={"train_size": 96, "test_size": 40, "classes": [0, 1, 2, 3, 4, 5]},
        method={"name": "deep_ensemble", "members": 2},
        train={"epochs": 1},
    )
    train(config_from_dict(cfg), out, quiet=True)
    return out


def _cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_corruptions_and_heldout_ood(run_dir, capsys):
    code, stdout, stderr = _cli(
        capsys,
        "evaluate",
        str(run_dir),
        "--corruptions",
        "fog,contrast",
        "gaussian_noise",
        "--severities",
        "1-2",
        "--ood",
        "heldout",
    )
    assert code == 0, stderr
    assert "corrupted (3 corruptions x 2 severities)" in stdout and "OOD heldout" in stdout
    c = json.loads((run_dir / "corruptions.json").read_text())
    assert c["corruptions"] == ["fog", "contrast", "gaussian_noise"] and c["severities"] == [1, 2]
    assert set(c["results"]["fog"]) == {"1", "2"} and c["num_images"] == 40
    cells = [c["results"][n][s]["accuracy"] for n in c["corruptions"] for s in ("1", "2")]
    assert c["mean"]["accuracy"] == pytest.approx(sum(cells) / len(cells))
    per_sev = [c["results"][n]["2"]["nll"] for n in c["corruptions"]]
    assert c["per_severity"]["2"]["nll"] == pytest.approx(sum(per_sev) / 3)
    assert {"accuracy", "nll", "ece"} <= set(c["mean"]) and {"accuracy", "nll", "ece"} <= set(c["clean"])
    o = json.loads((run_dir / "ood.json").read_text())
    h = o["results"]["heldout"]
    assert h["num_images"] == 40 and "pattern_6" in h["source"]
    for score in ("max_prob", "entropy", "mutual_information"):
        assert all(0 <= h[score][m] <= 1 and not math.isnan(h[score][m]) for m in o["metrics"])
    e = json.loads((run_dir / "eval.json").read_text())
    assert e["corruptions"]["mean"] == c["mean"] and e["ood"]["heldout"]["max_prob"] == h["max_prob"]
    # same seed -> same numbers (corruptions are seeded per chunk)
    code, stdout, stderr = _cli(capsys, "evaluate", str(run_dir), "--corruptions", "fog", "--severities", "2", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["corruptions"]["results"]["fog"]["2"] == c["results"]["fog"]["2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corruptions", "fgo"], "unknown corruption 'fgo'"),
        (["--corruptions", "fog", "--severities", "0-9"], "severities are 1 to 5"),
        (["--ood", "no/such/folder"], "not 'heldout', a data set"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run_dir, args, message, capsys):
    code, _, stderr = _cli(capsys, "evaluate", str(run_dir), *args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr


def test_heldout_needs_classes(tmp_path, capsys):
    out = tmp_path / "run"
    train(config_from_dict(tiny_config(data={"train_size": 32, "test_size": 16}, train={"epochs": 1})), out, quiet=True)
    code, _, stderr = _cli(capsys, "evaluate", str(out), "--ood", "heldout")
    assert code == 2 and "set data.classes" in stderr


def test_bf16_precision_is_recorded_and_close_to_float32(run_dir, capsys):
    import json

    args = ("evaluate", str(run_dir), "--corruptions", "contrast", "--severities", "1", "--json")
    assert _cli(capsys, *args)[0] == 0
    fp32 = json.loads((run_dir / "corruptions.json").read_text())
    assert _cli(capsys, *args, "--precision", "bf16")[0] == 0
    bf16 = json.loads((run_dir / "corruptions.json").read_text())
    assert fp32["precision"] == "32" and bf16["precision"] == "bf16"
    a, b = fp32["results"]["contrast"]["1"], bf16["results"]["contrast"]["1"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.05 and abs(a["nll"] - b["nll"]) <= 0.05
