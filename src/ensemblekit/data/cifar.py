"""CIFAR-10 and CIFAR-100: finding them under a data root, downloading, verifying and loading them.

Under the data root, ``cifar10`` is looked for as (in this order) the official folder
``cifar-10-batches-py/``, the official archive ``cifar-10-python.tar.gz`` (extracted beside itself, or
into the cache when the root is read-only), then an image folder ``cifar10-jpeg/`` or ``cifar10/``;
``cifar100`` likewise as ``cifar-100-python/``, ``cifar-100-python.tar.gz`` or ``cifar100/``. A root that
is itself one of these folders also works. Every official file is checked against :data:`MD5` (the
sums torchvision uses) before it is read. ``download=True`` fetches the archive from :func:`base_url`
(:data:`OFFICIAL_URL`, or the mirror named by ``$ENSEMBLEKIT_CIFAR_MIRROR``), with a progress bar on stderr.

``$ENSEMBLEKIT_CHECKSUMS`` may name a file in ``md5sum`` format (``<md5>  <path relative to the data root>``)
whose sums replace the official ones for the files it lists: for a private repack, and for tests and demos
that serve a generated archive. It never applies to a download from the official address, and a note on
stderr says whenever it is used.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ensemblekit.data.cifar_format import read_batch, read_label_names
from ensemblekit.data.download import DownloadError, download_file, extract_archive, verify_md5
from ensemblekit.data.image_folder import load_image_folder
from ensemblekit.data.stats import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ensemblekit.data.tensors import ImageTensors
from ensemblekit.errors import DataNotFoundError, UserError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/"
BASE_URL = OFFICIAL_URL
"""Where archives are fetched from when ``$ENSEMBLEKIT_CIFAR_MIRROR`` is unset (tests may replace it)."""
MIRROR_ENV = "ENSEMBLEKIT_CIFAR_MIRROR"
CHECKSUMS_ENV = "ENSEMBLEKIT_CHECKSUMS"

#: Official MD5 sums, keyed by path relative to the data root (tests replace entries for generated files).
MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}

_SUM_LINE = re.compile(r"([0-9a-fA-F]{32}) [ *]?(\S.*)")


def base_url() -> str:
    """The address archives are fetched from: ``$ENSEMBLEKIT_CIFAR_MIRROR`` if set, else :data:`BASE_URL`."""
    return os.environ.get(MIRROR_ENV) or BASE_URL


def _is_official(url: str) -> bool:
    return url.rstrip("/") == OFFICIAL_URL.rstrip("/")


def read_checksums(path: Path) -> dict[str, str]:
    """Parse an ``md5sum``-format file whose entries replace official sums.

    Raises:
        UserError: if the file is unreadable, a line is malformed or names a file that has no official sum.
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{CHECKSUMS_ENV}: cannot read {path}: {e}") from None
    sums = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SUM_LINE.fullmatch(line.strip())
        if match is None:
            raise UserError(
                f"{CHECKSUMS_ENV}: {path} line {number}: expected '<md5> <file>' (md5sum format), got {line[:60]!r}"
            )
        key = match.group(2).strip().removeprefix("./")
        if key not in MD5:
            raise UserError(f"{CHECKSUMS_ENV}: {path} line {number}: {key!r} is not a CIFAR file (see docs/data.md)")
        sums[key] = match.group(1).lower()
    return sums


def expected_md5(key: str, *, allow_override: bool = True) -> str:
    """The MD5 sum ``key`` (a path relative to the data root) must have.

    Args:
        key: An entry of :data:`MD5`.
        allow_override: Whether ``$ENSEMBLEKIT_CHECKSUMS`` may replace the official sum (not for downloads
            from :data:`OFFICIAL_URL`).

    Returns:
        The sum from ``$ENSEMBLEKIT_CHECKSUMS`` when it lists ``key``, else the official one.
    """
    override = os.environ.get(CHECKSUMS_ENV)
    if allow_override and override:
        sums = read_checksums(Path(override).expanduser())
        if key in sums:
            return sums[key]
    return MD5[key]


def note_checksum_override() -> str:
    """Say on stderr that ``$ENSEMBLEKIT_CHECKSUMS`` is in effect (even when quiet: it is not progress).

    Returns:
        ``"; checked against the sums in <file>"`` for a data source description, or ``""`` when unset.
    """
    override = os.environ.get(CHECKSUMS_ENV)
    if not override:
        return ""
    print(
        f"note: CIFAR files are checked against the sums in {override} ({CHECKSUMS_ENV}) where it lists them, "
        "not the official ones",
        file=sys.stderr,
        flush=True,
    )
    return f"; checked against the sums in {override}"


@dataclass(frozen=True)
class CifarSpec:
    """Where and how one CIFAR variant is stored."""

    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    image_folders: tuple[str, ...]
    num_classes: int
    train_images: int
    test_images: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the official folder."""
        return (self.meta_file, *self.train_files, *self.test_files)

    @property
    def url(self) -> str:
        """Download address of the archive (reads :func:`base_url` at call time)."""
        return base_url().rstrip("/") + "/" + self.archive


CIFAR10 = CifarSpec(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", "labels", "label_names",
    ("cifar10-jpeg", "cifar10"), 10, 50_000, 10_000, CIFAR10_MEAN, CIFAR10_STD,
)  # fmt: skip
CIFAR100 = CifarSpec(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
    ("train",), ("test",), "meta", "fine_labels", "fine_label_names",
    ("cifar100",), 100, 50_000, 10_000, CIFAR100_MEAN, CIFAR100_STD,
)  # fmt: skip
SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


@dataclass(frozen=True)
class Location:
    """A place where a data set was found: ``format`` is "official", "archive" or "image folder"."""

    path: Path
    format: str


def find_cifar(spec: CifarSpec, root: Path) -> tuple[Location | None, list[Path]]:
    """Look for ``spec`` under ``root`` without reading any data.

    Returns:
        ``(the first location found or None, every path looked at, in order)``.
    """
    candidates = [Location(root / spec.folder, "official"), Location(root / spec.archive, "archive")]
    candidates += [Location(root / name, "image folder") for name in spec.image_folders]
    candidates += [Location(root, "official"), Location(root, "image folder")]
    looked: list[Path] = []
    for loc in candidates:
        if loc.path == root:  # the root itself is a data set folder
            if loc.format == "official" and (root / spec.meta_file).is_file():
                return loc, looked
            if loc.format == "image folder" and root.name in spec.image_folders and (root / "train").is_dir():
                return loc, looked
            continue
        looked.append(loc.path)
        present = loc.path.is_file() if loc.format == "archive" else loc.path.is_dir()
        if present:
            return loc, looked
    return None, looked


def not_found_message(spec: CifarSpec, root: Path, looked: list[Path]) -> str:
    """The one-line error for a data set that is nowhere to be found under ``root``.

    The places looked at are named relative to ``root`` so that the line stays short enough to read whole.
    """
    names = []
    for path in looked:
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        names.append(name if name.endswith(".tar.gz") else name + "/")
    return (
        f"{spec.name} not found in {root} (looked for {', '.join(names)}); fetch it with "
        f"'ensemblekit data get {spec.name}' or data.download: true, or set ENSEMBLEKIT_DATA (or data.root) "
        "to a folder that holds one of these"
    )


def download_archive(spec: CifarSpec, root: Path, *, progress: str = "auto") -> tuple[Path, str]:
    """Fetch the official archive of ``spec`` into ``root`` and check its MD5 sum.

    Args:
        spec: :data:`CIFAR10` or :data:`CIFAR100`.
        root: The data root (created if needed).
        progress: Progress display on stderr: ``"auto"``, ``"bar"``, ``"plain"`` or ``"quiet"``.

    Returns:
        ``(path of the archive, the address it came from)``.

    Raises:
        UserError: one line saying what failed and where to put the data by hand; ``ChecksumError`` on an
            MD5 mismatch. Nothing half-written is left in ``root`` either way.
    """
    url = spec.url
    md5 = expected_md5(spec.archive, allow_override=not _is_official(base_url()))
    try:
        return download_file(url, root / spec.archive, md5, progress=progress), url
    except DownloadError as e:
        raise UserError(
            f"could not download {spec.name} from {url} ({e.reason}); put {spec.archive} "
            f"(or its extracted {spec.folder}/) in {root}, or set ENSEMBLEKIT_DATA to a folder that holds it"
        ) from None


def extracted_folder(spec: CifarSpec, archive: Path, cache_dir: Path, *, verified: bool = False) -> Path:
    """Extract the official archive beside itself (or into the cache if that is read-only); return the folder.

    ``verified``: the archive's MD5 sum was just checked (by the download), so it is not read again.
    """
    cached = cache_dir / "extracted" / spec.folder
    if cached.is_dir():
        return cached
    if not verified:
        verify_md5(archive, expected_md5(spec.archive))
    dest = archive.parent if os.access(archive.parent, os.W_OK) else cache_dir / "extracted"
    extract_archive(archive, dest)
    if not (dest / spec.folder).is_dir():
        raise UserError(f"{archive} does not contain {spec.folder}/; is it the official archive?")
    return dest / spec.folder


def verify_official(spec: CifarSpec, folder: Path) -> None:
    """Check every official file of ``folder`` against its MD5 sum (:func:`expected_md5`) without reading it.

    Raises:
        UserError: if a file is missing; ``ChecksumError`` on an MD5 mismatch.
    """
    for name in spec.files:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder} is incomplete: {name} is missing")
        verify_md5(path, expected_md5(f"{spec.folder}/{name}"))


def read_official(spec: CifarSpec, folder: Path) -> tuple[ImageTensors, ImageTensors]:
    """Verify every official file of ``folder`` against its MD5 sum, then read the train and test splits.

    Raises:
        UserError: if a file is missing or malformed; ``ChecksumError`` on an MD5 mismatch.
    """
    verify_official(spec, folder)
    classes = read_label_names(folder / spec.meta_file, spec.names_key)
    splits = []
    for files in (spec.train_files, spec.test_files):
        parts = [read_batch(folder / name, spec.label_key) for name in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise UserError(f"{folder}: labels outside [0, {len(classes)}) in {', '.join(files)}")
        splits.append(ImageTensors(torch.from_numpy(images), torch.from_numpy(labels), list(classes)))
    return splits[0], splits[1]


def load_cifar(
    spec: CifarSpec, root: Path, *, download: bool, cache_dir: Path, progress: str = "auto"
) -> tuple[ImageTensors, ImageTensors, str]:
    """Find (or download) and load a CIFAR variant.

    Args:
        spec: :data:`CIFAR10` or :data:`CIFAR100`.
        root: The data root.
        download: Fetch the official archive into ``root`` if the data set is not found.
        cache_dir: Decode cache (image folders; extraction when ``root`` is read-only).
        progress: Download progress on stderr (``"auto"``, ``"bar"``, ``"plain"`` or ``"quiet"``).

    Returns:
        ``(train, test, source)``, ``source`` saying where the data came from.

    Raises:
        DataNotFoundError: if nothing is found and ``download`` is off; the message lists every path looked at.
        UserError: if the download fails (one line: what failed and where to put the data).
    """
    loc, looked = find_cifar(spec, root)
    fetched = ""
    if loc is None:
        if not download:
            raise DataNotFoundError(not_found_message(spec, root, looked))
        archive, url = download_archive(spec, root, progress=progress)
        loc, fetched = Location(archive, "archive"), f"downloaded from {url}, "
    if loc.format == "image folder":
        train, test = load_image_folder(loc.path, cache_dir)
        if len(train.classes) != spec.num_classes:
            raise UserError(f"{loc.path} has {len(train.classes)} classes but {spec.name} has {spec.num_classes}")
        return train, test, f"image folder {loc.path}"
    note = note_checksum_override()
    if loc.format == "archive":
        folder = extracted_folder(spec, loc.path, cache_dir, verified=bool(fetched))
        train, test = read_official(spec, folder)
        return train, test, f"official archive {loc.path} ({fetched}extracted to {folder}{note})"
    train, test = read_official(spec, loc.path)
    return train, test, f"official files {loc.path}" + (f" ({note.removeprefix('; ')})" if note else "")
