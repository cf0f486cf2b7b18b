"""Out-of-distribution evaluation of a finished run: which OOD images, and the detection metrics.

``--ood`` accepts:

* ``heldout``: the test images of the classes the run was *not* trained on (the run must set
  ``data.classes``), as many as the run's ``data.test_size`` (all when it is unset or larger);
* a registered data set name (``cifar100``, ``cifar10``, ``synthetic``), optionally ``NAME:ROOT`` with its
  data root (default: the run's ``data.root``, then ``ENSEMBLEKIT_DATA``): its test split, in any format
  the data layer reads (official files, archive, image folder);
* a folder path: an image folder with ``train/`` and ``test/`` (its test split), or else every image
  (``.png``, ``.jpg``, ``.jpeg``) under the folder, recursively, in path order.

Images of another size are resized to the run's image size with Pillow's bilinear filter. ``max_images``
keeps a seeded, stratified subset (label 0 for unlabelled folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ensemblekit.data import DATASETS, ImageTensors, load_data, stratified_indices
from ensemblekit.data.classes import complement
from ensemblekit.data.image_folder import IMAGE_SUFFIXES
from ensemblekit.errors import UserError
from ensemblekit.metrics.ood import OOD_METRICS, OOD_SCORES, ood_evaluation
from ensemblekit.runs.loading import LoadedRun

POSITIVES = (
    "auroc, aupr_in and fpr95 take the in-distribution test images as positives (score: in-distribution "
    "confidence); aupr_out takes the OOD images as positives (score: minus the confidence)"
)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    arr = images.permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.BILINEAR)) for a in arr]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def subset_split(split: ImageTensors, max_images: int | None, seed: int) -> ImageTensors:
    """A seeded stratified subset of ``max_images`` images of ``split`` (the split itself when it is no larger)."""
    if max_images is None or max_images >= len(split):
        return split
    return split.subset(stratified_indices(split.labels, max_images, seed, stream=11))


def _flat_folder(root: Path, size: tuple[int, int]) -> ImageTensors:
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise UserError(f"--ood {root}: no .png/.jpg/.jpeg images found")
    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                rgb = img.convert("RGB")
                if rgb.size != (size[1], size[0]):
                    rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
                images.append(np.asarray(rgb))
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot decode image {p}: {exc}") from None
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(x, torch.zeros(len(paths), dtype=torch.int64), ["ood"])


def heldout_split(run: LoadedRun) -> ImageTensors:
    """The test images of the classes the run left out (``data.classes``), up to ``data.test_size`` of them."""
    d = run.cfg.data
    if d.classes is None:
        raise UserError("--ood heldout needs a run trained on a subset of classes (set data.classes)")
    full = load_data(d.name, d.root, train_size=None, val_size=0, seed=d.seed, download=d.download)
    rest = complement(d.classes, full.num_classes)
    if not rest:
        raise UserError("--ood heldout: data.classes lists every class, so no class is held out")
    split = load_data(d.name, d.root, train_size=None, val_size=0, seed=d.seed, classes=rest).test
    return subset_split(split, d.test_size, d.seed)


def load_ood_split(run: LoadedRun, spec: str, max_images: int | None = None) -> tuple[ImageTensors, str]:
    """The OOD images named by ``spec`` (see the module docstring) and a description of where they came from."""
    size = tuple(run.data.test.images.shape[-2:])
    seed = run.cfg.data.seed
    if spec == "heldout":
        split = heldout_split(run)
        return subset_split(split, max_images, seed), f"held-out classes {split.classes} of {run.cfg.data.name}"
    name, _, root = spec.partition(":")
    if name in DATASETS.names() and name != "image_folder":
        bundle = load_data(name, root or run.cfg.data.root, train_size=None, val_size=0, seed=seed)
        split = bundle.test
        source = f"{name} test split ({bundle.source})"
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise UserError(
                f"--ood {spec}: not 'heldout', a data set ({', '.join(DATASETS.names())}) or an existing folder"
            )
        if (path / "train").is_dir() and (path / "test").is_dir():
            split = load_data("image_folder", path, train_size=None, val_size=0, seed=seed).test
            source = f"image folder {path.resolve()} (test split)"
        else:
            split = _flat_folder(path, size)
            source = f"all images under {path.resolve()}"
    split = subset_split(split, max_images, seed)
    images = _resize(split.images, size)
    return ImageTensors(images, split.labels, list(split.classes)), source


def evaluate_ood(run: LoadedRun, specs: list[str], max_images: int | None = None) -> dict[str, Any]:
    """AUROC / AUPR-in / AUPR-out / FPR95 of every score against every OOD set in ``specs``."""
    in_probs = run.member_probs(run.data.test)
    results: dict[str, Any] = {}
    for spec in specs:
        split, source = load_ood_split(run, spec, max_images)
        out_probs = run.member_probs(split)
        results[spec] = {
            "source": source,
            "num_images": len(split),
            **ood_evaluation(in_probs, out_probs, run.ensemble.combine),
        }
    return {
        "in_distribution": {"dataset": run.cfg.data.name, "split": "test", "num_images": len(run.data.test)},
        "scores": list(OOD_SCORES),
        "metrics": list(OOD_METRICS),
        "positives": POSITIVES,
        "results": results,
    }
