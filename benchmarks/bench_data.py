"""Data-pipeline micro-benchmark; prints timings and ratios measured in this run (no assertions).

1. Load time of CIFAR-10 (60,000 images) from the image folder found via ``ENSEMBLEKIT_DATA`` or
   ``../shared/data``: the first load decodes and fills a fresh decode cache, the second reads the cache
   (target: under 2 s).
2. Augmentation throughput (``augment_batch`` and a whole ``BatchLoader``, batches of 128) against
   ResNet-20 training throughput (forward + backward + SGD step, batches of 128); target ratio >= 20x.
3. Time of ``ensemblekit.metrics.ensemble_metrics`` on random ``[4, 10000, 100]`` probabilities.

Usage: ``python benchmarks/bench_data.py [--root DIR] [--cache-dir DIR]`` (default: a fresh temporary cache).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ensemblekit.data import BatchLoader, ImageTensors, augment_batch, load_data
from ensemblekit.data.cifar import CIFAR10, find_cifar
from ensemblekit.data.paths import resolve_root
from ensemblekit.data.synthetic import make_synthetic

BATCH = 128


def data_root(arg: str | None) -> Path | None:
    """The data root holding CIFAR-10: ``--root``, ``ENSEMBLEKIT_DATA``, or ``../shared/data`` beside the repo."""
    candidates = [resolve_root(arg)] if arg or os.environ.get("ENSEMBLEKIT_DATA") else []
    candidates.append((Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve())
    for root in candidates:
        if find_cifar(CIFAR10, root)[0] is not None:
            return root
    return None


def bench_load(root: Path, cache_dir: Path) -> torch.Tensor:
    """Time the first (decoding) and second (cached) load of CIFAR-10; returns the training images."""
    start = time.perf_counter()
    first = load_data("cifar10", root=root, cache_dir=cache_dir)
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    second = load_data("cifar10", root=root, cache_dir=cache_dir)
    t_second = time.perf_counter() - start
    n = len(second.train) + len(second.test)
    print(f"[load] cifar10: {n} images from {second.source}")
    print(f"[load] first load  {t_first:7.2f} s  ({first.source})")
    print(f"[load] cached load {t_second:7.2f} s  (target < 2 s: {'met' if t_second < 2 else 'MISSED'})")
    print(f"[load] ratio first / cached = {t_first / t_second:.1f}x")
    return second.train.images


def images_per_second(step, images: int, repeats: int) -> float:
    """Run ``step`` ``repeats`` times (after one warm-up) and return images per second."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return images * repeats / (time.perf_counter() - start)


def resnet20() -> nn.Module:
    """ResNet-20 from ``ensemblekit.models`` if available, else a local CIFAR ResNet-20 (He et al., 2016)."""
    try:
        from ensemblekit.models import create_model

        return create_model("resnet20", num_classes=10)
    except Exception as e:  # the models package may not be there yet
        print(f"[train] ensemblekit.models unavailable ({type(e).__name__}); using the local ResNet-20")

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.short(x))

    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def bench_augment_vs_training(images: torch.Tensor) -> None:
    """Augmentation and loader throughput against ResNet-20 training throughput."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    generator = torch.Generator().manual_seed(0)
    batch = images[:BATCH].contiguous()
    aug = images_per_second(lambda: augment_batch(batch, mean, std, generator), BATCH, 50)
    rows = images[: BATCH * 50]
    source = ImageTensors(rows, torch.zeros(rows.shape[0], dtype=torch.int64), ["any"])
    loader = BatchLoader(source, BATCH, mean=mean, std=std, shuffle=True, augment=True, drop_last=True)
    start = time.perf_counter()
    count = sum(x.shape[0] for x, _ in loader)
    loader_rate = count / (time.perf_counter() - start)

    model = resnet20()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = augment_batch(batch, mean, std, generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    train = images_per_second(train_step, BATCH, 10)
    print(f"[augment] augment_batch: {aug:10.0f} images/s (50 batches of {BATCH}, {torch.get_num_threads()} threads)")
    print(f"[augment] BatchLoader (index + augment + normalise): {loader_rate:10.0f} images/s")
    print(f"[train] resnet20 forward+backward+SGD: {train:10.0f} images/s (10 steps of {BATCH})")
    print(f"[ratio] augment_batch / training = {aug / train:.1f}x (target >= 20x)")
    print(f"[ratio] BatchLoader / training   = {loader_rate / train:.1f}x")


def bench_metrics() -> None:
    """Time ``ensemble_metrics`` on random [4, 10000, 100] probabilities, if the metrics package has it."""
    try:
        from ensemblekit.metrics import ensemble_metrics
    except ImportError as e:
        print(f"[metrics] skipped ({e})")
        return
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(4, 10_000, 100, generator=generator).softmax(-1)
    labels = torch.randint(0, 100, (10_000,), generator=generator)
    ensemble_metrics(probs, labels)
    start = time.perf_counter()
    result = ensemble_metrics(probs, labels)
    elapsed = time.perf_counter() - start
    print(f"[metrics] ensemble_metrics on [4, 10000, 100]: {elapsed * 1000:.1f} ms ({len(result)} values)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="data root holding CIFAR-10 (default: ENSEMBLEKIT_DATA or ../shared/data)")
    parser.add_argument("--cache-dir", help="decode cache to use (default: a fresh temporary one)")
    args = parser.parse_args()

    root = data_root(args.root)
    with tempfile.TemporaryDirectory(prefix="ensemblekit-bench-cache-") as tmp:
        if root is None:
            print("[load] skipped: CIFAR-10 not found (set ENSEMBLEKIT_DATA); using synthetic images below")
            images = make_synthetic(BATCH * 51).images
        else:
            images = bench_load(root, Path(args.cache_dir) if args.cache_dir else Path(tmp))
    bench_augment_vs_training(images)
    bench_metrics()


if __name__ == "__main__":
    main()
