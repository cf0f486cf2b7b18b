"""CUDA checks of the engine (skipped where there is no GPU; run them on a GPU machine)."""

import json

import pytest
import torch

from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import evaluate, train
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


def _engine_syncs(steps: int, execution: str) -> int:
    """Host syncs of one engine epoch of ``steps`` steps (bf16, resnet8; 2 members when packed)."""
    import warnings

    from lightning.fabric import Fabric

    from ensemblekit.data import load_data
    from ensemblekit.metrics import TrainCostMeter
    from ensemblekit.models import create_model
    from ensemblekit.training.engine import Engine
    from ensemblekit.training.packed_members import pack_member_stages
    from ensemblekit.training.stage import Stage

    data = load_data("synthetic", train_size=16 * steps, test_size=16)
    fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-mixed")
    nets = [create_model("resnet8", 10, width=0.25).cuda() for _ in range(2 if execution == "packed" else 1)]
    stages = [Stage(f"member_{i}", net, 1, data_seed=i, flops_per_image=1.0) for i, net in enumerate(nets)]
    stages, _ = pack_member_stages(stages, execution, fabric.device)
    engine = Engine(
        fabric, data, {"ensemble": torch.nn.ModuleList(nets)}, batch_size=16,
        cost_meter=TrainCostMeter(1.0, 16 * steps), fused_optimizer=True,
    )  # fmt: skip
    engine.run(stages)  # warm-up: the split is copied, kernels are chosen
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.run(stages)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


@pytest.mark.parametrize("execution", ["loop", "packed"])
def test_training_steps_make_no_host_synchronisation(execution):
    """An epoch's syncs (its start and end) do not grow with its steps: a step itself never syncs."""
    assert _engine_syncs(10, execution) == _engine_syncs(30, execution)


def test_packed_members_train_on_cuda_in_bf16(tmp_path):
    cfg = config_from_dict(
        tiny_config(
            method={"name": "deep_ensemble", "members": 2},
            runtime={"accelerator": "cuda", "precision": "bf16-mixed", "member_execution": "packed"},
        )
    )
    record = train(cfg, tmp_path / "run", quiet=True)
    assert list(record["costs"]["stages"]) == ["member_0", "member_1"]
    assert record["metrics"]["nll"] < 10
    assert '"stage": "member_0+member_1"' in (tmp_path / "run" / "events.jsonl").read_text()
