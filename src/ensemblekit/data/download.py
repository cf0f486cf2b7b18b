"""MD5 checks, downloads and archive extraction, each done so that nothing half-written is left behind.

A download goes to a temporary file beside its destination, is checked against its MD5 sum and only
then renamed into place. An archive is extracted into a temporary folder and its top-level entries
renamed into place, so an interrupted extraction never looks like a complete data set.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ensemblekit.atomic import umask_mode
from ensemblekit.data.download_progress import DownloadProgress
from ensemblekit.errors import ChecksumError, UserError

_CHUNK = 1 << 20


def md5_file(path: Path) -> str:
    """Hex MD5 sum of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise ``ChecksumError`` naming ``path``, the expected and the actual sum if they differ."""
    actual = md5_file(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: expected MD5 {expected}, got {actual}; "
            "the file is corrupt or not the official one (delete it and fetch it again)"
        )


class DownloadError(UserError):
    """A download failed (network, HTTP status, truncated transfer or unwritable destination); nothing was kept.

    Attributes:
        url: What was fetched.
        reason: Why it failed, one short phrase.
    """

    def __init__(self, url: str, dest: Path, reason: str) -> None:
        super().__init__(f"could not download {url} to {dest}: {reason}")
        self.url, self.reason = url, reason


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed before the file was complete"
    return str(exc) or exc.__class__.__name__


def download_file(url: str, dest: Path, md5: str, timeout: float = 60.0, progress: str = "auto") -> Path:
    """Download ``url`` to ``dest`` atomically, keeping it only if its MD5 sum is ``md5``.

    The bytes go to a temporary file beside ``dest`` that is renamed into place only after the sum
    matched; on any failure or interruption the temporary file is removed, so ``dest`` is either absent
    or complete.

    Args:
        url: Where to fetch from.
        dest: Final path of the file; its folder is created if needed.
        md5: Expected hex MD5 sum.
        timeout: Socket timeout in seconds.
        progress: ``"auto"``, ``"bar"``, ``"plain"`` or ``"quiet"`` (see
            :class:`~ensemblekit.data.download_progress.DownloadProgress`); always on stderr.

    Returns:
        ``dest``.

    Raises:
        DownloadError: if the download fails; ``ChecksumError`` if the sum differs (nothing is kept).
    """
    tmp: Path | None = None
    bar: DownloadProgress | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = DownloadProgress(progress, dest.name, total)
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and bar.done != total:
            raise DownloadError(url, dest, f"the connection closed after {bar.done:,} of {total:,} bytes")
        bar.close()
        bar = None
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected MD5 {md5}, "
                f"got {digest.hexdigest()}; the download was not kept"
            )
        os.chmod(tmp, umask_mode())  # mkstemp made it 0o600: the umask decides, as for open
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DownloadError(url, dest, _reason(e)) from None
    finally:
        if bar is not None:
            bar.close(ok=False)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = Path(member.name)
    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
        raise UserError(f"refusing to extract {archive}: unsafe entry {member.name!r}")


def extract_archive(archive: Path, dest: Path) -> list[Path]:
    """Extract a ``.tar.gz`` into ``dest`` via a temporary folder; existing entries are kept as they are.

    Args:
        archive: The archive.
        dest: Folder to extract into (created if needed).

    Returns:
        The top-level paths in ``dest`` that the archive provides.

    Raises:
        UserError: if the archive is unreadable or holds absolute paths, ``..`` or links.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{archive.name}.extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"could not extract {archive}: {e}") from None
        tops = []
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
            tops.append(target)
        return tops
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
