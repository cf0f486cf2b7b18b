"""``check_data``: what ``ensemblekit data check`` reports for each built-in data set, without decoding.

Image folders are only listed (``os.scandir``); official files are MD5-checked (which reads them, but
does not unpickle them); image counts of verified official files are the published ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ensemblekit.data import cifar
from ensemblekit.data.cifar import CifarSpec, find_cifar
from ensemblekit.data.download import md5_file
from ensemblekit.data.image_folder import scan_image_folder
from ensemblekit.data.paths import resolve_root
from ensemblekit.data.synthetic import DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE
from ensemblekit.errors import UserError


def _checksum(files: list[tuple[Path, str]]) -> str:
    for path, key in files:
        if not path.is_file():
            return f"missing: {path.name}"
        if md5_file(path) != cifar.expected_md5(key):
            return f"mismatch: {path.name}"
    return "ok"


def _check_cifar(spec: CifarSpec, root: Path) -> dict[str, Any]:
    empty = dict.fromkeys(("location", "format", "train_images", "test_images", "classes"))
    report: dict[str, Any] = {"dataset": spec.name, "found": False, **empty, "checksum": "n/a"}
    loc, looked = find_cifar(spec, root)
    if loc is None:
        report["location"] = "looked at: " + ", ".join(str(p) for p in looked)
        return report
    report.update(
        found=True, location=str(loc.path), format="image folder" if loc.format == "image folder" else "official"
    )
    if loc.format == "image folder":
        try:
            scan = scan_image_folder(loc.path.resolve())
        except UserError as e:
            report["checksum"] = f"unreadable: {e}"
            return report
        report.update(
            train_images=len(scan.files["train"]), test_images=len(scan.files["test"]), classes=len(scan.classes)
        )
        return report
    if loc.format == "archive":
        report["checksum"] = _checksum([(loc.path, spec.archive)])
    else:
        report["checksum"] = _checksum([(loc.path / name, f"{spec.folder}/{name}") for name in spec.files])
    if report["checksum"] == "ok":
        report.update(train_images=spec.train_images, test_images=spec.test_images, classes=spec.num_classes)
    return report


def check_data(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Report, for ``cifar10``, ``cifar100`` and ``synthetic``, where each was found and what it holds.

    Args:
        root: Data root (default :func:`~ensemblekit.data.paths.resolve_root`).

    Returns:
        One dict per data set with keys ``dataset``, ``found``, ``location`` (the path, or the paths looked
        at), ``format`` ("official" / "image folder" / "generated"), ``train_images``, ``test_images``,
        ``classes`` and ``checksum`` ("ok", "mismatch: <file>", "missing: <file>" or "n/a").
    """
    base = resolve_root(root)
    reports = [_check_cifar(spec, base) for spec in (cifar.CIFAR10, cifar.CIFAR100)]
    reports.append({"dataset": "synthetic", "found": True, "location": "generated", "format": "generated",
                    "train_images": DEFAULT_TRAIN_SIZE, "test_images": DEFAULT_TEST_SIZE, "classes": 10,
                    "checksum": "n/a"})  # fmt: skip
    return reports
