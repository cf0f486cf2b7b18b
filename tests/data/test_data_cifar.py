"""CIFAR official format: lookup, MD5 checks, restricted unpickling, archive extraction and download."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest

from ensemblekit.data import cifar, load_data
from ensemblekit.data.download import md5_file
from ensemblekit.data.safe_pickle import load_pickle
from ensemblekit.errors import ChecksumError, DataNotFoundError, UserError


def test_official_cifar10_round_trips_values_and_labels(tmp_path, make_cifar):
    expected = make_cifar(tmp_path)
    bundle = load_data("cifar10", root=tmp_path)
    assert bundle.classes == expected["classes"] and bundle.num_classes == 10
    for split in ("train", "test"):
        tensors = getattr(bundle, split)
        np.testing.assert_array_equal(tensors.images.numpy(), expected[split][0])
        np.testing.assert_array_equal(tensors.labels.numpy(), expected[split][1])
    assert len(bundle.train) == 5 * 20 and len(bundle.test) == 20
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2471, 0.2435, 0.2616)
    assert bundle.source == f"official files {expected['folder']}"


def test_official_cifar100_uses_fine_labels(tmp_path, make_cifar):
    expected = make_cifar(tmp_path, "cifar100", per_class=1)
    bundle = load_data("cifar100", root=tmp_path)
    assert bundle.num_classes == 100 and bundle.classes[:2] == ["class000", "class001"]
    np.testing.assert_array_equal(bundle.train.labels.numpy(), expected["train"][1])
    np.testing.assert_array_equal(bundle.test.images.numpy(), expected["test"][0])
    assert bundle.mean == (0.5071, 0.4867, 0.4408)


def test_md5_mismatch_names_file_and_both_sums(tmp_path, make_cifar):
    folder = make_cifar(tmp_path)["folder"]
    path = folder / "data_batch_3"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as info:
        load_data("cifar10", root=tmp_path)
    message = str(info.value)
    assert "data_batch_3" in message and cifar.MD5["cifar-10-batches-py/data_batch_3"] in message
    sums = re.findall(r"[0-9a-f]{32}", message)
    assert len(sums) == 2 and sums[0] != sums[1] and "\n" not in message


def test_official_md5_table_matches_torchvision():
    assert cifar.MD5["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert cifar.MD5["cifar-10-batches-py/test_batch"] == "40351d587109b95175f43aff81a1287e"
    assert cifar.MD5["cifar-100-python/train"] == "16019d7e3df5f24257cddd939b257f8d"
    assert len(cifar.MD5) == 12


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"os\.system|posix\.system"):
        load_pickle(path)


def test_restricted_unpickler_accepts_python2_numpy_names(tmp_path):
    array = np.arange(3072, dtype=np.uint16).astype(np.uint8).reshape(1, 3072)
    raw = pickle.dumps({b"data": array, b"labels": [3]}, protocol=2)
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    path = tmp_path / "py2"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))  # as old numpy wrote it
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded[b"data"], array)
    assert loaded[b"labels"] == [3]


def test_malformed_batch_is_a_user_error(tmp_path, make_cifar, monkeypatch):
    folder = make_cifar(tmp_path)["folder"]
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}, protocol=2))
    monkeypatch.setitem(cifar.MD5, "cifar-10-batches-py/data_batch_1", md5_file(path))
    with pytest.raises(UserError, match="uint8 \\[n, 3072\\]"):
        load_data("cifar10", root=tmp_path)


def test_archive_is_extracted_and_loaded(tmp_path, make_cifar):
    expected = make_cifar(tmp_path, archive=True)
    assert not expected["folder"].exists()
    bundle = load_data("cifar10", root=tmp_path)
    np.testing.assert_array_equal(bundle.train.images.numpy(), expected["train"][0])
    assert expected["folder"].is_dir() and "official archive" in bundle.source
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_archive_in_read_only_root_is_extracted_into_cache(tmp_path, make_cifar, monkeypatch):
    expected = make_cifar(tmp_path, archive=True)
    monkeypatch.setattr(cifar.os, "access", lambda path, mode: False)
    bundle = load_data("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "extracted" / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert not expected["folder"].exists()
    np.testing.assert_array_equal(bundle.test.labels.numpy(), expected["test"][1])


def test_download_from_local_http_server(tmp_path, make_cifar, http_server, monkeypatch):
    served, url = http_server
    expected = make_cifar(served, archive=True)
    monkeypatch.setattr(cifar, "BASE_URL", url)
    root = tmp_path / "fresh-root"
    with pytest.raises(DataNotFoundError):
        load_data("cifar10", root=root)
    bundle = load_data("cifar10", root=root, download=True)
    assert (root / "cifar-10-python.tar.gz").is_file() and (root / "cifar-10-batches-py").is_dir()
    np.testing.assert_array_equal(bundle.train.images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(bundle.train.labels.numpy(), expected["train"][1])
    assert f"downloaded from {url}cifar-10-python.tar.gz" in bundle.source


def test_download_with_wrong_md5_keeps_nothing(tmp_path, make_cifar, http_server, monkeypatch):
    served, url = http_server
    make_cifar(served, archive=True)
    monkeypatch.setattr(cifar, "BASE_URL", url)
    monkeypatch.setitem(cifar.MD5, "cifar-10-python.tar.gz", "0" * 32)
    root = tmp_path / "fresh-root"
    with pytest.raises(ChecksumError, match=r"cifar-10-python\.tar\.gz.*expected MD5 0{32}"):
        load_data("cifar10", root=root, download=True)
    assert list(root.iterdir()) == []


def test_download_failure_is_one_line_user_error(tmp_path, http_server, monkeypatch):
    _, url = http_server  # serves an empty folder: 404
    monkeypatch.setattr(cifar, "BASE_URL", url)
    with pytest.raises(UserError, match="could not download") as info:
        load_data("cifar100", root=tmp_path / "r", download=True)
    assert "\n" not in str(info.value)


def test_not_found_lists_every_place_looked(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_data("cifar10", root=tmp_path)
    message = str(info.value)
    assert f"not found in {tmp_path} (looked for " in message
    for name in ("cifar-10-batches-py/", "cifar-10-python.tar.gz", "cifar10-jpeg/", "cifar10/"):
        assert name in message
    assert "ENSEMBLEKIT_DATA" in message and "ensemblekit data get cifar10" in message and "\n" not in message
    assert "..." not in message  # short enough not to be cut


def test_not_found_uses_env_root_when_no_root_given(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(tmp_path / "elsewhere"))
    expected = f"in {tmp_path / 'elsewhere'} (looked for cifar-100-python/"
    with pytest.raises(DataNotFoundError, match=re.escape(expected)):
        load_data("cifar100")


def test_official_folder_is_preferred_over_image_folder(tmp_path, make_cifar, make_png_folder):
    make_cifar(tmp_path)
    make_png_folder(tmp_path / "cifar10-jpeg", [f"c{k}" for k in range(10)], {"train": 1, "test": 1})
    assert load_data("cifar10", root=tmp_path).source.startswith("official files")


def test_image_folder_found_for_cifar10(tmp_path, make_png_folder):
    expected = make_png_folder(tmp_path / "cifar10", [f"c{k}" for k in range(10)], {"train": 2, "test": 1})
    bundle = load_data("cifar10", root=tmp_path)
    assert bundle.source.startswith(f"image folder {tmp_path / 'cifar10'}")
    np.testing.assert_array_equal(bundle.train.images.numpy(), expected["train"][0])
    assert bundle.mean == (0.4914, 0.4822, 0.4465)
    same = load_data("cifar10", root=tmp_path / "cifar10")  # the folder itself as the root
    np.testing.assert_array_equal(same.test.images.numpy(), expected["test"][0])


def test_cifar10_folder_with_wrong_class_count_is_refused(tmp_path, make_png_folder):
    make_png_folder(tmp_path / "cifar10-jpeg", ["a", "b"], {"train": 1, "test": 1})
    with pytest.raises(UserError, match="has 2 classes but cifar10 has 10"):
        load_data("cifar10", root=tmp_path)
