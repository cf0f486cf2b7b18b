"""Small files in the official CIFAR python format, for tests and for serving a local mirror in a demo.

Run as a script, it writes a generated ``cifar-10-python.tar.gz`` and an ``md5sums.txt`` (for
``ENSEMBLEKIT_CHECKSUMS``) into a folder that ``python -m http.server`` can then serve::

    python -m tests.data.cifar_files OUT_DIR --per-class 200
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ensemblekit.data import cifar

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # protocol 2, like the official (Python 2) files


def write_cifar(root: Path, variant: str = "cifar10", per_class: int = 2, archive: bool = False) -> tuple[dict, dict]:
    """Write the official folder (``per_class`` random images per class per batch), or only the ``.tar.gz``.

    Returns:
        ``({"train": (images, labels), "test": (images, labels), "classes": [...], "folder": Path},
        {path relative to root: MD5 sum})``.
    """
    spec = cifar.SPECS[variant]
    classes = CIFAR10_CLASSES if variant == "cifar10" else [f"class{k:03d}" for k in range(100)]
    rng = np.random.default_rng(len(classes))
    folder = root / spec.folder
    folder.mkdir(parents=True)
    out: dict = {"classes": classes, "folder": folder}
    label_key = spec.label_key.encode()
    for split, files in (("train", spec.train_files), ("test", spec.test_files)):
        images, labels = [], []
        for i, name in enumerate(files):
            n = per_class * len(classes)
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            batch_labels = [int(v) for v in rng.permutation(np.arange(n) % len(classes))]
            batch = {b"batch_label": f"{split} batch {i}".encode(), label_key: batch_labels, b"data": data,
                     b"filenames": [f"img_{j}.png".encode() for j in range(n)]}  # fmt: skip
            if variant == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in batch_labels]
            _write_pickle(folder / name, batch)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.extend(batch_labels)
        out[split] = (np.concatenate(images), np.asarray(labels, dtype=np.int64))
    meta = {spec.names_key.encode(): [c.encode() for c in classes], b"num_vis": 3072}
    _write_pickle(folder / spec.meta_file, meta)
    sums = {f"{spec.folder}/{name}": md5(folder / name) for name in spec.files}
    if archive:
        with tarfile.open(root / spec.archive, "w:gz") as tar:
            tar.add(folder, arcname=spec.folder)
        sums[spec.archive] = md5(root / spec.archive)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return out, sums


def write_checksums(path: Path, sums: dict[str, str]) -> Path:
    """Write ``sums`` in ``md5sum`` format (the format ``ENSEMBLEKIT_CHECKSUMS`` reads)."""
    path.write_text("".join(f"{value}  {key}\n" for key, value in sorted(sums.items())))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description="write a generated CIFAR archive and its md5sums.txt")
    p.add_argument("out", type=Path)
    p.add_argument("--variant", choices=sorted(cifar.SPECS), default="cifar10")
    p.add_argument("--per-class", type=int, default=2, help="images per class per batch")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _, sums = write_cifar(args.out, args.variant, args.per_class, archive=True)
    print(write_checksums(args.out / "md5sums.txt", sums))


if __name__ == "__main__":
    main()
