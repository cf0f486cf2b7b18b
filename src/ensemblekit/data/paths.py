"""Where data and the decode cache live: argument, else environment variable, else a default."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ENSEMBLEKIT_DATA"
CACHE_ENV = "ENSEMBLEKIT_CACHE"


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$ENSEMBLEKIT_DATA``, else ``./data``.

    Args:
        root: Explicit data root (e.g. the config's ``data.root``), or ``None``.

    Returns:
        The absolute path (it need not exist).
    """
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV) or "data"
    return Path(root).expanduser().resolve()


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The decode-cache folder.

    Args:
        cache_dir: Explicit folder, or ``None`` for ``$ENSEMBLEKIT_CACHE``, else
            ``$XDG_CACHE_HOME/ensemblekit``, else ``~/.cache/ensemblekit``. The data root is not used
            because it may be read-only.

    Returns:
        The absolute path (it need not exist yet).
    """
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get(CACHE_ENV)
    if not cache_dir:
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(xdg) / "ensemblekit" if xdg else Path.home() / ".cache" / "ensemblekit"
    return Path(cache_dir).expanduser().resolve()
