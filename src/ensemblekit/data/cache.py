"""On-disk cache of decoded images, so that an image folder is decoded once.

An entry is a folder ``<cache_dir>/decoded/<name>-<key>/`` holding one ``.npy`` file per array and a
``meta.json`` written last. The key hashes the source path and a fingerprint of its files (count, total
size, latest mtime, names), so any change to the folder selects a new entry; older entries for the same
source are then removed. Entries are written into a temporary folder and renamed into place, so a
reader never sees half an entry. A cache that cannot be written only costs a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ensemblekit.atomic import umask_mode

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class DecodeCache:
    """Decoded arrays keyed by (source path, fingerprint).

    Args:
        cache_dir: Root of the cache (see :func:`ensemblekit.data.paths.resolve_cache_dir`).
    """

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "decoded"

    def entry_dir(self, source: Path, fingerprint: str) -> Path:
        """The folder of the entry for ``source`` with ``fingerprint``."""
        key = hashlib.sha256(
            f"{CACHE_VERSION}\0{source}\0{fingerprint}".encode("utf-8", "surrogateescape")
        ).hexdigest()[:20]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name) or "data"
        return self.root / f"{slug}-{key}"

    def load(self, source: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or ``None`` on a miss (or an unreadable entry)."""
        entry = self.entry_dir(source, fingerprint)
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") != fingerprint:
                return None
            return {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable decode cache entry %s: %s", entry, e)
            return None

    def save(self, source: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> Path | None:
        """Store ``arrays`` atomically; returns the entry folder, or ``None`` if the cache is not writable."""
        entry = self.entry_dir(source, fingerprint)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{entry.name}.tmp-"))
        except OSError as e:
            log.warning("decode cache %s is not writable (%s); data will be decoded again next time", self.root, e)
            return None
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            meta = {"source": str(source), "fingerprint": fingerprint, "arrays": list(arrays)}
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.chmod(tmp, umask_mode(directory=True))  # mkdtemp made it 0o700: the umask decides, as for mkdir
            self._replace(tmp, entry)
        except OSError as e:
            log.warning("could not write decode cache entry %s: %s", entry, e)
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune(source, keep=entry)
        return entry

    @staticmethod
    def _replace(tmp: Path, entry: Path) -> None:
        if entry.exists():  # an unreadable entry with the same key: swap it out, then delete it
            trash = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.old-"))
            os.replace(entry, trash / "entry")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, entry)

    def _prune(self, source: Path, keep: Path) -> None:
        """Remove entries of ``source`` other than ``keep`` (they describe an older state of the folder)."""
        for meta_path in self.root.glob("*/meta.json"):
            entry = meta_path.parent
            if entry == keep:
                continue
            try:
                if json.loads(meta_path.read_text()).get("source") == str(source):
                    shutil.rmtree(entry, ignore_errors=True)
            except (OSError, ValueError):
                continue
