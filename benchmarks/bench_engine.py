"""Engine speed ratios, measured in one run (compare, don't quote absolute times).

1. Engine overhead: training throughput of the engine on resnet20 vs a bare PyTorch loop over the same model,
   data pipeline and optimiser (target >= 0.95).
2. A 4-member deep ensemble trained member after member vs four single-model trainings (target <= 1.05).
3. Member execution for 4 resnet20s, forward + backward: a loop over members vs ``torch.func.vmap`` over
   stacked parameters vs one grouped-convolution network (members packed on channels).

Usage: python benchmarks/bench_engine.py [--steps 30] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.data import BatchLoader, load_data
from ensemblekit.metrics import TrainCostMeter
from ensemblekit.models import create_model
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.training.engine import Engine
from ensemblekit.training.progress import Progress
from ensemblekit.training.stage import OptimSpec, ScheduleSpec, Stage


class _Fabric:
    """The parts of Fabric the engine uses, for a single local device (the real one is used in (2))."""

    def __init__(self, device):
        from lightning.fabric import Fabric

        self._f = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=1)
        self._f.launch()

    def __getattr__(self, name):
        return getattr(self._f, name)


def bare_loop(model, loader, steps, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    n, t0 = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def engine_loop(model, data, steps, device, fabric):
    meter = TrainCostMeter(1.0, len(data.train.labels))
    engine = Engine(
        fabric,
        data,
        {"ensemble": model},
        batch_size=128,
        cost_meter=meter,
        progress=Progress("quiet"),
        max_steps_per_epoch=steps,
    )
    stage = Stage(
        "bench", model, epochs=1, optim=OptimSpec(lr=0.05), schedule=ScheduleSpec("cosine"), flops_per_image=1.0
    )
    t0 = time.perf_counter()
    engine.run([stage])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * 128 / (time.perf_counter() - t0)


def packed_resnet20(members: int, num_classes: int = 10) -> nn.Module:
    """resnet20 x M packed on channels: every conv grouped by member (Packed-Ensembles with alpha = 1)."""

    def conv(cin, cout, stride=1, k=3):
        return nn.Conv2d(cin * members, cout * members, k, stride, k // 2, groups=members, bias=False)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = conv(cin, cout, stride), nn.BatchNorm2d(cout * members)
            self.c2, self.b2 = conv(cout, cout), nn.BatchNorm2d(cout * members)
            self.sc = None
            if stride != 1 or cin != cout:
                self.sc = nn.Sequential(conv(cin, cout, stride, 1), nn.BatchNorm2d(cout * members))

        def forward(self, x):
            out = F.relu(self.b1(self.c1(x)))
            out = self.b2(self.c2(out))
            return F.relu(out + (x if self.sc is None else self.sc(x)))

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3 * members, 16 * members, 3, 1, 1, groups=members, bias=False),
                nn.BatchNorm2d(16 * members),
                nn.ReLU(),
            )
            layers, cin = [], 16
            for cout, stride in ((16, 1), (32, 2), (64, 2)):
                for b in range(3):
                    layers.append(Block(cin, cout, stride if b == 0 else 1))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Conv1d(64 * members, num_classes * members, 1, groups=members)

        def forward(self, x):
            h = self.layers(self.stem(x.repeat(1, members, 1, 1)))
            h = h.mean((2, 3)).unsqueeze(-1)
            return self.fc(h).view(x.shape[0], members, -1).transpose(0, 1)

    return Packed()


def member_execution(device, steps: int = 10, members: int = 4, batch: int = 128) -> dict[str, float]:
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    nets = [create_model("resnet20", num_classes=10).to(device) for _ in range(members)]

    def timeit(fn):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    def loop():
        for net in nets:
            F.cross_entropy(net(x), y).backward()

    vnets = [copy.deepcopy(n) for n in nets]
    for n in vnets:
        torch.func.replace_all_batch_norm_modules_(n)
    params, buffers = torch.func.stack_module_state(vnets)
    base = copy.deepcopy(vnets[0]).to("meta")

    def call(p, b, xx):
        return torch.func.functional_call(base, (p, b), (xx,))

    def vmapped():
        out = torch.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
        F.cross_entropy(out.reshape(-1, 10), y.repeat(members)).backward()

    packed = packed_resnet20(members).to(device)

    def grouped():
        out = packed(x)
        F.cross_entropy(out.reshape(-1, 10), y.repeat(members)).backward()

    t_loop, t_vmap, t_group = timeit(loop), timeit(vmapped), timeit(grouped)
    return {"loop_s": t_loop, "vmap_vs_loop": t_vmap / t_loop, "grouped_vs_loop": t_group / t_loop}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default="synthetic", help="data set for (1) and (2)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    data = load_data(args.data, train_size=128 * args.steps)
    fabric = _Fabric(device)
    bare, eng = [], []
    for rep in range(3):  # interleave to share the machine's noise
        torch.manual_seed(rep)
        model = create_model("resnet20", num_classes=data.num_classes).to(device)
        loader = BatchLoader(data.train, 128, mean=data.mean, std=data.std, shuffle=True, augment=True, device=device)
        bare.append(bare_loop(model, loader, args.steps, device))
        torch.manual_seed(rep)
        model = create_model("resnet20", num_classes=data.num_classes).to(device)
        eng.append(engine_loop(model, data, args.steps, device, fabric))
    print(
        f"(1) engine vs bare loop, resnet20, batch 128: bare {max(bare):.0f} img/s, engine {max(eng):.0f} img/s, "
        f"ratio {max(eng) / max(bare):.3f} (target >= 0.95)"
    )

    base = {
        "data": {"name": args.data, "train_size": 1024, "test_size": 256, "batch_size": 128},
        "model": {"name": "resnet20"},
        "train": {"epochs": 2},
        "runtime": {"accelerator": device.type},
    }
    with tempfile.TemporaryDirectory() as tmp:
        singles = 0.0
        for i in range(4):
            cfg = config_from_dict({**base, "method": {"name": "single"}, "train": {"epochs": 2, "seed": i}})
            singles += train(cfg, f"{tmp}/single{i}", quiet=True)["costs"]["train_seconds"]
        cfg = config_from_dict({**base, "method": {"name": "deep_ensemble", "members": 4}})
        de = train(cfg, f"{tmp}/de", quiet=True)["costs"]["train_seconds"]
    print(
        f"(2) deep ensemble (4 members, sequential) vs 4 single trainings: {de:.1f} s vs {singles:.1f} s, "
        f"ratio {de / singles:.3f} (target <= 1.05)"
    )

    r = member_execution(device)
    print(
        f"(3) 4 x resnet20 fwd+bwd, batch 128: loop {r['loop_s'] * 1000:.0f} ms/step; "
        f"vmap {r['vmap_vs_loop']:.2f}x loop; grouped conv {r['grouped_vs_loop']:.2f}x loop"
    )


if __name__ == "__main__":
    main()
