"""Function-preserving weight transfers between a source layer and a larger target layer.

Every function maps the source layer's parameters through :class:`~.channel_map.ChannelMap` s (Net2Net,
Chen, Goodfellow & Shlens, ICLR 2016) and writes them into the target layer, in place, under ``no_grad``:

* outgoing side (the layer's own units), map g_out: W'[j] = W[g_out(j)], b'_j = b_{g_out(j)};
* incoming side (units of the previous layer), map g_in: W'[:, i] = W[:, g_in(i)] / cnt_in(g_in(i)), and 0 for
  new input channels (``g_in(i) = -1``);
* kernel enlargement k -> k' (both odd): the kernel is zero-padded by (k' - k) / 2 on every side; with the
  convolution's padding k' // 2 (the backbones' rule) the output is unchanged for any stride;
* BatchNorm on a widened layer copies gamma, beta, running mean and variance of unit g(j), which is exact in
  eval mode and in train mode (a replica has the same batch statistics as its source);
* Net2DeeperNet identity layers: a conv whose kernel is 1 at the centre for in-channel = out-channel (mapped
  through g_in / g_out like any other weight) and an eval-mode identity BN.

The computation is done in float64 and cast back to the target's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.transforms.channel_map import ChannelMap


def map_weight(
    weight: torch.Tensor, in_map: ChannelMap, out_map: ChannelMap, kernel: int | None = None
) -> torch.Tensor:
    """Map a conv weight ``[n_out, n_in, k, k]`` (or linear ``[n_out, n_in]``) to the target's shape.

    Args:
        weight: The source weight.
        in_map: Map of the input channels (source size ``n_in``).
        out_map: Map of the output channels (source size ``n_out``; no new channels).
        kernel: Target kernel size for convs (>= k, same parity); ``None`` keeps k.

    Returns:
        ``W'[j, i] = W[g_out(j), g_in(i)] / cnt_in(g_in(i))`` (0 where g_in(i) = -1), zero-padded to ``kernel``.
    """
    if weight.shape[0] != out_map.source_size or weight.shape[1] != in_map.source_size:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not match maps ({out_map.source_size} out, {in_map.source_size} in)"
        )
    if bool(out_map.is_new.any()):
        raise ValueError("the output map of a transferred layer cannot contain new channels")
    dev = weight.device
    w = weight.detach().double()[out_map.index.to(dev)]
    w = w[:, in_map.index.clamp(min=0).to(dev)]
    scale = torch.where(in_map.is_new, torch.zeros((), dtype=torch.float64), 1.0 / in_map.divisor).to(dev)
    w = w * scale.view(1, -1, *([1] * (w.dim() - 2)))
    if kernel is not None and w.dim() == 4 and kernel != w.shape[-1]:
        w = enlarge_kernel(w, kernel)
    return w


def enlarge_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """Zero-pad a conv kernel ``[..., k, k]`` symmetrically to ``[..., kernel, kernel]`` (kernel >= k, same parity)."""
    k = weight.shape[-1]
    if kernel < k or (kernel - k) % 2:
        raise UserError(f"cannot enlarge a {k}x{k} kernel to {kernel}x{kernel} (needs a larger kernel, same parity)")
    p = (kernel - k) // 2
    return F.pad(weight, (p, p, p, p))


@torch.no_grad()
def transfer_conv(src: nn.Conv2d, dst: nn.Conv2d, in_map: ChannelMap, out_map: ChannelMap) -> None:
    """Write ``src`` into the wider / larger-kernel ``dst`` (see :func:`map_weight`); biases copied by ``out_map``."""
    if src.stride != dst.stride or src.groups != 1 or dst.groups != 1:
        raise UserError("hatching needs convolutions with equal strides and no groups")
    if dst.padding != (dst.kernel_size[0] // 2, dst.kernel_size[1] // 2):
        raise UserError("hatching needs convolutions padded by kernel_size // 2")
    w = map_weight(src.weight, in_map, out_map, dst.kernel_size[0])
    if tuple(w.shape) != tuple(dst.weight.shape):
        raise UserError(f"hatched conv weight {tuple(w.shape)} does not fit the target {tuple(dst.weight.shape)}")
    dst.weight.copy_(w.to(dst.weight.dtype))
    _copy_bias(src, dst, out_map)


@torch.no_grad()
def transfer_linear(src: nn.Linear, dst: nn.Linear, in_map: ChannelMap) -> None:
    """Write the classifier ``src`` into ``dst`` whose inputs are widened by ``in_map`` (outputs unchanged)."""
    w = map_weight(src.weight, in_map, ChannelMap.identity(src.out_features))
    if tuple(w.shape) != tuple(dst.weight.shape):
        raise UserError(f"hatched linear weight {tuple(w.shape)} does not fit the target {tuple(dst.weight.shape)}")
    dst.weight.copy_(w.to(dst.weight.dtype))
    _copy_bias(src, dst, ChannelMap.identity(src.out_features))


def _copy_bias(src: nn.Module, dst: nn.Module, out_map: ChannelMap) -> None:
    if (src.bias is None) != (dst.bias is None):
        raise UserError("hatching needs source and target layers that agree on having a bias")
    if dst.bias is not None:
        dst.bias.copy_(src.bias.detach()[out_map.index.to(src.bias.device)])


@torch.no_grad()
def transfer_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, channel_map: ChannelMap) -> None:
    """Copy gamma, beta and running statistics of channel g(j) into channel j (new channels keep ``dst``'s).

    Exact in eval mode and, because a replica has the same batch statistics as its source, in train mode.
    """
    if dst.num_features != channel_map.target_size or src.num_features != channel_map.source_size:
        raise ValueError(f"BN sizes {src.num_features} -> {dst.num_features} do not match the channel map")
    known = ~channel_map.is_new
    idx = channel_map.index[known]
    for name in ("weight", "bias", "running_mean", "running_var"):
        s, d = getattr(src, name), getattr(dst, name)
        if s is not None and d is not None:
            d[known.to(d.device)] = s.detach()[idx.to(s.device)].to(d.dtype)
    if src.num_batches_tracked is not None and dst.num_batches_tracked is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


@torch.no_grad()
def identity_conv_(dst: nn.Conv2d, in_map: ChannelMap, out_map: ChannelMap) -> None:
    """Net2DeeperNet: make ``dst`` compute the identity of the source stream (through the channel maps).

    The virtual source is an n x n identity kernel (n = ``in_map.source_size``; 1 at the spatial centre for
    in-channel = out-channel); it is mapped like any transferred weight, so a widened identity layer copies
    channel g_out(j) of the (widened) input. Exact after a ReLU when the layer is followed by a ReLU, since
    ReLU(ReLU(x)) = ReLU(x). Zero bias. Needs stride 1.
    """
    if dst.stride != (1, 1):
        raise UserError("an identity conv needs stride 1")
    n = in_map.source_size
    if out_map.source_size != n:
        raise ValueError("an identity layer has as many source output channels as input channels")
    eye = torch.eye(n, dtype=torch.float64, device=dst.weight.device).view(n, n, 1, 1)
    dst.weight.copy_(map_weight(eye, in_map, out_map, dst.kernel_size[0]).to(dst.weight.dtype))
    if dst.bias is not None:
        dst.bias.zero_()


@torch.no_grad()
def identity_bn_(bn: nn.BatchNorm2d, mean: torch.Tensor | None = None, var: torch.Tensor | None = None) -> None:
    """Make ``bn`` the identity in eval mode: running stats (mu, sigma^2), gamma = sqrt(sigma^2 + eps), beta = mu.

    Without statistics mu = 0, sigma^2 = 1. With the input's data statistics (Net2Net's recipe) the layer is
    also close to the identity in train mode, where it normalises by batch statistics.
    """
    mean = torch.zeros_like(bn.running_mean) if mean is None else mean
    var = torch.ones_like(bn.running_var) if var is None else var
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    if bn.weight is not None:
        bn.weight.copy_(torch.sqrt(var.double() + bn.eps).to(bn.weight.dtype))
        bn.bias.copy_(mean)
