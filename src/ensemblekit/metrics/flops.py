"""Inference FLOPs of a module, counted by PyTorch's own ``FlopCounterMode``.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix work of convolutions, linear layers
(``addmm``/``mm``), ``bmm``/``baddbmm`` and attention, at 2 FLOPs per multiply-add (a ``Linear(i, o)``
is 2·i·o FLOPs per input row). Bias additions, normalisation, activations, pooling and other elementwise
ops are not counted; they are a small fraction for the CNN backbones here and the same convention is
applied to every method, so ratios between methods are fair. The count runs on any device, the meta
device included, so large models can be measured without allocating their weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device of the module's first parameter or buffer and its first floating dtype (or float32)."""
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return device, dtype


def inference_flops(module: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """FLOPs per image of one forward pass of ``module`` (all ensemble members included).

    The module runs in eval mode under ``torch.no_grad()`` on a zero input of ``input_shape`` placed on
    the module's device (and floating dtype); the total counted by ``FlopCounterMode`` (2 FLOPs per
    multiply-add, see the module docstring) is divided by the batch size ``input_shape[0]``. Every
    submodule's train/eval flag is restored afterwards.

    Args:
        module: A network or an ensemble (``forward(x) -> [M, B, C]``).
        input_shape: The input's shape including the batch axis.

    Returns:
        FLOPs per image, rounded to an int.

    Raises:
        ValueError: If ``input_shape`` is empty or its batch size is not positive.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or shape[0] < 1:
        raise ValueError(f"input_shape must start with a positive batch size, got {tuple(input_shape)}")
    device, dtype = _device_and_dtype(module)
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    try:
        module.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for submodule, training in modes:
            submodule.training = training
    return round(counter.get_total_flops() / shape[0])


def flops_ratio(flops: float, single_flops: float) -> float:
    """``flops / single_flops``: e.g. ``inference_flops_vs_single`` (1.0 = the cost of one backbone).

    Raises:
        ValueError: If ``single_flops`` is not positive.
    """
    if not single_flops > 0:
        raise ValueError(f"single_flops must be > 0, got {single_flops}")
    return float(flops) / float(single_flops)
