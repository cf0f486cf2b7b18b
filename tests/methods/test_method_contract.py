"""The contract every registered method keeps, checked for each one (issue 14 item 5).

* its ensemble builds on the meta device (shapes only: what ``describe`` and cost counting need) and on CPU;
* ``forward`` of a ``[B, 3, 32, 32]`` batch returns member logits ``[M, B, C]`` (the convention of
  :class:`ensemblekit.ensemble.Ensemble`), with M = ``num_members``;
* its recipe's stage names are unique (checkpoints, logs and costs are keyed by them);
* a checkpoint round trip (``state_dict`` saved to bytes, loaded with ``weights_only=True`` into a fresh build)
  restores every tensor and the outputs;
* a quick config ``configs/quick/<method>.yaml`` exists and names the method.

New methods are picked up from ``METHODS``; give one an entry in ``OPTIONS`` only if its defaults cannot run
on the tiny config.
"""

from __future__ import annotations

import io

import pytest
import torch
import yaml

from ensemblekit.methods import METHODS, build_method
from ensemblekit.resolve import config_from_dict
from tests.conftest import REPO, tiny_config

NUM_CLASSES, TRAIN_SIZE, BATCH = 10, 192, 2
NAMES = METHODS.names()

OPTIONS = {
    "snapshot": {"members": 2, "cycle_epochs": 1},  # the tiny config's 2 epochs cannot hold the default 5 cycles
}
"""Method options for the tiny config (resnet8 at half width, 2 epochs); every other method runs its defaults."""

META_FORWARD_ON_CPU = {
    "subnetwork": "the members are the children the `selected` buffer names; a meta buffer holds no values, "
    "so which children run is unknown on meta (the build itself runs on meta; the forward is checked on CPU)",
}
"""Methods whose ensemble builds on meta but cannot run a meta forward, and why."""


def _method(name: str):
    cfg = config_from_dict(tiny_config(method={"name": name, **OPTIONS.get(name, {})}))
    return build_method(cfg, NUM_CLASSES, TRAIN_SIZE)


def _images(device: str = "cpu") -> torch.Tensor:
    if device == "meta":
        return torch.empty(BATCH, 3, 32, 32, device="meta")
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _forward(ensemble: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)  # MC dropout samples its masks at test time too
    with torch.no_grad():
        return ensemble.eval()(x)


def test_every_method_is_checked_and_options_name_registered_methods():
    assert len(NAMES) >= 15 and len(set(NAMES)) == len(NAMES)
    assert set(OPTIONS) <= set(NAMES) and set(META_FORWARD_ON_CPU) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_on_the_meta_device_and_returns_member_logits(name):
    method = _method(name)
    with torch.device("meta"):
        ensemble = method.build()
    tensors = [*ensemble.parameters(), *ensemble.buffers()]
    assert tensors and all(t.is_meta for t in tensors)
    assert ensemble.num_members >= 1
    if name in META_FORWARD_ON_CPU:
        pytest.skip(f"{name}: meta forward impossible: {META_FORWARD_ON_CPU[name]}")
    out = _forward(ensemble, _images("meta"))
    assert out.is_meta and tuple(out.shape) == (ensemble.num_members, BATCH, NUM_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_cpu_forward_returns_m_b_c_and_the_recipe_names_its_stages_once(name):
    method = _method(name)
    ensemble = method.build()
    out = _forward(ensemble, _images())
    assert tuple(out.shape) == (ensemble.num_members, BATCH, NUM_CLASSES)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert getattr(ensemble, "combine", "probs") in ("probs", "logits")
    stages = [stage.name for stage in method.recipe(ensemble)]
    assert stages and len(stages) == len(set(stages)), f"duplicate stage names: {stages}"


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_round_trip_restores_every_tensor_and_the_outputs(name):
    method = _method(name)
    trained = method.build()
    with torch.no_grad():  # stand-in for training: move every float tensor off its initial value
        gen = torch.Generator().manual_seed(1)
        for t in [*trained.parameters(), *trained.buffers()]:
            if t.is_floating_point():
                t.add_(0.01 * torch.randn(t.shape, generator=gen, dtype=t.dtype) + 0.01)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = method.build()
    before = fresh.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items() if v.is_floating_point())
    fresh.load_state_dict(state)
    saved, loaded = trained.state_dict(), fresh.state_dict()
    assert list(loaded) == list(saved)
    for key, value in saved.items():  # bitwise, NaN where NaN (subnetwork's unscored candidates)
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    torch.testing.assert_close(_forward(fresh, _images()), _forward(trained, _images()), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_quick_config_exists_for_the_method(name):
    path = REPO / "configs" / "quick" / f"{name}.yaml"
    assert path.is_file(), f"missing quick config {path.relative_to(REPO)}"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert raw["method"]["name"] == name
    assert config_from_dict(raw).method.name == name
