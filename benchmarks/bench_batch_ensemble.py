"""BatchEnsemble step cost vs single-model steps on the same rows, measured in one run (compare ratios only).

One BatchEnsemble training step (M members, B unique images tiled to M·B rows, one forward + backward + SGD
step of the whole ensemble, param groups as the method builds them) is compared with

(a) **four single-model steps on the same rows**, the issue's target: M independent resnet20s (a deep
    ensemble trained jointly), each doing forward + backward + SGD step on the same B images — M steps of B
    rows, M·B rows in total, exactly the rows the BatchEnsemble step processes (target: ratio <= 1.15);
(b) one single-model step on all M·B rows at once (the same convolutions at the same batch size, so the ratio
    isolates the overhead of the rank-1 factors r, s and the member biases);
(c) as (a) for the BatchEnsemble with plain autograd (``fused_backward: false``, the ``auto`` choice on GPUs)
    instead of the fused convolution node of :mod:`ensemblekit.layers.batch_ensemble_fused` (used in (a), (b);
    the ``auto`` choice on CPU);
(d) as (a) with ``conv_execution: member_weights`` (each member's rows convolved with its formed weight: M
    convolutions of B rows per layer, no full-size elementwise passes).

Rounds are interleaved so that machine noise hits every variant alike; a variant's time is the median over rounds
of its mean step time, and a ratio is the median over rounds of the per-round ratio.

Usage: python benchmarks/bench_batch_ensemble.py [--model resnet20] [--members 4] [--batch 32] [--steps 10]
       [--rounds 3] [--device cpu|cuda] [--threads N] [--channels-last auto|on|off]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ensemblekit.layers.batch_ensemble import BatchEnsembleLayers
from ensemblekit.methods.batch_ensemble import BatchEnsembleNet, batch_ensemble_param_groups
from ensemblekit.models import build_model, create_model
from ensemblekit.training.optim import build_optimizer
from ensemblekit.training.stage import OptimSpec


def _sgd(groups):
    return build_optimizer(groups, OptimSpec(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="unique images per step (B)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cl = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cpu")
    fmt = torch.channels_last if cl else torch.contiguous_format
    m, b = args.members, args.batch
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, channels_last {cl}; "
        f"{args.model}, M={m}, B={b} unique images ({m * b} rows), {args.steps} steps x {args.rounds} rounds"
    )

    torch.manual_seed(0)
    spec = create_model(args.model, num_classes=10).spec
    ens = BatchEnsembleNet(build_model(spec, layers=BatchEnsembleLayers(m, fused=True, conv_execution="folded")), m)
    ens = ens.to(device, memory_format=fmt)
    ens_opt = _sgd(batch_ensemble_param_groups(ens, 0.5))
    plain = BatchEnsembleNet(build_model(spec, layers=BatchEnsembleLayers(m, fused=False, conv_execution="folded")), m)
    plain = plain.to(device, memory_format=fmt)
    plain_opt = _sgd(batch_ensemble_param_groups(plain, 0.5))
    memw = BatchEnsembleNet(build_model(spec, layers=BatchEnsembleLayers(m, conv_execution="member_weights")), m)
    memw = memw.to(device, memory_format=fmt)
    memw_opt = _sgd(batch_ensemble_param_groups(memw, 0.5))
    singles = [create_model(args.model, num_classes=10).to(device, memory_format=fmt) for _ in range(m)]
    single_opts = [_sgd([{"params": s.parameters()}]) for s in singles]
    x = torch.randn(b, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (b,), device=device)
    x_all, y_all = x.repeat(m, 1, 1, 1).contiguous(memory_format=fmt), y.repeat(m)

    def step(net, opt, inputs, targets):
        out = net(inputs)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    variants = {
        "batch_ensemble": lambda: step(ens, ens_opt, x, y.repeat(m)),
        "be_plain_autograd": lambda: step(plain, plain_opt, x, y.repeat(m)),
        "be_member_weights": lambda: step(memw, memw_opt, x, y.repeat(m)),
        "singles_same_rows": lambda: [step(s, o, x, y) for s, o in zip(singles, single_opts)],
        "single_all_rows": lambda: step(singles[0], single_opts[0], x_all, y_all),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        for _ in range(2):
            fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"  {name:18s} {1000 * t:8.1f} ms/step  (rounds: {', '.join(f'{1000 * v:.1f}' for v in times[name])})")

    def ratio(a: str, b: str) -> float:
        """Median over rounds of the per-round ratio (variants of one round share the machine's state)."""
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    r = ratio("batch_ensemble", "singles_same_rows")
    print(
        f"(a) BatchEnsemble step / {m} single-model steps of {b} rows: {r:.3f} "
        f"(target <= 1.15: {'met' if r <= 1.15 else 'NOT met'})"
    )
    print(
        f"(b) BatchEnsemble step / 1 single-model step of {m * b} rows: "
        f"{ratio('batch_ensemble', 'single_all_rows'):.3f} (overhead of the rank-1 factors)"
    )
    print(
        f"(c) BatchEnsemble step with plain autograd (fused_backward: false) / {m} single-model steps: "
        f"{ratio('be_plain_autograd', 'singles_same_rows'):.3f}"
    )
    r = ratio("be_member_weights", "singles_same_rows")
    print(
        f"(d) BatchEnsemble step with member weights (conv_execution: member_weights) / {m} single-model steps: "
        f"{r:.3f} (target <= 1.15: {'met' if r <= 1.15 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
