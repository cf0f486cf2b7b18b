"""CUDA checks of the engine (skipped where there is no GPU; run them on a GPU machine)."""

import json

import pytest
import torch

from ensemblekit.config import config_from_dict
from ensemblekit.runner import evaluate, train
from tests.conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_train_on_cuda(tmp_path, precision):
    cfg = config_from_dict(
        tiny_config(
            method={"name": "deep_ensemble", "members": 2},
            runtime={"accelerator": "cuda", "precision": precision, "num_threads": None},
        )
    )
    record = train(cfg, tmp_path / "run", quiet=True)
    m = record["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and m["nll"] == m["nll"] and m["nll"] < 10
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(4.0, rel=1e-6)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.device.type == "cpu" for v in state.values())


def test_cuda_run_evaluates_the_same_on_cpu(tmp_path):
    cfg = config_from_dict(tiny_config(runtime={"accelerator": "cuda", "num_threads": None}))
    train(cfg, tmp_path / "run", quiet=True)
    on_cuda = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    on_cpu = evaluate(tmp_path / "run")["metrics"]
    assert abs(on_cpu["accuracy"] - on_cuda["accuracy"]) <= 2 / 64  # at most a borderline sample or two
    assert on_cpu["nll"] == pytest.approx(on_cuda["nll"], abs=1e-3)
