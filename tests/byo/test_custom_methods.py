"""Every method on a plain user ``nn.Module`` (issue 17 item 1): it trains, or refuses in one line.

``model.factory: "tests.byo.custom_nets:make_net"`` names a small CNN that is no ensemblekit ``Backbone``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.methods import METHODS
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, train
from tests.byo.custom_nets import TinyCNN
from tests.conftest import tiny_config

FACTORY = "tests.byo.custom_nets:make_net"

WORKS = {
    "bagging": {},
    "batch_ensemble": {},
    "deep_ensemble": {},
    "distillation": {},
    "fge": {},
    "mc_dropout": {},
    "mimo": {"batch_repetitions": 1},
    "mixture": {"bank_singletons": True},
    "single": {},
    "snapshot": {"cycle_epochs": 1},
    "subnetwork": {},
}
REFUSES = {
    "fission": "stage boundaries: set model.stages",
    "mothernets": "architecture spec",
    "packed": "architecture spec",
    "treenet": "stage boundaries: set model.stages",
}


def custom_config(method: str, **options):
    raw = tiny_config(
        method={"name": method, **({} if method == "single" else {"members": 2}), **options},
        train={"epochs": 1, "max_steps_per_epoch": 2},
        data={"train_size": 64, "test_size": 32},
    )
    raw["model"] = {"factory": FACTORY, "kwargs": {"channels": 8}}
    return config_from_dict(raw)


def test_every_registered_method_is_classified():
    assert set(WORKS) | set(REFUSES) == set(METHODS.names())


@pytest.mark.parametrize("method", sorted(WORKS))
def test_method_trains_a_custom_module(method, tmp_path):
    cfg = custom_config(method, **WORKS[method])
    record = train(cfg, tmp_path / "run", quiet=True)
    assert record["backbone"] == "custom"
    assert math.isfinite(record["metrics"]["nll"])
    if method not in ("single", "mc_dropout"):  # members are distinct networks, not one network twice
        _, ensemble = build_ensemble(cfg, 10, 64)
        ensemble.eval()
        out = ensemble(torch.randn(4, 3, 32, 32))
        assert out.shape == (ensemble.num_members, 4, 10)
        if method not in ("subnetwork",):  # subnetwork children start as copies of the trained parent
            assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("method", sorted(REFUSES))
def test_method_refuses_a_custom_module_in_one_line(method):
    with pytest.raises(UserError, match=f"cannot use the custom model {FACTORY}: .*{REFUSES[method]}") as info:
        build_ensemble(custom_config(method), 10, 64)
    assert "\n" not in str(info.value)


def test_mc_dropout_puts_dropout_before_the_classifier():
    _, ensemble = build_ensemble(custom_config("mc_dropout", dropout=0.25), 10, 64)
    head = ensemble.net.classifier
    assert isinstance(head, nn.Sequential) and isinstance(head[0], nn.Dropout) and head[0].p == 0.25
    assert isinstance(head[1], nn.Linear)


def test_batch_ensemble_with_unit_fast_weights_equals_the_original():
    torch.manual_seed(0)
    original = TinyCNN(10, 8).eval()
    _, ensemble = build_ensemble(custom_config("batch_ensemble", members=3), 10, 64)
    net = ensemble.net
    with torch.no_grad():
        for name, layer in original.named_modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                new = net.get_submodule(name)
                new.weight.copy_(layer.weight)
                new.r.fill_(1.0)
                new.s.fill_(1.0)
                if layer.bias is not None:
                    new.bias.copy_(layer.bias.expand_as(new.bias))
            elif isinstance(layer, nn.BatchNorm2d):
                net.get_submodule(name).load_state_dict(layer.state_dict())
    ensemble.eval()
    x = torch.randn(5, 3, 32, 32)
    out = ensemble(x)
    for i in range(3):
        torch.testing.assert_close(out[i], original(x), atol=1e-5, rtol=1e-5)


def test_mixture_with_one_template_per_layer_equals_the_original():
    from ensemblekit.layers.template import TemplateLayer

    torch.manual_seed(0)
    original = TinyCNN(10, 8).eval()
    cfg = custom_config("mixture", members=1, templates_per_layer=1, bank_singletons=True)
    _, ensemble = build_ensemble(cfg, 10, 64)
    net = ensemble.net
    with torch.no_grad():
        for name, layer in original.named_modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                new = net.get_submodule(name)
                assert isinstance(new, TemplateLayer) and new.t == 1
                new._bank.groups[new.group][new._rows[0]].copy_(layer.weight.flatten())
                new.coefficients.fill_(1.0)
                if layer.bias is not None:
                    new.bias.copy_(layer.bias)
            elif isinstance(layer, nn.BatchNorm2d):
                net.get_submodule(name).load_state_dict(layer.state_dict())
    ensemble.eval()
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(ensemble(x)[0], original(x), atol=1e-5, rtol=1e-5)


def test_mixture_without_member_specific_layers_is_refused():
    with pytest.raises(UserError, match="no layer mixes templates"):
        build_ensemble(custom_config("mixture"), 10, 64)


def test_conversion_that_converts_nothing_is_an_error():
    from ensemblekit.layers.batch_ensemble import BatchEnsembleLayers
    from ensemblekit.models.custom import convert_layers

    with pytest.raises(UserError, match="nothing would change"):
        convert_layers(nn.Sequential(nn.Flatten(), nn.ReLU()), BatchEnsembleLayers(2), "batch_ensemble")
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten())
    with pytest.raises(UserError, match="cannot convert layer '0'"):
        convert_layers(grouped, BatchEnsembleLayers(2), "batch_ensemble")


def test_mimo_widens_the_input_conv_and_the_classifier():
    _, ensemble = build_ensemble(custom_config("mimo", members=3), 10, 64)
    assert ensemble.net.features[0].in_channels == 9
    assert ensemble.net.classifier.out_features == 30


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("not a path", "expected 'package.module:function'"),
        ("tests.byo.no_such_module:make", "cannot import 'tests.byo.no_such_module'"),
        ("tests.byo.custom_nets:missing", "has no attribute 'missing'"),
        ("tests.byo.custom_nets:NOT_CALLABLE", "is not callable"),
    ],
)
def test_bad_factory_paths_are_one_line_errors(factory, message):
    raw = tiny_config()
    raw["model"] = {"factory": factory}
    with pytest.raises(UserError, match=message) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_unknown_factory_options_and_width_are_refused():
    raw = tiny_config()
    raw["model"] = {"factory": FACTORY, "kwargs": {"depth": 3}}
    with pytest.raises(UserError, match=r"has no option.*depth; valid: channels"):
        config_from_dict(raw)
    raw["model"] = {"factory": FACTORY, "width": 2.0}
    with pytest.raises(UserError, match=r"config error: model\.width: applies to the built-in models only"):
        config_from_dict(raw)


def test_registered_plain_module_factory_works(monkeypatch):
    from ensemblekit.models import MODELS

    name = "byo_test_tiny_cnn"  # registered for this test only (MODELS.add in user code)
    monkeypatch.setitem(MODELS._entries, name, lambda num_classes=10, **kw: TinyCNN(num_classes))
    raw = tiny_config(method={"name": "batch_ensemble", "members": 2})
    raw["model"] = {"name": name}
    _, ensemble = build_ensemble(config_from_dict(raw), 10, 64)
    assert type(ensemble.net).__name__ == "TinyCNN"
    assert type(ensemble.net.classifier).__name__ == "BatchEnsembleLinear"


STAGES = ["features.0", "features.3", "features.6"]  # stage 0: conv-BN-ReLU, stage 1: conv-BN-ReLU, head: pool-fc


@pytest.mark.parametrize("method", ["fission", "treenet"])
def test_stage_methods_run_on_named_stage_boundaries(method, tmp_path):
    import ensemblekit

    raw = tiny_config(
        method={"name": method, "members": 2},
        train={"epochs": 1, "max_steps_per_epoch": 2},
        data={"train_size": 64, "test_size": 32},
    )
    raw["model"] = {"factory": FACTORY, "stages": STAGES}
    record = train(config_from_dict(raw), tmp_path / "run", quiet=True)
    assert math.isfinite(record["metrics"]["nll"]) and record["num_members"] == 2
    out = ensemblekit.load(tmp_path / "run", device="cpu").predict(
        torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    )
    assert (out.member_probs[0] - out.member_probs[1]).abs().max() > 1e-6  # two paths, not one network twice


def test_staged_module_equals_the_original_and_bad_stages_are_refused():
    from ensemblekit.models.custom import staged_backbone

    torch.manual_seed(0)
    net = TinyCNN(10, 8).eval()
    staged = staged_backbone(net, STAGES).eval()
    assert len(staged.stages) == 2 and isinstance(staged.head.fc, nn.Linear)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(staged(x), net(x))
    with pytest.raises(UserError, match=r"no layer 'features\.9'; the layers in order: features\.0, "):
        staged_backbone(TinyCNN(), ["features.0", "features.9"])
    with pytest.raises(UserError, match="in layer order"):
        staged_backbone(TinyCNN(), ["features.3", "features.0"])

    class Skip(nn.Module):  # forward is not its children in order
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(self.pool(x + self.conv(x)))

    with pytest.raises(UserError, match="not its layers applied in order"):
        staged_backbone(Skip(), ["conv", "pool.0"])
    with pytest.raises(UserError, match=r"config error: model\.stages: applies to custom models"):
        config_from_dict({"model": {"name": "resnet8", "stages": ["stem"]}})


def test_registered_backbone_builder_is_not_a_custom_module(monkeypatch):
    from ensemblekit.models import MODELS, create_model

    def tiny_resnet(num_classes=10, layers=None, dropout=0.0):
        return create_model("resnet8", num_classes=num_classes, width=0.5, layers=layers, dropout=dropout)

    monkeypatch.setitem(MODELS._entries, "byo_test_resnet", tiny_resnet)
    raw = tiny_config(method={"name": "fission", "members": 2})
    raw["model"] = {"name": "byo_test_resnet"}
    _, ensemble = build_ensemble(config_from_dict(raw), 10, 64)  # fission needs stages: a Backbone has them
    assert ensemble.num_members == 2


def test_mixture_of_a_registered_module_whose_kwargs_swallow_everything(monkeypatch):
    """The issue's case: ``**kw`` swallowed ``layers=`` and mixture trained one network twice, silently."""
    from ensemblekit.layers.template import TemplateLayer
    from ensemblekit.models import MODELS
    from tests.byo.custom_nets import make_loose

    monkeypatch.setitem(MODELS._entries, "byo_test_loose", make_loose)
    raw = tiny_config(method={"name": "mixture", "members": 2})
    raw["model"] = {"name": "byo_test_loose"}
    with pytest.raises(UserError, match="no layer mixes templates"):
        build_ensemble(config_from_dict(raw), 10, 64)
    raw["method"]["bank_singletons"] = True
    _, ensemble = build_ensemble(config_from_dict(raw), 10, 64)
    assert sum(isinstance(m, TemplateLayer) for m in ensemble.modules()) == 3  # 2 convs + the classifier
    out = ensemble.eval()(torch.randn(4, 3, 32, 32))
    assert (out[0] - out[1]).abs().max() > 1e-4
