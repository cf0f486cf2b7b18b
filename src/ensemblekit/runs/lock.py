"""One writer per run (or suite) directory: an advisory ``flock`` on ``DIR/.lock`` that names its holder.

``train`` (also with ``--resume``), ``grow``, ``evaluate`` and ``interpolate`` (they write result files) and
``bench`` (on the suite folder) hold the lock while they run. A second writer is refused at once, in one line
naming the holder's pid. The kernel drops the lock when its holder exits, however it exits (even SIGKILL),
so a stale ``.lock`` file never blocks anyone. Nested use in one process (``bench`` training its runs,
``evaluate`` calling helpers) is re-entrant.

On systems without ``fcntl`` (Windows) the lock is a no-op.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, run_lock(d, "train", create=True):
    ...     pass
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ensemblekit.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
"""The lock file inside a locked directory (left in place: removing it would race with a waiting writer)."""

_held: dict[str, tuple[int, int]] = {}  # resolved directory -> (fd, depth) for re-entrant use in one process


def lock_holder(directory: str | Path) -> str:
    """The pid written into ``directory``'s lock file (``"unknown"`` when unreadable)."""
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(
    directory: str | Path, action: str, *, create: bool = False, must_hold: str | None = "config.yaml"
) -> Iterator[None]:
    """Hold the writer lock of ``directory`` for the ``with`` block.

    Args:
        directory: The run or suite directory.
        action: What the caller does (``"train"``, ``"evaluate"``...), for the error message.
        create: Create a missing directory (``train``, ``bench``); otherwise a missing one is refused.
        must_hold: Without ``create``: a file the directory must hold (a run's ``config.yaml``), so that no
            lock file is left in a folder that is not a run.

    Raises:
        UserError: another process holds the lock, or the path is missing or not a directory.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UserError(f"{'output path' if create else 'run directory'} is not a directory: {path}")
    if not create and not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not create and must_hold is not None and not (path / must_hold).is_file():
        raise UserError(f"{path} is not a run directory (no {must_hold})")
    if fcntl is None:
        yield
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {path}: {exc.strerror or exc}") from None
    key = str(path.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(
            f"{path} is in use: another ensemblekit process (pid {lock_holder(path)}) is writing to it; "
            f"wait for it to finish or stop it before you {action}"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = (fd, 1)
        yield
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
