"""Atomic, code-free checkpoints and RNG state capture.

Checkpoints are written to a temporary file in the same directory, flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX), and the directory is fsynced: a crash leaves either the old
or the new file, never a truncated one. They contain only tensors and plain Python values and are loaded
with ``torch.load(weights_only=True)``, so loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ensemblekit.errors import CheckpointError, UserError, first_line, one_line


def temp_name_pattern(name: str) -> str:
    """Glob pattern of the temporary files :func:`atomic_write_bytes` creates for ``name`` (orphans of a kill)."""
    return f".{name}.*.tmp"


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Write a file atomically: ``write(fileobj)`` fills a temp file that replaces ``path``.

    The file gets the permissions a plain ``open`` would give (``0o666`` less the umask), not ``mkstemp``'s
    ``0o600``.

    Raises:
        UserError: the write failed (disk full, quota, permissions); the previous file at ``path`` is kept.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, permissions: the user's to fix
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise UserError(f"cannot write {path}: {exc.strerror or one_line(exc, 120)}; {kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode a plain ``open`` (``0o666``) or ``mkdir`` (``0o777``) gives under the current umask.

    For files and folders made by ``mkstemp``/``mkdtemp`` (``0o600``/``0o700``) and then renamed into place.
    """
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically: serialised in memory first, so a failing write is a plain ``OSError``.

    (Writing straight to the file, torch reports a full disk as a ``RuntimeError`` that cannot be told apart
    from a serialisation bug.)
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors and plain values only) atomically with ``torch.save``."""
    atomic_torch_save(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing, truncated or foreign file is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dictionary")
    return state


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python, as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``capture_rng_state`` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
