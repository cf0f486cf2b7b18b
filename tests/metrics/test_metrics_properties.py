"""Property tests: invariances and ranges of the ensemble metrics on random predictions."""

import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ensemblekit.metrics import combine_probs, ensemble_metrics, expected_calibration_error
from ensemblekit.metrics.diversity import disagreement_matrix, kl_matrix


@st.composite
def predictions(draw, min_members=1):
    """Member probabilities [M, N, C] and labels; quantised logits make ties and exact zeros likely."""
    m = draw(st.integers(min_members, 4))
    n = draw(st.integers(1, 12))
    c = draw(st.integers(2, 5))
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 40.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(m, n, c, generator=gen, dtype=torch.float64) * scale
    if draw(st.booleans()):
        logits = logits.round()
    labels = torch.randint(0, c, (n,), generator=gen)
    return logits.softmax(-1), labels


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(predictions(), st.sampled_from(["probs", "logits"]), st.randoms(use_true_random=False))
def test_invariant_under_member_permutation(data, combine, rnd):
    probs, labels = data
    # argmax of an exact tie depends on float summation order, so accuracy/ECE are only invariant without ties
    top2 = combine_probs(probs, combine).topk(2, dim=-1).values
    assume(bool(((top2[:, 0] - top2[:, 1]) > 1e-5).all()))
    order = list(range(probs.shape[0]))
    rnd.shuffle(order)
    before = ensemble_metrics(probs, labels, combine)
    after = ensemble_metrics(probs[order], labels, combine)
    assert all(_same(before[k], after[k]) for k in before), (before, after)


@settings(max_examples=60, deadline=None)
@given(predictions(), st.sampled_from(["probs", "logits"]))
def test_ranges(data, combine):
    probs, labels = data
    m = ensemble_metrics(probs, labels, combine)
    num_members, num_classes = probs.shape[0], probs.shape[2]
    assert 0.0 <= m["ece"] <= 1.0
    assert 0.0 <= m["accuracy"] <= 1.0
    assert 0.0 <= m["brier"] <= 2.0
    assert m["nll"] >= 0.0
    assert 0.0 <= m["mutual_information"] <= math.log(num_members) + 1e-12  # I(y; member) <= H(member)
    assert m["mutual_information"] <= m["predictive_entropy"] + 1e-12 or combine == "logits"
    assert 0.0 <= m["predictive_entropy"] <= math.log(num_classes) + 1e-12
    if num_members > 1:
        assert 0.0 <= m["disagreement"] <= 1.0
        assert m["pairwise_kl"] >= 0.0
        corr = m["output_correlation"]
        assert math.isnan(corr) or -1.0 - 1e-9 <= corr <= 1.0 + 1e-9
    assert 0.0 <= expected_calibration_error(probs[0], labels) <= 1.0


@settings(max_examples=60, deadline=None)
@given(predictions(min_members=2))
def test_pairwise_matrices(data):
    probs, _ = data
    d = disagreement_matrix(probs.argmax(-1))
    assert torch.equal(d, d.T)
    assert torch.all(d.diagonal() == 0)
    kl = kl_matrix(probs, probs.clamp_min(1e-12).log())
    assert torch.all(kl >= 0) and torch.all(kl.diagonal() == 0)


@settings(max_examples=40, deadline=None)
@given(predictions(min_members=1))
def test_replicated_members_equal_the_single_member(data):
    probs, labels = data
    single = ensemble_metrics(probs[:1], labels)
    replicated = ensemble_metrics(probs[:1].expand(3, -1, -1), labels)
    for key in ("accuracy", "nll", "ece", "brier", "predictive_entropy"):
        assert math.isclose(single[key], replicated[key], rel_tol=1e-9, abs_tol=1e-9), key
    assert replicated["disagreement"] == 0.0
    assert replicated["mutual_information"] <= 1e-12
