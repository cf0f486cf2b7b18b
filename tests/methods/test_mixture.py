"""The ``mixture`` method: options, recipe (no weight decay on α), costs, and a run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.layers.template import TemplateLayer
from ensemblekit.methods import build_method
from ensemblekit.methods.mixture import AUTO_LAYOUT, build_mixture_ensemble
from ensemblekit.metrics import count_parameters, inference_flops
from ensemblekit.models import create_model
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.training.optim import build_optimizer
from tests.conftest import tiny_config

SMALL_MODEL = {"name": "resnet20", "width": 0.5}  # resnet8 has a single multi-layer group: too few to share


def _method(**method):
    cfg = config_from_dict(tiny_config(model=SMALL_MODEL, method={"name": "mixture", **method}))
    return build_method(cfg, num_classes=10, train_size=192)


def test_run_end_to_end_writes_finite_metrics(tmp_path, monkeypatch):
    import ensemblekit.training.engine as engine_mod

    optimizers = []
    real = engine_mod.build_optimizer
    monkeypatch.setattr(
        engine_mod, "build_optimizer", lambda *a, **k: optimizers.append(real(*a, **k)) or optimizers[-1]
    )
    cfg = tiny_config(
        model=SMALL_MODEL, method={"name": "mixture", "members": 2, "param_budget": 0.5}, train={"epochs": 1}
    )
    record = train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    (opt,) = optimizers
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay and all(v == 5e-4 for v in decay.values() if v != 0.0)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    n_coefficients = sum(1 for k in state if k.endswith(".coefficients"))
    assert n_coefficients > 0 and sum(1 for v in decay.values() if v == 0.0) == n_coefficients
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["num_members"] == 2 and saved["method"] == "mixture"
    for key in ("accuracy", "nll", "ece", "brier"):
        assert torch.isfinite(torch.tensor(saved["metrics"][key]))
    assert len(saved["members"]) == 2
    costs = record["costs"]
    assert costs["params"] == costs["unique_params"]
    assert costs["inference_flops_vs_single"] == pytest.approx(2.0, rel=0.05)
    assert any(k.startswith("bank.groups.") for k in state)


def test_recipe_trains_jointly_without_weight_decay_on_coefficients():
    method = _method(members=3, param_budget=1.0)
    ens = method.build()
    (stage,) = method.recipe(ens)
    assert stage.module is ens and stage.member_loss == "sum"
    opt = build_optimizer(stage.param_groups(ens), stage.optim)
    coefficients = {id(m.coefficients) for m in ens.modules() if isinstance(m, TemplateLayer)}
    seen = []
    for group in opt.param_groups:
        for p in group["params"]:
            seen.append(id(p))
            expected = 0.0 if id(p) in coefficients else method.cfg.train.weight_decay
            assert group["weight_decay"] == expected
    assert sorted(seen) == sorted(id(p) for p in ens.parameters())  # every parameter exactly once
    assert coefficients and method.cfg.train.weight_decay > 0


TINY_MIXTURE = {"members": 3, "param_budget": 0.5, "execution": "loop"}
TINY_MODEL = {"name": "resnet20", "width": 0.25}


def _stage_gradients(member_loss, x, y):
    """Gradients of the recipe's stage loss (the engine's default member cross-entropy) and of each member's CE."""
    from ensemblekit.training.losses import member_cross_entropy

    cfg = config_from_dict(
        tiny_config(model=TINY_MODEL, method={"name": "mixture", "member_loss": member_loss, **TINY_MIXTURE})
    )
    torch.manual_seed(0)
    method = build_method(cfg, num_classes=10, train_size=192)
    ens = method.build().train()
    (stage,) = method.recipe(ens)

    def grads(loss):
        ens.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in ens.named_parameters() if p.grad is not None}

    joint = grads(member_cross_entropy(ens(x), y, stage.member_loss))
    alone = [grads(torch.nn.functional.cross_entropy(ens.member_forward(i, x), y)) for i in range(3)]
    return ens, joint, alone


def test_member_loss_sum_gives_m_times_the_mean_gradient_and_each_member_its_own_ce():
    """``sum``: L = Σ_i CE_i, so the bank gets Σ_i ∂CE_i/∂T and member i's coefficients ∂CE_i/∂α_i;
    ``mean`` divides every gradient by M. Checked on the loss the recipe's stage trains with."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    ens, summed, alone = _stage_gradients("sum", x, y)
    _, mean, _ = _stage_gradients("mean", x, y)
    assert summed.keys() == mean.keys() and any(n.startswith("bank.") for n in summed)
    for name, grad in summed.items():
        tol = 1e-5 * float(grad.abs().max())
        torch.testing.assert_close(grad, 3 * mean[name], rtol=1e-4, atol=tol)
        torch.testing.assert_close(grad, sum(a.get(name, torch.zeros_like(grad)) for a in alone), rtol=1e-4, atol=tol)
    coefficients = [n for n, m in ens.named_modules() if isinstance(m, TemplateLayer)]
    assert coefficients
    for layer in coefficients:
        name = f"{layer}.coefficients"
        for i in range(3):  # member i's α rows get exactly its own CE's gradient; the others' CE gives them none
            torch.testing.assert_close(summed[name][i], alone[i][name][i], rtol=1e-4, atol=1e-9)
            assert all(j == i or not alone[j][name][i].any() for j in range(3))
        assert alone[0][name][0].abs().sum() > 0
    bank = next(n for n in summed if n.startswith("bank."))
    assert all(a[bank].abs().sum() > 0 for a in alone)  # every member's loss reaches the shared templates


def test_member_loss_sum_trains_like_mean_at_m_times_the_learning_rate(tmp_path):
    """End to end: one SGD step (no weight decay) with ``sum`` at lr η equals ``mean`` at lr M·η, because
    ∇Σ_i CE_i = M ∇(1/M)Σ_i CE_i (the first momentum/Nesterov step is linear in the gradient)."""

    def one_step(member_loss, lr, name):
        cfg = tiny_config(
            model=TINY_MODEL,
            method={"name": "mixture", "member_loss": member_loss, **TINY_MIXTURE},
            data={"train_size": 32, "test_size": 16, "batch_size": 32},
            train={"epochs": 1, "lr": lr, "weight_decay": 0.0, "schedule": "constant"},
        )
        train(config_from_dict(cfg), tmp_path / name, quiet=True)
        return torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]

    summed, mean = one_step("sum", 0.01, "sum"), one_step("mean", 0.03, "mean")
    trained = [k for k, v in summed.items() if v.is_floating_point() and "running" not in k]
    assert any(k.startswith("bank.") for k in trained) and any(k.endswith(".coefficients") for k in trained)
    for key in trained:
        torch.testing.assert_close(summed[key], mean[key], rtol=1e-4, atol=1e-6)


def test_blob_is_decayed_while_bn_and_biases_are_not_when_decay_bn_and_bias_is_false():
    """The blob is a (1-D) weight bank: classed by role it is decayed; BN parameters and biases are not."""
    cfg = tiny_config(
        model=SMALL_MODEL,
        method={"name": "mixture", "members": 2, "param_budget": 0.25, "sharing": "blob"},
        train={"decay_bn_and_bias": False},
    )
    method = build_method(config_from_dict(cfg), num_classes=10, train_size=192)
    ens = method.build()
    (stage,) = method.recipe(ens)
    opt = build_optimizer(stage.param_groups(ens), stage.optim)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    wd = method.cfg.train.weight_decay
    assert wd > 0 and ens.bank.blob is not None and ens.bank.blob.dim() == 1
    assert decay[id(ens.bank.blob)] == wd
    norm = [p for m in ens.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters(recurse=False)]
    biases = [p for n, p in ens.named_parameters() if n.endswith(".bias")]
    assert norm and biases and all(decay[id(p)] == 0.0 for p in norm + biases)


def test_member_loss_option_reaches_the_stage():
    method = _method(member_loss="mean")
    assert method.recipe(method.build())[0].member_loss == "mean"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sharing": "tree"}, "sharing"),
        ({"templates": 3}, "unknown option"),
        ({"param_budget": 0}, "param_budget"),
        ({"execution": "vmap"}, "execution"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options, match):
    with pytest.raises(UserError, match=match):
        _method(**options)


@pytest.mark.parametrize("layout", ["loop", "packed"])
def test_costs_count_m_member_passes_and_unique_parameters(layout):
    torch.manual_seed(0)
    ens = build_mixture_ensemble(
        lambda layers: create_model("resnet20", 10, width=0.5, layers=layers), 3, 1.0, layout=layout
    )
    single = create_model("resnet20", 10, width=0.5)
    counts = count_parameters(ens)
    report = ens.budget_report()
    assert counts["params"] == counts["unique_params"] == report["unique_params"]
    # FLOPs: M backbone passes (grouped convs counted per group) + forming the weights, 2*M*K*|θ| per layer
    layers = [m for m in ens.modules() if isinstance(m, TemplateLayer)]
    formation = sum(2 * 3 * m.num_sources * math.prod(m.shape) for m in layers)
    assert inference_flops(ens) == 3 * inference_flops(single) + formation


def test_auto_layout_is_chosen_per_device_and_densenet_is_never_packed():
    torch.manual_seed(0)
    ens = build_mixture_ensemble(lambda layers: create_model("resnet20", 10, width=0.25, layers=layers), 2, 1.0)
    assert ens.resolve_layout(torch.device("cpu")) == AUTO_LAYOUT["cpu"]
    assert ens.resolve_layout(torch.device("cuda")) == "packed"

    def dense(layers):
        return create_model("densenet_bc40_12", 10, layers=layers)

    with torch.device("meta"):
        assert build_mixture_ensemble(dense, 2, 1.0).resolve_layout(torch.device("cuda")) == "loop"
        with pytest.raises(UserError, match="packed does not support densenet"):
            build_mixture_ensemble(dense, 2, 1.0, layout="packed")


def test_runtime_member_execution_loop_forces_the_loop_form():
    cfg = config_from_dict(
        tiny_config(model=SMALL_MODEL, method={"name": "mixture"}, runtime={"member_execution": "loop"})
    )
    assert build_method(cfg, 10, 192).build().resolve_layout(torch.device("cuda")) == "loop"
    assert _method().build().resolve_layout(torch.device("cuda")) == "packed"
