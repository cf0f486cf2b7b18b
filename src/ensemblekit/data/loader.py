"""``BatchLoader``: batches of normalised (and optionally augmented) tensors straight from memory.

There are no worker processes and no per-image Python code: a batch is one index into the ``uint8``
tensor, one vectorised augmentation and one normalisation. Everything random in epoch ``e`` (the order
and the augmentation) derives from ``(seed, e)`` alone, so resuming needs only the epoch number, and
two loaders with the same seed and epoch yield bitwise identical batches.

Sharding for data-parallel runs (``world_size > 1``):

* training (``shuffle=True``): every rank draws the same permutation of the epoch and takes every
  ``world_size``-th element starting at ``rank``, after dropping the remainder, so the shards are
  disjoint and of equal length;
* evaluation (``shuffle=False``): rows are padded to a multiple of ``world_size`` by repeating the last
  row, and rank ``r`` takes the ``r``-th contiguous chunk. :meth:`BatchLoader.iter_with_index` yields
  the row numbers, so the gathered results can be de-duplicated and put back in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ensemblekit.data.augment import crop_flip, crop_flip_params, normalization_constants, normalize
from ensemblekit.data.tensors import ImageTensors

PADDING = 4
"""Zero padding of the random crop (He et al., 2016: pad 4, crop 32x32)."""


def device_tensors(data: ImageTensors, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``data``'s images and labels on ``device``, copied there once per split and device (kept on ``data``)."""
    if device.type == "cpu":
        return data.images, data.labels
    copies = data.__dict__.setdefault("_device_copies", {})
    key = str(device)
    if key not in copies:
        copies[key] = (data.images.to(device), data.labels.to(device))
    return copies[key]


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; on CUDA through pinned memory without blocking the host."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def epoch_seed(seed: int, epoch: int, *stream: int) -> int:
    """A 63-bit torch seed that is a pure function of ``(seed, epoch, *stream)``."""
    words = np.random.SeedSequence([seed, epoch, *stream]).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & (2**63 - 1)


class BatchLoader:
    """Iterate over ``(x, y)`` batches of an in-memory split.

    Args:
        data: The split to serve.
        batch_size: Images per batch (per rank).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        shuffle: Shuffle every epoch (training); otherwise keep row order (evaluation).
        augment: Apply random crop and flip (see :func:`~ensemblekit.data.augment.augment_batch`).
        seed: Non-negative seed; order and augmentation of epoch ``e`` depend only on ``(seed, e)``
            (augmentation also on ``rank``).
        drop_last: Drop the last incomplete batch.
        device: Where batches go. On an accelerator the whole split is copied there once, on first use.
        rank: This process's rank.
        world_size: Number of processes sharing the data.
        indices: Optional row numbers of ``data`` to serve instead of all rows (repeats allowed, as
            in a bootstrap sample).
        crop_padding: Zero padding of the random crop (0: no crop; ``data.crop_padding``).
        flip: Random horizontal flips (``data.flip``).

    Attributes:
        num_samples: Images this rank yields per epoch (after sharding, padding and ``drop_last``).
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool,
        augment: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        indices: torch.Tensor | None = None,
        crop_padding: int = 4,
        flip: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        rows = torch.arange(len(data)) if indices is None else torch.as_tensor(indices, dtype=torch.int64).cpu()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(data)):
            raise ValueError(f"indices must lie in [0, {len(data)})")
        self.data = data
        self.rows = rows
        self.batch_size = batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.crop_padding, self.flip = crop_padding, flip
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._constants: tuple[torch.Tensor, torch.Tensor] | None = None
        total = rows.numel()
        self._shard_len = total // world_size if shuffle else -(-total // world_size)
        self.num_samples = len(self) * batch_size if drop_last else self._shard_len

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self._shard_len // self.batch_size
        return -(-self._shard_len // self.batch_size)

    def shard(self) -> torch.Tensor:
        """Row numbers of ``data`` that this rank yields in the current epoch, in order (CPU int64)."""
        rows, world, rank = self.rows, self.world_size, self.rank
        if self.shuffle:
            order = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 0))
            rows = rows[torch.randperm(rows.numel(), generator=order)]
            return rows[rank : self._shard_len * world : world]
        if rows.numel() and rows.numel() < self._shard_len * world:
            rows = torch.cat([rows, rows[-1:].expand(self._shard_len * world - rows.numel())])
        return rows[rank * self._shard_len : (rank + 1) * self._shard_len]

    def epoch_plan(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """The epoch's rows (:meth:`shard`) and, with ``augment``, its crop offsets and flips (CPU tensors).

        The crop/flip parameters are drawn batch by batch, in order, from one CPU generator seeded by
        ``(seed, epoch, 1, rank)``, so they are the same on every device and a pure function of the epoch.
        """
        shard = self.shard()
        if not self.augment:
            return shard, None
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1, self.rank))
        stop = min(len(self) * self.batch_size, shard.numel())
        draws = [
            crop_flip_params(min(self.batch_size, stop - start), self.crop_padding, self.flip, generator)
            for start in range(0, stop, self.batch_size)
        ]
        if not draws:
            empty = torch.zeros(0, dtype=torch.int64)
            return shard, (empty, empty, torch.zeros(0, dtype=torch.bool))
        rows, cols, flips = (torch.cat(parts) for parts in zip(*draws, strict=True))
        return shard, (rows, cols, flips)

    def iter_with_index(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x float32 [B, 3, H, W], y int64 [B], idx int64 [B])``, all on ``device``.

        ``idx`` holds the row numbers in ``data``; padded evaluation rows repeat the last row number. On an
        accelerator the split is copied once (:func:`device_tensors`) and the epoch's rows and augmentation once
        per epoch, so a batch costs no host-device copy and no synchronisation.
        """
        images, labels = device_tensors(self.data, self.device)
        if self._constants is None:
            self._constants = normalization_constants(self.mean, self.std, self.device)
        shard, crops = self.epoch_plan()
        shard = to_device_async(shard, self.device)
        if crops is not None:
            crops = tuple(to_device_async(t, self.device) for t in crops)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = shard[start : start + self.batch_size]
            batch = images[idx]
            if crops is not None:
                window = slice(start, start + len(idx))
                batch = crop_flip(batch, self.crop_padding, crops[0][window], crops[1][window], crops[2][window])
            yield normalize(batch, self.mean, self.std, self._constants), labels[idx], idx

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.iter_with_index():
            yield x, y
