"""Building fission networks from backbones: the unstructured (masked) and the structured (thin) layouts.

Unstructured (``grouping: balanced | bernoulli``): every stage copy has the backbone's full shape and carries a
forward-pass mask (all ones at build; the prune stage writes the pruning mask ∩ the copy's weight group).
Structured (``grouping: channels``): every stage copy is a genuinely thinner dense stage; copy widths follow
:func:`path_width` (Lee & Lee, 2024, made structured here; docs/methods/fission.md).
"""

from __future__ import annotations

import copy
import dataclasses
import math

from torch import nn

from ensemblekit.errors import config_error
from ensemblekit.methods.fission.network import FissionNetwork, copies_per_stage
from ensemblekit.models import Backbone, ResNetSpec
from ensemblekit.pruning.masks import MaskEnforcement, add_masks, prunable_layers


def scored_layers(net: nn.Module, shortcuts: bool = False) -> list[str]:
    """The layers pruned (and split) by NFE: every conv/linear of stem and stages except 1x1 shortcut convs.

    The classifier is never pruned; shortcut convs are dense and duplicated per path (Lee & Lee, 2024, step 3).
    ``shortcuts=True`` adds the shortcut convs: the official code scores them and ranks them in the global
    threshold (``reference: official``), but never masks them.
    """
    return [n for n in prunable_layers(net) if not n.startswith("head") and (shortcuts or ".shortcut" not in n)]


def fission_names(name: str, copies: list[int]) -> list[str]:
    """Names of the fission network's copies of backbone layer ``name`` (``stages.s.rest`` -> ``stages.s.p.rest``)."""
    parts = name.split(".")
    if parts[0] != "stages":
        return [name]
    s = int(parts[1])
    return [".".join(["stages", str(s), str(p), *parts[2:]]) for p in range(copies[s])]


def check_exits(k: int, exits: int) -> None:
    """N exits need at least N of the backbone's K stages (exit k branches after stage k, k <= N − 1 <= K − 1)."""
    if exits > k:
        raise config_error("method.members", f"{exits} exits need a backbone with >= {exits} stages; it has {k}")


def from_backbones(nets: list[Backbone], exits: int) -> FissionNetwork:
    """A fission network whose path p takes its stage copies and head from ``nets[p]`` (stem from ``nets[0]``).

    Modules are deep-copied, so passing the same backbone N times gives N copies with equal initial values.
    """
    k = len(nets[0].stages)
    copies = copies_per_stage(k, exits)
    stages = [[copy.deepcopy(nets[p].stages[s]) for p in range(copies[s])] for s in range(k)]
    heads = [copy.deepcopy(nets[p].head) for p in range(exits)]
    return FissionNetwork(copy.deepcopy(nets[0].stem), stages, heads)


def masked_fission(nets: list[Backbone], exits: int, enforce: MaskEnforcement = "forward") -> FissionNetwork:
    """The unstructured layout: full-width copies with all-ones masks on the copies of :func:`scored_layers`.

    ``enforce``: ``forward`` masks (default) or the official code's ``gradient`` masks
    (:class:`~ensemblekit.pruning.masks.WeightMask`).
    """
    net = from_backbones(nets, exits)
    copies = copies_per_stage(len(nets[0].stages), exits)
    add_masks(net, [t for name in scored_layers(nets[0]) for t in fission_names(name, copies)], enforce)
    return net


def path_width(channels: int, copies: int, density: float) -> int:
    """Width of one of ``copies`` thin copies of a layer with ``channels`` filters at weight density ``density``.

    w = min(round(C·sqrt(d / c)), ⌊C / c⌋), at least 1. The c copies of a layer inside a stage then hold
    c·w² / C² ≈ d of its weights (the unstructured mode's budget) unless that needs more filters than the layer
    has: copies partition the layer's filters, so w <= C / c (at d = 0.5, c = 3 each copy gets a third of the
    filters and the copies hold 1/3 of the weights).
    """
    return max(1, min(round(channels * math.sqrt(density / copies)), channels // copies))


def thin_spec(spec: ResNetSpec, exits: int, density: float) -> ResNetSpec:
    """The spec of one path's thin network: stage s at :func:`path_width` with c_s = min(s + 1, N) copies."""
    if not isinstance(spec, ResNetSpec):
        raise config_error(
            "method.grouping",
            f"channels supports the residual families (resnet, preact_resnet, wide_resnet); got {spec.family}",
        )
    copies = copies_per_stage(spec.num_stages, exits)
    widths = tuple(path_width(c, n, density) for c, n in zip(spec.stage_channels, copies, strict=True))
    if spec.stem_channels == spec.stage_channels[0]:
        stem = widths[0]
    else:
        stem = path_width(spec.stem_channels, 1, density)
    return dataclasses.replace(spec, stem_channels=stem, stage_channels=widths)


def thin_fission(nets: list[Backbone], exits: int) -> FissionNetwork:
    """The structured layout: paths built from thin backbones (see :func:`thin_spec`), dense, no masks."""
    return from_backbones(nets, exits)
