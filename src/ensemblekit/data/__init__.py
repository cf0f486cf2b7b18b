"""Data sets, decode cache, splits, batched augmentation and the batch loader.

Typical use::

    from ensemblekit.data import BatchLoader, load_data

    bundle = load_data("cifar10", val_size=5000, seed=0)       # finds the data under ENSEMBLEKIT_DATA
    loader = BatchLoader(bundle.train, 128, mean=bundle.mean, std=bundle.std, shuffle=True, augment=True)
    loader.set_epoch(epoch)
    for x, y in loader:
        ...
"""

from ensemblekit.data.augment import augment_batch, normalize
from ensemblekit.data.check import check_data
from ensemblekit.data.datasets import DATASETS, list_datasets, load_data
from ensemblekit.data.loader import BatchLoader
from ensemblekit.data.paths import resolve_cache_dir, resolve_root
from ensemblekit.data.splits import stratified_indices
from ensemblekit.data.tensors import DataBundle, ImageTensors

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataBundle",
    "ImageTensors",
    "augment_batch",
    "check_data",
    "list_datasets",
    "load_data",
    "normalize",
    "resolve_cache_dir",
    "resolve_root",
    "stratified_indices",
]
