"""Fit a run to a training budget in single-model epoch-equivalents, for any method, without training.

The cost meter charges a training step 3x the stage's forward FLOPs per image (forward + backward), so a
recipe's cost in single-model epoch-equivalents is

    EE(recipe) = Σ_stages epochs_s · n_s · f_s / (n · f_single)

with n_s the images of stage s per epoch (the training set, or its bootstrap sample), f_s the stage module's
forward FLOPs per unique image (after its ``prepare_batch``, as the engine measures them), n the training-set
size and f_single the single backbone's forward FLOPs. Every method derives its stages' epochs from
``train.epochs``, so the budget is met by choosing ``train.epochs``: the value whose recipe cost is closest to
the budget (the lower one on a tie). Work outside training steps (pruning scores, hatching) is not counted here;
the cost meter of the finished run reports what was actually spent.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ensemblekit.config import config_from_dict
from ensemblekit.errors import UserError
from ensemblekit.metrics import inference_flops
from ensemblekit.training.engine import measure_stage_flops

MAX_EPOCHS = 10_000


class RecipeCost:
    """Recipe cost (epoch-equivalents) of one config as a function of ``train.epochs``.

    The ensemble is built once; each query rebuilds only the method's recipe and measures the FLOPs of stages
    not seen before (by stage name).

    Args:
        raw: The run's config dict.
        num_classes: Classes of the data set.
        train_size: Training-set size.
        image_shape: ``(C, H, W)`` of one image.
    """

    def __init__(self, raw: dict[str, Any], num_classes: int, train_size: int, image_shape=(3, 32, 32)) -> None:
        self.raw, self.num_classes, self.train_size = raw, num_classes, train_size
        with torch.random.fork_rng(devices=[]):
            method, self.ensemble = self._build(raw)
            self.single_flops = inference_flops(method.single_backbone(), (1, *image_shape)) or 1
        self._built_state = {k: v for k, v in method.__dict__.items() if _holds_module(v)}
        self.x = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
        self.y = torch.arange(2) % num_classes
        self._flops: dict[str, float] = {}
        self._costs: dict[int, float] = {}

    def _build(self, raw: dict[str, Any]):
        """Method and ensemble of ``raw`` (or of the first ``train.epochs`` the method accepts).

        The ensemble's structure does not depend on the epochs, so one build serves every query.
        """
        from ensemblekit.runner import build_ensemble

        trials = [raw] + [{**raw, "train": {**raw.get("train", {}), "epochs": e}} for e in range(1, 257)]
        first = None
        for trial in trials:
            try:
                return build_ensemble(config_from_dict(trial), self.num_classes, self.train_size)
            except UserError as exc:
                first = first or exc
        raise first

    def __call__(self, epochs: int) -> float:
        """Estimated epoch-equivalents of the recipe with ``train.epochs = epochs``."""
        if epochs not in self._costs:
            self._costs[epochs] = self._cost(epochs)
        return self._costs[epochs]

    def _cost(self, epochs: int) -> float:
        from ensemblekit.methods import build_method

        raw = copy.deepcopy(self.raw)
        raw.setdefault("train", {})["epochs"] = int(epochs)
        method = build_method(config_from_dict(raw), self.num_classes, self.train_size)
        method.__dict__.update(self._built_state)  # networks the method made in build() (e.g. a worker)
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            for stage in method.recipe(self.ensemble):
                if stage.epochs <= 0:
                    continue
                if stage.name not in self._flops:
                    self._flops[stage.name] = measure_stage_flops(stage, self.x, self.y)
                images = len(stage.train_indices) if stage.train_indices is not None else self.train_size
                total += stage.epochs * images * self._flops[stage.name]
        return total / (self.train_size * self.single_flops)


def _holds_module(value: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, nn.Module) for v in value)
    if isinstance(value, dict):
        return any(isinstance(v, nn.Module) for v in value.values())
    return False


def fit_epochs(cost: RecipeCost, budget: float) -> tuple[int, float]:
    """The ``train.epochs`` (>= 1) whose recipe cost is closest to ``budget`` (the lower on a tie), and that cost.

    Values the method refuses (e.g. snapshot ensembles need a multiple of their cycle count) are skipped. Assumes
    the cost does not decrease with ``train.epochs``; scans upward until the cost passes the budget.

    Raises:
        UserError: no value of ``train.epochs`` up to ``MAX_EPOCHS`` is accepted by the method.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    best: tuple[int, float] | None = None
    first_error = None
    for epochs in range(1, MAX_EPOCHS + 1):
        try:
            value = cost(epochs)
        except UserError as exc:
            first_error = first_error or str(exc)
            if best is not None and epochs > 2 * best[0] + 64:
                break
            continue
        if best is None or abs(value - budget) < abs(best[1] - budget):
            best = (epochs, value)
        if value >= budget:
            break
    if best is None:
        raise UserError(f"no train.epochs meets the budget: {first_error}")
    return best
