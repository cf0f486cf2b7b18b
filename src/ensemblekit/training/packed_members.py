"""Packed members: several independent networks of one architecture trained in one forward and backward pass.

Deep ensembles, bagging and MotherNets' hatched members train M networks of the same architecture, each on its
own data order, one after another. A small backbone (resnet20: 0.27M parameters) cannot fill a GPU, so their
wall time is M x a member's. Packing trains them together: the members' parameters and buffers are stacked
along a new leading dimension, ``P[n] = stack_i(θ_i[n])``, and one ``torch.func.vmap`` over
``functional_call(template, P_i, x_i)`` computes every member's logits on its own batch ``x_i`` in one pass
(batched convolutions become grouped convolutions, as in Packed-Ensembles, Laurent et al., 2023). The loss is
Σ_i CE_i, whose gradient with respect to θ_i is the gradient of member i's own loss, and the optimiser (SGD or
AdamW, elementwise) updates the stacked tensors exactly as M separate optimisers with the same settings would.
Each member keeps its own initialisation, its own data order and augmentation (its own loader) and its own
BatchNorm statistics (stacked buffers; stacked in contiguous layout, since vmap has no batching rule for
channels-last pooling), so packed training computes what sequential training computes, up to
floating-point summation order. Dropout masks are drawn per member (``randomness="different"``) from the
global generator, so with dropout the result equals sequential training in distribution only.

The members' own parameters are written back from the stacked tensors before every checkpoint, evaluation and
at the stage's end, so checkpoints hold the usual module states.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.training.optim import is_bn_or_bias
from ensemblekit.training.stage import Stage

AUTO_PACK_MAX_PARAMS = 2_000_000
"""``member_execution: auto`` packs members on CUDA when a member has fewer parameters than this (a member
that small cannot fill a GPU alone; larger ones, e.g. WRN-28-10, already do). On CPU ``auto`` keeps the loop."""


def architecture_signature(module: nn.Module) -> tuple:
    """What two modules must share to be packed: their structure (``repr``), parameter and buffer shapes."""
    params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers())
    return repr(module), params, buffers


def packing_blocker(stage: Stage, first: Stage | None = None) -> str | None:
    """Why ``stage`` cannot be packed (with ``first``, the first stage of its pack), or ``None`` when it can."""
    if stage.epochs <= 0:
        return "it trains for 0 epochs"
    if stage.hooks.after_step or stage.hooks.after_epoch or stage.hooks.at_end:
        return "it has hooks"
    if stage.stop is not None:
        return "it stops on a validation plateau"
    if stage.loss is not None or stage.prepare_batch is not None or stage.param_groups is not None:
        return "it has its own loss, batch preparation or parameter groups"
    if stage.packed is not None:
        return "it is already packed"
    if any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in stage.module.modules()
    ):
        return "it has BatchNorm without running statistics"
    if first is None:
        return None
    same = (
        stage.epochs == first.epochs
        and stage.optim == first.optim
        and stage.schedule == first.schedule
        and stage.member_loss == first.member_loss
        and stage.label_smoothing == first.label_smoothing
        and stage.grad_clip == first.grad_clip
        and (stage.train_indices is None) == (first.train_indices is None)
        and (stage.train_indices is None or len(stage.train_indices) == len(first.train_indices))
    )
    if not same:
        return "its training settings differ from the previous member's"
    if architecture_signature(stage.module) != architecture_signature(first.module):
        return "its architecture differs from the previous member's"
    return None


def packed_stage(stages: Sequence[Stage]) -> Stage:
    """One stage that trains ``stages`` (packable members) together; its module lists the members."""
    first = stages[0]
    return Stage(
        name="+".join(s.name for s in stages),
        module=nn.ModuleList([s.module for s in stages]),
        epochs=first.epochs,
        optim=first.optim,
        schedule=first.schedule,
        data_seed=first.data_seed,
        member_loss=first.member_loss,
        label_smoothing=first.label_smoothing,
        grad_clip=first.grad_clip,
        packed=list(stages),
    )


def resolve_member_execution(
    setting: Literal["auto", "loop", "packed"], device: torch.device, member: nn.Module
) -> Literal["loop", "packed"]:
    """``loop`` or ``packed`` for ``runtime.member_execution`` on ``device``.

    ``auto`` packs on CUDA for small members (see :data:`AUTO_PACK_MAX_PARAMS`) and keeps the loop elsewhere.
    """
    if setting != "auto":
        return setting
    small = sum(p.numel() for p in member.parameters()) < AUTO_PACK_MAX_PARAMS
    return "packed" if device.type == "cuda" and small else "loop"


def pack_member_stages(
    stages: list[Stage],
    setting: Literal["auto", "loop", "packed"],
    device: torch.device,
    *,
    world_size: int = 1,
) -> tuple[list[Stage], list[str]]:
    """Replace runs of consecutive packable stages (2 or more) by packed stages.

    A stage marked ``hoist`` (0 epochs, hooks that only prepare the next stage's module, e.g. a subnetwork
    child's ``make``) does not break a run: the set-ups of the packed members run first, then the members.

    Returns:
        The new recipe and notes saying why stages stayed sequential when ``packed`` was asked for.
    """
    notes: list[str] = []
    if setting == "loop" or not stages:
        return stages, notes
    if world_size > 1:
        if setting == "packed":
            notes.append("runtime.member_execution=packed: members run one after another with more than one process")
        return stages, notes
    out: list[Stage] = []
    run: list[Stage] = []  # trained stages that pack together
    setups: list[list[Stage]] = []  # setups[i]: the hoistable set-up stages in front of run[i]
    pending: list[Stage] = []
    owned: set[int] = set()  # the parameters of the run's modules: packed members must not share any

    def flush() -> None:
        if len(run) >= 2 and resolve_member_execution(setting, device, run[0].module) == "packed":
            out.extend(s for group in setups for s in group)  # every member's set-up, then the members together
            out.append(packed_stage(run))
        else:
            for group, stage in zip(setups, run, strict=True):
                out.extend([*group, stage])
        run.clear()
        setups.clear()

    for stage in stages:
        if stage.hoist and stage.epochs == 0:
            pending.append(stage)
            continue
        alone = packing_blocker(stage)
        shares = any(id(p) in owned for p in stage.module.parameters())  # e.g. one module trained in two stages
        if not (alone is None and run and not shares and packing_blocker(stage, run[0]) is None):
            flush()
            owned.clear()
        if alone is None:
            run.append(stage)
            setups.append(pending)
            owned.update(id(p) for p in stage.module.parameters())
            pending = []
            continue
        out.extend([*pending, stage])
        pending = []
        if setting == "packed" and stage.epochs > 0 and stage.packed is None:
            notes.append(f"runtime.member_execution=packed: stage {stage.name!r} runs alone ({alone})")
    flush()
    out.extend(pending)
    return out, notes


def repack_like(stages: list[Stage], names: list[str]) -> list[Stage] | None:
    """The recipe ``stages`` packed as a checkpoint's recipe ``names`` was (``a+b`` names a packed stage).

    A resumed run continues with the execution form it was checkpointed with, whatever the device now resolves
    ``auto`` to. ``None`` when ``names`` does not describe ``stages``.
    """
    by_name = {s.name: s for s in stages}
    out = []
    for name in names:
        parts = name.split("+")
        if any(p not in by_name for p in parts):
            return None
        out.append(by_name[name] if len(parts) == 1 else packed_stage([by_name[p] for p in parts]))
    covered = [p for name in names for p in name.split("+")]
    return out if sorted(covered) == sorted(s.name for s in stages) else None


class MemberPack:
    """The stacked parameters and buffers of members of one architecture, and their batched forward.

    Args:
        members: The member modules (same :func:`architecture_signature`).

    Attributes:
        params: Stacked parameters ``[M, ...]`` by name (trainable leaves that the optimiser updates).
        buffers: Stacked buffers ``[M, ...]`` by name (BatchNorm statistics, updated in place by the forward).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        self.members = list(members)
        self.template = copy.deepcopy(self.members[0]).to("meta")
        self.params: dict[str, nn.Parameter] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.reload()

    def reload(self) -> None:
        """(Re)build the stacked tensors from the members' current parameters and buffers."""
        with torch.no_grad():
            named = [dict(m.named_parameters()) for m in self.members]
            self.params = {
                n: nn.Parameter(torch.stack([p[n].detach().contiguous() for p in named]), requires_grad=t.requires_grad)
                for n, t in named[0].items()
            }
            bufs = [dict(m.named_buffers()) for m in self.members]
            self.buffers = {n: torch.stack([b[n] for b in bufs]) for n in bufs[0]}

    def write_back(self) -> None:
        """Copy the stacked values into the members' own parameters and buffers."""
        with torch.no_grad():
            for i, member in enumerate(self.members):
                dst = [p for _, p in member.named_parameters()] + [b for _, b in member.named_buffers()]
                src = [t[i] for t in self.params.values()] + [t[i] for t in self.buffers.values()]
                torch._foreach_copy_(dst, src)

    def param_groups(self, decay_bn_and_bias: bool) -> list[dict[str, Any]]:
        """The optimiser groups of the stacked parameters, split like ``default_param_groups`` splits a member's."""
        trainable = [(n, p) for n, p in self.params.items() if p.requires_grad]
        if decay_bn_and_bias:
            return [{"params": [p for _, p in trainable]}]
        module_of = dict(self.members[0].named_modules())
        decay = [p for n, p in trainable if not is_bn_or_bias(n, module_of)]
        no_decay = [p for n, p in trainable if is_bn_or_bias(n, module_of)]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits ``[M, B, C]``: member i's forward on its own batch ``xs[i]`` (``xs``: ``[M, B, ...]``)."""
        from torch.func import functional_call, vmap

        template = self.template

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(template, {**params, **buffers}, (x,))

        return vmap(one, randomness="different")(self.params, self.buffers, xs)

    def train(self, mode: bool = True) -> None:
        """Set the template's (and the members') training mode."""
        self.template.train(mode)
        for m in self.members:
            m.train(mode)

    def clip_grad_norms_(self, max_norm: float) -> None:
        """Clip every member's gradient to total norm ``max_norm`` (as ``clip_grad_norm_`` per member would)."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack([g.flatten(1).double().pow(2).sum(1) for g in grads]).sum(0).sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))


def packed_member_losses(outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-member cross-entropy ``[M]``: CE_i = mean_b CE(z_i[b], y_i[b]) (what member i's own stage minimises)."""
    m, b, c = outputs.shape
    flat = F.cross_entropy(
        outputs.float().reshape(m * b, c), targets.reshape(m * b), label_smoothing=label_smoothing, reduction="none"
    )
    return flat.view(m, b).mean(1)
