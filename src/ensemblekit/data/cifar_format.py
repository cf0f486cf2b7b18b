"""Readers for the official CIFAR-10/100 "python version" files (pickled dicts of numpy arrays).

Each batch file holds ``data``: ``uint8 [n, 3072]`` (1024 red, 1024 green, 1024 blue values per image,
row-major) and a label list (``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100). The meta file
holds the class names (``label_names`` / ``fine_label_names``). Files are loaded with the restricted
unpickler of :mod:`ensemblekit.data.safe_pickle`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ensemblekit.data.safe_pickle import load_pickle
from ensemblekit.errors import UserError


def _as_str(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _load_dict(path: Path) -> dict[str, Any]:
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not in the CIFAR python format: expected a dict, got {type(obj).__name__}")
    return {_as_str(key): value for key, value in obj.items()}


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file.

    Args:
        path: The batch file (e.g. ``data_batch_1`` or ``train``).
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Returns:
        ``(images uint8 [n, 3, 32, 32], labels int64 [n])``.

    Raises:
        UserError: if the file does not hold the expected keys, types or shapes.
    """
    batch = _load_dict(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path} is not in the CIFAR python format: 'data' must be a uint8 [n, 3072] array")
    if labels is None or len(labels) != data.shape[0]:
        raise UserError(f"{path} is not in the CIFAR python format: {label_key!r} must hold one label per image")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_label_names(path: Path, key: str) -> list[str]:
    """Read the class names from a meta file (``batches.meta`` or ``meta``) under ``key``."""
    names = _load_dict(path).get(key)
    if not isinstance(names, list) or not names:
        raise UserError(f"{path} is not a CIFAR meta file: {key!r} must be a list of class names")
    return [str(_as_str(name)) for name in names]
