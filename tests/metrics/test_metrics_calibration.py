"""ECE (hand cases, torchmetrics reference) and temperature scaling."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from ensemblekit.metrics import apply_temperature, calibrated_nll, expected_calibration_error, fit_temperature
from ensemblekit.metrics.calibration import T_MAX, T_MIN


def test_ece_hand_shared_bin():
    # confidences 0.95 (right) and 0.97 (wrong) share the bin (14/15, 1]: acc 0.5, conf 0.96, weight 2/3;
    # 0.55 (right) is alone in (8/15, 9/15]: |1 - 0.55|, weight 1/3.
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.97, 0.03, 0.0], [0.55, 0.45, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    expected = (2 / 3) * abs(0.5 - 0.96) + (1 / 3) * 0.45
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx((0.05 + 0.97 + 0.45) / 3)  # not the per-sample mean gap


def test_ece_bins_are_right_closed():
    # conf 1.0 (wrong) and 0.94 (right) share the last bin (14/15, 1]: acc 0.5, conf 0.97 -> 0.47.
    # torchmetrics' [lo, hi) bins give 1.0 a bin of its own: 0.5*|0 - 1| + 0.5*|1 - 0.94| = 0.53.
    probs = torch.tensor([[1.0, 0.0], [0.94, 0.06]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.47)
    # confidence exactly on an inner edge, 0.6 = 9/15, belongs to (8/15, 9/15] with 0.55
    probs = torch.tensor([[0.6, 0.4], [0.55, 0.45], [0.61, 0.39]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    expected = (2 / 3) * abs(0.5 - 0.575) + (1 / 3) * abs(1 - 0.61)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_ece_n_bins_one_is_the_global_gap():
    gen = torch.Generator().manual_seed(3)
    probs = (torch.randn(300, 5, generator=gen) * 2).softmax(-1)
    labels = torch.randint(0, 5, (300,), generator=gen)
    conf, pred = probs.max(-1)
    gap = abs((pred == labels).double().mean().item() - conf.double().mean().item())
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(gap, rel=1e-6)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)


@pytest.mark.parametrize(("num_classes", "scale", "seed"), [(2, 1.0, 0), (10, 3.0, 1), (100, 5.0, 2)])
def test_ece_matches_torchmetrics(num_classes, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    probs = (torch.randn(3000, num_classes, generator=gen) * scale).softmax(-1)
    labels = torch.randint(0, num_classes, (3000,), generator=gen)
    reference = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")(probs, labels)
    assert expected_calibration_error(probs, labels) == pytest.approx(reference.item(), abs=1e-6)


def _synthetic(n, num_classes, seed):
    """Logits and labels drawn from softmax(logits): softmax(logits) is calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    return logits, labels


def _nll(probs, labels):
    return F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()


def test_temperature_of_overconfident_predictions_is_above_one():
    val_logits, val_labels = _synthetic(20000, 10, seed=4)
    test_logits, test_labels = _synthetic(20000, 10, seed=5)
    val, test = (3 * val_logits).softmax(-1), (3 * test_logits).softmax(-1)
    temperature = fit_temperature(val, val_labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    result = calibrated_nll(val, val_labels, test, test_labels)
    assert set(result) == {"nll", "temperature"}
    assert result["temperature"] == temperature
    assert result["nll"] < _nll(test, test_labels) - 0.1
    assert result["nll"] == pytest.approx(_nll(test_logits.softmax(-1), test_labels), rel=0.01)
    assert expected_calibration_error(apply_temperature(test, temperature), test_labels) < 0.02


def test_temperature_of_calibrated_predictions_is_one():
    logits, labels = _synthetic(20000, 10, seed=6)
    assert fit_temperature(logits.softmax(-1), labels) == pytest.approx(1.0, abs=0.05)


def test_temperature_of_underconfident_predictions_is_below_one():
    logits, labels = _synthetic(20000, 10, seed=7)
    assert fit_temperature((logits / 2).softmax(-1), labels) == pytest.approx(0.5, rel=0.05)


def test_fitted_temperature_is_the_minimiser_and_deterministic():
    logits, labels = _synthetic(2000, 5, seed=8)
    probs = (1.7 * logits).float().softmax(-1)
    temperature = fit_temperature(probs, labels)
    assert fit_temperature(probs, labels) == temperature
    best = _nll(apply_temperature(probs, temperature), labels)
    for factor in (0.98, 0.995, 1.005, 1.02):
        assert best <= _nll(apply_temperature(probs, temperature * factor), labels) + 1e-12
    # against a brute-force grid
    grid = torch.linspace(0.5, 4.0, 3501, dtype=torch.float64)
    scores = probs.double().clamp_min(1e-12).log()
    losses = [F.cross_entropy(scores / t, labels).item() for t in grid[::7]]
    grid_best = grid[::7][min(range(len(losses)), key=losses.__getitem__)].item()
    assert temperature == pytest.approx(grid_best, abs=0.01)


def test_temperature_is_clipped_to_its_range():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert fit_temperature(probs, torch.tensor([0, 1])) == T_MIN  # perfectly separated: T -> 0
    assert fit_temperature(probs, torch.tensor([1, 0])) == T_MAX  # always wrong: T -> infinity


def test_apply_temperature_formula():
    probs = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    # softmax(log p / 2) = sqrt(p) normalised = [2, 1] / 3
    assert apply_temperature(probs, 2.0).tolist()[0] == pytest.approx([2 / 3, 1 / 3])
    assert apply_temperature(probs, 1.0).tolist()[0] == pytest.approx([0.8, 0.2])
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(probs, 0.0)


def test_calibrated_nll_shape_errors():
    probs = torch.full((4, 3), 1 / 3)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="classes"):
        calibrated_nll(probs, labels, torch.full((4, 2), 0.5), labels)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        calibrated_nll(probs[None], labels, probs, labels)
    result = calibrated_nll(probs, labels, probs, labels)
    assert result["nll"] == pytest.approx(math.log(3))  # a uniform prediction is unchanged by any T


def test_reliability_bins_reproduce_the_ece_and_a_hand_example():
    from ensemblekit.metrics import reliability_bins

    probs = torch.tensor([[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    bins = reliability_bins(probs, labels, n_bins=5)
    # confidences 0.9, 0.75, 0.7, 0.55 -> bins (0.8,1.0]: 0.9; (0.6,0.8]: 0.75, 0.7; (0.4,0.6]: 0.55
    assert bins["count"] == [0, 0, 1, 2, 1]
    assert bins["accuracy"][0] is None and bins["accuracy"][3] == pytest.approx(0.5)
    assert bins["confidence"][3] == pytest.approx(0.725)
    n = sum(bins["count"])
    ece = sum(c / n * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c)
    assert ece == pytest.approx(expected_calibration_error(probs, labels, n_bins=5))
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(500, 10, generator=g), -1)
    y = torch.randint(0, 10, (500,), generator=g)
    b = reliability_bins(p, y)
    ece = sum(c / 500 * abs(a - f) for c, a, f in zip(b["count"], b["accuracy"], b["confidence"]) if c)
    assert ece == pytest.approx(expected_calibration_error(p, y), abs=1e-12)
