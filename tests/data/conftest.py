"""Fixtures for the data tests: isolated data/cache folders, generated CIFAR files, PNG folders, an HTTP server."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemblekit.data import cifar
from tests.data.cifar_files import write_cifar


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Point the data root and the decode cache at empty temporary folders for every test."""
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(tmp_path / "data-root"))
    monkeypatch.setenv("ENSEMBLEKIT_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def make_cifar(monkeypatch):
    """Write small files in the official CIFAR python format and register their MD5 sums.

    ``make_cifar(root, variant="cifar10", per_class=2, archive=False, register=True)`` writes the official
    folder (``per_class`` images per class per batch), or, with ``archive=True``, only the ``.tar.gz``. It
    returns ``{"train": (images, labels), "test": (images, labels), "classes": [...], "folder": Path,
    "md5": {path relative to root: sum}}``; ``register=False`` leaves the official sums in place.
    """

    def make(root: Path, variant: str = "cifar10", per_class: int = 2, archive: bool = False, register=True) -> dict:
        out, sums = write_cifar(root, variant, per_class, archive)
        if register:
            for key, value in sums.items():
                monkeypatch.setitem(cifar.MD5, key, value)
        return {**out, "md5": sums}

    return make


@pytest.fixture
def make_png_folder():
    """Write ``<root>/{train,test}/<class>/NNNN.png`` with random pixels; returns the pixels per split.

    ``make_png_folder(root, classes, per_class={"train": 3, "test": 2}, size=(8, 6))`` returns
    ``{split: (uint8 [N, 3, H, W], labels [N])}`` in the loader's order (class by class, file name order).
    """

    def make(root: Path, classes: list[str], per_class: dict[str, int] | None = None, size=(8, 6)) -> dict:
        per_class = per_class or {"train": 3, "test": 2}
        rng = np.random.default_rng(7)
        out = {}
        for split, count in per_class.items():
            images, labels = [], []
            for label, name in enumerate(sorted(classes)):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                for j in range(count):
                    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / split / name / f"{j:04d}.png")
                    images.append(pixels.transpose(2, 0, 1))
                    labels.append(label)
            out[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
        return out

    return make


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serve a temporary folder on 127.0.0.1; yields ``(folder, base_url)``."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
