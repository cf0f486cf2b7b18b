"""Network Fission Ensembles: inference FLOPs and training-step time vs a single model, measured in one run.

Builds, from the same config, the single backbone, the structured fission network (``grouping: channels``: thin
dense paths; once with ``path_execution: loop``, once ``packed``, the packed one a copy of the loop's weights) and
the unstructured one (``grouping: balanced``: masked full-width copies), prunes/splits both
(SNIP on one batch) and prints

* dense inference FLOPs / single (what dense kernels do; the issue's target for the structured mode: <= 1.1 at
  sparsity 0.5) and sparse inference FLOPs / single (non-zero weights only);
* training-step time / single-model step (forward + backward + SGD step on the same batch; the fission loss with
  distillation for the ensembles, cross-entropy for the single model; target for the structured mode: <= 1.2 on
  CPU; on GPU the packed structured mode's target is <= 0.7). Rounds are interleaved so machine noise hits
  every variant alike; a ratio is the median over rounds of the per-round ratio of mean step times. Compare
  ratios, not absolute times.

Usage: python benchmarks/bench_fission.py [--model resnet20] [--exits 3] [--sparsity 0.5] [--batch 128]
       [--steps 5] [--rounds 3] [--threads N] [--device cpu|cuda] [--no-unstructured]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from ensemblekit.methods.fission.loss import fission_loss
from ensemblekit.metrics import inference_flops
from ensemblekit.pruning.sparse_flops import sparse_inference_flops
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble


def _build(args, grouping):
    cfg = config_from_dict(
        {
            "data": {"name": "synthetic"},
            "model": {"name": args.model},
            "method": {"name": "fission", "members": args.exits, "sparsity": args.sparsity, "grouping": grouping},
            "train": {"seed": 0},
        }
    )
    return build_ensemble(cfg, 10, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--exits", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-unstructured", action="store_true", help="time the single and structured nets only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)

    method, structured = _build(args, "channels")
    unstructured_method, unstructured = _build(args, "balanced")
    methods = {"structured": method, "unstructured": unstructured_method}
    single = method.single_backbone()
    nets = {"single": single, "structured": structured, "unstructured": unstructured}
    if args.no_unstructured:
        del nets["unstructured"]
    for name, net in nets.items():
        net.to(device, memory_format=fmt)
        if name != "single":
            methods[name].apply_fission(net, [(x[:64], y[:64])])
    structured.path_execution = "loop"
    nets["structured_packed"] = copy.deepcopy(structured)
    nets["structured_packed"].path_execution = "packed"

    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; {args.model}, "
        f"N={args.exits}, sparsity {args.sparsity}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds"
    )
    single_flops = inference_flops(single, (1, 3, 32, 32))
    for name in ("structured", "unstructured")[: 1 if args.no_unstructured else 2]:  # packed: structured's FLOPs
        counts = sparse_inference_flops(nets[name], (1, 3, 32, 32))
        print(
            f"{name:>12}: dense inference FLOPs / single = {counts['dense'] / single_flops:.3f}, "
            f"sparse / single = {counts['sparse'] / single_flops:.3f}"
        )

    opts = {n: torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for n, net in nets.items()}

    def step(name):
        net, opt = nets[name], opts[name]
        out = net(x)
        loss = F.cross_entropy(out, y) if name == "single" else fission_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(name):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(name)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    for name in nets:  # warm-up
        step(name)
    ratios = {(name, "single"): [] for name in nets if name != "single"}
    ratios[("structured_packed", "structured")] = []
    for _ in range(args.rounds):
        times = {name: timed(name) for name in nets}
        for (name, base), values in ratios.items():
            values.append(times[name] / times[base])
    for (name, base), values in ratios.items():
        print(
            f"{name:>17}: training step / {base} step = {statistics.median(values):.3f} (rounds: "
            + ", ".join(f"{v:.3f}" for v in values)
            + ")"
        )


if __name__ == "__main__":
    main()
