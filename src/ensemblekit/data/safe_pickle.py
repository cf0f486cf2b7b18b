"""A restricted unpickler for the official CIFAR "python version" files.

The official files are pickles of dicts holding numpy arrays, lists, ints and byte strings. A plain
``pickle.load`` would run any callable a file names (``os.system`` included), so this unpickler
resolves only the few globals that numpy arrays need and refuses everything else.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ensemblekit.errors import UserError

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, limited to latin-1."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return codecs.encode(obj, "latin1", errors)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_module, "scalar")] = _multiarray.scalar


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` allows only numpy array reconstruction and latin-1 bytes."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if it is on the allow-list, else refuse."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is not allowed") from None


def load_pickle(path: Path) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (Python 2 strings decoded as bytes).

    Args:
        path: The file.

    Returns:
        The unpickled object.

    Raises:
        UserError: if the file is not a pickle or references anything outside the allow-list.
    """
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"refusing to load {path}: not a plain CIFAR pickle ({e})") from None
