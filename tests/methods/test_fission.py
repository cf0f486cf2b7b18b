"""``fission``: multi-exit structure, partition of the pruned weights, sparsity persistence, gradient isolation,
the distillation loss, the structured (thin) mode and an end-to-end run."""

import json

import pytest
import torch
import torch.nn.functional as F

from ensemblekit.errors import UserError
from ensemblekit.methods.fission.build import fission_names, scored_layers
from ensemblekit.methods.fission.loss import distillation_term, ensemble_teacher, fission_loss
from ensemblekit.methods.fission.network import copies_per_stage
from ensemblekit.methods.fission.split import transfer_channels
from ensemblekit.metrics.sparse_costs import SPARSE_MODEL_KEYS, SPARSE_TRAIN_KEY
from ensemblekit.pruning import get_masks, masks_from_scores
from ensemblekit.pruning.criteria import compute_scores
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, describe, describe_costs, train
from tests.conftest import tiny_config

SMALL = {"name": "resnet8", "width": 0.5}


def _build(model=None, **options):
    cfg = config_from_dict(tiny_config(method={"name": "fission", **options}, model=model or SMALL))
    return build_ensemble(cfg, 10, 192)


def _batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _fissioned(**options):
    method, ens = _build(**options)
    batch = _batch()
    report = method.apply_fission(ens, [batch], (3, 16, 16))
    return method, ens, report, batch


def _backbone_masks(method, batch):
    ref = method.reference().train()
    o = method.options
    scores = compute_scores(o.criterion, ref, scored_layers(ref), batches=[batch], density=1 - o.sparsity)
    return masks_from_scores(scores, 1 - o.sparsity, o.scope)


def test_resnet8_has_three_exits_with_copies_1_2_3_and_logit_averaging():
    _, ens = _build()
    assert ens.combine == "logits"
    assert [len(c) for c in ens.stages] == copies_per_stage(3, 3) == [1, 2, 3]
    assert ens.num_members == 3 and ens(_batch()[0]).shape == (3, 8, 10)
    x = _batch()[0]
    ens.eval()
    out = ens(x)
    for p in range(3):  # the shared-trunk forward equals each path run alone
        torch.testing.assert_close(out[p], ens.forward_path(p, x))
    with pytest.raises(UserError, match="4 exits need a backbone with >= 4 stages"):
        _build(members=4)
    with pytest.raises(UserError, match="unknown option"):
        _build(exits=3)


@pytest.mark.parametrize("grouping", ["balanced", "channels"])
def test_one_exit_without_pruning_is_the_backbone(grouping):
    method, ens = _build(members=1, sparsity=0.0, grouping=grouping)
    method.apply_fission(ens, [_batch()], (3, 16, 16))
    ref = method.reference().eval()
    ens.eval()
    x = _batch(seed=1)[0]
    torch.testing.assert_close(ens(x)[0], ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grouping", ["balanced", "bernoulli"])
def test_groups_partition_the_backbone_mask_in_every_split_layer(grouping):
    method, ens, report, batch = _fissioned(grouping=grouping)
    masks = _backbone_masks(method, batch)
    fmasks = get_masks(ens)
    copies = copies_per_stage(3, 3)
    split = 0
    for name, mask in masks.items():
        groups = torch.stack([fmasks[t] for t in fission_names(name, copies)])
        assert groups.min() >= 0 and torch.equal(groups.sum(0), mask)  # disjoint, union = mask
        if len(groups) > 1:
            split += 1
            sizes = [int(g.sum()) for g in groups]
            if grouping == "balanced":
                assert max(sizes) - min(sizes) <= 1
    assert split == 4  # conv1/conv2 of stages 2 and 3 (shortcuts are dense, per path)
    assert report["backbone_nonzero"] == int(sum(m.sum() for m in masks.values()))


def _prunable_nonzero(ens):
    table = dict(ens.named_modules())
    return sum(int((table[n].weight != 0).sum()) for n in scored_layers(ens))


def test_sparsity_persists_through_sgd_with_weight_decay():
    _, ens, report, _ = _fissioned()
    assert _prunable_nonzero(ens) == report["backbone_nonzero"]
    assert report["backbone_nonzero"] == pytest.approx(0.5 * report["backbone_weights"], abs=1)
    opt = torch.optim.SGD(ens.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    ens.train()
    for step in range(50):
        x, y = _batch(seed=step)
        opt.zero_grad()
        fission_loss(ens(x), y).backward()
        opt.step()
    assert _prunable_nonzero(ens) == report["backbone_nonzero"]


def _private(ens, path):
    """Modules only ``path`` runs (its own stage copies and head), derived from the paths' module lists."""
    others = {id(m) for p in range(ens.num_members) if p != path for m in ens.path_modules(p)}
    return [m for m in ens.path_modules(path) if id(m) not in others]


@pytest.mark.parametrize("grouping", ["balanced", "channels"])
@pytest.mark.parametrize("exit_index", [0, 1, 2])
def test_the_loss_of_any_exit_reaches_exactly_the_modules_of_its_path(exit_index, grouping):
    """Gradient isolation (Lee & Lee, 2024): CE on exit k gives a non-zero gradient to every module path k runs
    (its own copies and head, and the trunk it shares) and exactly zero to the modules only other paths run; in a
    masked copy the pruned entries get none either."""
    _, ens, _, (x, y) = _fissioned(grouping=grouping)
    ens.train()
    ens.zero_grad(set_to_none=True)
    F.cross_entropy(ens(x)[exit_index], y).backward()

    def grad_norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    on_path = {id(m) for m in ens.path_modules(exit_index)}
    own = _private(ens, exit_index)
    assert own[-1] is ens.heads[exit_index]
    for m in ens.path_modules(exit_index):
        assert grad_norm(m) > 0
    others = [m for p in range(3) if p != exit_index for m in _private(ens, p)]
    assert others and all(id(m) not in on_path for m in others)
    for m in others:
        assert grad_norm(m) == 0
    candidates = [m for copies in ens.stages for m in copies] + list(ens.heads)
    assert sum(id(m) in on_path for m in candidates) == 4  # 3 stage copies + 1 head
    for m in candidates:  # every module: gradient iff it is on the path
        assert (grad_norm(m) > 0) == (id(m) in on_path)
    masks = get_masks(ens)
    table = dict(ens.named_modules())
    for name, mask in masks.items():
        grad = table[name].parametrizations.weight.original.grad
        if grad is not None and mask.min() == 0:
            assert not grad[mask == 0].any(), name


@pytest.mark.parametrize("criterion", ["snip", "magnitude", "synflow"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_pruning_keeps_the_top_scores_with_one_threshold_at_the_target_density(criterion, scope):
    """NFE step 1: the kept weights of the backbone (the union of its copies' groups) are the round(d · n)
    highest-scoring ones, over all prunable layers at once (``global``: every kept score >= every pruned score
    across layers, and layer densities differ) or within each layer (``layerwise``)."""
    options = {"criterion": criterion, "scope": scope, "sparsity": 0.6, "synflow_rounds": 4}
    method, ens, report, batch = _fissioned(**options)
    ref = method.reference().train()
    layers = scored_layers(ref)
    scores = compute_scores(
        criterion, ref, layers, batches=[batch], density=0.4, scope=scope, image_shape=(3, 16, 16), synflow_rounds=4
    )
    fmasks = get_masks(ens)
    copies = copies_per_stage(3, 3)
    kept = {n: torch.stack([fmasks[t] for t in fission_names(n, copies)]).sum(0) for n in layers}
    assert all(set(k.unique().tolist()) <= {0.0, 1.0} for k in kept.values())
    sizes = {n: s.numel() for n, s in scores.items()}
    total = sum(sizes.values())
    if scope == "global":
        flat_scores = torch.cat([scores[n].flatten() for n in layers])
        flat_kept = torch.cat([kept[n].flatten() for n in layers]).bool()
        assert int(flat_kept.sum()) == round(0.4 * total) == report["backbone_nonzero"]
        assert flat_scores[flat_kept].min() >= flat_scores[~flat_kept].max()
        densities = [float(kept[n].mean()) for n in layers]
        assert max(densities) - min(densities) > 0.05  # one threshold, not one density per layer
    else:
        for n in layers:
            k = kept[n].bool()
            assert int(k.sum()) == round(0.4 * sizes[n])
            assert scores[n][k].min() >= scores[n][~k].max()
        assert report["backbone_nonzero"] == sum(round(0.4 * size) for size in sizes.values())
    rounding = (0.5 if scope == "global" else 0.5 * len(layers)) / total
    assert report["backbone_nonzero"] / report["backbone_weights"] == pytest.approx(0.4, abs=rounding)
    assert _prunable_nonzero(ens) == report["backbone_nonzero"]


def test_distillation_is_zero_for_identical_exits_and_the_teacher_has_no_gradient():
    z = torch.randn(1, 6, 10).expand(3, 6, 10).clone().requires_grad_(True)
    assert distillation_term(z, 3.0).abs() < 1e-7
    assert not ensemble_teacher(z, 3.0).requires_grad
    y = torch.randint(0, 10, (6,))
    torch.testing.assert_close(fission_loss(z, y), fission_loss(z, y, distill=False), rtol=0, atol=1e-6)


def test_distillation_term_matches_a_hand_computation_and_only_students_get_gradients():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 4, requires_grad=True)
    t = 3.0
    q = torch.softmax(z.detach().mean(0) / t, -1)
    p = torch.softmax(z.detach() / t, -1)
    expected = t**2 * (q * (q.log() - p.log())).sum(-1).sum(0).mean()  # Σ_i batch-mean KL(q ‖ p_i)
    kd = distillation_term(z, t)
    torch.testing.assert_close(kd, expected)
    (grad,) = torch.autograd.grad(kd, z)
    # with a detached teacher: d/dz_i [T² KL(q ‖ softmax(z_i/T))] = T (p_i − q) / B
    torch.testing.assert_close(grad, t * (p - q) / 5)
    ce = sum(F.cross_entropy(z[i], torch.zeros(5, dtype=torch.long)) for i in range(3))
    torch.testing.assert_close(fission_loss(z, torch.zeros(5, dtype=torch.long), t), ce + kd)


def test_structured_paths_are_thin_dense_and_partition_the_backbone_filters():
    method, ens, report, batch = _fissioned(grouping="channels")
    assert get_masks(ens) == {}
    assert report["channels"]["stem"] == [6] and report["channels"]["R1"] == [8, 8]  # of 8 and 16 filters
    assert report["channels"]["R2"] == [10, 10, 10]  # a third of 32 each: copies cannot share filters
    ref = method.reference().train()
    scores = compute_scores("snip", ref, scored_layers(ref), batches=[batch])
    sel = transfer_channels(ens, ref, scores, 3, method.cfg.train.seed)
    for chunks in sel.values():
        joined = torch.cat(chunks)
        assert len(set(joined.tolist())) == len(joined)  # disjoint
    for p in range(3):  # copy p = the backbone's filters restricted to its output chunk x its input chunk
        w = ref.stages[2][0].conv2.weight
        torch.testing.assert_close(ens.stages[2][p][0].conv2.weight, w[sel["R2"][p]][:, sel["I2.0"][p]])
    src = 0  # exit 2 branches after stage 2 of the main path: its stage-3 copy reads the main path's channels
    w = ref.stages[2][0].conv1.weight
    torch.testing.assert_close(ens.stages[2][2][0].conv1.weight, w[sel["I2.0"][2]][:, sel["R1"][src]])
    torch.testing.assert_close(ens.heads[1].fc.weight, ref.head.fc.weight[:, sel["R2"][1]])


def test_structured_inference_flops_at_most_1_1x_the_single_backbone():
    for model in ({"name": "resnet20", "width": 1.0}, {"name": "wrn16_4"}):
        method, ens = _build(model=model, grouping="channels", sparsity=0.5)
        costs = describe_costs(method, ens)
        assert costs["inference_flops_vs_single"] <= 1.1
    method, ens = _build(model={"name": "resnet20", "width": 1.0}, grouping="balanced")
    assert describe_costs(method, ens)["inference_flops_vs_single"] > 1.5  # unstructured copies run dense


def test_end_to_end_run_logs_densities_and_reports_sparse_flops(tmp_path):
    cfg = config_from_dict(tiny_config(method={"name": "fission", "score_batch_size": 32}, train={"epochs": 1}))
    record = train(cfg, tmp_path / "run", quiet=True)
    costs = record["costs"]
    assert list(costs["stages"]) == ["prune", "train"]
    assert costs["inference_flops_sparse"] < costs["inference_flops"]
    assert costs["stages"]["prune"]["train_flops"] > 0  # the SNIP pass is charged
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    pruning = [e for e in events if e["event"] == "pruning"]
    assert len(pruning) == 1 and pruning[0]["prunable_nonzero"] == pruning[0]["backbone_nonzero"]
    assert pruning[0]["inference_flops_sparse"] == pytest.approx(costs["inference_flops_sparse"])
    assert len(record["members"]) == 3


def test_sparse_costs_follow_the_shared_schema_training_included(tmp_path):
    """The keys subnetwork writes; training is charged at the pruned network's FLOP fraction (prune stage dense)."""
    cfg = config_from_dict(tiny_config(method={"name": "fission", "criterion": "random"}, train={"epochs": 1}))
    costs = train(cfg, tmp_path / "run", quiet=True)["costs"]
    assert {*SPARSE_MODEL_KEYS, SPARSE_TRAIN_KEY} <= costs.keys()
    assert not {"sparse_inference_flops", "dense_inference_flops", "prunable_nonzero", "unpruned_params"} & set(costs)
    fraction = costs["inference_flops_sparse"] / costs["inference_flops"]
    # the paths partition one 50 %-pruned backbone: about half a single model (shortcuts and heads stay dense)
    assert 0.45 < costs["inference_flops_sparse_vs_single"] < 0.65 < 1.5 < costs["inference_flops_vs_single"]
    eq = {name: stage["train_epoch_equivalents"] for name, stage in costs["stages"].items()}
    assert costs["train_epoch_equivalents_sparse"] == pytest.approx(eq["prune"] + fraction * eq["train"])
    assert costs["inference_flops_sparse_vs_single"] == pytest.approx(
        costs["inference_flops_sparse"] / costs["single_inference_flops"]
    )
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    pruned = sum(int((v == 0).sum()) for k, v in state.items() if k.endswith(".mask"))
    assert pruned > 0 and costs["params_nonzero"] == costs["params"] - pruned
    # describe runs the (data-free) pruning on the untrained ensemble: the trained run's sparse costs exactly
    described = describe(cfg)
    assert {k: described[k] for k in SPARSE_MODEL_KEYS} == {k: costs[k] for k in SPARSE_MODEL_KEYS}
    assert described["sparse_costs"].startswith("exact: random pruning needs no data")


def test_describe_estimates_sparse_costs_by_pruning_random_batches():
    cfg = config_from_dict(tiny_config(method={"name": "fission", "criterion": "snip"}))
    info = describe(cfg)
    assert info["sparse_costs"] == "estimate: snip pruning on 1 batch(es) of 64 random images (3, 32, 32) " + (
        "(a run scores its training data)"
    )
    assert 0.45 < info["inference_flops_sparse_vs_single"] < 0.9 < 1.5 < info["inference_flops_vs_single"]
    assert info["params_nonzero"] < info["params"]
    assert describe(cfg) == info  # seeded: the same estimate every time


@pytest.mark.parametrize("grouping", ["bernoulli", "channels"])
def test_the_prune_hook_is_deterministic_and_idempotent(grouping):
    method, ens, _, batch = _fissioned(grouping=grouping, criterion="random")
    first = {k: v.clone() for k, v in ens.state_dict().items()}
    method.apply_fission(ens, [batch], (3, 16, 16))  # a resumed run may re-run it
    _, other, _, _ = _fissioned(grouping=grouping, criterion="random")
    for key, value in ens.state_dict().items():
        assert torch.equal(value, first[key]) and torch.equal(value, other.state_dict()[key]), key
