"""Parameter counting for ensembles whose members may share tensors.

Low-cost ensembles share weights (a common trunk, tied layers, a mother network's copies), so "how many
parameters" has two honest answers: the number of distinct numbers stored (``unique_params``, what
memory and a checkpoint hold) and the sum of every member's own parameter count (``params``, what the
ensemble looks like as M networks; a shared tensor counts once per member that uses it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _alias_key(tensor: torch.Tensor) -> tuple[object, ...]:
    """A key equal for two tensors exactly when they are the same tensor or the same view of one storage.

    Meta tensors have no storage to compare, so only object identity counts for them.
    """
    if tensor.is_meta or tensor.numel() == 0:
        return ("id", id(tensor))
    storage = tensor.untyped_storage()
    return (
        "view",
        tensor.device,
        storage.data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
    )


def _unique(parameters: Iterable[nn.Parameter]) -> tuple[int, int]:
    """(unique elements, unique elements that require grad) of parameters, deduplicated by alias key."""
    seen: dict[tuple[object, ...], bool] = {}
    sizes: dict[tuple[object, ...], int] = {}
    for parameter in parameters:
        key = _alias_key(parameter)
        sizes[key] = parameter.numel()
        seen[key] = seen.get(key, False) or parameter.requires_grad
    total = sum(sizes.values())
    trainable = sum(size for key, size in sizes.items() if seen[key])
    return total, trainable


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Count an ensemble's (or any module's) parameters three ways.

    * ``unique_params``: distinct parameter elements. A ``Parameter`` reachable from several submodules
      counts once (deduplicated by identity), and so do two ``Parameter`` objects that are the same view
      of one storage (tied weights). Distinct, partially overlapping views are counted separately.
    * ``trainable_params``: the unique elements whose parameter has ``requires_grad``.
    * ``params``: the ensemble's size counted per member.

      - If ``module.member_modules()`` returns a list: Σ_i unique(member_i) plus the unique parameters
        that belong to no member (counted once), so a tensor shared by k members counts k times.
      - Else, if the module defines ``total_parameter_count()`` (packed/sparse methods that know their
        per-member size), its value.
      - Else ``unique_params``.

    Works on modules built on the meta device (only shapes are read).

    Args:
        module: The module to count.

    Returns:
        ``{"params": ..., "unique_params": ..., "trainable_params": ...}`` as ints.
    """
    unique, trainable = _unique(module.parameters())
    members = module.member_modules() if callable(getattr(module, "member_modules", None)) else None
    if members is not None:
        member_params = {id(p) for member in members for p in member.parameters()}
        outside = [p for p in module.parameters() if id(p) not in member_params]
        params = sum(_unique(member.parameters())[0] for member in members) + _unique(outside)[0]
    elif callable(getattr(module, "total_parameter_count", None)):
        params = int(module.total_parameter_count())
    else:
        params = unique
    return {"params": int(params), "unique_params": int(unique), "trainable_params": int(trainable)}


def _tensors(output: object) -> list[torch.Tensor]:
    """The floating tensors of a forward's output (a tensor, or a tuple / list / dict of them)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def inference_parameter_count(module: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Unique parameter elements that the prediction of ``module`` depends on (its parameters used at inference).

    ``unique_params`` counts everything stored; an ensemble may store networks its prediction never runs (the
    parent and the unselected candidates of Neural Subnetwork Ensembles, a teacher). A parameter counts here when
    the eval-mode forward of a zero input of ``input_shape`` reaches it: autograd finds the parameters the output
    depends on (``torch.autograd.grad(..., allow_unused=True)`` is ``None`` for the others), deduplicated like
    ``unique_params``. Works on the meta device; nothing of ``module`` (mode, ``requires_grad``, ``.grad``) changes.

    Args:
        module: A network or an ensemble.
        input_shape: The input's shape including the batch axis.

    Returns:
        The number of parameter elements used at inference.
    """
    params = list(module.parameters())
    if not params:
        return 0
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        for p in params:
            p.requires_grad_(True)
        dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
        x = torch.zeros(input_shape, device=params[0].device, dtype=dtype)
        with torch.enable_grad():
            outputs = _tensors(module(x))
            if not outputs:
                return count_parameters(module)["unique_params"]
            total = sum(t.float().sum() for t in outputs)
            if not total.requires_grad:  # a forward that detaches its output: nothing to trace
                return count_parameters(module)["unique_params"]
            grads = torch.autograd.grad(total, params, allow_unused=True)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training
    return _unique(p for p, g in zip(params, grads, strict=True) if g is not None)[0]
