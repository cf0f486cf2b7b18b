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

With ``budget_unit: seconds`` the budget is wall-clock seconds of training, and the recipe's cost is

    T(recipe) = Σ_stages epochs_s · n_s · t_s

with t_s the seconds per image of one training step of stage s (forward, loss, backward and an SGD step on a
copy of the stage module, ``train.batch_size`` random images after ``prepare_batch``, timed after a warm-up step).
Loading, augmentation and evaluation are not timed, so runs overshoot a seconds budget somewhat; the results
table shows each run's measured seconds and its overrun.

The equal-FLOPs control of a run (:func:`equal_flops_width`) is the single backbone with the ``model.width``
whose inference FLOPs are closest to the run's.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.metrics import inference_flops
from ensemblekit.resolve import config_from_dict
from ensemblekit.training.losses import member_cross_entropy
from ensemblekit.training.stage import Stage
from ensemblekit.training.steps import measure_stage_flops

TRIAL_EPOCHS = range(1, 257)
"""``train.epochs`` values tried, in order, when a run's configured epochs do not build (e.g. snapshot cycles)."""

MAX_EPOCHS = 10_000
BudgetUnit = Literal["epoch_equivalents", "seconds"]


def measure_stage_seconds(stage: Stage, x: torch.Tensor, y: torch.Tensor, steps: int = 2) -> float:
    """Wall-clock seconds per training image of ``stage``: a timed step on a copy of its module.

    One warm-up step, then the mean of ``steps`` steps (forward, the stage's loss, backward, SGD) on the batch
    ``x, y`` after ``stage.prepare_batch``. The stage's module, its optimiser state and every RNG are untouched.
    """
    with torch.random.fork_rng(devices=[]):
        module = copy.deepcopy(stage.module).train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-6) if params else None

        def step() -> None:
            xs, ys = stage.prepare_batch(x, y) if stage.prepare_batch is not None else (x, y)
            out = module(xs)
            loss = stage.loss(out, ys) if stage.loss is not None else member_cross_entropy(out, ys, stage.member_loss)
            if optimizer is not None and loss.requires_grad:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps / len(x)


class RecipeCost:
    """Recipe cost (epoch-equivalents, or seconds) of one config as a function of ``train.epochs``.

    The ensemble is built once; each query rebuilds only the method's recipe and measures the FLOPs (or times a
    step) of stages not seen before (by stage name).

    Args:
        raw: The run's config dict.
        num_classes: Classes of the data set.
        train_size: Training-set size.
        image_shape: ``(C, H, W)`` of one image.
        unit: ``epoch_equivalents`` (FLOPs, exact) or ``seconds`` (timed steps, an estimate).
    """

    def __init__(
        self,
        raw: dict[str, Any],
        num_classes: int,
        train_size: int,
        image_shape=(3, 32, 32),
        unit: BudgetUnit = "epoch_equivalents",
    ) -> None:
        self.raw, self.num_classes, self.train_size, self.unit = raw, num_classes, train_size, unit
        with torch.random.fork_rng(devices=[]):
            method, self.ensemble = self._build(raw)
            self.single_flops = inference_flops(method.single_backbone(), (1, *image_shape)) or 1
        self._built_state = {k: v for k, v in method.__dict__.items() if _holds_module(v)}
        rows = config_from_dict(raw).data.batch_size if unit == "seconds" else 2
        self.x = torch.randn(rows, *image_shape, generator=torch.Generator().manual_seed(0))
        self.y = torch.arange(rows) % num_classes
        self._flops: dict[str, float] = {}
        self._costs: dict[int, float] = {}

    def _build(self, raw: dict[str, Any]):
        """Method and ensemble of ``raw`` (or of the first ``train.epochs`` the method accepts).

        The ensemble's structure does not depend on the epochs, so one build serves every query.
        """
        from ensemblekit.runs import build_ensemble

        trials = [raw] + [{**raw, "train": {**raw.get("train", {}), "epochs": e}} for e in TRIAL_EPOCHS]
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
                    measure = measure_stage_seconds if self.unit == "seconds" else measure_stage_flops
                    self._flops[stage.name] = measure(stage, self.x, self.y)
                images = len(stage.train_indices) if stage.train_indices is not None else self.train_size
                total += stage.epochs * images * self._flops[stage.name]
        return total if self.unit == "seconds" else total / (self.train_size * self.single_flops)

    def inference_flops_ratio(self) -> float:
        """Dense inference FLOPs of the ensemble relative to the single backbone (what the control matches)."""
        with torch.random.fork_rng(devices=[]):
            return inference_flops(self.ensemble, (1, *self.x.shape[1:])) / self.single_flops


def _holds_module(value: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, nn.Module) for v in value)
    if isinstance(value, dict):
        return any(isinstance(v, nn.Module) for v in value.values())
    return False


def equal_flops_width(
    raw: dict[str, Any], num_classes: int, ratio: float, image_shape=(3, 32, 32)
) -> tuple[float, float]:
    """The ``model.width`` of the single backbone whose inference FLOPs are ``ratio`` x those of ``raw``'s backbone.

    The FLOPs grow with the width (about quadratically for convolutional backbones), so the width is found by
    bisection on the meta device (no weights allocated); channel counts are rounded, so the FLOPs are a step
    function of the width and the bracket's end closer to the target wins.

    Returns:
        ``(width, achieved ratio)``.

    Raises:
        UserError: the backbone has no ``width`` option, or no width in range reaches the ratio.
    """
    from ensemblekit.config import MAX_WIDTH
    from ensemblekit.models import create_model

    model = dict(raw.get("model", {}))
    kwargs = dict(model.get("kwargs", {}))
    name = model.get("name", "resnet20")

    def flops(width: float | None) -> float:
        options = {**kwargs, **({} if width is None else {"width": width})}
        with torch.device("meta"):
            try:
                net = create_model(name, num_classes=num_classes, **options)
            except TypeError as exc:
                raise UserError(f"model {name} has no width option for an equal-FLOPs control: {exc}") from None
        return float(inference_flops(net, (1, *image_shape)))

    base = flops(model.get("width"))
    target = ratio * base
    lo, hi = 1.0 / 256, float(MAX_WIDTH)
    if not flops(lo) <= target <= flops(hi):
        raise UserError(f"no model.width of {name} in [{lo}, {hi}] has {ratio:.2f}x its inference FLOPs")
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if flops(mid) < target:
            lo = mid
        else:
            hi = mid
    width = min((lo, hi), key=lambda w: abs(flops(w) - target))
    return round(width, 4), flops(round(width, 4)) / base


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
