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

from ensemblekit.data.augment import augment_batch, normalize
from ensemblekit.data.tensors import ImageTensors


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
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None
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

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cpu":
            return self.data.images, self.data.labels
        if self._on_device is None:
            self._on_device = (self.data.images.to(self.device), self.data.labels.to(self.device))
        return self._on_device

    def iter_with_index(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x float32 [B, 3, H, W], y int64 [B], idx int64 [B])``, all on ``device``.

        ``idx`` holds the row numbers in ``data``; padded evaluation rows repeat the last row number.
        """
        images, labels = self._tensors()
        shard = self.shard()
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1, self.rank))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = shard[start : start + self.batch_size].to(self.device)
            batch = images[idx]
            if self.augment:
                x = augment_batch(batch, self.mean, self.std, generator, self.crop_padding, self.flip)
            else:
                x = normalize(batch, self.mean, self.std)
            yield x, labels[idx], idx

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.iter_with_index():
            yield x, y
