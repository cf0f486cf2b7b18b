"""Parameter-space interpolation between two members (MixtureEnsembles section 5.3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ensemblekit.analysis import interpolate_members
from ensemblekit.data import ImageTensors
from ensemblekit.ensemble import MemberEnsemble
from ensemblekit.errors import UserError
from ensemblekit.methods.mixture import build_mixture_ensemble
from ensemblekit.models import create_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageTensors(images, labels, [str(i) for i in range(10)])


def _own_train_bn_scores(forward, module, data, batch_size):
    """Accuracy and NLL of one member, BatchNorm in train mode, computed here without the analysis code."""
    module.train()
    correct, nll = 0, 0.0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = (data.images[start : start + batch_size].float() / 255 - mean) / std
            y = data.labels[start : start + batch_size]
            logits = forward(x)
            correct += int((logits.argmax(-1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
    return correct / len(data), nll / len(data)


def _mixture(**kw):
    torch.manual_seed(0)
    return build_mixture_ensemble(lambda layers: create_model("resnet20", 10, width=0.25, layers=layers), 3, 1.0, **kw)


def _perturb_bn(ens):
    with torch.no_grad():
        for m in ens.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)


def test_mixture_end_points_are_the_members_and_the_ensemble_is_restored():
    ens = _mixture(layout="loop")
    _perturb_bn(ens)
    data = _data()
    before = {k: v.clone() for k, v in ens.state_dict().items()}
    ens.eval()
    points = interpolate_members(ens, 0, 2, data, MEAN, STD, points=5, batch_size=16)
    assert all(torch.equal(v, before[k]) for k, v in ens.state_dict().items())  # running statistics included
    assert not any(m.training for m in ens.modules())
    assert [p["lambda"] for p in points] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    for point, member in ((points[0], 0), (points[-1], 2)):
        acc, nll = _own_train_bn_scores(lambda x, i=member: ens(x)[i], ens, data, 16)
        assert point["accuracy"] == pytest.approx(acc, abs=1e-9) and point["nll"] == pytest.approx(nll, rel=1e-5)
    assert points[2]["nll"] != pytest.approx(points[0]["nll"], rel=1e-3)  # the middle is a different network


def test_deep_ensemble_end_points_and_plain_data():
    torch.manual_seed(0)
    ens = MemberEnsemble([create_model("resnet8", 10, width=0.25) for _ in range(2)])
    _perturb_bn(ens)
    data = _data()
    points = interpolate_members(ens, 1, 0, data, MEAN, STD, points=3, batch_size=24)
    assert all(
        set(p) == {"lambda", "accuracy", "nll"} and all(isinstance(v, float) for v in p.values()) for p in points
    )
    for point, member in ((points[0], 1), (points[-1], 0)):
        acc, nll = _own_train_bn_scores(ens.members[member], ens.members[member], data, 24)
        assert point["accuracy"] == pytest.approx(acc, abs=1e-9) and point["nll"] == pytest.approx(nll, rel=1e-5)


def test_interpolation_refuses_what_it_cannot_interpolate():
    with pytest.raises(UserError, match="template_assignment: shared"):
        interpolate_members(_mixture_disjoint(), 0, 1, _data(), MEAN, STD)
    with pytest.raises(UserError, match="two different members"):
        interpolate_members(_mixture(), 1, 1, _data(), MEAN, STD)
    with pytest.raises(UserError, match="per-member parameters"):
        interpolate_members(create_model("resnet8", 10, width=0.25), 0, 1, _data(), MEAN, STD)


def _mixture_disjoint():
    torch.manual_seed(0)
    return build_mixture_ensemble(
        lambda layers: create_model("resnet20", 10, width=0.25, layers=layers), 2, 2.0, template_assignment="disjoint"
    )
