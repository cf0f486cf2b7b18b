"""First contact: ``data get`` and the demo configs download CIFAR from a (local) mirror, with progress and MD5."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ensemblekit.cli import main
from ensemblekit.data import cifar, load_data
from ensemblekit.data.download_progress import DownloadProgress
from ensemblekit.errors import UserError
from ensemblekit.resolve import load_config
from tests.conftest import REPO
from tests.data.cifar_files import CIFAR10_CLASSES, write_checksums

SMALL_RUN = [
    "--set", "data.train_size=40", "--set", "data.test_size=20", "--set", "data.batch_size=20",
    "--set", "model.name=resnet8", "--set", "model.width=0.5", "--set", "train.epochs=1",
    "--set", "runtime.accelerator=cpu", "--set", "runtime.num_threads=1",
]  # fmt: skip


@pytest.fixture
def mirror(tmp_path, make_cifar, http_server, monkeypatch):
    """A local mirror serving a generated CIFAR-10 archive, named by the documented environment variables.

    The official sums stay in place; the generated files' sums come from ``ENSEMBLEKIT_CHECKSUMS``.
    """
    served, url = http_server
    made = make_cifar(served, archive=True, register=False)
    monkeypatch.setenv(cifar.MIRROR_ENV, url)
    monkeypatch.setenv(cifar.CHECKSUMS_ENV, str(write_checksums(tmp_path / "md5sums.txt", made["md5"])))
    return {**made, "url": url, "served": served}


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_data_get_downloads_verifies_and_extracts(tmp_path, mirror, capsys):
    root = tmp_path / "fresh"
    assert main(["data", "get", "cifar10", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    archive, folder = root / "cifar-10-python.tar.gz", root / "cifar-10-batches-py"
    assert out[0] == f"cifar10: downloaded {mirror['url']}cifar-10-python.tar.gz to {archive} (MD5 ok)"
    assert out[1] == f"cifar10: ready at {folder} (official files; 8 files match their MD5 sums)"
    assert archive.read_bytes() == (mirror["served"] / "cifar-10-python.tar.gz").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar.CIFAR10.files)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert archive.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it, not 0o600
    size = archive.stat().st_size / 2**20
    assert f"downloading cifar-10-python.tar.gz ({size:.1f} MiB)" in captured.err  # progress goes to stderr
    assert f"cifar-10-python.tar.gz: {size:.1f} MiB in 0:00 (" in captured.err and "MiB/s)" in captured.err
    assert "ENSEMBLEKIT_CHECKSUMS" in captured.err  # the override is announced
    bundle = load_data("cifar10", root=root)
    np.testing.assert_array_equal(bundle.train.images.numpy(), mirror["train"][0])

    assert main(["data", "get", "cifar10", "--root", str(root), "--quiet"]) == 0  # second time: only verified
    captured = capsys.readouterr()
    expected = f"cifar10: already present, ready at {folder} (official files; 7 files match their MD5 sums)\n"
    assert captured.out == expected
    assert "downloading" not in captured.err


def test_data_get_quiet_prints_no_progress(tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.delenv(cifar.CHECKSUMS_ENV)
    for key, value in mirror["md5"].items():
        monkeypatch.setitem(cifar.MD5, key, value)
    assert main(["data", "get", "cifar10", "--root", str(tmp_path / "r"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("cifar10: downloaded ")


def test_data_get_keeps_an_image_folder_without_downloading(
    tmp_path, make_png_folder, http_server, capsys, monkeypatch
):
    _, url = http_server  # serves nothing: a download would fail
    monkeypatch.setenv(cifar.MIRROR_ENV, url)
    root = tmp_path / "shared"
    make_png_folder(root / "cifar10-jpeg", CIFAR10_CLASSES, per_class={"train": 2, "test": 1})
    assert main(["data", "get", "cifar10", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    folder = root / "cifar10-jpeg"
    assert captured.out.startswith(f"cifar10: already present, ready at {folder} (image folder, 20 train / 10 test")
    assert captured.err == ""


def test_wrong_checksum_keeps_nothing_and_exits_2(tmp_path, mirror, capsys, monkeypatch):
    sums = {**mirror["md5"], "cifar-10-python.tar.gz": "0" * 32}
    monkeypatch.setenv(cifar.CHECKSUMS_ENV, str(write_checksums(tmp_path / "bad.txt", sums)))
    root = tmp_path / "fresh"
    assert main(["data", "get", "cifar10", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checksum mismatch for cifar-10-python.tar.gz") and "0" * 32 in err[-1]
    assert _files(root) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_is_one_line_saying_what_failed_and_where_to_put_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(cifar.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}/")
    root = tmp_path / "fresh"
    assert main(["data", "get", "cifar100", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not download cifar100 from http://127.0.0.1:")
    assert "refused" in err.lower()  # the reason
    assert f"put cifar-100-python.tar.gz (or its extracted cifar-100-python/) in {root}" in err
    assert "ENSEMBLEKIT_DATA" in err and "..." not in err  # whole, not cut
    assert _files(root) == []


def test_interrupted_download_leaves_nothing(tmp_path, mirror, capsys, monkeypatch):
    def interrupt(self, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(DownloadProgress, "update", interrupt)
    root = tmp_path / "fresh"
    assert main(["data", "get", "cifar10", "--root", str(root)]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
    assert _files(root) == []


class _TruncatingHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # promises 1,000 bytes, sends 100, hangs up
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 100)
        self.close_connection = True

    def log_message(self, format, *args):
        pass


def test_truncated_download_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv(cifar.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
        with pytest.raises(UserError, match=r"could not download cifar10 .*\(the connection closed"):
            cifar.download_archive(cifar.CIFAR10, tmp_path / "fresh", progress="quiet")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert _files(tmp_path / "fresh") == []


def test_official_address_always_uses_the_official_checksum(tmp_path, mirror, monkeypatch):
    seen = []
    monkeypatch.setattr(cifar, "download_file", lambda url, dest, md5, progress: seen.append((url, md5)) or dest)
    cifar.download_archive(cifar.CIFAR10, tmp_path, progress="quiet")  # the mirror: its listed sum
    monkeypatch.delenv(cifar.MIRROR_ENV)
    cifar.download_archive(cifar.CIFAR10, tmp_path, progress="quiet")  # the official address: the official sum
    assert seen == [
        (f"{mirror['url']}cifar-10-python.tar.gz", mirror["md5"]["cifar-10-python.tar.gz"]),
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a sum line\n", r"line 1: expected '<md5> <file>' \(md5sum format\), got 'not a sum line'"),
        ("# comment\n" + "a" * 32 + "  cifar-10-batches-py/other\n", "line 2: 'cifar-10-batches-py/other' is not a"),
    ],
)
def test_malformed_checksums_file_is_a_user_error(tmp_path, monkeypatch, text, message):
    path = tmp_path / "sums.txt"
    path.write_text(text)
    monkeypatch.setenv(cifar.CHECKSUMS_ENV, str(path))
    with pytest.raises(UserError, match=message):
        cifar.expected_md5("cifar-10-python.tar.gz")


def test_checksums_file_accepts_md5sum_output(tmp_path, monkeypatch):
    path = tmp_path / "sums.txt"
    path.write_text("A" * 32 + " *./cifar-10-python.tar.gz\n")  # binary-mode marker, ./ prefix, upper case
    monkeypatch.setenv(cifar.CHECKSUMS_ENV, str(path))
    assert cifar.expected_md5("cifar-10-python.tar.gz") == "a" * 32
    assert cifar.expected_md5("cifar-10-batches-py/test_batch") == "40351d587109b95175f43aff81a1287e"  # not listed
    assert cifar.expected_md5("cifar-10-python.tar.gz", allow_override=False) == "c58f30108f718f92721af3b95e74349a"


def test_demo_configs_download_when_no_copy_is_found():
    for name in ("single", "deep_ensemble"):
        cfg = load_config(REPO / "configs" / "demo" / f"{name}.yaml", [])
        assert cfg.data.name == "cifar10" and cfg.data.download is True


def test_train_demo_config_downloads_into_the_default_data_root(tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.delenv("ENSEMBLEKIT_DATA")
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "demo" / "single.yaml")
    assert main(["train", config, *SMALL_RUN, "--out", "run", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "downloading" not in captured.err  # --quiet: no progress
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()
    source = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["source"]
    assert f"downloaded from {mirror['url']}cifar-10-python.tar.gz" in source and "md5sums.txt" in source

    assert main(["train", config, *SMALL_RUN, "--out", "run2"]) == 0  # second run: the copy is found
    captured = capsys.readouterr()
    assert "downloading" not in captured.err and "run directory: run2" in captured.out


def test_env_data_root_wins_over_download(tmp_path, make_cifar, http_server, monkeypatch):
    _, url = http_server  # serves nothing: a download would fail
    monkeypatch.setenv(cifar.MIRROR_ENV, url)
    shared = tmp_path / "shared"
    made = make_cifar(shared)
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(shared))
    bundle = load_data("cifar10", download=True)
    assert bundle.source == f"official files {made['folder']}"


def test_plain_progress_shows_size_speed_and_eta():
    stream, now = io.StringIO(), [0.0]
    progress = DownloadProgress("plain", "f.tar.gz", 4 << 20, stream=stream, clock=lambda: now[0], every=5.0)
    for t in (1.0, 5.0, 6.0):
        now[0] = t
        progress.update(1 << 20)
    now[0] = 8.0
    progress.update(1 << 20)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "downloading f.tar.gz (4.0 MiB)",
        "f.tar.gz:  50% 2.0 MiB of 4.0 MiB, 0.4 MiB/s, eta 0:05",
        "f.tar.gz: 4.0 MiB in 0:08 (0.5 MiB/s)",
    ]


def test_bar_progress_shows_size_and_speed():
    stream = io.StringIO()
    progress = DownloadProgress("bar", "f.tar.gz", 3 << 20, stream=stream)
    progress.update(3 << 20)
    progress.close()
    text = stream.getvalue()
    assert "f.tar.gz: 100%" in text and "3.00M/3.00M" in text and "B/s]" in text


def test_generated_archive_has_the_official_layout(tmp_path, mirror):
    with tarfile.open(mirror["served"] / "cifar-10-python.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == sorted(["cifar-10-batches-py", *(f"cifar-10-batches-py/{f}" for f in cifar.CIFAR10.files)])
