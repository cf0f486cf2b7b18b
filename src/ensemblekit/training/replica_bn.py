"""BatchNorm statistics per data-parallel replica, emulated on one device ("ghost" batches).

Papers trained on several devices without synchronised BatchNorm normalise every device's share of the batch with that
share's own statistics: MixtureEnsembles' CIFAR recipe is a batch of 128 over 2 GPUs (BN batch 64; its appendix,
docs/methods/mixture.md); uncertainty-baselines' BatchEnsemble runs 16 unique images tiled 4 times (64 rows) on each of
8 TPU cores (Wen, Tran & Ba, ICLR 2020; docs/methods/batch_ensemble.md). ``train.replica_batch_size: b`` reproduces that
on one process: in training mode every BatchNorm splits its batch into replicas of b images and normalises each replica
with its own mean and variance,

    y = γ·(x − μ_r)/√(σ²_r + ε) + β  for the rows x of replica r,

and only replica 0 updates the running statistics (as DDP keeps rank 0's buffers and broadcasts them). A tiled
batch (``tile`` > 1: rows ``[t·B + j]`` are copy t of image j, BatchEnsemble's layout) keeps every image's copies in
one replica, so a replica holds ``tile·b`` rows as on a TPU core. Evaluation (running statistics) is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

_BatchNorm = nn.modules.batchnorm._BatchNorm


class ReplicaBatchNormForward:
    """The training-mode forward of one BatchNorm that normalises each replica of ``images`` images separately.

    Args:
        bn: The BatchNorm module (any subclass; its own ``forward`` computes each replica).
        images: b, images per replica.
        tile: Copies of every image in the batch (rows ``[t·B + j]``), kept in the same replica.
    """

    def __init__(self, bn: nn.Module, images: int, tile: int = 1) -> None:
        self.bn, self.images, self.tile = bn, images, tile
        self.base = type(bn).forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bn, b, tile = self.bn, self.images, self.tile
        n = x.shape[0]
        if not bn.training or n % tile or n // tile <= b:
            return self.base(bn, x)
        grouped = x.unflatten(0, (tile, n // tile))
        outs = []
        for r, start in enumerate(range(0, n // tile, b)):
            part = grouped[:, start : start + b].flatten(0, 1)
            if r == 0:
                out = self.base(bn, part)
            else:  # statistics updates go to throw-away copies (the originals stay as autograd saved them)
                kept = dict(bn._buffers)
                bn._buffers.update({k: v.clone() for k, v in kept.items() if v is not None})
                try:
                    out = self.base(bn, part)
                finally:
                    bn._buffers.update(kept)
            outs.append(out.unflatten(0, (tile, -1)))
        return torch.cat(outs, dim=1).flatten(0, 1)


def use_replica_batchnorm(module: nn.Module, images: int, tile: int = 1) -> int:
    """Make every BatchNorm of ``module`` normalise replicas of ``images`` images in training mode; returns how many.

    BatchNorms are the ``_BatchNorm`` subclasses and modules whose class sets ``uses_batch_statistics = True``
    (BatchEnsemble's per-member BN).

    Idempotent (a BatchNorm already set up is re-set with the new values). The parameters, buffers and
    ``state_dict`` are unchanged.
    """
    if images < 1 or tile < 1:
        raise ValueError(f"images and tile must be >= 1, got {images}, {tile}")
    count = 0
    for bn in module.modules():
        if isinstance(bn, _BatchNorm) or getattr(type(bn), "uses_batch_statistics", False):
            bn.forward = ReplicaBatchNormForward(bn, images, tile)
            count += 1
    return count
