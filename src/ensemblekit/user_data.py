"""Train on your own data from Python: torch Datasets, DataLoaders or tensors for train, val and test.

Example:
    >>> import ensemblekit
    >>> record = ensemblekit.fit(  # doctest: +SKIP
    ...     {"model": {"factory": "mypkg.nets:make_net"}, "method": {"name": "deep_ensemble", "members": 4}},
    ...     train=train_dataset, val=val_dataset, test=test_dataset, out="runs/mine",
    ... )

The run is the same as ``ensemblekit train``: the same engine, recipes, costs, metrics and run directory
(``metrics.json``, ``model.pt``); only the data come from Python. The data set is recorded as ``memory``:
such a run is loaded for prediction with :func:`ensemblekit.load` (``model.pt`` carries its classes and
normalisation), not re-evaluated from its config (the data are not on disk).

Images are held as ``uint8 [N, 3, H, W]``, as for every data set, and normalised per batch with the training
split's per-channel mean and std. Float images must be in ``[0, 1]`` (``ToTensor()`` output; not normalised)
and are quantised to 8 bits; PIL images are converted to RGB; 1-channel images are repeated to 3. All images
of a run must share one size, or are brought to ``image_size`` (scaled to cover, centre-cropped).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ensemblekit.config import Config, config_to_dict
from ensemblekit.data import DataBundle, ImageTensors
from ensemblekit.data.images import images_to_tensor
from ensemblekit.data.stats import channel_stats
from ensemblekit.errors import UserError, config_error
from ensemblekit.resolve import config_from_dict, load_config

MEMORY = "memory"
"""The data-set name recorded for data given from Python."""


def _image_batch(x: Any, size: tuple[int, int] | None, what: str) -> torch.Tensor:
    """``x`` (a tensor batch, one tensor image, a PIL image or a list of them) as ``uint8 [n, 3, H, W]``."""
    if isinstance(x, Image.Image):
        x = torch.from_numpy(np.array(x.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    if isinstance(x, (list, tuple)):
        return torch.cat([_image_batch(item, size, what) for item in x]) if x else torch.empty(0, 3, 1, 1)
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{what}: images must be tensors or PIL images, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.is_floating_point():
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 1.0)
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise UserError(
                f"{what}: float images must lie in [0, 1] (got {lo:.3g}..{hi:.3g}); give ToTensor() output, not "
                "normalised images: ensemblekit normalises with the training split's statistics"
            )
        x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    if x.dtype != torch.uint8:
        raise UserError(f"{what}: images must be uint8 or float in [0, 1], got {x.dtype}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"{what}: images must be [N, 3, H, W] or [N, 1, H, W], got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if size is not None and tuple(x.shape[2:]) != size:
        x = images_to_tensor(list(x), size)
    return x.contiguous()


def _labels(y: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(y)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise UserError(f"{what}: labels must be integer class indices, got {t.dtype}")
    return t.reshape(-1).to(torch.int64)


def _collect(source: Any, size: tuple[int, int] | None, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a DataLoader, a Dataset of ``(image, label)`` or an ``(images, labels)`` pair."""
    if isinstance(source, ImageTensors):
        return _image_batch(source.images, size, what), source.labels
    if isinstance(source, (tuple, list)) and len(source) == 2 and isinstance(source[0], torch.Tensor):
        return _image_batch(source[0], size, what), _labels(source[1], what)
    if isinstance(source, torch.utils.data.DataLoader):
        batches = list(source)
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        batches = [source[i] for i in range(len(source))]
    else:
        raise UserError(
            f"{what}: give a torch Dataset of (image, label), a DataLoader or an (images, labels) pair, "
            f"not a {type(source).__name__}"
        )
    images, labels = [], []
    for item in batches:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise UserError(f"{what}: every item must be (image, label), got a {type(item).__name__}")
        images.append(_image_batch(item[0], size, what))
        labels.append(_labels(item[1], what))
    if not images:
        raise UserError(f"{what} is empty")
    shapes = {tuple(x.shape[1:]) for x in images}
    if len(shapes) > 1:
        raise UserError(f"{what}: images differ in size ({sorted(shapes)[:2]}...); pass image_size=(H, W)")
    return torch.cat(images), torch.cat(labels)


def as_data_bundle(
    train: Any,
    test: Any,
    val: Any = None,
    classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
) -> DataBundle:
    """The :class:`~ensemblekit.data.DataBundle` of data given from Python (see the module docstring).

    Args:
        train: Training data: a Dataset of ``(image, label)``, a DataLoader or an ``(images, labels)`` pair.
        test: Test data, in any of these forms.
        val: Optional validation data (temperature-scaled NLL, early diagnostics).
        classes: Class names (default: the training data set's ``classes`` attribute, else ``"0".."K-1"``).
        image_size: ``(H, W)`` to bring every image to (default: all must share one size).

    Raises:
        UserError: for unsupported objects, float images outside ``[0, 1]``, mixed sizes, bad labels.
    """
    splits = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    tensors = {name: _collect(src, image_size, f"{name} data") for name, src in splits.items()}
    shapes = {name: tuple(x.shape[1:]) for name, (x, _) in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"the splits' images differ in size ({shapes}); pass image_size=(H, W)")
    if classes is None:
        classes = getattr(train, "classes", None) or getattr(getattr(train, "dataset", None), "classes", None)
    top = max(int(y.max()) for _, y in tensors.values() if y.numel()) + 1
    names = [str(c) for c in classes] if classes is not None else [str(k) for k in range(top)]
    for name, (_, y) in tensors.items():
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(names)):
            raise UserError(f"{name} data: labels must lie in 0..{len(names) - 1} (one per class name)")
    split = {name: ImageTensors(x, y, list(names)) for name, (x, y) in tensors.items()}
    mean, std = channel_stats(split["train"].images)
    source = "data given from Python (ensemblekit.fit)"
    bundle = DataBundle(
        MEMORY, split["train"], split.get("val"), split["test"], names, len(names), tuple(mean), tuple(std), source
    )
    return bundle


def _config(config: Config | dict | str | os.PathLike[str] | None, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        raw = config_to_dict(config)
    elif isinstance(config, dict):
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    else:
        raw = config_to_dict(load_config(config, overrides)) if config is not None or overrides else {}
        overrides = None
    data = dict(raw.get("data") or {})
    for key in ("train_size", "test_size", "val_size", "root", "classes", "image_size"):
        if data.get(key) not in (None, 0):
            raise config_error(f"data.{key}", "does not apply to data given from Python (pass the splits)")
    data["name"] = MEMORY
    raw["data"] = data
    if overrides:
        from ensemblekit.config import apply_overrides

        apply_overrides(raw, overrides)
    return config_from_dict(raw)


def fit(
    config: Config | dict | str | os.PathLike[str] | None = None,
    *,
    train: Any,
    test: Any,
    val: Any = None,
    out: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train and evaluate a run on data given from Python; return what ``metrics.json`` holds.

    Args:
        config: A :class:`~ensemblekit.config.Config`, a config dict, a YAML path, or ``None`` (defaults). Its
            ``data`` section keeps only the batching options (``batch_size``, ``eval_batch_size``, ``augment``).
        train: Training data (Dataset of ``(image, label)``, DataLoader, or ``(images, labels)``).
        test: Test data (metrics).
        val: Optional validation data.
        out: The run directory.
        classes: Class names (default: ``train.classes`` when the data set has them).
        image_size: ``(H, W)`` to resize to (scale to cover, centre-crop).
        overrides: ``key.sub=value`` overrides, as ``--set`` on the command line.
        resume: Continue from ``out``'s last checkpoint (give the same data).
        overwrite: Replace an existing run in ``out``.
        quiet: No progress output.
    """
    from ensemblekit.runs import train as run_training

    cfg = _config(config, overrides)
    bundle = as_data_bundle(train, test, val, classes, image_size)
    return run_training(cfg, Path(out), resume=resume, overwrite=overwrite, quiet=quiet, data=bundle)
