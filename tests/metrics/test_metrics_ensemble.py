"""ensemble_metrics / member_metrics: hand-computed values, references, combine rules, edge cases."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from ensemblekit.metrics import (
    ENSEMBLE_METRIC_KEYS,
    accuracy,
    brier_score,
    combine_probs,
    disagreement,
    ensemble_metrics,
    member_metrics,
    mutual_information,
    negative_log_likelihood,
    normalized_disagreement,
    output_correlation,
    pairwise_kl,
    predictive_entropy,
)

# Two members, three samples, three classes; labels [0, 1, 1].
A = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]]  # top-1: 0, 1, 2 -> correct, correct, wrong
B = [[0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]  # top-1: 0, 2, 2 -> correct, wrong, wrong
LABELS = [0, 1, 1]
# Probability mean: [0.6, 0.3, 0.1] (top-1 0, right), [0.15, 0.4, 0.45] (2, wrong), [0.15, 0.2, 0.65] (2, wrong)
MIX = [[0.6, 0.3, 0.1], [0.15, 0.4, 0.45], [0.15, 0.2, 0.65]]


def H(p):
    return -sum(x * math.log(x) for x in p)


def KL(p, q):
    return sum(x * math.log(x / y) for x, y in zip(p, q))


@pytest.fixture
def hand():
    return torch.tensor([A, B], dtype=torch.float64), torch.tensor(LABELS)


def test_hand_computed_probs_rule(hand):
    probs, labels = hand
    m = ensemble_metrics(probs, labels)
    assert list(m) == list(ENSEMBLE_METRIC_KEYS)
    assert all(type(v) is float for v in m.values())
    expected = {
        "accuracy": 1 / 3,
        "nll": -(math.log(0.6) + math.log(0.4) + math.log(0.2)) / 3,
        # one-hot errors: 0.16+0.09+0.01, 0.0225+0.36+0.2025, 0.0225+0.64+0.4225
        "brier": (0.26 + 0.585 + 1.085) / 3,
        # confidences 0.6 (right), 0.45 (wrong), 0.65 (wrong), each alone in its 1/15-wide bin
        "ece": (0.4 + 0.45 + 0.65) / 3,
        "member_accuracy_mean": (2 / 3 + 1 / 3) / 2,
        "member_nll_mean": (
            -(math.log(0.7) + math.log(0.6) + math.log(0.3)) / 3 - (math.log(0.5) + math.log(0.2) + math.log(0.1)) / 3
        )
        / 2,
        "disagreement": 1 / 3,  # only sample 1 differs
        # D(A,B) = (1/3)/(1 - 2/3) = 1, D(B,A) = (1/3)/(1 - 1/3) = 0.5
        "normalized_disagreement": 0.75,
        "pairwise_kl": (sum(KL(a, b) for a, b in zip(A, B)) / 3 + sum(KL(b, a) for a, b in zip(A, B)) / 3) / 2,
        "mutual_information": sum(H(m_) - (H(a) + H(b)) / 2 for m_, a, b in zip(MIX, A, B)) / 3,
        "predictive_entropy": sum(H(m_) for m_ in MIX) / 3,
        "output_correlation": sum(statistics.correlation(a, b) for a, b in zip(A, B)) / 3,
        "num_members": 2.0,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # pencil and paper: KL(A||B) per sample 0.09690, 0.38191, 0.23321; KL(B||A) 0.10903, 0.33480, 0.19683
    assert expected["pairwise_kl"] == pytest.approx((0.71202 / 3 + 0.64066 / 3) / 2, abs=1e-5)


def test_hand_computed_public_functions_agree(hand):
    probs, labels = hand
    m = ensemble_metrics(probs, labels)
    mix = combine_probs(probs)
    assert accuracy(mix, labels) == pytest.approx(m["accuracy"])
    assert negative_log_likelihood(mix, labels) == pytest.approx(m["nll"])
    assert brier_score(mix, labels) == pytest.approx(m["brier"])
    assert predictive_entropy(mix) == pytest.approx(m["predictive_entropy"])
    assert disagreement(probs) == pytest.approx(m["disagreement"])
    assert normalized_disagreement(probs, labels) == pytest.approx(m["normalized_disagreement"])
    assert pairwise_kl(probs) == pytest.approx(m["pairwise_kl"])
    assert mutual_information(probs) == pytest.approx(m["mutual_information"])
    assert output_correlation(probs) == pytest.approx(m["output_correlation"])


def test_member_metrics_hand(hand):
    probs, labels = hand
    per_member = member_metrics(probs, labels)
    assert len(per_member) == 2
    assert list(per_member[0]) == ["accuracy", "nll", "ece", "brier"]
    assert per_member[0]["accuracy"] == pytest.approx(2 / 3)
    assert per_member[1]["accuracy"] == pytest.approx(1 / 3)
    assert per_member[0]["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.3)) / 3)
    # member A: 0.09+0.04+0.01, 0.01+0.16+0.09, 0.04+0.49+0.25
    assert per_member[0]["brier"] == pytest.approx((0.14 + 0.26 + 0.78) / 3)
    # member A: confidences 0.7 (right), 0.6 (right), 0.5 (wrong) in three different bins
    assert per_member[0]["ece"] == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    # member B: confidences 0.5 (right), 0.6 (wrong), 0.8 (wrong)
    assert per_member[1]["ece"] == pytest.approx((0.5 + 0.6 + 0.8) / 3)


def test_logits_rule_hand():
    # softmax(mean log p) of [0.9, 0.1] and [0.5, 0.5] is proportional to [sqrt(0.45), sqrt(0.05)] = 3:1.
    probs = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]], dtype=torch.float64)
    combined = combine_probs(probs, "logits")
    assert combined.tolist()[0] == pytest.approx([0.75, 0.25], rel=1e-12)
    m = ensemble_metrics(probs, torch.tensor([1]), combine="logits")
    assert m["nll"] == pytest.approx(-math.log(0.25))
    assert m["predictive_entropy"] == pytest.approx(H([0.75, 0.25]))
    # the mutual information always uses the probability mean [0.7, 0.3]
    assert m["mutual_information"] == pytest.approx(H([0.7, 0.3]) - (H([0.9, 0.1]) + H([0.5, 0.5])) / 2)


def test_logits_rule_equals_softmax_of_mean_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 500, 10, generator=gen) * 4
    labels = torch.randint(0, 10, (500,), generator=gen)
    probs = logits.softmax(-1)
    reference = logits.mean(0).softmax(-1)
    torch.testing.assert_close(combine_probs(probs, "logits"), reference.double(), atol=1e-6, rtol=1e-5)
    m = ensemble_metrics(probs, labels, combine="logits")
    assert m["nll"] == pytest.approx(F.cross_entropy(logits.mean(0), labels).item(), rel=1e-5)
    assert m["accuracy"] == pytest.approx((logits.mean(0).argmax(-1) == labels).float().mean().item())
    probs_rule = ensemble_metrics(probs, labels, combine="probs")
    assert m["nll"] != pytest.approx(probs_rule["nll"], rel=1e-3)  # the rules differ on this data
    assert m["mutual_information"] == pytest.approx(probs_rule["mutual_information"])


def test_agrees_with_torchmetrics_and_torch():
    gen = torch.Generator().manual_seed(1)
    num_classes = 7
    logits = torch.randn(4, 2000, num_classes, generator=gen) * 2.5
    labels = torch.randint(0, num_classes, (2000,), generator=gen)
    probs = logits.softmax(-1)
    mix = probs.mean(0)
    m = ensemble_metrics(probs, labels)
    ece_ref = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")(mix, labels)
    acc_ref = MulticlassAccuracy(num_classes=num_classes, average="micro")(mix, labels)
    assert m["ece"] == pytest.approx(ece_ref.item(), abs=1e-6)
    assert m["accuracy"] == pytest.approx(acc_ref.item(), abs=1e-7)
    assert m["nll"] == pytest.approx(F.nll_loss(mix.log(), labels).item(), rel=1e-6)
    one_hot = F.one_hot(labels, num_classes).float()
    assert m["brier"] == pytest.approx((mix - one_hot).square().sum(-1).mean().item(), rel=1e-5)
    for i, member in enumerate(member_metrics(probs, labels)):
        ref = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")(probs[i], labels)
        assert member["ece"] == pytest.approx(ref.item(), abs=1e-6)
        assert member["nll"] == pytest.approx(F.cross_entropy(logits[i], labels).item(), rel=1e-5)
    # pairwise KL against torch's kl_div on one ordered pair, averaged over all ordered pairs
    kls = [
        F.kl_div(probs[b].log(), probs[a], reduction="sum").item() / 2000 for a in range(4) for b in range(4) if a != b
    ]
    assert m["pairwise_kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-5)


def test_single_member_nan_and_zero():
    probs = torch.tensor([A], dtype=torch.float64)
    m = ensemble_metrics(probs, torch.tensor(LABELS))
    for key in ("disagreement", "normalized_disagreement", "pairwise_kl", "output_correlation"):
        assert math.isnan(m[key]), key
    assert m["mutual_information"] == 0.0
    assert m["num_members"] == 1.0
    assert m["accuracy"] == m["member_accuracy_mean"] == pytest.approx(2 / 3)
    assert m["nll"] == pytest.approx(m["member_nll_mean"])
    assert math.isnan(disagreement(probs)) and math.isnan(pairwise_kl(probs))
    assert mutual_information(probs) == 0.0


def test_identical_members_have_no_diversity():
    probs = torch.tensor([A, A, A], dtype=torch.float64)
    m = ensemble_metrics(probs, torch.tensor(LABELS))
    assert m["disagreement"] == 0.0
    assert m["normalized_disagreement"] == 0.0
    assert m["pairwise_kl"] == pytest.approx(0.0, abs=1e-15)
    assert m["mutual_information"] == pytest.approx(0.0, abs=1e-15)
    assert m["output_correlation"] == pytest.approx(1.0)


def test_perfect_member_makes_normalized_disagreement_infinite():
    probs = torch.tensor([A, B], dtype=torch.float64)
    m = ensemble_metrics(probs, torch.tensor([0, 1, 2]))  # member A is always right
    assert math.isinf(m["normalized_disagreement"])


def test_constant_vectors_are_left_out_of_the_correlation():
    uniform = [1 / 3, 1 / 3, 1 / 3]
    probs = torch.tensor([[uniform, A[1]], [B[0], B[1]]], dtype=torch.float64)
    assert output_correlation(probs) == pytest.approx(statistics.correlation(A[1], B[1]))


@pytest.mark.parametrize(
    ("probs", "labels", "combine", "match"),
    [
        (torch.full((3, 4), 0.25), torch.zeros(3, dtype=torch.long), "probs", r"\[M, N, C\].*unsqueeze"),
        (torch.full((2, 3, 4), 0.25), torch.zeros(4, dtype=torch.long), "probs", "labels must be"),
        (torch.full((2, 3, 4), 0.25), torch.zeros(3, 1, dtype=torch.long), "probs", "labels must be"),
        (torch.full((2, 3, 4), 0.25), torch.zeros(3), "probs", "integer"),
        (torch.full((2, 3, 4), 0.25), torch.tensor([0, 1, 4]), "probs", r"\[0, 4\)"),
        (torch.full((2, 3, 4), 0.25), torch.tensor([0, -1, 2]), "probs", r"\[0, 4\)"),
        (torch.randn(2, 3, 4), torch.zeros(3, dtype=torch.long), "probs", "probabilit|sum to 1"),
        (torch.full((2, 3, 4), 0.5), torch.zeros(3, dtype=torch.long), "probs", "sum to 1"),
        (torch.full((2, 3, 4), float("nan")), torch.zeros(3, dtype=torch.long), "probs", "finite"),
        (torch.full((2, 3, 4), 0.25), torch.zeros(3, dtype=torch.long), "mean", "combine rule"),
        (torch.zeros(2, 0, 4), torch.zeros(0, dtype=torch.long), "probs", "empty"),
    ],
)
def test_bad_inputs_raise_one_line_value_error(probs, labels, combine, match):
    with pytest.raises(ValueError, match=match) as info:
        ensemble_metrics(probs, labels, combine=combine)
    assert "\n" not in str(info.value)
