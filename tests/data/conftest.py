"""Fixtures for the data tests: isolated data/cache folders, generated CIFAR files, PNG folders, an HTTP server."""

from __future__ import annotations

import functools
import hashlib
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemblekit.data import cifar

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Point the data root and the decode cache at empty temporary folders for every test."""
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(tmp_path / "data-root"))
    monkeypatch.setenv("ENSEMBLEKIT_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # protocol 2, like the official (Python 2) files


@pytest.fixture
def make_cifar(monkeypatch):
    """Write small files in the official CIFAR python format and register their MD5 sums.

    ``make_cifar(root, variant="cifar10", per_class=2, archive=False)`` writes the official folder
    (``per_class`` images per class per batch), or, with ``archive=True``, only the ``.tar.gz``. It
    returns ``{"train": (images, labels), "test": (images, labels), "classes": [...], "folder": Path}``.
    """

    def make(root: Path, variant: str = "cifar10", per_class: int = 2, archive: bool = False) -> dict:
        spec = cifar.SPECS[variant]
        classes = CIFAR10_CLASSES if variant == "cifar10" else [f"class{k:03d}" for k in range(100)]
        rng = np.random.default_rng(len(classes))
        folder = root / spec.folder
        folder.mkdir(parents=True)
        out: dict = {"classes": classes, "folder": folder}
        label_key = spec.label_key.encode()
        for split, files in (("train", spec.train_files), ("test", spec.test_files)):
            images, labels = [], []
            for i, name in enumerate(files):
                n = per_class * len(classes)
                data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
                batch_labels = [int(v) for v in rng.permutation(np.arange(n) % len(classes))]
                batch = {b"batch_label": f"{split} batch {i}".encode(), label_key: batch_labels, b"data": data,
                         b"filenames": [f"img_{j}.png".encode() for j in range(n)]}  # fmt: skip
                if variant == "cifar100":
                    batch[b"coarse_labels"] = [v // 5 for v in batch_labels]
                _write_pickle(folder / name, batch)
                images.append(data.reshape(-1, 3, 32, 32))
                labels.extend(batch_labels)
            out[split] = (np.concatenate(images), np.asarray(labels, dtype=np.int64))
        meta = {spec.names_key.encode(): [c.encode() for c in classes], b"num_vis": 3072}
        _write_pickle(folder / spec.meta_file, meta)
        for name in spec.files:
            monkeypatch.setitem(cifar.MD5, f"{spec.folder}/{name}", _md5(folder / name))
        if archive:
            with tarfile.open(root / spec.archive, "w:gz") as tar:
                tar.add(folder, arcname=spec.folder)
            monkeypatch.setitem(cifar.MD5, spec.archive, _md5(root / spec.archive))
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
        return out

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
