"""BatchEnsemble layers: shared slow weights with per-member rank-1 fast weights, one pass for all members.

Wen, Tran & Ba, "BatchEnsemble: an Alternative Approach to Efficient Ensemble and Lifelong Learning", ICLR 2020;
implemented as edward2's ``Conv2DBatchEnsemble`` / ``DenseBatchEnsemble``.

Every layer holds one shared *slow* weight W (``out × in``) and, per member i, rank-1 *fast* vectors
r_i ∈ R^in (edward2's ``alpha``) and s_i ∈ R^out (``gamma``), plus a per-member bias b_i where the layer has a
bias. Member i's weight is W_i = W ⊙ (s_i r_iᵀ), computed without forming it:

    y = ((x ⊙ r_i) W) ⊙ s_i + b_i        (a conv scales input channels by r_i and output channels by s_i)

Input layout: the *folded* batch ``[M·B, ...]`` in which member i owns rows ``i·B .. (i+1)·B - 1`` (the batch
tiled M times). A layer runs **one** convolution / matrix product over all M·B rows; the per-member scalings
are broadcast multiplies, so there is no loop over members.

Init (uncertainty-baselines ``wide_resnet_batchensemble``): r, s ~ N(1, 0.5²) (flag ``random_sign_init =
-0.5``) or random ±1 signs with P(+1) = p (a positive flag value p); slow weights He-normal (Keras
``he_normal``: normal truncated at ±2σ, σ = √(2 / fan_in) / 0.8796); biases 0.

:class:`EnsembleBatchNorm2d` gives each member its own BN statistics and affine parameters on the folded batch
(the "+EnsembleBN" variant); :class:`BatchEnsembleLayers` is the :class:`~ensemblekit.models.LayerFactory` that
builds any registered backbone out of these layers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.layers.batch_ensemble_fused import BatchEnsembleConvFunction, BatchEnsembleMemberWeightConvFunction
from ensemblekit.models.factory import LayerFactory

FastInit = Literal["normal", "random_sign"]
Fused = bool | Literal["auto"]
ConvExecution = Literal["auto", "folded", "member_weights"]
"""How a BatchEnsemble convolution computes (config key ``method.conv_execution``): one convolution over the
folded batch, or one per member with its formed weight; ``auto`` picks per device."""
_TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated at ±2 (Keras' correction factor)


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Keras ``he_normal`` in place: truncated normal on [-2σ, 2σ], σ = √(2 / fan_in) / 0.8796.

    The correction makes the truncated distribution's standard deviation √(2 / fan_in) (He et al., 2015).
    fan_in = ``weight[0].numel()`` (in_channels·k·k for a conv, in_features for a linear).
    """
    std = math.sqrt(2.0 / weight[0].numel()) / _TRUNC_NORMAL_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def init_fast_weights_(tensor: torch.Tensor, init: FastInit = "normal", std: float = 0.5, sign_prob: float = 0.5):
    """Initialise fast weights in place.

    Args:
        tensor: The fast-weight tensor (``[M, features]``).
        init: ``"normal"``: N(1, std²) (edward2 ``random_sign_init = -std``); ``"random_sign"``: ±1 with
            P(+1) = ``sign_prob`` (edward2 ``RandomSign(sign_prob)``).
        std: Standard deviation of the normal init.
        sign_prob: Probability of +1 in the random-sign init.

    Returns:
        ``tensor``.
    """
    with torch.no_grad():
        if init == "normal":
            return tensor.normal_(1.0, std)
        if init == "random_sign":
            return tensor.bernoulli_(sign_prob).mul_(2.0).sub_(1.0)
    raise ValueError(f"unknown fast-weight init {init!r}; valid: normal, random_sign")


def member_rows(values: torch.Tensor, rows: int) -> torch.Tensor:
    """Expand per-member vectors ``[M, F]`` to the folded batch ``[M·B, F]`` (row i·B + j gets member i's)."""
    members = values.shape[0]
    if rows % members:
        raise ValueError(f"a BatchEnsemble layer needs the batch tiled M={members} times, got {rows} rows")
    return values.repeat_interleave(rows // members, dim=0)


class _BatchEnsembleBase(nn.Module):
    """Slow weight, fast vectors r/s and optional per-member bias; subclasses define the slow operation."""

    def __init__(
        self,
        members: int,
        in_features: int,
        out_features: int,
        weight_shape: tuple[int, ...],
        bias: bool,
        fast_init: FastInit,
        fast_std: float,
        sign_prob: float,
    ) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = members
        self.fast_init, self.fast_std, self.sign_prob = fast_init, fast_std, sign_prob
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.r = nn.Parameter(torch.empty(members, in_features))
        self.s = nn.Parameter(torch.empty(members, out_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal slow weight, fast weights per ``fast_init``, zero biases."""
        he_normal_(self.weight)
        init_fast_weights_(self.r, self.fast_init, self.fast_std, self.sign_prob)
        init_fast_weights_(self.s, self.fast_init, self.fast_std, self.sign_prob)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _slow(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute y = ((x ⊙ r_i) W) ⊙ s_i + b_i on the folded batch ``[M·B, in, ...]`` -> ``[M·B, out, ...]``."""
        rows = x.shape[0]
        extra = (1,) * (x.dim() - 2)  # broadcast over spatial dims
        r = member_rows(self.r, rows).view(rows, -1, *extra)
        s = member_rows(self.s, rows).view(rows, -1, *extra)
        y = self._slow(x * r)
        if self.bias is None:
            return y * s
        return torch.addcmul(member_rows(self.bias, rows).view(rows, -1, *extra), y, s)

    def member_weight(self, i: int) -> torch.Tensor:
        """Member i's full weight W_i = W ⊙ (s_i r_iᵀ) (for tests and analysis; not used in forward)."""
        extra = (1,) * (self.weight.dim() - 2)
        return self.weight * self.s[i].view(-1, 1, *extra) * self.r[i].view(1, -1, *extra)


class BatchEnsembleConv2d(_BatchEnsembleBase):
    """A BatchEnsemble 2-d convolution (edward2 ``Conv2DBatchEnsemble``).

    Args:
        members: Ensemble size M.
        in_channels: Input channels (length of r_i).
        out_channels: Output channels (length of s_i, b_i).
        kernel_size: Square kernel size.
        stride: Stride.
        padding: Zero padding on every side.
        bias: Whether each member has a bias b_i.
        fast_init: ``"normal"`` (N(1, fast_std²)) or ``"random_sign"`` (±1, P(+1) = sign_prob).
        fast_std: Standard deviation of the normal fast-weight init.
        sign_prob: Probability of +1 of the random-sign init.
        fused: ``True``: :class:`~ensemblekit.layers.batch_ensemble_fused.BatchEnsembleConvFunction` (one
            autograd node, half the elementwise passes of plain autograd, same values); ``False``: plain
            autograd ops (the reference; supports double backward); ``"auto"``: fused on CPU, plain elsewhere (the
            timings behind the choice: docs/methods/batch_ensemble.md, "Execution").
            Applies to the folded form. Under autocast the plain path is always used.
        conv_execution: ``"folded"``: one convolution over the folded batch (above); ``"member_weights"``:
            ``BatchEnsembleMemberWeightConvFunction`` (member i's rows convolved with its formed weight
            W ⊙ s_i r_iᵀ: same values, no full-size elementwise passes, M convolutions of B rows); ``"auto"``:
            member weights on CPU, folded elsewhere (docs/methods/batch_ensemble.md, "Execution").
    """

    def __init__(
        self,
        members: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        fast_init: FastInit = "normal",
        fast_std: float = 0.5,
        sign_prob: float = 0.5,
        fused: Fused = "auto",
        conv_execution: ConvExecution = "auto",
    ) -> None:
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        super().__init__(members, in_channels, out_channels, shape, bias, fast_init, fast_std, sign_prob)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.fused = fused
        self.conv_execution = conv_execution

    def _slow(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute y = conv(x ⊙ r_i, W) ⊙ s_i + b_i on the folded batch (one convolution for all members)."""
        device = x.device.type
        if device != "meta" and not torch.is_autocast_enabled(device):  # meta tensors: shapes only, plain ops
            args = (x, self.weight, self.r, self.s, self.bias, self.stride, self.padding)
            cpu = device == "cpu"
            if self.conv_execution == "member_weights" or (self.conv_execution == "auto" and cpu):
                return BatchEnsembleMemberWeightConvFunction.apply(*args)
            if self.fused is True or (self.fused == "auto" and cpu):
                return BatchEnsembleConvFunction.apply(*args)
        return super().forward(x)

    def extra_repr(self) -> str:
        return (
            f"members={self.members}, {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class BatchEnsembleLinear(_BatchEnsembleBase):
    """A BatchEnsemble fully connected layer (edward2 ``DenseBatchEnsemble``).

    Args:
        members: Ensemble size M.
        in_features: Input features (length of r_i).
        out_features: Outputs (length of s_i, b_i).
        bias: Whether each member has a bias b_i.
        fast_init: ``"normal"`` or ``"random_sign"`` (see :func:`init_fast_weights_`).
        fast_std: Standard deviation of the normal fast-weight init.
        sign_prob: Probability of +1 of the random-sign init.
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        out_features: int,
        bias: bool = True,
        fast_init: FastInit = "normal",
        fast_std: float = 0.5,
        sign_prob: float = 0.5,
    ) -> None:
        shape = (out_features, in_features)
        super().__init__(members, in_features, out_features, shape, bias, fast_init, fast_std, sign_prob)
        self.in_features, self.out_features = in_features, out_features

    def _slow(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"members={self.members}, {self.in_features}, {self.out_features}, bias={self.bias is not None}"


class EnsembleBatchNorm2d(nn.Module):
    """Per-member BatchNorm on the folded batch (BatchEnsemble "+EnsembleBN").

    Member i normalises its own rows ``i·B .. (i+1)·B - 1`` with its own batch statistics (training) or running
    statistics (eval) and its own affine γ_i, β_i: y = γ_i (x − μ_i) / √(σ_i² + ε) + β_i. Running statistics
    follow PyTorch's BatchNorm (momentum 0.1, unbiased variance). Implemented as one ``F.batch_norm`` per member
    chunk (M calls on contiguous row slices, then one concatenation), which avoids the two transposing copies
    of the ``[B, M·C, H, W]`` layout (timings: docs/methods/batch_ensemble.md, "Execution").

    Args:
        members: Ensemble size M.
        channels: Channels C.
        eps: ε.
        momentum: Running-statistics momentum (PyTorch semantics).
    """

    is_normalization = True  # its γ, β are normalisation parameters (training.optim.is_bn_or_bias)
    uses_batch_statistics = True  # normalises with batch statistics in training (ensemblekit.training.replica_bn)

    def __init__(self, members: int, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.members, self.channels, self.eps, self.momentum = members, channels, eps, momentum
        self.weight = nn.Parameter(torch.ones(members, channels))
        self.bias = nn.Parameter(torch.zeros(members, channels))
        self.register_buffer("running_mean", torch.zeros(members, channels))
        self.register_buffer("running_var", torch.ones(members, channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[M·B, C, H, W]`` member by member."""
        rows = x.shape[0]
        if rows % self.members:
            raise ValueError(f"EnsembleBatchNorm2d needs the batch tiled M={self.members} times, got {rows} rows")
        if self.training:
            self.num_batches_tracked.add_(1)
        chunks = x.split(rows // self.members, dim=0)
        out = [
            F.batch_norm(
                chunk,
                self.running_mean[i],
                self.running_var[i],
                self.weight[i],
                self.bias[i],
                self.training,
                self.momentum,
                self.eps,
            )
            for i, chunk in enumerate(chunks)
        ]
        return torch.cat(out, dim=0)

    def extra_repr(self) -> str:
        return f"members={self.members}, {self.channels}, eps={self.eps}, momentum={self.momentum}"


class BatchEnsembleLayers(LayerFactory):
    """Layer factory that builds any backbone as a BatchEnsemble.

    Every conv (stem, residual convs, projection shortcuts) becomes a :class:`BatchEnsembleConv2d`, the
    classifier a :class:`BatchEnsembleLinear`; BatchNorm stays one shared ``nn.BatchNorm2d`` over all M·B rows
    unless ``ensemble_bn`` (then :class:`EnsembleBatchNorm2d`). The built network maps the folded batch
    ``[M·B, C, H, W]`` to ``[M·B, K]``.

    Args:
        members: Ensemble size M.
        ensemble_bn: Per-member BatchNorm.
        fast_init: ``"normal"`` or ``"random_sign"``.
        fast_std: Standard deviation of the normal fast-weight init.
        sign_prob: Probability of +1 of the random-sign init.
        conv_execution: The convolutions' ``conv_execution`` (``"auto"``, ``"folded"`` or ``"member_weights"``).
        fused: The convolutions' ``fused`` setting (``True``, ``False`` or ``"auto"``; see
            :class:`BatchEnsembleConv2d`).
    """

    def __init__(
        self,
        members: int,
        ensemble_bn: bool = False,
        fast_init: FastInit = "normal",
        fast_std: float = 0.5,
        sign_prob: float = 0.5,
        fused: Fused = "auto",
        conv_execution: ConvExecution = "auto",
    ) -> None:
        self.members = members
        self.ensemble_bn = ensemble_bn
        self.fused = fused
        self.conv_execution = conv_execution
        self.fast = {"fast_init": fast_init, "fast_std": fast_std, "sign_prob": sign_prob}

    def conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False) -> nn.Module:
        return BatchEnsembleConv2d(
            self.members,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            bias,
            **self.fast,
            fused=self.fused,
            conv_execution=self.conv_execution,
        )

    def batchnorm2d(self, channels: int) -> nn.Module:
        return EnsembleBatchNorm2d(self.members, channels) if self.ensemble_bn else nn.BatchNorm2d(channels)

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return BatchEnsembleLinear(self.members, in_features, out_features, bias, **self.fast)


def tile_batch(x: torch.Tensor, members: int) -> torch.Tensor:
    """Tile ``[B, ...]`` to the folded batch ``[M·B, ...]`` (member i = rows i·B..(i+1)·B), keeping the layout."""
    tiled = x.repeat(members, *([1] * (x.dim() - 1)))
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        tiled = tiled.contiguous(memory_format=torch.channels_last)
    return tiled


__all__ = [
    "BatchEnsembleConv2d",
    "BatchEnsembleLayers",
    "BatchEnsembleLinear",
    "EnsembleBatchNorm2d",
    "he_normal_",
    "init_fast_weights_",
    "member_rows",
    "tile_batch",
]
