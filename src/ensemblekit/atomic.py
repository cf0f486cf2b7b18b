"""Atomic file writes: a crash or a full disk never leaves a truncated file behind.

A file is written to a temporary file in the same directory, flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX), and the directory is fsynced: a crash leaves either the old or the new file.
Every file ensemblekit writes into a run directory (configs, JSON records, checkpoints, models) goes through here.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ensemblekit.errors import UserError, one_line


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


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically (non-JSON numbers such as tensors' items as floats)."""
    text = json.dumps(data, indent=2, default=float) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
