"""``subnetwork``: children, tuning schedule, sparsity persistence, SSA, selection, parent sources and growth."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.methods import build_method
from ensemblekit.methods.subnetwork import anneal
from ensemblekit.metrics.sparse_costs import SPARSE_MODEL_KEYS, SPARSE_TRAIN_KEY
from ensemblekit.pruning import masked_layers, prunable_layers
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import describe, train
from ensemblekit.runs.directory import read_run_config
from ensemblekit.runs.grow import grow
from ensemblekit.training.optim import build_optimizer, build_scheduler, default_param_groups
from tests.conftest import run_cli, tiny_config

FAST = {"epochs": 1, "max_steps_per_epoch": 2}


def _cfg(train_over=None, data=None, **method):
    return config_from_dict(
        tiny_config(method={"name": "subnetwork", **method}, train={**FAST, **(train_over or {})}, data=data or {})
    )


def _state(path):
    return torch.load(path / "model.pt", weights_only=True)["state_dict"]


def _child(state, i):
    prefix = f"child_nets.{i}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _same(a, b):
    """Bitwise equality (NaN equal to NaN: ``val_scores`` is NaN without selection)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _parent(state):
    return {k[len("parent.") :]: v for k, v in state.items() if k.startswith("parent.")}


# ---------------------------------------------------------------------------------------------- schedule
def test_one_cycle_tuning_schedule_values_at_start_warmup_end_and_last_step():
    method = build_method(_cfg(members=2, child_epochs=10), num_classes=10, train_size=192)
    ens = method.build()
    tune = next(s for s in method.child_stages(ens, [0]) if s.name == "child_0")
    opt = build_optimizer(default_param_groups(tune.module, tune.optim), tune.optim)
    steps_per_epoch = 10
    sched = build_scheduler(opt, tune.schedule, steps_per_epoch, tune.epochs)
    lrs, moms = [], []
    for _ in range(steps_per_epoch * tune.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    max_lr = method.cfg.train.lr
    assert lrs[0] == pytest.approx(max_lr / 100)  # 1e-3 for max_lr 0.1
    # the warm-up ends after 10 % of the steps (PyTorch's peak index is pct_start·T − 1)
    assert max(lrs) == pytest.approx(max_lr) and lrs.index(max(lrs)) == 9
    assert lrs[10] == pytest.approx(max_lr, rel=1e-3)
    assert lrs[-1] == pytest.approx(max_lr / 100 / 1e4, rel=1e-6)  # 1e-7 for max_lr 0.1
    assert moms[0] == pytest.approx(0.95) and min(moms) == pytest.approx(0.85)


# ---------------------------------------------------------------------------------------------- families
def test_noisy_children_with_zero_density_equal_the_parent(tmp_path):
    train(_cfg(members=2, family="noisy", noise_density=0.0, child_epochs=0), tmp_path / "r", quiet=True)
    state = _state(tmp_path / "r")
    parent = _parent(state)
    for i in range(2):
        child = _child(state, i)
        assert child.keys() == parent.keys()
        assert all(torch.equal(child[k], parent[k]) for k in parent)


def test_noisy_children_differ_from_the_parent_with_per_layer_scaled_noise(tmp_path):
    train(
        _cfg(members=2, family="noisy", noise_density=0.5, noise_sigma=0.1, child_epochs=0), tmp_path / "r", quiet=True
    )
    state = _state(tmp_path / "r")
    parent, child = _parent(state), _child(state, 0)
    w = "stem.conv.weight" if "stem.conv.weight" in parent else next(k for k in parent if k.endswith("conv1.weight"))
    changed = (child[w] != parent[w]).float().mean().item()
    assert changed == pytest.approx(0.5, abs=0.02)  # exactly round(0.5 n) entries mutated (ties with 0 noise: none)
    rel = ((child[w] - parent[w]).std() / parent[w].std()).item()
    assert 0.03 < rel < 0.12  # σ = 0.1·std on half the entries -> overall ≈ 0.07
    assert not torch.equal(_child(state, 0)[w], _child(state, 1)[w])
    bn = next(k for k in parent if k.endswith("running_mean"))
    assert torch.equal(child[bn], parent[bn])  # BN statistics untouched without bn_refresh_batches


def test_sparsity_persists_through_tuning_exact_zeros_per_layer(tmp_path):
    cfg = _cfg(members=2, masks="anti_random", child_epochs=2)
    method = build_method(cfg, 10, 192)
    ens = method.build()
    train(cfg, tmp_path / "r", quiet=True)
    ens.load_state_dict(_state(tmp_path / "r"))
    before = {}
    for i in range(2):
        expected = method.child_masks(i, ens)  # the masks set before tuning
        child = ens.child_nets[i]
        for name, layer in masked_layers(child).items():
            zeros = int((layer.weight == 0).sum())
            assert zeros == int((expected[name] == 0).sum()) == round(0.5 * layer.weight.numel()), name
            before[(i, name)] = zeros
        assert int((child.head.fc.weight == 0).sum()) == 0
    parent = dict(ens.parent.named_modules())
    name = next(iter(masked_layers(ens.child_nets[0])))
    kept = method.child_masks(0, ens)[name].bool()
    assert not torch.equal(ens.child_nets[0].get_submodule(name).weight[kept], parent[name].weight[kept])  # tuned


def test_annealing_schedules_and_empirical_keep_rate():
    assert anneal.keep_probability(0, 100, 0.8, "linear") == pytest.approx(0.8)
    assert anneal.keep_probability(50, 100, 0.8, "linear") == pytest.approx(0.4)
    assert anneal.keep_probability(50, 100, 0.8, "cosine") == pytest.approx(0.4)
    assert anneal.keep_probability(25, 100, 1.0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert anneal.keep_probability(99, 100, 1.0, "exponential") == pytest.approx(10 ** (-3 * 0.99))
    assert anneal.keep_probability(100, 100, 1.0, "exponential") == 0.0
    assert anneal.keep_probability(0, 0, 1.0, "linear") == 0.0  # a zero-length span: one-shot pruning
    target = (torch.arange(200_000) % 2).float()
    for step, schedule in [(10, "linear"), (30, "cosine"), (5, "exponential")]:
        p = anneal.keep_probability(step, 40, 0.75, schedule)
        m = anneal.sample_mask(target, p, anneal.step_generator(3, step))
        assert torch.equal(m[target == 1], torch.ones(100_000))  # the target is always kept
        rate = m[target == 0].mean().item()
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / 100_000) + 1e-9, (schedule, rate, p)


def test_stochastic_with_p0_one_and_zero_span_equals_one_shot_pruning(tmp_path):
    common = {"members": 2, "masks": "anti_random", "child_epochs": 1}
    train(_cfg(family="sparse", **common), tmp_path / "oneshot", quiet=True)
    train(_cfg(family="stochastic", anneal_p0=1.0, anneal_fraction=0.0, **common), tmp_path / "ssa", quiet=True)
    a, b = _state(tmp_path / "oneshot"), _state(tmp_path / "ssa")
    assert a.keys() == b.keys()
    assert all(_same(a[k], b[k]) for k in a)


def test_stochastic_masks_are_redrawn_during_annealing_and_end_at_the_target(tmp_path, monkeypatch):
    import ensemblekit.methods.subnetwork.method as mod

    seen = []
    real = mod.set_masks
    monkeypatch.setattr(
        mod, "set_masks", lambda net, masks: seen.append({k: v.clone() for k, v in masks.items()}) or real(net, masks)
    )
    cfg = _cfg(
        family="stochastic",
        members=2,
        anneal_p0=0.9,
        anneal_fraction=1.0,
        anneal_schedule="linear",
        child_epochs=2,
        train_over={"max_steps_per_epoch": 3},
    )
    train(cfg, tmp_path / "r", quiet=True)
    method = build_method(cfg, 10, 192)
    ens = method.build()
    ens.load_state_dict(_state(tmp_path / "r"))
    target = method.child_masks(0, ens)
    name = next(iter(target))
    densities = [float(m[name].mean()) for m in seen[:6]]  # child 0: step 0 (make) and steps 1..5
    assert densities[0] > 0.9 and densities[0] > densities[3] > densities[5]
    assert densities[5] == pytest.approx(0.5 + 0.5 * 0.9 / 6, abs=0.05)
    final = masked_layers(ens.child_nets[0])[name].parametrizations.weight[0].mask
    assert torch.equal(final, target[name])


def test_sampled_weights_receive_gradients():
    method = build_method(_cfg(family="stochastic", members=2), 10, 192)
    ens = method.build()
    child = ens.child_nets[0]
    name, layer = next(iter(masked_layers(child).items()))
    target = torch.zeros_like(layer.weight)
    mask = anneal.sample_mask(target, 0.5, torch.Generator().manual_seed(0))
    from ensemblekit.pruning import set_masks

    set_masks(child, {name: mask})
    child(torch.randn(4, 3, 32, 32)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert (grad[mask == 1] != 0).float().mean() > 0.9 and torch.all(grad[mask == 0] == 0)


# ---------------------------------------------------------------------------------------------- ensemble
def test_selection_keeps_the_top_children_by_validation_score(tmp_path):
    cfg = _cfg(
        members=2,
        candidates=4,
        family="noisy",
        noise_density=1.0,
        noise_sigma=0.5,
        child_epochs=0,
        select_by="val_nll",
        data={"val_size": 32},
    )
    record = train(cfg, tmp_path / "r", quiet=True)
    info = record["subnetwork"]
    scores = info["val_scores"]
    assert len(scores) == 4 and all(s is not None for s in scores)
    best = sorted(sorted(range(4), key=lambda j: (scores[j], j))[:2])
    assert info["selected"] == best and record["num_members"] == 2
    assert record["costs"]["stages"]["select"]["images_seen"] == 4 * 32  # forward-only validation passes


def test_selection_without_a_validation_split_is_refused():
    with pytest.raises(UserError, match=r"data\.val_size"):
        build_method(_cfg(members=2, candidates=4), 10, 192)  # pairs fit; only the split is missing


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"members": 3, "masks": "anti_random"}, "anti_random pairs"),
        ({"members": 2, "masks": "anti_random", "sparsity": 0.3}, "sparsity"),
        ({"members": 4, "masks": "partition", "partition_parts": 3}, "multiple of 3"),
        ({"members": 2, "parent_run": "a", "parent_weights": "b"}, "not both"),
        ({"members": 2, "family": "dense"}, "family"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(UserError, match=match):
        build_method(_cfg(**options), 10, 192)


def test_include_parent_adds_the_parent_as_last_member():
    method = build_method(_cfg(members=2, include_parent=True), 10, 192)
    ens = method.build().eval()
    x = torch.randn(3, 3, 32, 32)
    out = ens(x)
    assert ens.num_members == 3 and out.shape == (3, 3, 10)
    assert torch.equal(out[-1], ens.parent(x))


def test_costs_count_parent_and_child_epochs_dense_and_sparse(tmp_path):
    record = train(_cfg(members=2, masks="anti_random", child_epochs=1), tmp_path / "r", quiet=True)
    c = record["costs"]
    stages = c["stages"]
    parent, child = stages["parent"]["train_epoch_equivalents"], stages["child_0"]["train_epoch_equivalents"]
    assert c["train_epoch_equivalents"] == pytest.approx(parent + 2 * child)
    assert 0.45 * 2 * child < c["train_epoch_equivalents_sparse"] - parent < 0.6 * 2 * child  # 50 % sparse
    assert c["inference_flops_sparse_vs_single"] == pytest.approx(1.0, abs=0.1)  # two half-dense children
    assert {*SPARSE_MODEL_KEYS, SPARSE_TRAIN_KEY} <= c.keys()  # the schema fission writes too
    pruned = sum(int((v == 0).sum()) for k, v in _state(tmp_path / "r").items() if k.endswith(".mask"))
    assert c["params_nonzero"] == c["params"] - pruned  # both children are members
    described = describe(_cfg(members=2, masks="anti_random", child_epochs=1))  # the children's masks, no training
    assert {k: described[k] for k in SPARSE_MODEL_KEYS} == {k: c[k] for k in SPARSE_MODEL_KEYS}
    assert described["sparse_costs"].startswith("exact")
    assert c["params"] == 2 * c["unique_params"] // 3  # two members of the three stored backbones
    assert record["subnetwork"]["child_density"] == [pytest.approx(0.5, abs=1e-3)] * 2


# ---------------------------------------------------------------------------------------------- parents
def test_parent_from_a_single_run_is_loaded_and_its_cost_charged(tmp_path):
    single = tiny_config(train=FAST)
    rec_single = train(config_from_dict(single), tmp_path / "single", quiet=True)
    own = train(_cfg(members=2, child_epochs=1), tmp_path / "own", quiet=True)
    reused = train(_cfg(members=2, child_epochs=1, parent_run=str(tmp_path / "single")), tmp_path / "reuse", quiet=True)
    s_single = torch.load(tmp_path / "single" / "model.pt", weights_only=True)["state_dict"]
    s_own, s_reuse = _state(tmp_path / "own"), _state(tmp_path / "reuse")
    # the in-run parent is the single model (same init and data order); reusing it gives the same children
    assert all(torch.equal(s_single[f"members.0.{k}"], v) for k, v in _parent(s_own).items())
    assert all(_same(s_own[k], s_reuse[k]) for k in s_own)
    assert reused["costs"]["stages"]["parent"]["train_flops"] == pytest.approx(rec_single["costs"]["train_flops"])
    assert reused["costs"]["train_epoch_equivalents"] == pytest.approx(own["costs"]["train_epoch_equivalents"])
    assert reused["subnetwork"]["parent_source"] == "run"


def test_parent_weights_file_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        train(_cfg(members=2, parent_weights=str(tmp_path / "nope.pt")), tmp_path / "a", quiet=True)
    from ensemblekit.models import create_model

    torch.save(create_model("resnet20", 10, width=0.5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not match the configured model") as err:
        train(_cfg(members=2, parent_weights=str(tmp_path / "other.pt")), tmp_path / "b", quiet=True)
    assert "\n" not in str(err.value)
    torch.manual_seed(5)
    mine = create_model("resnet8", 10, width=0.5)
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    record = train(
        _cfg(members=2, child_epochs=0, parent_weights=str(tmp_path / "mine.pt")), tmp_path / "c", quiet=True
    )
    parent = _parent(_state(tmp_path / "c"))
    assert all(torch.equal(parent[k], v) for k, v in mine.state_dict().items())
    assert record["costs"]["stages"]["parent"]["train_flops"] == 0.0


# ---------------------------------------------------------------------------------------------- growth
def test_grow_leaves_existing_children_bitwise_unchanged_and_equals_a_larger_run(tmp_path):
    opts = {"masks": "anti_random", "child_epochs": 1}
    before = train(_cfg(members=2, **opts), tmp_path / "run", quiet=True)
    old = _state(tmp_path / "run")
    (tmp_path / "run" / "eval.json").write_text(json.dumps({"metrics": {"accuracy": 0.5}}))
    log_before = (tmp_path / "run" / "log.csv").read_text().splitlines()
    record = grow(tmp_path / "run", 2)
    log_after = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log_after[: len(log_before)] == log_before  # log.csv goes on with the new children's stages
    assert {r.split(",")[0] for r in log_after[len(log_before) :]} == {"child_2", "child_3"}
    assert "grow added 2 children" in json.loads((tmp_path / "run" / "eval.json").read_text())["stale"]
    new = _state(tmp_path / "run")
    for key, value in old.items():
        if key not in ("selected", "val_scores"):
            assert torch.equal(new[key], value), key
    assert new["selected"].tolist() == [0, 1, 2, 3]
    mask_key = next(k for k in new if k.startswith("child_nets.0.") and k.endswith(".mask"))
    assert not torch.equal(new[mask_key.replace("child_nets.0.", "child_nets.2.")], new[mask_key])  # a new pair
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["num_members"] == record["num_members"] == 4 and len(saved["members"]) == 4
    assert saved["costs"]["train_epoch_equivalents"] == pytest.approx(
        before["costs"]["train_epoch_equivalents"] + 2 * before["costs"]["stages"]["child_0"]["train_epoch_equivalents"]
    )
    assert saved["history"][0]["num_members"] == 2 and "child_3" in saved["costs"]["stages"]
    # a run trained with 4 children from the start has the same weights
    train(_cfg(members=4, **opts), tmp_path / "fresh", quiet=True)
    fresh = _state(tmp_path / "fresh")
    assert fresh.keys() == new.keys() and all(_same(fresh[k], new[k]) for k in fresh)
    # the grown run evaluates from its own config
    from ensemblekit.runs import evaluate

    assert evaluate(tmp_path / "run")["metrics"]["accuracy"] == pytest.approx(saved["metrics"]["accuracy"])


GROWN_FAMILIES = {
    "partition": {"masks": "partition"},
    "noisy": {"family": "noisy", "noise_density": 0.5},
    "noise_decomposition": {"family": "noisy", "noise_decomposition": True},
    "stochastic": {"family": "stochastic", "masks": "random", "anneal_fraction": 1.0},
}


@pytest.mark.parametrize("family", list(GROWN_FAMILIES))
def test_grow_equals_a_run_trained_from_the_grown_config(tmp_path, family):
    """Partition groups keep the size the run was trained with (``partition_parts`` unset = the old members)."""
    opts = {**GROWN_FAMILIES[family], "child_epochs": 1}
    train(_cfg(members=2, **opts), tmp_path / "run", quiet=True)
    old = _state(tmp_path / "run")
    record = grow(tmp_path / "run", 2)
    new = _state(tmp_path / "run")
    assert all(_same(new[k], v) for k, v in old.items() if k not in ("selected", "val_scores"))
    grown_cfg = read_run_config(tmp_path / "run")
    grouped = family in ("partition", "noise_decomposition")
    assert grown_cfg.method.options().get("partition_parts") == (2 if grouped else None)
    assert record["subnetwork"]["group_size"] == (2 if grouped else 1)
    if family == "partition":  # children 2 and 3 are a new pair of complementary halves, not quarters
        assert record["subnetwork"]["child_density"] == [pytest.approx(0.5, abs=1e-3)] * 4
    if family == "noisy":  # no groups: the grown run is simply the run with four children
        assert grown_cfg.method.options() == _cfg(members=4, **opts).method.options()
    train(grown_cfg, tmp_path / "fresh", quiet=True)
    fresh = _state(tmp_path / "fresh")
    assert fresh.keys() == new.keys() and all(_same(fresh[k], new[k]) for k in fresh)


def test_grow_refuses_a_one_part_partition_in_one_line(tmp_path):
    train(_cfg(members=1, masks="partition", child_epochs=0), tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="one part") as err:
        grow(tmp_path / "run", 2)
    assert "\n" not in str(err.value)


def test_grow_refuses_other_methods_and_odd_pairs(tmp_path):
    train(config_from_dict(tiny_config(train=FAST)), tmp_path / "single", quiet=True)
    result = run_cli("grow", str(tmp_path / "single"), "--children", "2")
    assert result.returncode == 2 and "only subnetwork runs can grow" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    train(_cfg(members=2, child_epochs=0), tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="anti_random children come in pairs; --children must be a multiple of 2") as e:
        grow(tmp_path / "run", 1)
    assert "candidates" not in str(e.value)  # the user never set method.candidates
    assert _state(tmp_path / "run")["selected"].tolist() == [0, 1]  # nothing written


def test_an_odd_number_of_anti_random_children_names_method_members():
    with pytest.raises(UserError, match=r"method\.members: 3 children cannot form anti_random pairs"):
        build_method(_cfg(members=3), 10, 192)


def test_prunable_layers_of_children_exclude_the_classifier():
    ens = build_method(_cfg(members=2), 10, 192).build()
    assert "head.fc" not in prunable_layers(ens.child_nets[0]) and "head.fc" not in masked_layers(ens.child_nets[0])


def test_a_killed_stochastic_run_resumes_bitwise(tmp_path, monkeypatch):
    from ensemblekit.training.engine import Engine

    cfg = _cfg(
        family="stochastic",
        members=2,
        anneal_p0=0.8,
        anneal_fraction=1.0,
        child_epochs=2,
        bn_refresh_batches=1,
    )
    train(cfg, tmp_path / "ref", quiet=True)
    real, saves = Engine.save, []

    def save_then_die(self, *args, **kwargs):
        real(self, *args, **kwargs)
        saves.append(args)
        if len(saves) == 4:  # parent epoch, parent end, child_0_make end, child_0 epoch 1: mid-annealing
            raise RuntimeError("killed")

    monkeypatch.setattr(Engine, "save", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tmp_path / "run", quiet=True)
    assert saves[3][:2] == (2, 1)  # stage child_0, after its first epoch
    monkeypatch.setattr(Engine, "save", real)
    train(cfg, tmp_path / "run", resume=True, quiet=True)
    ref, run = _state(tmp_path / "ref"), _state(tmp_path / "run")
    assert all(_same(ref[k], run[k]) for k in ref)
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["costs"]["stages"].keys()
        == json.loads((tmp_path / "ref" / "metrics.json").read_text())["costs"]["stages"].keys()
    )


def test_structured_anti_random_children_are_complementary_channel_sets():
    method = build_method(_cfg(members=4, masks="anti_random_neurons"), 10, 192)
    ens = method.build()
    assert method.group_size == 2
    a, b, c = (method.child_masks(i, ens) for i in range(3))
    for name, m in a.items():
        assert torch.equal(m + b[name], torch.ones_like(m)), name
        rows = m.reshape(m.shape[0], -1)
        assert set(rows.sum(1).tolist()) <= {0.0, float(rows.shape[1])}, name  # whole channels
    assert any(not torch.equal(a[n], c[n]) for n in a)  # the next pair is a new draw
    with pytest.raises(UserError, match="anti_random_neurons pairs"):
        build_method(_cfg(members=3, masks="anti_random_neurons"), 10, 192)
    with pytest.raises(UserError, match="sparsity"):
        build_method(_cfg(members=2, masks="anti_random_neurons", sparsity=0.3), 10, 192)


def test_identical_magnitude_children_warn_once():
    import warnings

    method = build_method(_cfg(members=3, masks="magnitude"), 10, 192)
    ens = method.build()
    method.child_masks(0, ens)
    with pytest.warns(UserWarning, match=r"children 0 and 1 have identical magnitude masks \(magnitude masks depend"):
        method.child_masks(1, ens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.child_masks(2, ens)  # once per run
        method = build_method(_cfg(members=2, masks="random"), 10, 192)
        ens = method.build()
        method.child_masks(0, ens), method.child_masks(1, ens)  # different masks: no warning
