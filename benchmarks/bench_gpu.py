"""GPU throughput of the engine, measured in one run (issue 15 targets; compare ratios, quote images/s per GPU).

(a) A bare, sync-free PyTorch loop (data, indices and augmentation on the device, fused SGD, autocast) vs the engine
    on the same model, batch and precision: images/s and ratio (target >= 0.95), resnet20 and wrn28_10 in bf16.
(b) 4 x resnet20 trained packed (``runtime.member_execution: packed``) vs sequentially by the engine: member-images/s
    and ratio (target >= 2.5 on a GPU).
(c) Host-device synchronisations per engine step, counted with ``torch.cuda.set_sync_debug_mode`` (target 0
    between the periodic finite-loss checks; the epoch's start and end sync on purpose).
(d) Projected epoch and 200-epoch times of the paper configs (50,000 CIFAR images per epoch) from (a) and (b).

On CPU (``--device cpu``, or no GPU) the same code paths run on a small model in float32 so the benchmark cannot
rot; ``--tiny`` shrinks everything to seconds (the test suite runs it). Usage:

    python benchmarks/bench_gpu.py [--device cuda|cpu] [--steps 50] [--batch 128] [--tiny]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from ensemblekit.data import load_data
from ensemblekit.metrics import TrainCostMeter
from ensemblekit.models import create_model
from ensemblekit.training.engine import Engine
from ensemblekit.training.packed_members import pack_member_stages
from ensemblekit.training.progress import Progress
from ensemblekit.training.stage import OptimSpec, ScheduleSpec, Stage, StageHooks

CIFAR_TRAIN = 50_000
PAPER_EPOCHS = 200


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_fabric(device: torch.device, precision: str):
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=device.type, devices=1, precision=precision)
    fabric.launch()
    return fabric


def build(name: str, device: torch.device, channels_last: bool, **kw) -> torch.nn.Module:
    model = create_model(name, num_classes=10, **kw).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bare_loop(model, images, labels, steps: int, batch: int, device, precision: str, channels_last: bool) -> float:
    """Images/s of a sync-free loop: on-device permutation, crop/flip and normalisation, fused SGD, autocast."""
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, **fused)
    gen = torch.Generator(device=device).manual_seed(0)
    mean = torch.tensor([0.49, 0.48, 0.45], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.24, 0.26], device=device).view(1, 3, 1, 1)
    padded = F.pad(images, (4, 4, 4, 4))
    n, h, w = images.shape[0], images.shape[2], images.shape[3]
    ar_h, ar_w = torch.arange(h, device=device), torch.arange(w, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    model.train()

    def step(i: int, order: torch.Tensor) -> None:
        idx = order[(i * batch) % (n - batch + 1) :][:batch]
        r = torch.randint(0, 9, (batch, 1, 1), generator=gen, device=device)
        c = torch.randint(0, 9, (batch, 1), generator=gen, device=device)
        flip = torch.rand(batch, 1, generator=gen, device=device) < 0.5
        cols = c + torch.where(flip, w - 1 - ar_w, ar_w)
        flat = ((r + ar_h[:, None]) * (w + 8) + cols[:, None, :]).view(batch, 1, h * w).expand(batch, 3, h * w)
        x = padded[idx].view(batch, 3, -1).gather(2, flat).view(batch, 3, h, w)
        x = (x.float() / 255 - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    order = torch.randperm(n, generator=gen, device=device)
    for i in range(3):  # warm-up (cuDNN autotuning)
        step(i, order)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i, order)
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _engine(fabric, data, modules, batch, steps, channels_last: bool) -> Engine:
    return Engine(
        fabric,
        data,
        modules,
        batch_size=batch,
        cost_meter=TrainCostMeter(1.0, len(data.train.labels)),
        progress=Progress("quiet"),
        max_steps_per_epoch=steps,
        channels_last=channels_last,
        fused_optimizer=fabric.device.type == "cuda",
    )


def _stage(name: str, module, epochs: int, seed: int = 0, hooks: StageHooks | None = None) -> Stage:
    return Stage(
        name,
        module,
        epochs,
        optim=OptimSpec(lr=0.05),
        schedule=ScheduleSpec("cosine"),
        data_seed=seed,
        flops_per_image=1.0,
        hooks=hooks or StageHooks(),
    )


def engine_img_s(model, fabric, data, steps: int, batch: int, channels_last: bool) -> float:
    """Images/s of the engine's second epoch (the first one warms up): the time between two epoch ends."""
    ends: list[float] = []

    def mark(ctx) -> None:
        sync(fabric.device)
        ends.append(time.perf_counter())

    engine = _engine(fabric, data, {"ensemble": model}, batch, steps, channels_last)
    engine.run([_stage("bench", model, 2, hooks=StageHooks(after_epoch=[mark]))])
    return steps * batch / (ends[1] - ends[0])


def packed_vs_sequential(name, kw, fabric, data, steps, batch, members, channels_last) -> dict[str, float]:
    """Member-images/s of ``members`` networks trained by the engine one after another and packed."""
    out = {}
    for mode in ("loop", "packed"):
        torch.manual_seed(0)
        nets = [build(name, fabric.device, channels_last, **kw) for _ in range(members)]
        stages = [_stage(f"member_{i}", net, 2, seed=i) for i, net in enumerate(nets)]
        stages, _ = pack_member_stages(stages, mode, fabric.device)
        engine = _engine(fabric, data, {"ensemble": torch.nn.ModuleList(nets)}, batch, steps, channels_last)
        engine.run(stages[:1])  # warm-up (cuDNN autotuning, first kernels)
        sync(fabric.device)
        t0 = time.perf_counter()
        engine.run(stages)
        sync(fabric.device)
        out[mode] = members * 2 * steps * batch / (time.perf_counter() - t0)
    return out


def syncs_per_step(model, fabric, data, steps: int, batch: int, channels_last: bool) -> float | None:
    """Host syncs per step over one engine epoch (CUDA sync debug mode; ``None`` on other devices)."""
    if fabric.device.type != "cuda":
        return None
    engine = _engine(fabric, data, {"ensemble": model}, batch, steps, channels_last)
    engine.run([_stage("warm", model, 1)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.run([_stage("count", model, 1)])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="seconds-long CPU smoke run (the test suite's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.tiny:
        args.steps, args.batch, args.members = 2, 8, 2
    precision = "bf16-mixed" if gpu else "32-true"
    channels_last = True
    if gpu:
        torch.backends.cudnn.benchmark = True
        models = {"resnet20": {}, "wrn28_10": {}}
        small = ("resnet20", {})
    else:  # the same code paths on a small model
        models = {"resnet8 (w 0.25)": {"name": "resnet8", "width": 0.25}}
        small = ("resnet8", {"width": 0.25})
    name_of = {k: v.pop("name", k) for k, v in models.items()}
    print(f"device {device} ({torch.cuda.get_device_name() if gpu else 'cpu'}), torch {torch.__version__}, {precision}")
    data = load_data("synthetic", train_size=args.batch * args.steps * max(2, args.members), test_size=16)
    fabric = make_fabric(device, precision)
    images = data.train.images.to(device)
    labels = data.train.labels.to(device)
    results: dict = {"device": device.type, "models": {}}
    for label, kw in models.items():
        name = name_of[label]
        torch.manual_seed(0)
        model = build(name, device, channels_last, **kw)
        bare = bare_loop(model, images, labels, args.steps, args.batch, device, precision, channels_last)
        torch.manual_seed(0)
        model = build(name, device, channels_last, **kw)
        eng = engine_img_s(model, fabric, data, args.steps, args.batch, channels_last)
        epoch = CIFAR_TRAIN / eng
        results["models"][label] = {"bare_img_s": bare, "engine_img_s": eng, "ratio": eng / bare, "epoch_s": epoch}
        print(
            f"(a) {label}, batch {args.batch}: bare {bare:,.0f} img/s, engine {eng:,.0f} img/s, ratio {eng / bare:.3f}"
            " (target >= 0.95)"
        )
    name, kw = small
    packed = packed_vs_sequential(name, kw, fabric, data, args.steps, args.batch, args.members, channels_last)
    ratio = packed["packed"] / packed["loop"]
    results["packed"] = {**packed, "ratio": ratio}
    print(
        f"(b) {args.members} x {name} trained by the engine: sequential {packed['loop']:,.0f} member-img/s, packed "
        f"{packed['packed']:,.0f} member-img/s, ratio {ratio:.2f} (target >= 2.5 on a GPU)"
    )
    torch.manual_seed(0)
    model = build(name, device, channels_last, **kw)
    syncs = syncs_per_step(model, fabric, data, args.steps, args.batch, channels_last)
    results["syncs_per_step"] = syncs
    print(
        "(c) host syncs per engine step (one epoch, incl. its start and end): "
        + ("n/a on CPU" if syncs is None else f"{syncs:.2f} (target 0 between the periodic checks)")
    )
    for label, r in results["models"].items():
        total = PAPER_EPOCHS * r["epoch_s"]
        print(
            f"(d) {label}: {r['epoch_s']:.1f} s per CIFAR epoch, {total / 60:.1f} min for {PAPER_EPOCHS} epochs, "
            f"deep ensemble of {args.members} sequential {args.members * total / 3600:.2f} h"
        )
    seq_epoch = CIFAR_TRAIN * args.members / packed["loop"]
    packed_epoch = CIFAR_TRAIN * args.members / packed["packed"]
    print(
        f"(d) {args.members} x {name} deep ensemble, {PAPER_EPOCHS} epochs: sequential "
        f"{PAPER_EPOCHS * seq_epoch / 60:.1f} min, packed {PAPER_EPOCHS * packed_epoch / 60:.1f} min"
    )
    return results


if __name__ == "__main__":
    main()
