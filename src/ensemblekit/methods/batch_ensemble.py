"""``batch_ensemble``: BatchEnsemble (Wen, Tran & Ba, ICLR 2020), as in uncertainty-baselines.

Every conv (stem and shortcuts included) and the classifier of the backbone are BatchEnsemble layers
(:mod:`ensemblekit.layers.batch_ensemble`): member i's weight is W_i = W ⊙ (s_i r_iᵀ) with a shared slow W and
per-member fast vectors r_i, s_i (and per-member biases). BN is shared across members unless ``ensemble_bn``.

Training: a batch of B unique images is tiled M times, so every member sees every image, and one pass runs all
members; the loss is the mean cross-entropy over the M·B rows, L = (1/M) Σ_i (1/B) Σ_b CE(z_i(x_b), y_b)
(``member_cross_entropy`` with ``"mean"``; ``train.member_loss`` does not apply). Parameter groups follow
uncertainty-baselines' ``batchensemble.py``:

* slow weights, BN γ/β: learning rate lr, weight decay ``train.weight_decay``;
* fast weights r, s: lr · ``fast_lr_mult``, **no** weight decay;
* per-member biases (the classifier's): lr · ``fast_lr_mult`` (UB multiplies every non-kernel, non-BN
  gradient), weight decay ``train.weight_decay``.

With ``train.decay_bn_and_bias: false`` BN parameters and biases are not decayed either.

Prediction: the input is tiled M times and p̄(y|x) = (1/M) Σ_i softmax(z_i(x)). Costs: parameters ≈ 1× (+ M·(in +
out) fast weights per layer, + (M − 1)·K classifier biases); inference and training FLOPs M× a single model per
image. Execution (``conv_execution``): one convolution per layer over the folded batch (``folded``, with the fused
backward node of :mod:`ensemblekit.layers.batch_ensemble_fused`, ``fused_backward``), or each member's rows
convolved with its formed weight (``member_weights``, the ``auto`` choice on CPU); both give the same values.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ensemblekit.ensemble import Ensemble
from ensemblekit.layers.batch_ensemble import (
    BatchEnsembleConv2d,
    BatchEnsembleLayers,
    BatchEnsembleLinear,
    EnsembleBatchNorm2d,
    tile_batch,
)
from ensemblekit.methods.base import METHODS, Method, MethodOptions
from ensemblekit.models import build_model
from ensemblekit.training.stage import Stage, stage_from_train


class BatchEnsembleNet(Ensemble):
    """A BatchEnsemble backbone run on the input tiled M times.

    Args:
        net: A backbone built with :class:`~ensemblekit.layers.batch_ensemble.BatchEnsembleLayers`; maps the
            folded batch ``[M·B, ...]`` to ``[M·B, K]``.
        members: Ensemble size M (the factory's).
    """

    def __init__(self, net: nn.Module, members: int) -> None:
        super().__init__()
        self.net = net
        self._num_members = members  # an int; ``.members`` is the ModuleList of MemberEnsemble

    @property
    def num_members(self) -> int:
        return self._num_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[M, B, K]`` for images ``[B, ...]`` (one pass over the tiled batch ``[M·B, ...]``)."""
        out = self.net(tile_batch(x, self.num_members))
        return out.view(self.num_members, x.shape[0], -1)

    def total_parameter_count(self) -> int:
        """The ensemble's size is its stored size: slow weights once, fast weights and BN of every member."""
        return sum(p.numel() for p in self.parameters())


class BatchEnsembleOptions(MethodOptions):
    """Options of ``batch_ensemble`` (defaults: uncertainty-baselines CIFAR).

    Attributes:
        members: Ensemble size M (4).
        ensemble_bn: Per-member BatchNorm statistics and affine parameters (the "+EnsembleBN" rows).
        fast_weight_init: ``normal``: r, s ~ N(1, fast_weight_std²) (UB ``random_sign_init = -0.5``);
            ``random_sign``: ±1 with P(+1) = ``random_sign_prob`` (a positive ``random_sign_init``).
        fast_weight_std: Standard deviation of the normal init (0.5).
        random_sign_prob: Probability of +1 of the random-sign init.
        fast_lr_mult: Learning-rate multiplier of the fast weights and member biases (0.5 CIFAR, 0.25 ImageNet).
        fused_backward: ``true``: every convolution is one autograd node whose backward gets the fast-weight
            gradients from per-member weight gradients instead of full-size products (same values, half the
            elementwise memory passes; :mod:`ensemblekit.layers.batch_ensemble_fused`); ``false``: plain
            autograd; ``auto``: fused on CPU, plain on GPUs (timings: docs/methods/batch_ensemble.md, "Execution").
        conv_execution: ``folded``: one convolution per layer over the folded batch, fast weights applied as
            broadcast products (the paper's formulation); ``member_weights``: member i's rows convolved with its
            formed weight W ⊙ s_i r_iᵀ (same values and FLOPs, no full-size elementwise passes, M convolutions
            per layer; ``fused_backward`` then does not apply); ``auto``: member weights on CPU, folded elsewhere
            (``benchmarks/bench_batch_ensemble.py`` compares them; figures in docs/methods/batch_ensemble.md).
    """

    members: int = Field(default=4, ge=1)
    ensemble_bn: bool = False
    fast_weight_init: Literal["normal", "random_sign"] = "normal"
    fast_weight_std: float = Field(default=0.5, gt=0)
    random_sign_prob: float = Field(default=0.5, ge=0, le=1)
    fast_lr_mult: float = Field(default=0.5, gt=0)
    fused_backward: bool | Literal["auto"] = "auto"
    conv_execution: Literal["auto", "folded", "member_weights"] = "auto"


def batch_ensemble_param_groups(
    module: nn.Module, fast_lr_mult: float, decay_bn_and_bias: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups of a BatchEnsemble (see the module docstring); each group is named (``name`` key).

    Args:
        module: The ensemble (or any module containing BatchEnsemble layers).
        fast_lr_mult: Learning-rate multiplier of r, s and member biases.
        decay_bn_and_bias: Whether BN parameters and member biases get weight decay.

    Returns:
        Groups ``slow``, ``bn``, ``fast`` (lr_mult, weight_decay 0) and ``bias`` (lr_mult); empty ones dropped.
    """
    slow, bn, fast, bias, seen = [], [], [], [], set()
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(mod, BatchEnsembleConv2d | BatchEnsembleLinear):
                {"weight": slow, "r": fast, "s": fast, "bias": bias}[name].append(p)
            elif isinstance(mod, nn.modules.batchnorm._NormBase | EnsembleBatchNorm2d):
                bn.append(p)
            else:
                slow.append(p)
    no_decay: dict[str, float] = {} if decay_bn_and_bias else {"weight_decay": 0.0}
    groups = [
        {"name": "slow", "params": slow},
        {"name": "bn", "params": bn, **no_decay},
        {"name": "fast", "params": fast, "weight_decay": 0.0, "lr_mult": fast_lr_mult},
        {"name": "bias", "params": bias, "lr_mult": fast_lr_mult, **no_decay},
    ]
    return [g for g in groups if g["params"]]


@METHODS.register("batch_ensemble")
class BatchEnsemble(Method):
    """Shared slow weights, per-member rank-1 fast weights, members run in one pass on the tiled batch."""

    Options = BatchEnsembleOptions
    summary = "shared weights with per-member rank-1 factors, tiled batch (Wen et al., 2020)"

    def layers(self) -> BatchEnsembleLayers:
        """The layer factory of this configuration."""
        o = self.options
        return BatchEnsembleLayers(
            o.members,
            o.ensemble_bn,
            o.fast_weight_init,
            o.fast_weight_std,
            o.random_sign_prob,
            o.fused_backward,
            o.conv_execution,
        )

    def build(self) -> Ensemble:
        if self.custom_backbone():  # the user's module: its Conv2d/Linear layers become BatchEnsemble layers
            from ensemblekit.models.custom import convert_layers

            return BatchEnsembleNet(convert_layers(self.backbone(), self.layers(), self.name), self.options.members)
        spec = self.backbone().spec  # the configured architecture (a throwaway plain build)
        return BatchEnsembleNet(build_model(spec, layers=self.layers()), self.options.members)

    def batch_tile(self) -> int:
        """The batch is tiled M times (member-major rows)."""
        return self.options.members

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        train, mult = self.cfg.train, self.options.fast_lr_mult

        def groups(module: nn.Module) -> list[dict[str, Any]]:
            return batch_ensemble_param_groups(module, mult, train.decay_bn_and_bias)

        return [
            stage_from_train(
                "train", ensemble, train, data_seed=self.member_seed(0), member_loss="mean", param_groups=groups
            )
        ]
