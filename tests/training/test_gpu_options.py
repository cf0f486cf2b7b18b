"""The runtime switches of the CUDA defaults: each one resolves per device and can be turned off."""

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import eval_autocast_dtype, train, use_channels_last, use_cudnn_benchmark, use_fused_optimizer
from ensemblekit.training.optim import build_optimizer
from ensemblekit.training.stage import OptimSpec
from tests.conftest import tiny_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _cfg(**runtime):
    return config_from_dict(tiny_config(runtime={"accelerator": "cpu", "num_threads": 1, **runtime}))


def test_ddp_spawn_is_refused_in_one_line():
    with pytest.raises(UserError) as err:
        _cfg(strategy="ddp_spawn")
    text = str(err.value)
    assert "\n" not in text and "runtime.strategy" in text and "ddp_spawn is not supported" in text and "ddp" in text


def test_fast_cuda_defaults_resolve_per_device_and_switch_off():
    auto = _cfg()
    assert use_cudnn_benchmark(auto, CUDA) and not use_cudnn_benchmark(auto, CPU)
    assert not use_cudnn_benchmark(_cfg(deterministic=True), CUDA)
    assert not use_cudnn_benchmark(_cfg(cudnn_benchmark="off"), CUDA)
    assert use_fused_optimizer(auto, CUDA) and not use_fused_optimizer(auto, CPU)
    assert not use_fused_optimizer(_cfg(fused_optimizer="off"), CUDA)
    assert use_channels_last(auto, CUDA) and use_channels_last(auto, CPU)
    assert not use_channels_last(_cfg(channels_last="off"), CUDA)
    assert not use_channels_last(auto, torch.device("mps"))


def test_evaluation_runs_under_the_runs_precision_unless_asked_for_float32():
    assert eval_autocast_dtype(_cfg(precision="bf16-mixed")) == torch.bfloat16
    assert eval_autocast_dtype(_cfg(precision="16-mixed")) == torch.float16
    assert eval_autocast_dtype(_cfg(precision="bf16-mixed", eval_precision="32")) is None
    assert eval_autocast_dtype(_cfg()) is None


def test_fused_optimizers_are_built_with_the_same_hyperparameters():
    p = [torch.nn.Parameter(torch.ones(3))]
    sgd = build_optimizer([{"params": p}], OptimSpec(lr=0.1), fused=True)
    assert sgd.defaults["fused"] is True and sgd.defaults["nesterov"] and sgd.param_groups[0]["lr"] == 0.1
    adamw = build_optimizer([{"params": p}], OptimSpec(name="adamw", lr=1e-3), fused=True)
    assert adamw.defaults["fused"] is True
    assert not build_optimizer([{"params": p}], OptimSpec()).defaults.get("fused")


class Broken(torch.nn.Module):
    """What a failing ``torch.compile`` hands back: the module, whose compiled forward raises."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        raise RuntimeError("Unsupported: data-dependent control flow\nlong trace ...")


@pytest.mark.parametrize("execution", ["loop", "packed"])
def test_runtime_compile_uses_the_mode_and_a_failure_is_one_line(tmp_path, monkeypatch, execution):
    modes = []

    def failing_compile(fn, mode=None):
        modes.append(mode)

        def broken(*args, **kwargs):
            raise RuntimeError("Unsupported: data-dependent control flow\nlong trace ...")

        if isinstance(fn, torch.nn.Module):
            return Broken(fn)
        return broken

    monkeypatch.setattr(torch, "compile", failing_compile)
    cfg = tiny_config(
        method={"name": "deep_ensemble", "members": 2},
        runtime={"accelerator": "cpu", "num_threads": 1, "compile": "reduce-overhead", "member_execution": execution},
    )
    with pytest.raises(UserError) as err:
        train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    assert str(err.value) == (
        "runtime.compile=reduce-overhead: this method cannot be compiled (Unsupported: data-dependent control "
        "flow); set runtime.compile: off"
    )
    assert modes and set(modes) == {"reduce-overhead"}


def test_runtime_compile_trains_through_the_compiled_module(tmp_path, monkeypatch):
    calls = []

    def identity_compile(module, mode=None):
        calls.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", identity_compile)
    cfg = tiny_config(runtime={"accelerator": "cpu", "num_threads": 1, "compile": "default"}, train={"epochs": 1})
    record = train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    assert calls == ["default"] and 0.0 <= record["metrics"]["accuracy"] <= 1.0


def test_batch_preparation_runs_under_the_runs_autocast():
    """A distillation teacher's forward (in ``prepare_batch``) runs in the run's precision, like the student's."""
    from lightning.fabric import Fabric

    from ensemblekit.data import load_data
    from ensemblekit.metrics import TrainCostMeter
    from ensemblekit.models import create_model
    from ensemblekit.training.engine import Engine
    from ensemblekit.training.stage import Stage

    seen = []

    def prepare(x, y):
        seen.append(torch.is_autocast_enabled("cpu"))
        return x, y

    data = load_data("synthetic", train_size=16, test_size=8)
    model = create_model("resnet8", 10, width=0.25)
    for precision, expected in (("bf16-mixed", True), ("32-true", False)):
        seen.clear()
        fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
        engine = Engine(fabric, data, {"ensemble": model}, batch_size=8, cost_meter=TrainCostMeter(1.0, 16))
        engine.run([Stage("s", model, 1, prepare_batch=prepare, flops_per_image=1.0)])
        assert seen == [expected, expected], precision
