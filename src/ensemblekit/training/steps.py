"""The pieces of a training step that the engine's loop and the packed-members loop share.

The divergence guard (how often the loss is checked, and the error that stops a diverged run), Ctrl-C, the
running accuracy of a batch without a device sync, and the training FLOPs a stage is charged per image.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ensemblekit.errors import UserError
from ensemblekit.training.checkpoint import capture_rng_state, restore_rng_state
from ensemblekit.training.stage import Stage

FINITE_CHECK_EVERY = 50
"""On accelerators, steps between checks that the running loss is finite (each check syncs the device)."""


def checks_loss_every_step(device: torch.device) -> bool:
    """Whether the engine checks every step's loss (CPU) or every ``FINITE_CHECK_EVERY`` steps (no device syncs)."""
    return device.type == "cpu"


class NonFiniteLossError(UserError):
    """The loss became NaN, infinite or larger than ``train.max_loss``; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; the message says how to resume."""


def batch_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Correct predictions in a training batch (as a tensor, no device sync) and the batch's rows.

    Logits ``[B, C]``: top-1 hits. Member logits ``[M, B, C]`` with shared targets ``[B]``: hits of the
    ensemble's mean probability. With per-member targets ``[M, B]`` (MIMO slots): the members' mean hits, since
    no single ensemble prediction belongs to a row.
    """
    if y.dim() == 2 and logits.dim() == 3 and logits.shape[:2] == y.shape:
        return (logits.argmax(-1) == y).double().mean(0).sum(), y.shape[1]
    pred = (logits.float().softmax(-1).mean(0) if logits.dim() == 3 else logits).argmax(-1)
    target = y if y.dim() == 1 else y[0]
    hits = (pred == target).sum() if pred.shape == target.shape else torch.zeros((), device=logits.device)
    return hits, len(target)


def measure_stage_flops(stage: Stage, x: torch.Tensor, y: torch.Tensor) -> float:
    """Training FLOPs of ``stage`` per unique image, in forward units: the engine charges 3x this per image.

    Measured in eval mode on the first two images of ``x``, without side effects on the module's mode or on any
    RNG: the forward FLOPs f of the stage module on the prepared batch (after ``prepare_batch``: BatchEnsemble's
    tiling, MIMO's slots), plus the FLOPs p of ``prepare_batch`` itself (a teacher's forward in distillation),
    which runs forward only, so the charge per image is 3f + p = 3 (f + p/3). ``stage.flops_per_image`` wins
    when set.
    """
    if stage.flops_per_image is not None:
        return float(stage.flops_per_image)
    rng = capture_rng_state()
    module = stage.module
    was_training = module.training
    module.eval()
    try:
        xs, ys = x[:2], y[:2]
        prepare = 0.0
        if stage.prepare_batch is not None:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                xs, ys = stage.prepare_batch(xs, ys)
            prepare = counter.get_total_flops()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(xs)
        return (counter.get_total_flops() + prepare / 3.0) / min(2, len(x))
    finally:
        module.train(was_training)
        restore_rng_state(rng)
