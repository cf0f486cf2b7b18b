"""``mimo``: architecture, M=1 limit, inference FLOPs, the training batch (slots, ρ, repetitions), the loss and an
end-to-end run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, describe_costs, train
from ensemblekit.training.losses import member_cross_entropy
from tests.conftest import tiny_config


def _build(model=None, **options):
    sections = {"method": {"name": "mimo", **options}}
    if model is not None:
        sections["model"] = model
    cfg = config_from_dict(tiny_config(**sections))
    return build_ensemble(cfg, 10, 192)


def test_only_the_first_conv_and_the_classifier_grow():
    method, ens = _build(members=3)
    single = method.backbone()
    assert ens.net.spec.in_channels == 9 and ens.net.spec.num_classes == 30
    plain, grown = single.state_dict(), ens.net.state_dict()
    assert plain.keys() == grown.keys()
    changed = {k for k in plain if plain[k].shape != grown[k].shape}
    assert changed == {"stem.conv.weight", "head.fc.weight", "head.fc.bias"}
    assert grown["stem.conv.weight"].shape[1] == 9 and grown["head.fc.weight"].shape[0] == 30


def test_one_member_mimo_is_the_backbone():
    method, ens = _build(members=1)
    single = method.backbone().eval()
    ens.net.load_state_dict(single.state_dict())
    ens.eval()
    x = torch.randn(4, 3, 16, 16)
    out = ens(x)
    assert out.shape == (1, 4, 10)
    torch.testing.assert_close(out[0], single(x), rtol=0, atol=0)


def test_test_time_input_fills_every_slot_and_heads_map_to_members():
    _, ens = _build(members=3)
    ens.eval()
    x = torch.randn(2, 3, 16, 16)
    logits = ens.net(torch.cat([x, x, x], dim=1))  # [B, M*K]
    out = ens(x)
    assert out.shape == (3, 2, 10)
    for m in range(3):
        torch.testing.assert_close(out[m], logits[:, m * 10 : (m + 1) * 10])
    with pytest.raises(ValueError, match="input channels"):
        ens(torch.randn(2, 6, 16, 16))


def test_inference_flops_within_5_percent_of_the_single_backbone():
    method, ens = _build(model={"name": "resnet20", "width": 1.0}, members=3)
    costs = describe_costs(method, ens)
    assert 1.0 < costs["inference_flops_vs_single"] <= 1.05
    assert costs["params"] == costs["unique_params"] < 1.01 * costs["single_params"]


def _images(b: int) -> torch.Tensor:
    """Image j is constant j (so a slot's content names its source image)."""
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 4, 4).clone()


def _prepare(members=3, input_repetition=0.0, batch_repetitions=4):
    method, ens = _build(members=members, input_repetition=input_repetition, batch_repetitions=batch_repetitions)
    stage = method.recipe(ens)[0]
    assert stage.module is ens and stage.member_loss == "sum"
    return stage.prepare_batch


def test_prepare_batch_shapes_targets_and_repetitions():
    prepare, b, m, reps = _prepare(3, 0.0, 4), 8, 3, 4
    labels = torch.randperm(10)[:b]
    torch.manual_seed(0)
    xs, ys = prepare(_images(b), labels)
    assert xs.shape == (b * reps, 3 * m, 4, 4) and ys.shape == (m, b * reps)
    for slot in range(m):
        src = xs[:, 3 * slot, 0, 0].long()  # which image fills this slot in each row
        assert torch.equal(xs[:, 3 * slot : 3 * slot + 3], _images(b)[src])
        assert torch.equal(ys[slot], labels[src])  # head m's targets are the labels of slot m's images
        assert torch.equal(torch.bincount(src, minlength=b), torch.full((b,), reps))  # each image r times
    one = _prepare(3, 0.0, 1)(_images(b), labels)[0]
    assert one.shape[0] == b


def test_input_repetition_one_gives_identical_slots_zero_gives_independent_slots():
    b = 16
    torch.manual_seed(1)
    xs, ys = _prepare(3, 1.0, 2)(_images(b), torch.arange(b))
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[1], ys[2])
    assert torch.equal(xs[:, 0:3], xs[:, 3:6]) and torch.equal(xs[:, 0:3], xs[:, 6:9])
    torch.manual_seed(1)
    xs, ys = _prepare(3, 0.0, 2)(_images(b), torch.arange(b))
    assert (ys[0] != ys[1]).float().mean() > 0.5 and (ys[1] != ys[2]).float().mean() > 0.5
    torch.manual_seed(1)
    _, ys = _prepare(2, 0.5, 2)(_images(b), torch.arange(b))  # last half of the rows shared
    assert torch.equal(ys[0, 16:], ys[1, 16:]) and not torch.equal(ys[0, :16], ys[1, :16])
    assert torch.equal(ys[0, :16].sort().values, ys[1, :16].sort().values)  # a permutation of the same list


def test_prepare_batch_draws_from_the_global_torch_rng():
    prepare = _prepare()
    torch.manual_seed(7)
    a = prepare(_images(6), torch.arange(6))[1]
    torch.manual_seed(7)
    b = prepare(_images(6), torch.arange(6))[1]
    c = prepare(_images(6), torch.arange(6))[1]
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_loss_sums_members_and_averages_rows():
    out = torch.randn(3, 5, 10)
    y = torch.randint(0, 10, (3, 5))
    expected = sum(F.cross_entropy(out[m], y[m]) for m in range(3))
    torch.testing.assert_close(member_cross_entropy(out, y, "sum"), expected)


def test_end_to_end_run_charges_batch_repetitions(tmp_path):
    cfg = config_from_dict(
        tiny_config(method={"name": "mimo", "members": 3, "batch_repetitions": 2}, train={"epochs": 1})
    )
    record = train(cfg, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == "mimo" and saved["num_members"] == 3 and len(saved["members"]) == 3
    assert all(math.isfinite(v) for v in saved["metrics"].values() if isinstance(v, float))
    costs = record["costs"]
    ratio = costs["inference_flops_vs_single"]  # 1.14 for this tiny resnet8 (the stem is a large share)
    assert 1.0 < ratio < 1.15
    assert costs["train_epoch_equivalents"] == pytest.approx(2 * 1 * ratio, rel=1e-6)  # r x epochs x forward
    assert costs["images_seen"] == 192
