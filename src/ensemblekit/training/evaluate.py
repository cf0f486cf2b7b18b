"""Collect member probabilities over a whole split, gathered across DDP ranks in the original order."""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.data import BatchLoader, ImageTensors


def _member_logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    return out.unsqueeze(0) if out.dim() == 2 else out


@torch.no_grad()
def collect_member_probs(
    module: nn.Module,
    data: ImageTensors,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
    fabric=None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[M, N, C]`` (float32, CPU) of every member on every row of ``data``, and labels.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward passes under autocast; the softmax is taken in
    float32 either way.

    The module is put in eval mode and restored afterwards. With a multi-process ``fabric``, each rank scores
    its shard and the shards are gathered, de-duplicated and put back in the data's order, so every rank
    returns the whole split.
    """
    was_training = module.training
    module.eval()
    rank = fabric.global_rank if fabric is not None else 0
    world = fabric.world_size if fabric is not None else 1
    device = fabric.device if fabric is not None else next(module.parameters()).device
    loader = BatchLoader(
        data,
        batch_size,
        mean=mean,
        std=std,
        shuffle=False,
        augment=False,
        device=device,
        rank=rank,
        world_size=world,
    )
    probs, index = [], []
    try:
        for x, _, idx in loader.iter_with_index():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = _member_logits(module, x)
            probs.append(logits.float().softmax(dim=-1))
            index.append(idx.to(device))
    finally:
        module.train(was_training)
    p = torch.cat(probs, dim=1)
    i = torch.cat(index)
    if world > 1:
        gathered_p = fabric.all_gather(p)  # [W, M, n, C]
        gathered_i = fabric.all_gather(i)  # [W, n]
        p = gathered_p.permute(1, 0, 2, 3).reshape(p.shape[0], -1, p.shape[-1])
        i = gathered_i.reshape(-1)
    n = len(data.labels)
    out = torch.empty(p.shape[0], n, p.shape[-1], dtype=torch.float32)
    out[:, i.cpu()] = p.cpu()
    if torch.unique(i).numel() != n:
        raise RuntimeError(f"evaluation covered {torch.unique(i).numel()} of {n} rows")
    return out, data.labels.clone()
