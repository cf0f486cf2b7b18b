"""The MotherNets baselines: ``distillation`` (loss, teacher run, costs), ``treenet`` (sharing), ``bagging``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ensemblekit.errors import UserError
from ensemblekit.methods import build_method
from ensemblekit.methods.bagging import bootstrap_indices
from ensemblekit.methods.distillation import distillation_loss, soft_targets
from ensemblekit.metrics import count_parameters
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.runs.loading import RUN_FILES
from tests.conftest import tiny_config

ARCHS = [{"name": "resnet8", "width": 0.25}, {"name": "resnet8", "width": 0.5}]
FAST = {"epochs": 1, "max_steps_per_epoch": 2}


def _method(name, train=None, **method):
    cfg = config_from_dict(tiny_config(method={"name": name, **method}, train=train or {}))
    return build_method(cfg, num_classes=10, train_size=192, runs=RUN_FILES)  # as the run layer builds it


# ----------------------------------------------------------------------------------------------- distillation
def test_distillation_loss_matches_hand_computation():
    torch.manual_seed(0)
    z_s, z_t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    t, alpha = 3.0, 0.7
    p_t = (z_t / t).softmax(-1)
    log_q = (z_s / t).log_softmax(-1)
    kl = (p_t * (p_t.log() - log_q)).sum(-1).mean()
    ce = -z_s.log_softmax(-1)[torch.arange(5), y].mean()
    expected = (1 - alpha) * ce + alpha * t * t * kl
    assert distillation_loss(z_s, y, p_t, t, alpha) == pytest.approx(float(expected), rel=1e-5)
    assert distillation_loss(z_s, y, p_t, t, 0.0) == pytest.approx(float(F.cross_entropy(z_s, y)), rel=1e-6)


def test_soft_targets_of_an_ensemble_teacher():
    z = torch.randn(3, 2, 5)
    probs = soft_targets(z, 2.0, "probs")
    assert torch.allclose(probs, (z / 2).softmax(-1).mean(0))
    assert torch.allclose(soft_targets(z, 2.0, "logits"), (z.mean(0) / 2).softmax(-1))
    assert torch.allclose(soft_targets(z[0], 1.0), z[0].softmax(-1))
    assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_distillation_recipe_with_a_teacher_trained_here():
    method = _method("distillation", architectures=ARCHS, teacher={"name": "resnet8", "width": 0.5}, teacher_epochs=3)
    ens = method.build()
    stages = method.recipe(ens)
    assert [(s.name, s.epochs) for s in stages] == [("teacher", 3), ("member_0", 2), ("member_1", 2)]
    assert stages[0].module is method.teacher and set(method.state_modules(ens)) == {"ensemble", "teacher"}
    assert stages[1].loss is not None and stages[1].prepare_batch is not None


def test_distillation_from_a_teacher_run_charges_teacher_costs(tmp_path):
    teacher_cfg = tiny_config(method={"name": "deep_ensemble", "members": 2}, train=FAST)
    teacher_rec = train(config_from_dict(teacher_cfg), tmp_path / "teacher", quiet=True)
    cfg = tiny_config(
        method={"name": "distillation", "architectures": ARCHS, "teacher_run": str(tmp_path / "teacher")}, train=FAST
    )
    record = train(config_from_dict(cfg), tmp_path / "kd", quiet=True)
    stages = record["costs"]["stages"]
    assert list(stages) == ["teacher", "member_0", "member_1"]
    assert stages["teacher"]["train_flops"] == pytest.approx(teacher_rec["costs"]["train_flops"])
    assert stages["teacher"]["train_seconds"] == pytest.approx(teacher_rec["costs"]["train_seconds"])
    # member stages: 3x the student's forward + 1x the (2-member) teacher's forward per image
    method = _method("distillation", architectures=ARCHS, teacher_run=str(tmp_path / "teacher"))
    ens = method.build()
    from ensemblekit.metrics import inference_flops

    s0, t = inference_flops(ens.members[0]), inference_flops(method.teacher)
    steps = 2 * 32  # max_steps_per_epoch x batch_size (images the student trained on)
    assert stages["member_0"]["images_seen"] == steps
    assert stages["member_0"]["train_flops"] / steps == pytest.approx(3 * s0 + t, rel=1e-6)
    # the teacher is the finished run's ensemble, frozen
    state = torch.load(tmp_path / "teacher" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in state.items())
    assert not any(p.requires_grad for p in method.teacher.parameters())
    saved = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert saved["num_members"] == 2


def test_distillation_errors(tmp_path):
    with pytest.raises(UserError, match=r"no model\.pt"):
        _method("distillation", teacher_run=str(tmp_path / "missing")).build()
    with pytest.raises(UserError, match="only without teacher_run"):
        _method("distillation", teacher_run=str(tmp_path), teacher_epochs=2).build()


# ----------------------------------------------------------------------------------------------- treenet
def test_treenet_shares_the_trunk_and_counts_it_per_member():
    method = _method("treenet", members=3, shared_stages=2)
    ens = method.build()
    x = torch.randn(2, 3, 32, 32)
    assert ens(x).shape == (3, 2, 10)
    trunk = sum(p.numel() for p in ens.trunk.parameters())
    branches = [sum(p.numel() for p in b.parameters()) for b in ens.branches]
    counts = count_parameters(ens)
    assert counts["unique_params"] == trunk + sum(branches)
    assert counts["params"] == 3 * trunk + sum(branches)
    assert len(ens.trunk) == 3  # stem + 2 stages
    (stage,) = method.recipe(ens)
    assert stage.name == "joint" and stage.member_loss == "sum" and stage.module is ens
    # the branches are independent initialisations
    assert not torch.equal(ens.branches[0][-1].fc.weight, ens.branches[1][-1].fc.weight)
    with pytest.raises(UserError, match="has 3 stages"):
        _method("treenet", shared_stages=4).build()


def _grads(module, loss):
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("branch_loss", ["sum", "mean"])
def test_treenet_trunk_gradient_is_the_sum_of_every_branch_contribution(branch_loss):
    """Lee et al. (2015): with L = Σ_i CE(z_i, y) the shared trunk accumulates every branch's gradient.

    (The loss is computed in float32 from float64 logits, hence the float32 tolerances.)

    The stage's loss (the engine's default member cross-entropy with the recipe's reduction) is back-propagated
    with gradients enabled and compared with each branch's CE back-propagated alone: trunk gradient = Σ_i ∂CE_i/∂θ
    (``sum``) or its 1/M (``mean``); branch i's parameters get ∂CE_i/∂θ_i only (times 1/M for ``mean``).
    """
    from ensemblekit.training.losses import member_cross_entropy

    method = _method("treenet", members=3, shared_stages=1, branch_loss=branch_loss)
    ens = method.build().double().train()
    (stage,) = method.recipe(ens)
    assert stage.member_loss == branch_loss
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    joint = _grads(ens, member_cross_entropy(ens(x), y, stage.member_loss))
    alone = [_grads(ens, F.cross_entropy(ens(x)[i], y)) for i in range(3)]  # train-mode BN: same batch statistics
    scale = 1.0 if branch_loss == "sum" else 1.0 / 3
    trunk = [n for n in joint if n.startswith("trunk.")]
    assert trunk and all(n in a for a in alone for n in trunk)
    for name in trunk:
        expected = scale * sum(a[name] for a in alone)
        torch.testing.assert_close(joint[name], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    stem_weight = "trunk.0.conv.weight"
    contributions = torch.stack([a[stem_weight].flatten() for a in alone])
    assert (contributions.norm(dim=1) > 0).all()  # every branch really contributes to the trunk
    assert torch.linalg.matrix_rank(contributions) == 3  # ... and differently: no branch's share is dropped
    for i in range(3):
        own = [n for n in joint if n.startswith(f"branches.{i}.")]
        assert own
        for name in own:
            expected = scale * alone[i][name]
            torch.testing.assert_close(joint[name], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
            for j in range(3):  # branch j's loss gives branch i nothing
                assert j == i or name not in alone[j] or not alone[j][name].any()


# ----------------------------------------------------------------------------------------------- bagging
def test_bootstrap_samples_are_seeded_with_replacement():
    a, b = bootstrap_indices(10000, 10000, 1), bootstrap_indices(10000, 10000, 2)
    assert torch.equal(a, bootstrap_indices(10000, 10000, 1)) and not torch.equal(a, b)
    unique = a.unique().numel() / 10000
    assert 0.62 < unique < 0.645  # 1 - 1/e = 0.632
    assert a.min() >= 0 and a.max() < 10000


def test_bagging_recipe_gives_each_member_its_own_resample():
    method = _method("bagging", architectures=ARCHS, sample_fraction=0.5)
    ens = method.build()
    stages = method.recipe(ens)
    assert [s.name for s in stages] == ["member_0", "member_1"]
    assert all(len(s.train_indices) == 96 for s in stages)
    assert not torch.equal(stages[0].train_indices, stages[1].train_indices)
    assert stages[0].data_seed != stages[1].data_seed
    assert [m.spec.stage_channels for m in ens.members] == [(4, 8, 16), (8, 16, 32)]


def _bootstrap_indices_of(seed, sample_fraction=1.0):
    cfg = config_from_dict(
        tiny_config(method={"name": "bagging", "members": 3, "sample_fraction": sample_fraction}, train={"seed": seed})
    )
    method = build_method(cfg, num_classes=10, train_size=96)
    return [s.train_indices for s in method.recipe(method.build())]


def test_bagging_samples_are_deterministic_per_seed_and_differ_between_seeds():
    first, again, other = _bootstrap_indices_of(0), _bootstrap_indices_of(0), _bootstrap_indices_of(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(not torch.equal(first[i], first[j]) for i in range(3) for j in range(i))


@pytest.mark.parametrize("sample_fraction", [1.0, 0.5])
def test_bagging_run_trains_each_member_on_its_own_bootstrap_sample_at_deep_ensemble_cost(
    tmp_path, monkeypatch, sample_fraction
):
    """Breiman (1996): member i sees, every epoch, exactly its own N' draws with replacement (≈ 63.2 % distinct
    for N' = N); an epoch is one pass over the N' draws, so member i costs E · N'/N epoch equivalents and the
    ensemble M · E · N'/N (a deep ensemble's M · E for N' = N)."""
    import ensemblekit.training.engine as engine_mod

    served: dict[int, dict[int, list[torch.Tensor]]] = {}  # loader seed -> epoch -> row batches

    class RecordingLoader(engine_mod.BatchLoader):
        def iter_with_index(self):
            for x, y, idx in super().iter_with_index():
                if self.shuffle:  # a training loader (evaluation loaders do not shuffle)
                    served.setdefault(self.seed, {}).setdefault(self.epoch, []).append(idx.clone())
                yield x, y, idx

    monkeypatch.setattr(engine_mod, "BatchLoader", RecordingLoader)
    n, epochs, members = 96, 2, 2
    size = round(sample_fraction * n)
    cfg = tiny_config(
        data={"train_size": n, "test_size": 32},
        method={"name": "bagging", "members": members, "sample_fraction": sample_fraction},
        train={"epochs": epochs},
    )
    record = train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    method = build_method(config_from_dict(cfg), num_classes=10, train_size=n)
    samples = [s.train_indices for s in method.recipe(method.build())]

    assert len(served) == members  # one data order per member
    for rows, epochs_served in zip(samples, served.values(), strict=True):  # stages run in member order
        assert sorted(epochs_served) == list(range(epochs))
        orders = [torch.cat(epochs_served[e]) for e in range(epochs)]
        for order in orders:  # every epoch is one pass over exactly this member's draws, repeats included
            assert torch.equal(order.sort().values, rows.sort().values)
        assert not torch.equal(orders[0], orders[1])  # reshuffled every epoch
        assert len(rows) == size and rows.min() >= 0 and rows.max() < n
        assert rows.unique().numel() < size  # drawn with replacement
        if sample_fraction == 1.0:
            assert 0.55 < rows.unique().numel() / n < 0.72  # E[distinct] = 1 − (1 − 1/N)^N ≈ 0.634 for N = 96
    assert not torch.equal(samples[0].sort().values, samples[1].sort().values)

    costs = record["costs"]
    assert list(costs["stages"]) == [f"member_{i}" for i in range(members)]
    unit = costs["single_inference_flops"]
    for stage in costs["stages"].values():
        assert stage["images_seen"] == epochs * size
        assert stage["train_flops"] == pytest.approx(3 * epochs * size * unit, rel=1e-6)
        assert stage["train_epoch_equivalents"] == pytest.approx(epochs * size / n, rel=1e-6)
    assert costs["images_seen"] == members * epochs * size
    assert costs["train_epoch_equivalents"] == pytest.approx(members * epochs * sample_fraction, rel=1e-6)
