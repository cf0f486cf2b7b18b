"""OOD detection metrics: hand-computed cases, ties, torchmetrics equivalence, and the uncertainty scores."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from ensemblekit.metrics.ood import (
    auroc,
    average_precision,
    fpr_at_tpr,
    ood_detection_metrics,
    ood_evaluation,
    ood_scores,
)


def test_perfect_and_reversed_separation():
    inn, out = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.2])
    m = ood_detection_metrics(inn, out)
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    r = ood_detection_metrics(out, inn)  # now the "in" scores are all below the "out" scores
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0


def test_hand_computed_with_ties():
    inn = torch.tensor([3.0, 2.0, 2.0, 1.0])
    out = torch.tensor([2.0, 0.0])
    # pairs (in > out) + 0.5 (in == out): vs 2: 1 + .5 + .5 + 0 ; vs 0: 4 -> 6 / 8
    assert auroc(inn, out) == pytest.approx(0.75)
    # thresholds 3, 2, 1, 0: tp 1, 3, 4, 4; fp 0, 1, 1, 2 -> AP = 1/4*1 + 2/4*3/4 + 1/4*4/5
    assert average_precision(inn, out) == pytest.approx(0.25 + 0.375 + 0.2)
    # TPR >= 95% first reached at threshold 1 (tp 4/4), where 1 of 2 OOD samples is accepted
    assert fpr_at_tpr(inn, out) == pytest.approx(0.5)
    # at 75% TPR the threshold is 2, which accepts the tied OOD sample too
    assert fpr_at_tpr(inn, out, 0.75) == pytest.approx(0.5)
    assert fpr_at_tpr(inn, out, 0.25) == 0.0
    assert auroc(torch.ones(3), torch.ones(5)) == 0.5


def test_matches_torchmetrics():
    g = torch.Generator().manual_seed(0)
    inn = (torch.rand(300, generator=g) * 0.6 + 0.3).round(decimals=2)  # rounded: many ties
    out = (torch.rand(200, generator=g) * 0.6 + 0.1).round(decimals=2)
    preds = torch.cat([inn, out])
    target = torch.cat([torch.ones(300), torch.zeros(200)]).long()
    m = ood_detection_metrics(inn, out)
    assert m["auroc"] == pytest.approx(binary_auroc(preds, target).item(), abs=1e-6)
    assert m["aupr_in"] == pytest.approx(binary_average_precision(preds, target).item(), abs=1e-6)
    assert m["aupr_out"] == pytest.approx(binary_average_precision(1 - preds, 1 - target).item(), abs=1e-6)
    # brute-force Mann-Whitney
    diff = inn.double()[:, None] - out.double()[None, :]
    assert m["auroc"] == pytest.approx(((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item())


def test_scores():
    confident = torch.tensor([[[0.98, 0.01, 0.01]], [[0.97, 0.02, 0.01]]])  # [M=2, N=1, C=3], members agree
    split = torch.tensor([[[0.98, 0.01, 0.01]], [[0.01, 0.98, 0.01]]])  # members disagree
    probs = torch.cat([confident, split], dim=1)
    s = ood_scores(probs)
    assert s["max_prob"][0] > s["max_prob"][1]
    assert s["entropy"][0] > s["entropy"][1]
    assert s["mutual_information"][0] > s["mutual_information"][1]
    assert torch.all(ood_scores(confident[:1])["mutual_information"] == 0)  # one member: no epistemic part
    res = ood_evaluation(confident.expand(2, 4, 3), split.expand(2, 4, 3))
    assert set(res) == {"max_prob", "entropy", "mutual_information"}
    assert all(v["auroc"] == 1.0 for v in res.values())


def test_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="finite"):
        fpr_at_tpr(torch.tensor([float("nan")]), torch.tensor([1.0]))
