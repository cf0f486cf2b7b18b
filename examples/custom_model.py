"""Bring your own model and data: a custom CNN on a custom image folder, trained, loaded, predicted, exported.

A small custom CNN is trained on a custom image folder as a deep ensemble and as a BatchEnsemble; the runs
are then loaded, predict new images and are exported to TorchScript.

Run it from the repository root (it writes under --out, default ``runs/custom_model``)::

    python examples/custom_model.py                      # generates a small image folder first
    python examples/custom_model.py --data my_folder     # my_folder/{train,test}/<class>/*.jpg, any image size

The model is named by import path (``model.factory: "custom_model:make_net"``): this file's directory is on
``sys.path`` when it runs as a script, and the CLI finds it from the directory that holds it, e.g.
``cd examples && ensemblekit evaluate ../runs/custom_model/deep_ensemble``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn


class SmallCNN(nn.Module):
    """A plain user network: two conv blocks, global pooling and a linear classifier (no ensemblekit parts)."""

    def __init__(self, num_classes: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_net(num_classes: int = 10, channels: int = 16) -> nn.Module:
    """The factory the config names: called as ``make_net(num_classes=C, **model.kwargs)``."""
    return SmallCNN(num_classes, channels)


def make_image_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """Write ``root/{train,test}/{circle,square}/*.png``: noisy shapes on images of varying sizes."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for shape in ("circle", "square"):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = int(rng.integers(28, 64)), int(rng.integers(28, 64))
                pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                draw = ImageDraw.Draw(image)
                r = min(w, h) // 3
                cx, cy = w // 2 + int(rng.integers(-3, 4)), h // 2 + int(rng.integers(-3, 4))
                box = (cx - r, cy - r, cx + r, cy + r)
                colour = tuple(int(c) for c in rng.integers(150, 256, 3))
                (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
                image.save(folder / f"{i:04d}.png")


def config(method: dict, data_root: Path, epochs: int) -> dict:
    """The run config: the custom model by import path, the image folder resized to 32 x 32."""
    return {
        "data": {"name": "image_folder", "root": str(data_root), "image_size": 32, "batch_size": 32, "val_size": 0},
        "model": {"factory": "custom_model:make_net", "kwargs": {"channels": 16}},
        "method": method,
        "train": {"epochs": epochs, "lr": 0.05, "schedule": "cosine"},
        "runtime": {"accelerator": "cpu", "num_threads": 1},
    }


def main(argv: list[str] | None = None) -> int:
    """Generate (or take) the image folder, train both ensembles, load, predict and export them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="image folder with train/ and test/ (default: generate one)")
    parser.add_argument("--out", type=Path, default=Path("runs/custom_model"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images-per-class", type=int, default=100, help="generated training images per class")
    args = parser.parse_args(argv)

    import ensemblekit
    from ensemblekit.export import export_torchscript
    from ensemblekit.resolve import config_from_dict
    from ensemblekit.runs import train

    data = args.data
    if data is None:
        data = args.out / "shapes"
        make_image_folder(data, {"train": args.images_per_class, "test": max(4, args.images_per_class // 3)})
        print(f"generated an image folder in {data}")

    methods = {
        "deep_ensemble": {"name": "deep_ensemble", "members": 3},
        "batch_ensemble": {"name": "batch_ensemble", "members": 3},
    }
    for name, method in methods.items():
        record = train(config_from_dict(config(method, data, args.epochs)), args.out / name, overwrite=True, quiet=True)
        m = record["metrics"]
        print(f"{name:15s} accuracy {m['accuracy']:.3f}  nll {m['nll']:.3f}  params {record['costs']['params']:,}")

    test_images = sorted((data / "test").rglob("*.png"))[:: max(1, len(list((data / "test").rglob("*.png"))) // 4)]
    for name in methods:
        predictor = ensemblekit.load(args.out / name, device="cpu")  # needs only the run directory
        out = predictor.predict([str(p) for p in test_images])
        for path, label, p, h, mi in zip(test_images, out.labels, out.confidence, out.entropy, out.mutual_information):
            print(f"{name:15s} {path.parent.name}/{path.name}: {label} (p={p:.2f}, entropy {h:.3f}, MI {mi:.4f})")
        exported = export_torchscript(predictor, args.out / f"{name}.torchscript.pt")
        module = torch.jit.load(str(exported))
        x = predictor.prepare([str(p) for p in test_images]).float() / 255
        probs, _ = module(x)
        assert torch.allclose(probs, out.probs, atol=1e-5), "exported model differs from the ensemble"
        print(f"{name:15s} exported to {exported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
