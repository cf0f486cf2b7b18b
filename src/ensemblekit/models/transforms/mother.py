"""The MotherNet of a cluster of architectures: the per-position minimum of their specs.

MotherNets (Wasay, Hentschel, Liao, Chen & Idreos, MLSys 2020), section "constructing the MotherNet": for every position
the MotherNet keeps the *minimum* over the cluster's members of the number of layers (conv layers per VGG stage,
residual blocks or dense layers per stage), of the width (filters, growth rate) and of the kernel size; input and output
layers are those of the members. Layers are aligned from the start of each stage (Wasay et al., 2020;
docs/methods/mothernets.md). Members must share the family, block type and number of stages (and the settings that fix
the topology); :func:`check_hatchable` also checks that each member can be hatched from the result.

Example:
    >>> from ensemblekit.models.vgg import vgg_spec
    >>> m = mother_spec([vgg_spec(11, width=0.5), vgg_spec(13, width=0.75), vgg_spec(16)])
    >>> m.conv_channels
    ((32,), (64,), (128, 128), (256, 256), (256, 256))
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import torch

from ensemblekit.errors import UserError
from ensemblekit.models.registry import build_model
from ensemblekit.models.spec import DenseNetSpec, ModelSpec, ResNetSpec, VGGSpec


def _same(specs: Sequence[ModelSpec], *names: str) -> None:
    for name in names:
        values = {getattr(s, name) for s in specs}
        if len(values) > 1:
            raise UserError(
                f"incompatible architectures: {name} differs ({', '.join(map(str, sorted(values, key=str)))})"
            )


def _min_tuple(specs, name: str) -> tuple[int, ...]:
    return tuple(min(v) for v in zip(*(getattr(s, name) for s in specs)))


def mother_spec(specs: Sequence[ModelSpec]) -> ModelSpec:
    """The MotherNet spec of ``specs`` (per-position minima); ``UserError`` if they are incompatible.

    Args:
        specs: One or more specs of the same family and topology.

    Returns:
        A spec of the same type; for a single spec, that spec.
    """
    if not specs:
        raise ValueError("a MotherNet needs at least one member")
    _same(specs, "family", "num_classes", "in_channels")
    first = specs[0]
    if isinstance(first, ResNetSpec):
        _same(specs, "block", "num_stages", "stage_strides", "shortcut", "final_bn", "conv_bias")
        mother = replace(
            first,
            stem_channels=min(s.stem_channels for s in specs),
            stage_blocks=_min_tuple(specs, "stage_blocks"),
            stage_channels=_min_tuple(specs, "stage_channels"),
            kernel_size=min(s.kernel_size for s in specs),
            stem_kernel_size=min(s.stem_kernel_size for s in specs),
            dropout=min(s.dropout for s in specs),
        )
    elif isinstance(first, VGGSpec):
        _same(specs, "num_stages", "batch_norm", "conv_bias")
        channels, kernels = [], []
        for stage in range(first.num_stages):
            depth = min(len(s.conv_channels[stage]) for s in specs)
            channels.append(tuple(min(s.conv_channels[stage][j] for s in specs) for j in range(depth)))
            kernels.append(tuple(min(s.kernel_sizes[stage][j] for s in specs) for j in range(depth)))
        mother = replace(
            first, conv_channels=tuple(channels), kernel_sizes=tuple(kernels), dropout=min(s.dropout for s in specs)
        )
    elif isinstance(first, DenseNetSpec):
        _same(specs, "num_stages", "bottleneck", "bottleneck_width", "compression")
        mother = replace(
            first,
            growth_rate=min(s.growth_rate for s in specs),
            stage_layers=_min_tuple(specs, "stage_layers"),
            stem_channels=min(s.stem_channels for s in specs),
            dropout=min(s.dropout for s in specs),
        )
    else:  # pragma: no cover - ModelSpec is closed
        raise UserError(f"no MotherNet construction for {type(first).__name__}")
    for spec in specs:
        check_hatchable(mother, spec)
    return mother


def _shape_changes(spec: ResNetSpec) -> tuple[bool, ...]:
    ins = (spec.stem_channels, *spec.stage_channels[:-1])
    return tuple(s != 1 or i != o for i, o, s in zip(ins, spec.stage_channels, spec.stage_strides))


def check_hatchable(mother: ModelSpec, member: ModelSpec) -> None:
    """``UserError`` unless ``member`` can be hatched from ``mother`` by function-preserving transforms."""
    if type(mother) is not type(member) or mother.family != member.family:
        raise UserError("incompatible architectures: a member must be of its MotherNet's family")
    if isinstance(mother, ResNetSpec):
        if _shape_changes(mother) != _shape_changes(member):
            raise UserError("incompatible architectures: the stages change shape in different places")
        if mother.shortcut == "zero_pad":
            ins_m = (mother.stem_channels, *mother.stage_channels[:-1])
            ins_t = (member.stem_channels, *member.stage_channels[:-1])
            for im, om, it, ot in zip(ins_m, mother.stage_channels, ins_t, member.stage_channels):
                if (ot - it) // 2 < (om - im) // 2 or (ot - it) - (ot - it) // 2 < (om - im) - (om - im) // 2:
                    raise UserError("incompatible architectures: zero-pad shortcuts would lose zero channels")
    elif isinstance(mother, VGGSpec):
        for m_stage, t_stage in zip(mother.conv_channels, member.conv_channels):
            if len(t_stage) > len(m_stage) and min(t_stage[len(m_stage) :]) < m_stage[-1]:
                raise UserError("incompatible architectures: an added VGG layer would be narrower than its input")


@functools.lru_cache(maxsize=4096)
def spec_parameters(spec: ModelSpec) -> int:
    """Number of parameters of ``build_model(spec)`` (built on the meta device, so no memory is used)."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())


def parameter_share(specs: Sequence[ModelSpec]) -> float:
    """|params(MotherNet)| / mean |params(member)|: how much of the members the MotherNet captures."""
    mother = mother_spec(specs)
    return spec_parameters(mother) / (sum(spec_parameters(s) for s in specs) / len(specs))
