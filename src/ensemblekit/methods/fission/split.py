"""Network fission proper: turn a pruned backbone into per-path weight groups (Lee & Lee, 2024, steps 1-3).

* :func:`split_masks` (unstructured): the pruning mask of every layer of a stage with c copies is split into c
  disjoint groups (:mod:`ensemblekit.pruning.grouping`); copy p gets group p. Trunk layers (c = 1) get the mask.
* :func:`transfer_channels` (structured, ``grouping: channels``): each channel space (the stem output, a stage's
  residual stream, a block's inner channels) keeps its c·w highest-scoring filters (score of a filter = sum of
  its weights' criterion scores over every conv producing that space), which are cut into c random chunks of
  w (:func:`~ensemblekit.pruning.grouping.balanced_chunks`); copy p's conv weights are the backbone's weights
  restricted to (its output chunk) × (the input chunk of the copy that feeds it), and path p's classifier is the
  backbone's classifier restricted to the features of its last copy. Each path is thus a thin dense network made
  of its own subset of the backbone's filters at initialisation (with every filter kept and N = 1 it computes
  the backbone's function); BN keeps its fresh initialisation (1/0, as the backbone's).
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.methods.fission.build import fission_names
from ensemblekit.methods.fission.network import FissionNetwork, copies_per_stage
from ensemblekit.methods.fission.packed_paths import source_copy
from ensemblekit.models.shortcuts import ProjectionShortcut
from ensemblekit.pruning.grouping import GROUPINGS, balanced_chunks


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def split_masks(
    masks: dict[str, torch.Tensor], num_stages: int, exits: int, grouping: str, seed: int
) -> dict[str, torch.Tensor]:
    """Masks for the fission network's layers from the backbone's pruning ``masks`` (see module docstring)."""
    copies = copies_per_stage(num_stages, exits)
    out: dict[str, torch.Tensor] = {}
    for i, (name, mask) in enumerate(masks.items()):
        targets = fission_names(name, copies)
        if len(targets) == 1:
            out[targets[0]] = mask
        else:
            out.update(zip(targets, GROUPINGS[grouping](mask, len(targets), _generator(seed, i)), strict=True))
    return out


def channel_graph(backbone: nn.Module) -> tuple[dict[str, tuple[str, str | None]], dict[str, int], str]:
    """For a residual backbone: ``{conv name: (output space, input space)}``, ``{space: stage}``, the last space.

    Spaces: ``stem``; ``R<s>`` the residual stream of stage s (outputs of every block's ``conv2`` and of the
    projection shortcut); ``I<s>.<b>`` the inner channels of block b (``conv1``). A block without shortcut
    keeps its input space as its residual space.
    """
    convs: dict[str, tuple[str, str | None]] = {"stem.conv": ("stem", None)}
    stage_of = {"stem": 0}
    prev = "stem"
    for s, stage in enumerate(backbone.stages):
        for b, block in enumerate(stage):
            prefix = f"stages.{s}.{b}"
            if block.shortcut is not None:
                residual = f"R{s}"
                stage_of[residual] = s
            else:
                residual = prev
            inner = f"I{s}.{b}"
            stage_of[inner] = s
            convs[f"{prefix}.conv1"] = (inner, prev)
            convs[f"{prefix}.conv2"] = (residual, inner)
            if isinstance(block.shortcut, ProjectionShortcut):
                convs[f"{prefix}.shortcut.conv"] = (residual, prev)
            prev = residual
    return convs, stage_of, prev


@torch.no_grad()
def transfer_channels(
    fission: FissionNetwork, backbone: nn.Module, scores: dict[str, torch.Tensor], exits: int, seed: int
) -> dict[str, list[torch.Tensor]]:
    """Copy each thin copy's share of ``backbone``'s filters into ``fission`` (structured mode; module docstring).

    Args:
        fission: The thin fission network (widths from :func:`~ensemblekit.methods.fission.build.thin_spec`).
        backbone: The full-width backbone it was made from (same layer names per stage).
        scores: Criterion scores of :func:`~ensemblekit.methods.fission.build.scored_layers` of ``backbone``.
        exits: N.
        seed: Seed of the random partition of the kept filters.

    Returns:
        ``{space: [filter indices of copy 0, copy 1, ...]}``.
    """
    convs, stage_of, last = channel_graph(backbone)
    copies = copies_per_stage(len(backbone.stages), exits)
    table = dict(backbone.named_modules())
    thin = dict(fission.named_modules())
    widths = {space: thin[fission_names(_producer(convs, space), copies)[0]].weight.shape[0] for space in stage_of}
    selection: dict[str, list[torch.Tensor]] = {}
    for i, space in enumerate(stage_of):
        c, w = copies[stage_of[space]], widths[space]
        channels = table[_producer(convs, space)].weight.shape[0]
        total = torch.zeros(channels, dtype=torch.float64)
        for name, (out_space, _) in convs.items():
            if out_space == space and name in scores:
                total += scores[name].detach().double().flatten(1).sum(1).cpu()
        keep = torch.sort(total, descending=True, stable=True).indices[: c * w]
        chunks = balanced_chunks(keep, c, _generator(seed, i)) if c > 1 else [keep]
        selection[space] = [chunk.sort().values for chunk in chunks]
    for name, (out_space, in_space) in convs.items():
        src = table[name]
        targets = fission_names(name, copies)
        if len(selection[out_space]) != len(targets):
            raise UserError(f"grouping: channels cannot split {name}: its output channels continue another stage's")
        for p, target in enumerate(targets):
            out_idx = selection[out_space][p].to(src.weight.device)
            weight = src.weight[out_idx]
            if in_space is not None:
                in_idx = selection[in_space][source_copy(p, stage_of[in_space])]
                weight = weight[:, in_idx.to(src.weight.device)]
            layer = thin[target]
            layer.weight.copy_(weight)
            if layer.bias is not None and src.bias is not None:
                layer.bias.copy_(src.bias[out_idx])
    fc = backbone.head.fc
    for p, head in enumerate(fission.heads):
        head.fc.weight.copy_(fc.weight[:, selection[last][source_copy(p, stage_of[last])].to(fc.weight.device)])
        head.fc.bias.copy_(fc.bias)
    return selection


def _producer(convs: dict[str, tuple[str, str | None]], space: str) -> str:
    """The first conv that writes ``space``."""
    return next(name for name, (out_space, _) in convs.items() if out_space == space)
