"""The data set registry and ``load_data``, the one entry point the rest of ensemblekit uses.

A registered data set is a function ``(request: LoadRequest) -> RawData`` that finds and decodes the
full train and test splits; :func:`load_data` then applies the validation hold-out and the subsets
(:func:`~ensemblekit.data.splits.split_data`) and settles the normalisation statistics.

Example:
    >>> bundle = load_data("synthetic", train_size=100, test_size=50, val_size=20, seed=1)
    >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.num_classes
    (100, 20, 50, 10)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ensemblekit.data.cifar import CIFAR10, CIFAR100, CifarSpec, load_cifar
from ensemblekit.data.image_folder import load_image_folder
from ensemblekit.data.paths import resolve_cache_dir, resolve_root
from ensemblekit.data.splits import split_data
from ensemblekit.data.stats import CIFAR10_MEAN, CIFAR10_STD, channel_stats
from ensemblekit.data.synthetic import DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE, make_synthetic
from ensemblekit.data.tensors import DataBundle, ImageTensors
from ensemblekit.errors import UserError, config_error
from ensemblekit.registry import Registry

DATASETS = Registry("dataset")


@dataclass(frozen=True)
class LoadRequest:
    """What :func:`load_data` was asked for, as passed to a data set's loader."""

    root: str | os.PathLike[str] | None
    download: bool
    cache_dir: Path
    train_size: int | None
    test_size: int | None
    val_size: int
    classes: tuple[int, ...] | None = None
    image_size: tuple[int, int] | None = None
    progress: str = "auto"


@dataclass
class RawData:
    """Full splits as a data set's loader returns them; ``mean``/``std`` of ``None`` mean "compute"."""

    train: ImageTensors
    test: ImageTensors
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _cifar(spec: CifarSpec, request: LoadRequest) -> RawData:
    root = resolve_root(request.root)
    train, test, source = load_cifar(
        spec, root, download=request.download, cache_dir=request.cache_dir, progress=request.progress
    )
    return RawData(train, test, source, spec.mean, spec.std)


@DATASETS.register("cifar10")
def cifar10(request: LoadRequest) -> RawData:
    """CIFAR-10 from the official files, the official archive, or an image folder (see ``cifar.py``)."""
    return _cifar(CIFAR10, request)


@DATASETS.register("cifar100")
def cifar100(request: LoadRequest) -> RawData:
    """CIFAR-100 (fine labels) from the official files, the official archive, or an image folder."""
    return _cifar(CIFAR100, request)


@DATASETS.register("image_folder")
def image_folder(request: LoadRequest) -> RawData:
    """Any ``<root>/{train,test}/<class>/*.jpg`` folder; ``root`` is that folder itself."""
    if request.root is None or str(request.root) == "":
        raise UserError("data set image_folder needs root: the folder that holds train/ and test/")
    root = Path(request.root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    train, test = load_image_folder(root, request.cache_dir, request.image_size)
    source = f"image folder {root}" + ("" if request.image_size is None else " (resized and centre-cropped)")
    if root.name.lower().startswith("cifar10") and not root.name.lower().startswith("cifar100"):
        return RawData(train, test, source, CIFAR10_MEAN, CIFAR10_STD)
    return RawData(train, test, source)


@DATASETS.register("synthetic")
def synthetic(request: LoadRequest) -> RawData:
    """Generated class-conditional patterns (see ``synthetic.py``); sizes choose how many are generated."""
    train_size = DEFAULT_TRAIN_SIZE if request.train_size is None else request.train_size
    test_size = DEFAULT_TEST_SIZE if request.test_size is None else request.test_size
    for field, value in (("train_size", train_size), ("test_size", test_size), ("val_size", request.val_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if field == "val_size" else 1):
            raise UserError(
                f"{field} must be a {'non-negative' if field == 'val_size' else 'positive'} integer, got {value!r}"
            )
    n_train, n_test = train_size + request.val_size, test_size
    if request.classes:  # labels cycle over the 10 classes: generate enough for the kept ones
        k = len(request.classes)
        n_train, n_test = -(-n_train * 10 // k) + 10, -(-n_test * 10 // k) + 10
    train = make_synthetic(n_train, "train")
    return RawData(train, make_synthetic(n_test, "test"), "synthetic (generated, fixed seed)")


@DATASETS.register("memory")
def memory(request: LoadRequest) -> RawData:
    """Data given from Python (:func:`ensemblekit.fit`): recorded in run configs, never loaded from one."""
    raise UserError(
        "data set 'memory' was given from Python (ensemblekit.fit) and is not on disk: predict with "
        "ensemblekit.load(run_dir), or train on a data set a config can name"
    )


def list_datasets() -> list[str]:
    """Names of all registered data sets, sorted."""
    return DATASETS.names()


def load_data(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    val_size: int = 0,
    seed: int = 0,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    classes: list[int] | None = None,
    image_size: tuple[int, int] | None = None,
    progress: str = "auto",
) -> DataBundle:
    """Load a registered data set and split it.

    Order of operations: find and decode the full splits (from the decode cache when current); hold
    ``val_size`` images out of the training split; keep a stratified ``train_size`` subset of the rest
    and a stratified ``test_size`` subset of the test split (all seeded by ``seed``; see
    :mod:`ensemblekit.data.splits`); settle mean/std (published values for CIFAR, else computed from
    the final training split). For ``synthetic``, ``train_size + val_size`` training images and
    ``test_size`` test images are generated, so the training split ends up with ``train_size`` images.

    Args:
        name: A registered data set (see :func:`list_datasets`).
        root: Data root (``cifar10``, ``cifar100``; default :func:`resolve_root`), or the folder itself
            (``image_folder``).
        train_size: Training images to keep (``None``: all after the hold-out).
        test_size: Test images to keep (``None``: all).
        val_size: Training images held out for validation (0: no validation split).
        seed: Seed of the hold-out and the subsets (not of the synthetic data, which is fixed).
        download: Fetch official archives that are not found.
        cache_dir: Decode-cache folder (default :func:`~ensemblekit.data.paths.resolve_cache_dir`).
        classes: Keep only these classes (before any split), labels remapped so that ``classes[j]``
            becomes ``j`` (see :mod:`ensemblekit.data.classes`); ``None`` keeps all.
        image_size: ``image_folder`` only: ``(H, W)`` every image is scaled to cover and centre-cropped to.
        progress: Download progress on stderr: ``"auto"`` (a bar on a terminal, plain lines otherwise),
            ``"bar"``, ``"plain"`` or ``"quiet"``.

    Returns:
        The :class:`DataBundle`.

    Raises:
        UserError: unknown name, bad sizes, missing (``DataNotFoundError``) or corrupt (``ChecksumError``) data.
    """
    loader = DATASETS.get(name)
    if image_size is not None and name != "image_folder":
        raise config_error("data.image_size", f"applies to image_folder data, not to {name}")
    request = LoadRequest(
        root,
        download,
        resolve_cache_dir(cache_dir),
        train_size,
        test_size,
        val_size,
        tuple(classes or ()) or None,
        image_size,
        progress,
    )
    raw = loader(request)
    if classes is not None:
        from ensemblekit.data.classes import check_classes, select_classes

        classes = check_classes(classes, len(raw.train.classes), name)
        raw.train, raw.test = select_classes(raw.train, classes), select_classes(raw.test, classes)
    train, val, test = split_data(
        raw.train, raw.test, train_size=train_size, test_size=test_size, val_size=val_size, seed=seed, name=name
    )
    mean, std = (raw.mean, raw.std) if raw.mean is not None and raw.std is not None else channel_stats(train.images)
    classes = list(raw.train.classes)
    return DataBundle(name, train, val, test, classes, len(classes), tuple(mean), tuple(std), raw.source)
