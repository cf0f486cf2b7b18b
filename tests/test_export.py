"""``ensemblekit export``: TorchScript, ONNX and safetensors, checked against the eager ensemble (issue 17 item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.export import export_onnx, export_safetensors, export_torchscript, load_safetensors_state
from ensemblekit.methods import METHODS
from ensemblekit.predictor import Predictor
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble
from tests.conftest import run_cli, tiny_config

CUSTOM = "tests.byo.custom_nets:make_net"
NEEDS_BUILTIN = {"fission", "mothernets", "packed", "treenet"}  # refuse custom modules: exported on resnet8
OPTIONS = {"mimo": {"batch_repetitions": 1}, "mixture": {"bank_singletons": True}, "snapshot": {"cycle_epochs": 1}}
REFUSED = {"mc_dropout": "random dropout samples"}


def _predictor(method: str) -> Predictor:
    raw = tiny_config(
        method={"name": method, **({} if method == "single" else {"members": 2}), **OPTIONS.get(method, {})}
    )
    if method not in NEEDS_BUILTIN:
        raw["model"] = {"factory": CUSTOM}
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    _, ensemble = build_ensemble(cfg, 10, 192)
    with torch.no_grad():  # non-trivial BN statistics, so normalisation errors would show
        for m in ensemble.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    classes = [f"c{k}" for k in range(10)]
    return Predictor(
        ensemble.eval(), cfg, classes, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), (3, 32, 32), torch.device("cpu"), Path(".")
    )


def _images(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_torchscript_export_matches_the_eager_ensemble(method, tmp_path):
    predictor = _predictor(method)
    if method in REFUSED:
        with pytest.raises(UserError, match=REFUSED[method]):
            export_torchscript(predictor, tmp_path / "m.pt")
        return
    export_torchscript(predictor, tmp_path / "m.pt")
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = _images()
    probs, member_probs = loaded(x.float() / 255)
    want = predictor.predict(x)
    torch.testing.assert_close(member_probs, want.member_probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs, want.probs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_onnx_export_matches_the_eager_ensemble(method, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    predictor = _predictor(method)
    if method in REFUSED:
        with pytest.raises(UserError, match=REFUSED[method]):
            export_onnx(predictor, tmp_path / "m.onnx")
        return
    export_onnx(predictor, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _images(7)
    probs, member_probs = session.run(None, {"images": (x.float() / 255).numpy()})
    want = predictor.predict(x)
    torch.testing.assert_close(torch.from_numpy(member_probs), want.member_probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(probs), want.probs, atol=1e-5, rtol=1e-4)


def test_safetensors_round_trip(tmp_path):
    predictor = _predictor("batch_ensemble")
    export_safetensors(predictor, tmp_path / "w.safetensors")
    state, info = load_safetensors_state(tmp_path / "w.safetensors")
    assert info["inputs"]["classes"] == predictor.classes and info["config"]["method"]["name"] == "batch_ensemble"
    _, fresh = build_ensemble(config_from_dict(info["config"]), 10, 192)
    fresh.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), predictor.ensemble(x))


def test_cli_export_of_a_trained_run(tmp_path):
    cfg = tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1, "max_steps_per_epoch": 2})
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet").returncode == 0
    done = run_cli("export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(tmp_path / "m.pt"))
    assert done.returncode == 0, done.stderr
    assert torch.jit.load(str(tmp_path / "m.pt"))(torch.rand(2, 3, 32, 32))[0].shape == (2, 10)
    bad = run_cli("export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(tmp_path / "no" / "m.pt"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_onnx_without_the_onnx_package_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(UserError, match="pip install onnx onnxruntime"):
        export_onnx(_predictor("deep_ensemble"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
