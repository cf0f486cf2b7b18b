"""The real CIFAR-10 copy beside the checkout (``../shared/data``), if present: found and counted, not decoded.

The full decode and the cached reload are timed by ``benchmarks/bench_data.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ensemblekit.data import check_data
from ensemblekit.data.cifar import CIFAR10, find_cifar
from ensemblekit.data.image_folder import scan_image_folder


def _real_root() -> Path | None:
    candidates = [Path(__file__).resolve().parents[2] / ".." / "shared" / "data"]
    if os.environ.get("ENSEMBLEKIT_REAL_DATA"):
        candidates.insert(0, Path(os.environ["ENSEMBLEKIT_REAL_DATA"]))
    for root in candidates:
        if (root / "cifar10-jpeg" / "train").is_dir():
            return root.resolve()
    return None


REAL = _real_root()
pytestmark = pytest.mark.skipif(REAL is None, reason="the real CIFAR-10 image folder is not available here")


def test_real_cifar10_is_found_and_counted():
    loc, _ = find_cifar(CIFAR10, REAL)
    assert loc is not None and loc.format == "image folder" and loc.path.name == "cifar10-jpeg"
    report = check_data(REAL)[0]
    assert report["found"] and report["format"] == "image folder"
    assert (report["train_images"], report["test_images"], report["classes"]) == (50_000, 10_000, 10)


def test_real_cifar10_class_order_is_official():
    scan = scan_image_folder(REAL / "cifar10-jpeg")
    assert scan.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert scan.files["train"][0].endswith("airplane/0000.jpg")
    assert scan.labels["test"].tolist().count(9) == 1000
