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

from ensemblekit.config import config_from_dict
from ensemblekit.metrics import inference_flops
from ensemblekit.training.engine import measure_stage_flops

MAX_EPOCHS = 100_000


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
        from ensemblekit.runner import build_ensemble

        self.raw, self.num_classes, self.train_size = raw, num_classes, train_size
        cfg = config_from_dict(raw)
        with torch.random.fork_rng(devices=[]):
            method, self.ensemble = build_ensemble(cfg, num_classes, train_size)
            self.single_flops = inference_flops(method.single_backbone(), (1, *image_shape)) or 1
        self.x = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
        self.y = torch.arange(2) % num_classes
        self._flops: dict[str, float] = {}
        self._costs: dict[int, float] = {}

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


def fit_epochs(cost: RecipeCost, budget: float) -> tuple[int, float]:
    """The ``train.epochs`` (>= 1) whose recipe cost is closest to ``budget``, and that cost.

    Assumes the cost does not decrease with ``train.epochs`` (true of every recipe whose stage epochs grow with
    it); found by doubling then bisection.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    lo = 1
    if cost(lo) >= budget:
        return lo, cost(lo)
    hi = 2
    while cost(hi) < budget and hi < MAX_EPOCHS:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: cost(lo) < budget <= cost(hi)
        mid = (lo + hi) // 2
        if cost(mid) < budget:
            lo = mid
        else:
            hi = mid
    below, above = cost(lo), cost(hi)
    return (lo, below) if budget - below <= above - budget else (hi, above)
