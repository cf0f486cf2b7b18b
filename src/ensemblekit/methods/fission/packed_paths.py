"""Packed path execution of a fission network: a stage's copies run as one batched pass.

The c_s = min(s + 1, N) copies of stage s of a :class:`~ensemblekit.methods.fission.network.FissionNetwork`
share one architecture (structured ``grouping: channels`` builds them at equal width), and copy p reads the
output of copy ``source_copy(p, s - 1)`` of the stage before. The loop runs them one after another; packing runs
them together, as packed members do (:mod:`ensemblekit.training.packed_members`):

    P_s[n] = stack_p(θ_{s,p}[n]),     H_s = vmap_p(f_s(P_s[p], H_{s-1}[src(p, s-1)]))

with ``torch.func.functional_call`` on a meta-device template of copy 0, so a convolution over the stacked inputs
becomes one grouped convolution (the Packed-Ensembles trick: Laurent et al., "Packed-Ensembles for Efficient
Uncertainty Estimation", ICLR 2023). The N heads are packed the same way. Paths are independent after they
branch, so this computes the loop's function exactly (up to floating-point summation order); gradients reach
every copy's own parameters through ``torch.stack``.

The packed form is a view over the module structure: the stacks are rebuilt from the copies' parameters at every
forward (one copy of a stage's weights, small beside its activations), and BatchNorm's running statistics,
updated in the stacked buffers in training mode, are copied back into each copy's buffers, so ``state_dict`` and
checkpoints are those of the loop.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from ensemblekit.training.packed_members import architecture_signature

PathExecution = Literal["auto", "loop", "packed"]


def source_copy(path: int, stage: int) -> int:
    """The copy of ``stage`` (0-based) that ``path`` runs: its own (``path``) once branched, else the main one (0)."""
    return path if path <= stage else 0


def resolve_path_execution(setting: PathExecution, device: torch.device) -> Literal["loop", "packed"]:
    """``loop`` or ``packed`` for ``method.path_execution`` on ``device``.

    ``auto`` packs on CUDA, where a thin copy cannot fill the device alone, and keeps the loop on CPU, where the
    packed form is no faster (timings: docs/methods/fission.md, "Path execution").
    """
    if setting != "auto":
        return setting
    return "packed" if device.type == "cuda" else "loop"


def packable(copies: Sequence[nn.Module]) -> bool:
    """Whether ``copies`` can run as one batched pass: two or more of one architecture."""
    if len(copies) < 2:
        return False
    first = architecture_signature(copies[0])
    return all(architecture_signature(c) == first for c in copies[1:])


def hooked(copies: Sequence[nn.Module]) -> bool:
    """Whether a module of ``copies`` has forward hooks (masks, per-layer FLOP counters): those run the loop."""
    return any(m._forward_hooks or m._forward_pre_hooks for c in copies for m in c.modules())


class CopyPack:
    """Runs copies of one architecture together on stacked inputs; a view over the copies' own tensors.

    Args:
        copies: Modules with one :func:`~ensemblekit.training.packed_members.architecture_signature`.
    """

    def __init__(self, copies: Sequence[nn.Module]) -> None:
        self.copies = list(copies)
        self.template = copy.deepcopy(self.copies[0]).to("meta")

    def __call__(self, xs: torch.Tensor) -> torch.Tensor:
        """Outputs ``[c, B, ...]``: copy p's forward on ``xs[p]`` (``xs``: ``[c, B, ...]``)."""
        self.template.train(self.copies[0].training)
        named = [dict(c.named_parameters()) for c in self.copies]
        params = {n: torch.stack([p[n] for p in named]) for n in named[0]}
        bufs = [dict(c.named_buffers()) for c in self.copies]
        buffers = {n: torch.stack([b[n] for b in bufs]) for n in bufs[0]}
        template = self.template

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(template, {**p, **b}, (x,))

        # contiguous inputs: vmap has no batching rule for channels-last adaptive pooling (it falls back to a loop);
        # the stacked weights keep the copies' layout (contiguous ones are slower on CPU: docs/methods/fission.md)
        out = vmap(one, randomness="different")(params, buffers, xs.contiguous())
        if self.template.training and buffers:  # BatchNorm updated the stacked statistics: write them back
            with torch.no_grad():
                dst = [b[n] for b in bufs for n in buffers]
                src = [buffers[n][i] for i in range(len(bufs)) for n in buffers]
                torch._foreach_copy_(dst, src)
        return out


class PathPacker:
    """Packed forward of a fission network, with one :class:`CopyPack` per stage (and one for the heads), cached.

    A cached pack is reused only while it holds the very modules it was built from (a deep copy of the network
    gets fresh packs).
    """

    def __init__(self) -> None:
        self._packs: dict[int, tuple[tuple[int, ...], CopyPack | None]] = {}

    def pack(self, key: int, modules: Sequence[nn.Module]) -> CopyPack | None:
        """The pack of ``modules`` (``None`` when they cannot pack: :func:`packable`)."""
        ids = tuple(id(m) for m in modules)
        if key not in self._packs or self._packs[key][0] != ids:
            self._packs[key] = (ids, CopyPack(modules) if packable(modules) else None)
        return self._packs[key][1]

    def forward(
        self, stem: nn.Module, stages: Sequence[Sequence[nn.Module]], heads: Sequence[nn.Module], x: torch.Tensor
    ) -> torch.Tensor:
        """Exit logits ``[N, B, C]`` with each stage's copies (and the heads) run as one :class:`CopyPack`.

        Copy p of stage s reads copy ``source_copy(p, s - 1)``'s output: its own path's once branched, else the
        main path's (copy 0). Stages whose copies cannot pack (:func:`packable`) or carry forward hooks
        (:func:`hooked`) run their copies one by one.
        """
        feats = [stem(x)]  # feats[p]: the output of copy p of the previous stage
        for s, copies in enumerate(stages):
            inputs = [feats[source_copy(p, s - 1)] if s > 0 else feats[0] for p in range(len(copies))]
            feats = self._run(s, copies, inputs)
        return torch.stack(self._run(len(stages), heads, feats), dim=0)

    def _run(self, key: int, modules: Sequence[nn.Module], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        pack = self.pack(key, modules)
        if pack is None or hooked(modules):
            return [m(h) for m, h in zip(modules, inputs, strict=True)]
        return list(pack(torch.stack(inputs)).unbind(0))
