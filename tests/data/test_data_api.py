"""The package's public surface: registry, roots, cache location, errors, bundle contents."""

from __future__ import annotations

from pathlib import Path

import pytest

import ensemblekit.data as data
from ensemblekit.data import DATASETS, check_data, list_datasets, load_data, resolve_root
from ensemblekit.data.paths import resolve_cache_dir
from ensemblekit.errors import UserError


def test_public_names():
    for name in ("ImageTensors", "DataBundle", "DATASETS", "list_datasets", "load_data", "resolve_root",
                 "BatchLoader", "augment_batch", "normalize", "stratified_indices", "check_data"):  # fmt: skip
        assert hasattr(data, name), name
    assert {"cifar10", "cifar100", "synthetic", "image_folder"} <= set(list_datasets())
    assert list_datasets() == DATASETS.names()


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="unknown dataset 'mnist'; valid: cifar10, cifar100"):
        load_data("mnist")


def test_resolve_root_order(tmp_path, monkeypatch):
    assert resolve_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("ENSEMBLEKIT_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_root() == tmp_path / "data"


def test_resolve_cache_dir_order(tmp_path, monkeypatch):
    assert resolve_cache_dir(tmp_path / "c") == tmp_path / "c"
    assert resolve_cache_dir() == tmp_path / "cache"  # ENSEMBLEKIT_CACHE, set by the fixture
    monkeypatch.delenv("ENSEMBLEKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "ensemblekit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir() == Path.home() / ".cache" / "ensemblekit"


def test_check_data_reports_found_and_missing(tmp_path, make_cifar, make_png_folder):
    make_cifar(tmp_path)
    reports = {r["dataset"]: r for r in check_data(tmp_path)}
    assert set(reports) == {"cifar10", "cifar100", "synthetic"}
    c10 = reports["cifar10"]
    assert c10["found"] and c10["format"] == "official" and c10["checksum"] == "ok"
    assert c10["location"] == str(tmp_path / "cifar-10-batches-py")
    c100 = reports["cifar100"]
    assert not c100["found"] and str(tmp_path / "cifar-100-python.tar.gz") in c100["location"]
    assert reports["synthetic"]["train_images"] == 2000
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"corrupt")
    assert check_data(tmp_path)[0]["checksum"] == "mismatch: test_batch"
    make_png_folder(tmp_path / "cifar100", [f"c{k}" for k in range(3)], {"train": 2, "test": 1})
    c100 = check_data(tmp_path)[1]
    assert c100["format"] == "image folder" and (c100["train_images"], c100["test_images"]) == (6, 3)
    assert c100["checksum"] == "n/a" and c100["classes"] == 3


def test_bundle_fields_are_consistent():
    bundle = load_data("synthetic", train_size=100, test_size=50)
    assert bundle.classes == bundle.train.classes and bundle.num_classes == len(bundle.classes)
    assert len(bundle.mean) == len(bundle.std) == 3 and bundle.name == "synthetic"
    assert "100 train / 0 val / 50 test" in bundle.describe()
