"""``get_dataset``: what ``ensemblekit data get`` does, fetch and verify a data set without training.

A copy already under the data root (see :func:`~ensemblekit.data.cifar.find_cifar`) wins and is only
verified; otherwise the official archive is downloaded (with progress on stderr), checked against its MD5
sum, extracted, and every extracted file checked against its own sum. A data set is thus ready for training
when this returns, and nothing half-written is left behind when it fails.
"""

from __future__ import annotations

import os
from typing import Any

from ensemblekit.data import cifar
from ensemblekit.data.image_folder import scan_image_folder
from ensemblekit.data.paths import resolve_cache_dir, resolve_root
from ensemblekit.errors import UserError

GETTABLE = tuple(cifar.SPECS)


def get_dataset(name: str, root: str | os.PathLike[str] | None = None, *, progress: str = "auto") -> dict[str, Any]:
    """Make sure data set ``name`` is under the data root and intact, downloading it if it is missing.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: Data root (default :func:`~ensemblekit.data.paths.resolve_root`).
        progress: Download progress on stderr: ``"auto"``, ``"bar"``, ``"plain"`` or ``"quiet"``.

    Returns:
        ``{"dataset", "downloaded": bool, "url" (when downloaded), "archive" (when one was used), "location",
        "format" ("official" or "image folder"), "verified" (files checked against their MD5 sums), and for
        image folders "train_images", "test_images"}``.

    Raises:
        UserError: unknown name, failed download (one line with where to put the data by hand);
            ``ChecksumError`` when a file does not match its sum.
    """
    if name not in cifar.SPECS:
        raise UserError(f"cannot get data set {name!r}; choose one of {', '.join(GETTABLE)}")
    spec = cifar.SPECS[name]
    base = resolve_root(root)
    report: dict[str, Any] = {"dataset": name, "downloaded": False, "archive": None}
    loc, _ = cifar.find_cifar(spec, base)
    if loc is None or loc.format != "image folder":
        cifar.note_checksum_override()
    if loc is None:
        archive, url = cifar.download_archive(spec, base, progress=progress)
        loc = cifar.Location(archive, "archive")
        report.update(downloaded=True, url=url)
    if loc.format == "image folder":
        scan = scan_image_folder(loc.path.resolve())
        report.update(
            location=str(loc.path), format="image folder", verified=0,
            train_images=len(scan.files["train"]), test_images=len(scan.files["test"]),
        )  # fmt: skip
        return report
    folder = loc.path
    if loc.format == "archive":
        report["archive"] = str(loc.path)
        folder = cifar.extracted_folder(spec, loc.path, resolve_cache_dir(), verified=report["downloaded"])
    cifar.verify_official(spec, folder)
    report.update(location=str(folder), format="official", verified=len(spec.files) + (report["archive"] is not None))
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """What ``ensemblekit data get`` prints for a :func:`get_dataset` report."""
    name = report["dataset"]
    lines = [f"{name}: downloaded {report['url']} to {report['archive']} (MD5 ok)"] if report["downloaded"] else []
    ready = f"{name}: {'ready' if report['downloaded'] else 'already present, ready'} at {report['location']}"
    if report["format"] == "image folder":
        lines.append(
            f"{ready} (image folder, {report['train_images']} train / {report['test_images']} test images; "
            "image folders carry no checksums)"
        )
    else:
        lines.append(f"{ready} (official files; {report['verified']} files match their MD5 sums)")
    return lines
