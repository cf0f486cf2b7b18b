"""Time of a corrupted-test-set evaluation: corruption generation vs the model's forward pass, and the total.

The issue's target: evaluating a resnet20 on all corruptions x 5 severities of a 10,000-image test set in under
5 minutes on 2 CPU cores. Random ``uint8`` images stand in for the test set (generation time does not depend on
the content, except for Pillow's JPEG encoder, slightly).

By default each (corruption, severity) is generated for ``--sample`` images (in the evaluator's 1000-image chunks)
and the model's forward throughput is measured on ``--forward-batches`` batches; the full-size time is projected
from the measured rates (images/s). ``--full`` runs everything on all ``--images`` instead (what
``ensemblekit evaluate --corruptions`` does, minus the metrics).

Usage: python benchmarks/bench_corruptions.py [--images 10000] [--sample 2000] [--corruptions all]
       [--severities 1-5] [--model resnet20] [--members 1] [--threads 2] [--batch 500] [--full] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ensemblekit.data import ImageTensors
from ensemblekit.data.corruptions import parse_severities, resolve_corruptions
from ensemblekit.data.stats import CIFAR10_MEAN, CIFAR10_STD
from ensemblekit.evaluation.corrupted import corrupted_split
from ensemblekit.models import create_model
from ensemblekit.training.evaluate import collect_member_probs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--sample", type=int, default=2000, help="images per cell actually generated (projection)")
    p.add_argument("--corruptions", default="all")
    p.add_argument("--severities", default="1-5")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--members", type=int, default=1, help="forward cost is multiplied by this (independent members)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--forward-batches", type=int, default=6)
    p.add_argument("--full", action="store_true", help="generate and forward every image of every cell")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--precision", choices=["32", "bf16"], default="32", help="forward under bfloat16 autocast")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = resolve_corruptions([args.corruptions])
    severities = parse_severities(args.severities)
    n = args.images if args.full else min(args.sample, args.images)
    g = torch.Generator().manual_seed(0)
    split = ImageTensors(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        [str(i) for i in range(10)],
    )
    model = create_model(args.model, num_classes=10).eval().to(memory_format=torch.channels_last)
    autocast = torch.bfloat16 if args.precision == "bf16" else None

    # forward throughput (channels-last, eval mode, as ensemblekit evaluate on CPU)
    fwd_split = split if args.full else split.subset(torch.arange(min(n, args.batch * args.forward_batches)))
    collect_member_probs(
        model,
        fwd_split.subset(torch.arange(min(len(fwd_split), args.batch))),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        batch_size=args.batch,
        channels_last=True,
        autocast_dtype=autocast,
    )  # warm-up
    rows = []
    gen_total = fwd_total = 0.0
    for name in names:
        gen = 0.0
        for s in severities:
            t0 = time.perf_counter()
            corrupted = corrupted_split(split, name, s, seed=0)
            gen += time.perf_counter() - t0
            if args.full:
                t0 = time.perf_counter()
                collect_member_probs(
                    model,
                    corrupted,
                    mean=CIFAR10_MEAN,
                    std=CIFAR10_STD,
                    batch_size=args.batch,
                    channels_last=True,
                    autocast_dtype=autocast,
                )
                fwd_total += time.perf_counter() - t0
        rate = n * len(severities) / gen
        rows.append({"corruption": name, "images_per_second": rate})
        gen_total += gen
        print(f"{name:18s} generation {rate:9.0f} images/s", flush=True)
    if not args.full:
        t0 = time.perf_counter()
        collect_member_probs(
            model,
            fwd_split,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            batch_size=args.batch,
            channels_last=True,
            autocast_dtype=autocast,
        )
        fwd_rate = len(fwd_split) / (time.perf_counter() - t0)
    else:
        fwd_rate = n * len(names) * len(severities) / fwd_total
    fwd_rate /= args.members
    gen_rate = n * len(names) * len(severities) / gen_total
    total_images = args.images * len(names) * len(severities)
    projected_gen, projected_fwd = total_images / gen_rate, total_images / fwd_rate
    result = {
        "images": args.images,
        "cells": len(names) * len(severities),
        "corrupted_images": total_images,
        "threads": args.threads,
        "model": args.model,
        "precision": args.precision,
        "members": args.members,
        "measured_on_images_per_cell": n,
        "generation_images_per_second": gen_rate,
        "forward_images_per_second": fwd_rate,
        "projected_generation_seconds": projected_gen,
        "projected_forward_seconds": projected_fwd,
        "projected_total_seconds": projected_gen + projected_fwd,
        "per_corruption": rows,
    }
    print(
        f"\n{len(names)} corruptions x {len(severities)} severities x {args.images} images = {total_images} images, "
        f"{args.threads} threads\n"
        f"generation {gen_rate:8.0f} images/s -> {projected_gen:7.1f} s\n"
        f"{args.model} x{args.members} forward ({args.precision}) {fwd_rate:8.0f} images/s -> {projected_fwd:7.1f} s\n"
        f"total {'measured' if args.full else 'projected'}: {projected_gen + projected_fwd:.1f} s "
        f"({(projected_gen + projected_fwd) / 60:.1f} min; target < 5 min)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
