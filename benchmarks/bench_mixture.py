"""MixtureEnsembles execution forms: packed (grouped convolutions) vs loop (one pass per member), one run.

Times a training step (forward, loss, backward, SGD step) and an eval forward of a MixtureEnsemble on
resnet20 with M members, in both memory formats (contiguous NCHW, and channels-last as runs use on
CPU). Loop and packed runs are interleaved over ``--repeats`` rounds and the median is kept, so both share
the machine's noise; the printed ratio ``packed / loop`` < 1 means packed is faster. The default of
``execution: auto`` per device type (``AUTO_LAYOUT`` in ``ensemblekit.methods.mixture``) follows this.

Usage: python benchmarks/bench_mixture.py [--members 4] [--batch 128] [--steps 5] [--repeats 3]
       [--threads 1] [--budget 1.0] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from ensemblekit.methods.mixture import build_mixture_ensemble
from ensemblekit.models import create_model
from ensemblekit.training.losses import member_cross_entropy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_train(ens, x, y, steps: int) -> float:
    """Seconds per training step."""
    opt = torch.optim.SGD(ens.parameters(), lr=0.01, momentum=0.9)
    ens.train()
    for i in range(steps + 1):  # first step is warm-up
        if i == 1:
            _sync(x.device)
            t0 = time.perf_counter()
        loss = member_cross_entropy(ens(x), y, "sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(x.device)
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def time_eval(ens, x, steps: int) -> float:
    """Seconds per eval forward."""
    ens.eval()
    ens(x)
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        ens(x)
    _sync(x.device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_mixture_ensemble(
        lambda layers: create_model("resnet20", 10, layers=layers), members=args.members, param_budget=args.budget
    ).to(device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    print(
        f"resnet20 mixture, M={args.members}, budget {args.budget}x, batch {args.batch}, device {device}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xf = x.contiguous(memory_format=fmt)
        times: dict[str, dict[str, list[float]]] = {k: {"loop": [], "packed": []} for k in ("train", "eval")}
        for _ in range(args.repeats):
            for mode in ("loop", "packed"):
                ens = copy.deepcopy(base).to(memory_format=fmt)
                ens.layout = mode
                times["train"][mode].append(time_train(ens, xf, y, args.steps))
                times["eval"][mode].append(time_eval(ens, xf, args.steps))
        for kind, t in times.items():
            loop, packed = statistics.median(t["loop"]), statistics.median(t["packed"])
            print(
                f"{fmt_name:13s} {kind:5s}: loop {loop * 1000:7.1f} ms, packed {packed * 1000:7.1f} ms, "
                f"packed/loop = {packed / loop:.2f}"
            )


if __name__ == "__main__":
    main()
