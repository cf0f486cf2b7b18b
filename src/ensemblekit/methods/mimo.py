"""``mimo``: multi-input multi-output networks, M independent subnetworks in one backbone.

Havasi et al., "Training independent subnetworks for robust prediction", ICLR 2021; the training step follows
uncertainty-baselines ``baselines/cifar/mimo.py``.

One backbone with M input slots concatenated on channels (``in_channels = 3·M``: slot m occupies channels
3m..3m+2) and M heads (``num_classes = K·M``: head m is logits m·K..(m+1)·K − 1); only the first conv and the
classifier grow. Head m predicts the label of the image in slot m.

Training step (``prepare_batch``, global torch RNG): from B unique images build the index list of the B
indices repeated ``batch_repetitions`` (r) times and shuffled; for every member independently shuffle its
first ⌊(1 − ρ)·B·r⌋ entries and keep the last ρ fraction identical across members (ρ = ``input_repetition``).
The inputs are ``[B·r, 3M, H, W]``, the per-member targets ``[M, B·r]``, and the loss is

    L = (1/(B·r)) Σ_n Σ_m CE(z_m(x_n), y_{m,n})      (Σ over members, mean over rows)

(``member_cross_entropy`` with ``"sum"``; ``train.member_loss`` does not apply). Weight decay on every
parameter as ``train`` says (UB: L2 on kernels, BN and biases).

Prediction: the same image fills every slot, p̄(y|x) = (1/M) Σ_m softmax(z_m(x)). Costs: parameters ≈ 1×,
inference FLOPs ≈ 1× (the wider stem and classifier only), training FLOPs ≈ r× a single model per epoch.
"""

from __future__ import annotations

import dataclasses

import torch
from pydantic import Field
from torch import nn

from ensemblekit.data.loader import to_device_async
from ensemblekit.ensemble import Ensemble
from ensemblekit.methods.base import METHODS, Method, MethodOptions
from ensemblekit.models import build_model
from ensemblekit.training.stage import Stage, stage_from_train


class MIMOEnsemble(Ensemble):
    """A MIMO network: M channel-concatenated input slots, M heads.

    ``forward`` accepts either images ``[B, C, H, W]`` (test time: the same image fills every slot) or packed
    training inputs ``[B, M·C, H, W]``; it returns member logits ``[M, B, K]``.

    Args:
        net: A backbone with ``M·C`` input channels and ``M·K`` outputs.
        members: Number of slots M.
        in_channels: Channels C of one image.
    """

    def __init__(self, net: nn.Module, members: int, in_channels: int = 3) -> None:
        super().__init__()
        self.net = net
        self._num_members = members  # an int; ``.members`` is the ModuleList of MemberEnsemble
        self.in_channels = in_channels

    @property
    def num_members(self) -> int:
        return self._num_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[M, B, K]`` for ``[B, C, H, W]`` (replicated into every slot) or ``[B, M·C, H, W]``."""
        channels, m = x.shape[1], self.num_members
        if channels == self.in_channels and m > 1:
            x = fill_slots(x, m)
        elif channels != self.in_channels * m:
            expected = f"{self.in_channels} or {self.in_channels * m}"
            raise ValueError(f"MIMO expects {expected} input channels, got {channels}")
        out = self.net(x)
        return out.view(x.shape[0], m, -1).transpose(0, 1)

    def total_parameter_count(self) -> int:
        """One network: its stored size."""
        return sum(p.numel() for p in self.parameters())


def _keep_layout(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return packed.contiguous(memory_format=torch.channels_last)
    return packed


def fill_slots(x: torch.Tensor, members: int) -> torch.Tensor:
    """The same image in every slot: ``[B, C, H, W]`` -> ``[B, M·C, H, W]``."""
    return _keep_layout(x.repeat(1, members, 1, 1), x)


def mimo_indices(batch: int, members: int, repetitions: int, input_repetition: float) -> torch.Tensor:
    """Slot indices ``[M, batch·repetitions]`` of one MIMO training step (UB ``mimo.py``; global torch RNG).

    main = shuffle(tile(0..B−1, r)); n = B·r; k = ⌊n·(1 − ρ)⌋; member m's indices are
    ``cat(shuffle_m(main[:k]), main[k:])`` (ρ = ``input_repetition``).
    """
    n = batch * repetitions
    main = torch.arange(batch).repeat(repetitions)[torch.randperm(n)]
    k = int(n * (1.0 - input_repetition))
    return torch.stack([torch.cat([main[:k][torch.randperm(k)], main[k:]]) for _ in range(members)])


def mimo_batch(
    x: torch.Tensor, y: torch.Tensor, members: int, repetitions: int, input_repetition: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a batch of B unique images into MIMO inputs ``[B·r, M·C, H, W]`` and targets ``[M, B·r]``.

    Slot m of row n holds image ``idx[m, n]`` (:func:`mimo_indices`); its target is that image's label.
    """
    idx = to_device_async(mimo_indices(len(x), members, repetitions, input_repetition), x.device)  # no host block
    packed = torch.cat([x[i] for i in idx], dim=1)
    return _keep_layout(packed, x), y[idx]


class MIMOOptions(MethodOptions):
    """Options of ``mimo`` (defaults: uncertainty-baselines CIFAR; ImageNet uses M=2, ρ=0.6, r=2).

    Attributes:
        members: Number of input slots / heads M (3).
        input_repetition: Fraction ρ of a step's rows whose slots all hold the same image (0.0; UB's
            ``input_repetition_probability``).
        batch_repetitions: Times r each unique image appears in a step's rows (4); training costs r×.
    """

    members: int = Field(default=3, ge=1)
    input_repetition: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_repetitions: int = Field(default=4, ge=1)


@METHODS.register("mimo")
class MIMO(Method):
    """M subnetworks in one backbone: M input slots on channels, M heads."""

    Options = MIMOOptions
    summary = "M inputs on channels, M heads, one network (Havasi et al., 2021)"

    def build(self) -> Ensemble:
        m = self.options.members
        if self.custom_backbone():  # the user's module: widen its input conv and classifier
            from ensemblekit.models.custom import widen_input_and_classifier

            net, channels = widen_input_and_classifier(self.backbone(), m)
            return MIMOEnsemble(net, m, channels)
        spec = self.backbone().spec  # the configured architecture (a throwaway plain build)
        spec = dataclasses.replace(spec, in_channels=spec.in_channels * m, num_classes=spec.num_classes * m)
        return MIMOEnsemble(build_model(spec), m, spec.in_channels // m)

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        o = self.options

        def prepare(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return mimo_batch(x, y, o.members, o.batch_repetitions, o.input_repetition)

        return [
            stage_from_train(
                "train",
                ensemble,
                self.cfg.train,
                data_seed=self.member_seed(0),
                member_loss="sum",
                prepare_batch=prepare,
            )
        ]
