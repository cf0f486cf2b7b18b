"""Child masks of Neural Subnetwork Ensembles (Whitaker, "Neural Subnetwork Ensembles", arXiv 2311.14101, 2023).

Every generator works **layer-wise** on a dict ``{layer name: weight shape}`` (the prunable layers of
:func:`ensemblekit.pruning.masks.prunable_layers`: Conv2d and Linear weights, the classifier excluded; biases and
BatchNorm are never pruned) and returns ``{layer name: {0,1} float mask}``. Layer l with n_l weights loses exactly
``round(s·n_l)`` entries for sparsity s (Prune and Tune, ``tjwhitaker/prune-and-tune-ensembles`` src/utils.py):

* :func:`random_masks`: a uniform random subset of ``round((1 - s)·n_l)`` weights is kept.
* :func:`magnitude_masks`: the ``round((1 - s)·n_l)`` largest |w| are kept (one-shot magnitude pruning).
* :func:`anti_random_pair`: a random 50 % mask m and its complement 1 − m (Prune and Tune's default children).
* :func:`partition_masks`: Neural Partitioning, k disjoint masks covering every weight: per layer a random
  permutation of the indices is cut into k chunks of sizes differing by at most one; child j keeps chunk j
  (sparsity ≈ 1 − 1/k). k = 2 is an anti-random pair.
* :func:`neuron_masks`: structured pruning, ``round(s·c_out)`` random output channels (rows, dim 0) removed.
* :func:`anti_random_neuron_pair`: structured anti-random children: per layer a random half of the output
  channels (neurons of a Linear, filters of a Conv2d) is removed from child a, and child b keeps exactly those
  (the complementary set of channels): ``m_a + m_b = 1`` and each channel is whole in one child.

All randomness comes from the ``torch.Generator`` passed in, so a child's mask is a pure function of its seed.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = anti_random_pair({"conv": (4, 2, 3, 3)}, g)
    >>> bool(((a["conv"] + b["conv"]) == 1).all()), int(a["conv"].sum())
    (True, 36)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ensemblekit.pruning.masks import masks_from_scores

Shapes = Mapping[str, Sequence[int] | torch.Size]
Masks = dict[str, torch.Tensor]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")


def random_masks(shapes: Shapes, sparsity: float, generator: torch.Generator) -> Masks:
    """Uniform random layer-wise masks: each layer keeps exactly ``round((1 - s)·n_l)`` of its n_l weights."""
    _check_sparsity(sparsity)
    out = {}
    for name, shape in shapes.items():
        n = _numel(shape)
        keep = round((1.0 - sparsity) * n)
        flat = torch.zeros(n)
        flat[torch.randperm(n, generator=generator)[:keep]] = 1.0
        out[name] = flat.view(*shape)
    return out


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> Masks:
    """One-shot layer-wise magnitude masks: keep the ``round((1 - s)·n_l)`` largest |w| of each layer."""
    _check_sparsity(sparsity)
    scores = {name: w.detach().abs().float().cpu() for name, w in weights.items()}
    return masks_from_scores(scores, density=1.0 - sparsity, scope="layerwise")


def anti_random_pair(shapes: Shapes, generator: torch.Generator) -> tuple[Masks, Masks]:
    """A random 50 % layer-wise mask m and its complement 1 − m (m + (1 − m) = 1 element-wise)."""
    first = random_masks(shapes, 0.5, generator)
    return first, {name: 1.0 - m for name, m in first.items()}


def partition_masks(shapes: Shapes, parts: int, generator: torch.Generator) -> list[Masks]:
    """Neural Partitioning: ``parts`` disjoint layer-wise masks whose sum is one everywhere.

    Per layer, ``randperm(n_l)`` is split into ``parts`` chunks (``torch.tensor_split``: sizes differ by at most
    one); mask j is one exactly on chunk j.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    out: list[Masks] = [{} for _ in range(parts)]
    for name, shape in shapes.items():
        n = _numel(shape)
        chunks = torch.tensor_split(torch.randperm(n, generator=generator), parts)
        for j, idx in enumerate(chunks):
            flat = torch.zeros(n)
            flat[idx] = 1.0
            out[j][name] = flat.view(*shape)
    return out


def neuron_masks(shapes: Shapes, sparsity: float, generator: torch.Generator) -> Masks:
    """Structured masks: ``round(s·c_out)`` random output channels (dim 0) of each layer are zero."""
    _check_sparsity(sparsity)
    out = {}
    for name, shape in shapes.items():
        rows = int(shape[0])
        drop = round(sparsity * rows)
        keep = torch.ones(rows)
        keep[torch.randperm(rows, generator=generator)[:drop]] = 0.0
        out[name] = keep.view(rows, *([1] * (len(shape) - 1))).expand(*shape).contiguous()
    return out


def anti_random_neuron_pair(shapes: Shapes, generator: torch.Generator) -> tuple[Masks, Masks]:
    """Structured anti-random pair: complementary sets of whole output channels (neurons / filters).

    Prune and Tune Ensembles (Whitaker & Whitley, AAAI 2022): anti-random children with ``neurons`` pruning.
    Per layer with c output channels (dim 0), a random permutation's first ``round(c / 2)`` channels are zero in
    mask a and the other ``c - round(c / 2)`` zero in mask b, so ``m_a[k] = 1 - m_b[k]`` for every channel k and
    ``m_a + m_b = 1`` element-wise; a mask is constant over each channel's weights.
    """
    first: Masks = {}
    second: Masks = {}
    for name, shape in shapes.items():
        rows = int(shape[0])
        keep = torch.ones(rows)
        keep[torch.randperm(rows, generator=generator)[: round(0.5 * rows)]] = 0.0
        view = (rows, *([1] * (len(shape) - 1)))
        first[name] = keep.view(view).expand(*shape).contiguous()
        second[name] = (1.0 - keep).view(view).expand(*shape).contiguous()
    return first, second
