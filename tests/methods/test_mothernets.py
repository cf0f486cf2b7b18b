"""The ``mothernets`` method: options, structure, recipe, hatching hook, costs and a heterogeneous run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from ensemblekit.bench.tables import comparison_table
from ensemblekit.errors import UserError
from ensemblekit.methods import build_method
from ensemblekit.metrics import count_parameters, inference_flops
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import evaluate, train
from ensemblekit.training.stage import StageContext
from tests.conftest import tiny_config

ARCHS = [{"name": "resnet8", "width": 0.25}, {"name": "resnet8", "width": 0.5}, {"name": "resnet14", "width": 0.5}]


def _method(train=None, **method):
    cfg = config_from_dict(tiny_config(method={"name": "mothernets", **method}, train=train or {}))
    return build_method(cfg, num_classes=10, train_size=192)


def test_build_has_mothers_and_heterogeneous_members():
    method = _method(architectures=ARCHS, clusters=1)
    ens = method.build()
    assert ens.num_members == 3 and method.options.members == 3
    assert [m.spec.stage_blocks for m in ens.members] == [(1, 1, 1), (1, 1, 1), (2, 2, 2)]
    assert method.clusters == [[0, 1, 2]] and len(method.mothers) == 1
    mother = method.mothers[0]
    assert mother.spec.stage_blocks == (1, 1, 1) and mother.spec.stage_channels == (4, 8, 16)
    modules = method.state_modules(ens)
    assert set(modules) == {"ensemble", "mothers"} and modules["mothers"][0] is mother
    per_member = _method(architectures=ARCHS, clusters=3)
    per_member.build()
    assert per_member.clusters == [[0], [1], [2]] and len(per_member.mothers) == 3
    assert [m.spec for m in per_member.mothers] == [m.spec for m in ens.members]  # g = M: own MotherNets
    scratch = _method(architectures=ARCHS, from_scratch=True)
    assert set(scratch.state_modules(scratch.build())) == {"ensemble"}


def test_recipe_splits_the_epoch_budget_and_seeds_members_apart():
    method = _method(architectures=ARCHS, clusters=2, train={"epochs": 10})
    ens = method.build()
    stages = method.recipe(ens)
    assert [s.name for s in stages] == ["mother_0", "mother_1", "member_0", "member_1", "member_2"]
    assert [s.epochs for s in stages] == [8, 8, 2, 2, 2]
    assert stages[0].module is method.mothers[0] and stages[2].module is ens.members[0]
    assert len({s.data_seed for s in stages}) == 5
    assert all(len(s.hooks.at_end) == 1 for s in stages[:2]) and not stages[2].hooks.at_end
    explicit = _method(architectures=ARCHS, mother_epochs=3, member_epochs=4, member_lr=0.01)
    stages = explicit.recipe(explicit.build())
    assert [s.epochs for s in stages] == [3, 4, 4, 4] and stages[1].optim.lr == 0.01 and stages[0].optim.lr == 0.05
    scratch = _method(architectures=ARCHS, from_scratch=True, train={"epochs": 10})
    assert [(s.name, s.epochs) for s in scratch.recipe(scratch.build())] == [
        ("member_0", 10),
        ("member_1", 10),
        ("member_2", 10),
    ]


HATCH_FAMILIES = {
    "resnet": ARCHS,
    "wide_resnet": [{"name": "wrn16_4", "width": 0.25}, {"name": "wrn22_2", "width": 0.5}],
    "vgg": [{"name": "vgg11", "width": 0.125}, {"name": "vgg13", "width": 0.125}],
    "densenet": [
        {"name": "densenet", "depth": 16, "growth_rate": 6},
        {"name": "densenet", "depth": 28, "growth_rate": 9},
    ],
}


@torch.no_grad()
def _randomise_bn(model, seed):
    """BN statistics and affine parameters as after training (the defaults 0/1 hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize("family", list(HATCH_FAMILIES))
def test_hatch_hook_preserves_a_trained_looking_mothers_function_in_every_family(family):
    """MotherNets step 4 (Net2Net hatching, Chen et al. 2016): every hatched member computes the MotherNet's
    function. The MotherNet's BN statistics and affine parameters are randomised (as after training) and so are
    the members' (hatching must not rely on their defaults); eval mode, float64, no noise."""
    method = _method(architectures=HATCH_FAMILIES[family], clusters=1, noise=0.0)
    ens = method.build()
    (stage, *_) = method.recipe(ens)
    mother = method.mothers[0]
    assert mother.spec.family == family
    _randomise_bn(mother, 0)
    for i, member in enumerate(ens.members):
        _randomise_bn(member, 10 + i)
    mother.double().eval()
    ens.double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref = mother(x)
        before = [float((member(x) - ref).abs().max()) for member in ens.members]
    stage.hooks.at_end[0](StageContext(stage=stage, stage_index=0, ensemble=ens, module=mother))
    assert all(b > 1e-2 * float(ref.abs().max()) for b in before)  # the members did differ before hatching
    assert any(m.spec != mother.spec for m in ens.members)  # at least one member really grows
    with torch.no_grad():
        for member in ens.members:
            torch.testing.assert_close(member(x), ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_hatch_hook_is_deterministic_and_its_noise_breaks_the_symmetry():
    method = _method(architectures=ARCHS, clusters=1, noise=0.0)
    ens = method.build()
    (stage, *_) = method.recipe(ens)
    x = torch.randn(4, 3, 32, 32)
    mother = method.mothers[0].eval()
    _randomise_bn(mother, 0)
    ctx = StageContext(stage=stage, stage_index=0, ensemble=ens, module=mother)
    stage.hooks.at_end[0](ctx)
    ens.eval()
    with torch.no_grad():
        ref = mother(x)
    first = {k: v.clone() for k, v in ens.state_dict().items()}
    stage.hooks.at_end[0](ctx)  # a re-run (resume) writes the same weights
    assert all(torch.equal(first[k], v) for k, v in ens.state_dict().items())

    noisy = _method(architectures=ARCHS, clusters=1, noise=0.05)
    noisy_ens = noisy.build()
    noisy.mothers[0].load_state_dict(mother.state_dict())
    (stage, *_) = noisy.recipe(noisy_ens)
    stage.hooks.at_end[0](StageContext(stage=stage, stage_index=0, ensemble=noisy_ens, module=noisy.mothers[0]))
    with torch.no_grad():
        assert not torch.allclose(noisy_ens.eval().members[0](x), ref, atol=1e-5 * float(ref.abs().max()))


def test_option_errors():
    with pytest.raises(UserError, match="clusters"):
        _method(architectures=ARCHS, clusters=4)
    with pytest.raises(UserError, match="differs from len"):
        _method(architectures=ARCHS, members=2)
    with pytest.raises(UserError, match="unknown option"):
        _method(architectures=ARCHS, cluster=1)
    mixed = _method(architectures=[{"name": "resnet8"}, {"name": "vgg11", "width": 0.25}], clusters=1)
    with pytest.raises(UserError, match="incompatible"):
        mixed.build()
    with pytest.raises(UserError, match="no option"):
        _method(architectures=[{"name": "resnet8", "widht": 0.5}]).build()


def test_cost_unit_is_the_largest_member():
    method = _method(architectures=ARCHS)
    assert method.largest_member_index() == 2
    unit = method.single_backbone()
    assert unit.spec.stage_blocks == (2, 2, 2) and unit.spec.stage_channels == (8, 16, 32)


def test_heterogeneous_run_end_to_end(tmp_path):
    cfg = tiny_config(
        method={"name": "mothernets", "architectures": ARCHS, "clusters": 1, "mother_epochs": 1, "member_epochs": 1},
        train={"epochs": 2, "max_steps_per_epoch": 2},
    )
    run = tmp_path / "run"
    record = train(config_from_dict(cfg), run, quiet=True)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["num_members"] == 3 and len(saved["members"]) == 3
    assert all(torch.isfinite(torch.tensor(saved["metrics"][k])) for k in ("accuracy", "nll", "ece", "disagreement"))
    costs = record["costs"]
    assert list(costs["stages"]) == ["mother_0", "member_0", "member_1", "member_2"]
    method = _method(architectures=ARCHS)
    ens = method.build()
    member_flops = [inference_flops(m) for m in ens.members]
    assert costs["single_inference_flops"] == max(member_flops)
    assert costs["inference_flops_vs_single"] == pytest.approx(sum(member_flops) / max(member_flops))
    assert costs["params"] == count_parameters(ens)["params"] == sum(count_parameters(m)["params"] for m in ens.members)
    # the mother's steps cost less than the largest member's (epoch equivalents in largest-member units)
    per_step = {k: v["train_epoch_equivalents"] / v["images_seen"] for k, v in costs["stages"].items()}
    assert per_step["mother_0"] < per_step["member_2"] and per_step["member_0"] < per_step["member_2"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "mothers" in ckpt["modules"] and any(k.startswith("0.stem") for k in ckpt["modules"]["mothers"])
    again = evaluate(run)
    assert again["metrics"]["accuracy"] == pytest.approx(saved["metrics"]["accuracy"])
    assert "mothernets" in comparison_table([run])


def test_interpolation_refuses_heterogeneous_members():
    from ensemblekit.analysis.interpolation import interpolate_members

    ens = _method(architectures=ARCHS).build()
    with pytest.raises(UserError, match="different architectures"):
        interpolate_members(ens, 0, 2, None, None, None, 3)


class _Killed(Exception):
    pass


RESUME_METHOD = {"name": "mothernets", "architectures": ARCHS[:2], "mother_epochs": 1, "member_epochs": 2}
RESUME_CFG = tiny_config(method=RESUME_METHOD, train={"max_steps_per_epoch": 2, "seed": 3})


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("mothernets_ref") / "run"
    train(config_from_dict(RESUME_CFG), out, quiet=True)
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


# (0, 1): after the MotherNet's last epoch, before the hatch hook (the resumed run re-runs it); (2, 1): in member_0
@pytest.mark.parametrize("kill_at", [(0, 1), (2, 1)])
def test_interrupted_run_resumes_bitwise(resume_reference, tmp_path, monkeypatch, kill_at):
    import ensemblekit.training.engine as engine_mod

    cfg = config_from_dict(RESUME_CFG)
    real_save = engine_mod.Engine.save

    def save_then_die(self, stage_index, epoch, *args, **kwargs):
        real_save(self, stage_index, epoch, *args, **kwargs)
        if (stage_index, epoch) == kill_at:
            raise _Killed

    monkeypatch.setattr(engine_mod.Engine, "save", save_then_die)
    with pytest.raises(_Killed):
        train(cfg, tmp_path / "run", quiet=True)
    monkeypatch.setattr(engine_mod.Engine, "save", real_save)
    train(cfg, tmp_path / "run", quiet=True, resume=True)
    out = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    ref = resume_reference
    assert ref.keys() == out.keys() and all(torch.equal(ref[k], out[k]) for k in ref)
