"""Architecture specifications: frozen dataclasses that describe a backbone completely.

A spec is the single source of truth for a backbone's structure. ``build_model(spec)`` builds exactly the
network it describes, so methods transform architectures by transforming specs (``dataclasses.replace``):
MotherNets takes per-position minima of member specs, hatching widens/deepens a spec, NFE and TreeNets
read the stage layout, MIMO changes ``in_channels``. Specs serialise to plain dicts with
``dataclasses.asdict`` and come back with :func:`spec_from_dict` (lists, e.g. from JSON or YAML, become
tuples).

Three spec types cover the five families:

* :class:`ResNetSpec`: ``"resnet"`` (post-activation CIFAR ResNet), ``"preact_resnet"`` and
  ``"wide_resnet"`` (pre-activation residual networks).
* :class:`VGGSpec`: ``"vgg"`` (plain conv stacks separated by max-pooling).
* :class:`DenseNetSpec`: ``"densenet"`` (dense blocks separated by transitions).

Width multipliers are applied when a spec is made (:func:`scale_channels`); a spec stores final channel
counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ensemblekit.errors import UserError

SHORTCUTS: tuple[str, ...] = ("projection", "zero_pad")
RESNET_BLOCKS: dict[str, str] = {"resnet": "basic", "preact_resnet": "preact_basic", "wide_resnet": "preact_basic"}


def scale_channels(channels: int, width: float) -> int:
    """Scale a channel count by a width multiplier: ``max(1, floor(channels * width + 0.5))``.

    Rounding is half-up (16 * 0.3 = 4.8 -> 5; 64 * 0.3 = 19.2 -> 19; 0.5 rounds up), never below 1.

    Args:
        channels: The channel count at width 1.
        width: The multiplier (> 0).

    Returns:
        The scaled channel count.
    """
    _check_width(width)
    return max(1, math.floor(channels * width + 0.5))


def _check_width(width: float) -> None:
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise UserError(f"width must be a number > 0, got {width!r}")


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_pos_int(spec: object, name: str, value: Any) -> None:
    if not _is_pos_int(value):
        raise UserError(f"{type(spec).__name__}.{name} must be an integer >= 1, got {value!r}")


def _as_int_tuple(spec: object, name: str) -> tuple[int, ...]:
    value = getattr(spec, name)
    if not isinstance(value, list | tuple) or not value or not all(_is_pos_int(v) for v in value):
        raise UserError(f"{type(spec).__name__}.{name} must be a non-empty list of integers >= 1, got {value!r}")
    result = tuple(value)
    object.__setattr__(spec, name, result)
    return result


def _check_common(spec: Any, family: str) -> None:
    if spec.family != family:
        raise UserError(f"{type(spec).__name__} needs family {family!r}, got {spec.family!r}")
    _check_pos_int(spec, "num_classes", spec.num_classes)
    _check_pos_int(spec, "in_channels", spec.in_channels)
    p = spec.dropout
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise UserError(f"{type(spec).__name__}.dropout must be in [0, 1), got {p!r}")


def _check_kernel(spec: object, name: str, k: Any) -> None:
    if not _is_pos_int(k) or k % 2 == 0:
        raise UserError(f"{type(spec).__name__}.{name} must be an odd integer >= 1, got {k!r}")


@dataclass(frozen=True, kw_only=True)
class ResNetSpec:
    """A residual network: stem conv, stages of basic blocks, head.

    Attributes:
        family: ``"resnet"`` (post-activation, He et al. 2016a), ``"preact_resnet"`` (He et al. 2016b) or
            ``"wide_resnet"`` (Zagoruyko & Komodakis 2016).
        block: ``"basic"`` (conv-BN-ReLU-[dropout]-conv-BN, add, ReLU; family ``"resnet"``) or
            ``"preact_basic"`` (BN-ReLU-conv-BN-ReLU-[dropout]-conv, add; the pre-activation families).
        stem_channels: Output channels of the stem conv.
        stage_blocks: Number of residual blocks in each stage.
        stage_channels: Output channels of every block of each stage.
        stage_strides: Stride of each stage's first block (its first conv and its shortcut).
        shortcut: Shortcut where a block changes shape: ``"projection"`` (1x1 conv, followed by BN in
            post-activation blocks; pre-activation blocks apply it to the pre-activated input) or
            ``"zero_pad"`` (He et al.'s option A: spatial subsampling and zero channels). Identity elsewhere.
        kernel_size: Kernel of the residual convs (odd; padding ``kernel_size // 2``).
        stem_kernel_size: Kernel of the stem conv (odd).
        final_bn: Whether the head applies BN-ReLU before pooling.
        conv_bias: Whether convolutions have biases.
        dropout: Rate of the ``nn.Dropout`` between the two convs of each block (0 = no dropout module).
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    family: str
    block: str
    stem_channels: int
    stage_blocks: tuple[int, ...]
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    shortcut: str = "projection"
    kernel_size: int = 3
    stem_kernel_size: int = 3
    final_bn: bool = False
    conv_bias: bool = False
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.family not in RESNET_BLOCKS:
            raise UserError(f"ResNetSpec.family must be one of {', '.join(RESNET_BLOCKS)}, got {self.family!r}")
        _check_common(self, self.family)
        if self.block != RESNET_BLOCKS[self.family]:
            raise UserError(f"family {self.family!r} uses block {RESNET_BLOCKS[self.family]!r}, got {self.block!r}")
        _check_pos_int(self, "stem_channels", self.stem_channels)
        lengths = {len(_as_int_tuple(self, n)) for n in ("stage_blocks", "stage_channels", "stage_strides")}
        if len(lengths) != 1:
            raise UserError("ResNetSpec: stage_blocks, stage_channels and stage_strides need equal lengths")
        if self.shortcut not in SHORTCUTS:
            raise UserError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {self.shortcut!r}")
        _check_kernel(self, "kernel_size", self.kernel_size)
        _check_kernel(self, "stem_kernel_size", self.stem_kernel_size)

    @property
    def num_stages(self) -> int:
        """Number of stages."""
        return len(self.stage_blocks)

    @property
    def stage_out_channels(self) -> tuple[int, ...]:
        """Channels leaving each stage."""
        return self.stage_channels

    @property
    def num_features(self) -> int:
        """Channels entering the head (the classifier's input size)."""
        return self.stage_channels[-1]


@dataclass(frozen=True, kw_only=True)
class VGGSpec:
    """A VGG-style plain network: stages of conv(-BN)-ReLU layers, each stage ending in 2x2 max-pooling.

    Attributes:
        family: Always ``"vgg"``.
        conv_channels: Output channels of every conv layer, grouped by stage (one stage per pooling).
        kernel_sizes: Kernel of every conv layer, same nesting as ``conv_channels`` (odd; padding ``k // 2``).
            ``None`` means 3 everywhere and is replaced by the explicit tuple.
        batch_norm: Whether each conv is followed by BatchNorm.
        conv_bias: Whether convolutions have biases (the common CIFAR variant keeps them).
        dropout: Rate of the ``nn.Dropout`` after every pooling except the last one and before the classifier.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    family: str = "vgg"
    conv_channels: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None
    batch_norm: bool = True
    conv_bias: bool = True
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 3

    def __post_init__(self) -> None:
        _check_common(self, "vgg")
        channels = self._nested("conv_channels", self.conv_channels)
        if self.kernel_sizes is None:
            object.__setattr__(self, "kernel_sizes", tuple((3,) * len(stage) for stage in channels))
        kernels = self._nested("kernel_sizes", self.kernel_sizes)
        if [len(s) for s in kernels] != [len(s) for s in channels]:
            raise UserError("VGGSpec.kernel_sizes must have the same nesting as conv_channels")
        for stage in kernels:
            for k in stage:
                _check_kernel(self, "kernel_sizes", k)

    def _nested(self, name: str, value: Any) -> tuple[tuple[int, ...], ...]:
        ok = isinstance(value, list | tuple) and value and all(isinstance(s, list | tuple) and s for s in value)
        if not ok or not all(_is_pos_int(v) for s in value for v in s):
            raise UserError(f"VGGSpec.{name} must be a non-empty list of non-empty lists of integers >= 1")
        result = tuple(tuple(s) for s in value)
        object.__setattr__(self, name, result)
        return result

    @property
    def num_stages(self) -> int:
        """Number of stages (= number of max-poolings)."""
        return len(self.conv_channels)

    @property
    def stage_layers(self) -> tuple[int, ...]:
        """Number of conv layers in each stage."""
        return tuple(len(stage) for stage in self.conv_channels)

    @property
    def stage_out_channels(self) -> tuple[int, ...]:
        """Channels leaving each stage."""
        return tuple(stage[-1] for stage in self.conv_channels)

    @property
    def num_features(self) -> int:
        """Channels entering the head (the classifier's input size)."""
        return self.conv_channels[-1][-1]


@dataclass(frozen=True, kw_only=True)
class DenseNetSpec:
    """A DenseNet: stem conv, dense blocks separated by transitions, BN-ReLU head.

    Attributes:
        family: Always ``"densenet"``.
        growth_rate: Channels each dense layer adds (k).
        stage_layers: Dense layers in each dense block.
        stem_channels: Output channels of the stem conv.
        bottleneck: Whether dense layers have the BN-ReLU-conv1x1 bottleneck (the "B" of DenseNet-BC).
        bottleneck_width: Bottleneck channels = ``bottleneck_width * growth_rate``.
        compression: Transition output channels = ``floor(compression * input channels)`` (the "C").
        dropout: Rate of the ``nn.Dropout`` after every conv of dense layers and transitions.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    family: str = "densenet"
    growth_rate: int
    stage_layers: tuple[int, ...]
    stem_channels: int
    bottleneck: bool = True
    bottleneck_width: int = 4
    compression: float = 0.5
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 3

    def __post_init__(self) -> None:
        _check_common(self, "densenet")
        _check_pos_int(self, "growth_rate", self.growth_rate)
        _check_pos_int(self, "stem_channels", self.stem_channels)
        _check_pos_int(self, "bottleneck_width", self.bottleneck_width)
        _as_int_tuple(self, "stage_layers")
        c = self.compression
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0.0 < c <= 1.0:
            raise UserError(f"DenseNetSpec.compression must be in (0, 1], got {c!r}")

    @property
    def num_stages(self) -> int:
        """Number of dense blocks."""
        return len(self.stage_layers)

    @property
    def stage_out_channels(self) -> tuple[int, ...]:
        """Channels leaving each stage (after its transition, where it has one)."""
        out, channels = [], self.stem_channels
        for i, n in enumerate(self.stage_layers):
            channels += n * self.growth_rate
            if i < self.num_stages - 1:
                channels = self.transition_channels(channels)
            out.append(channels)
        return tuple(out)

    def transition_channels(self, in_channels: int) -> int:
        """Output channels of a transition fed ``in_channels`` channels (at least 1)."""
        return max(1, math.floor(self.compression * in_channels))

    @property
    def num_features(self) -> int:
        """Channels entering the head (the classifier's input size)."""
        return self.stage_out_channels[-1]


ModelSpec = ResNetSpec | VGGSpec | DenseNetSpec

SPEC_TYPES: dict[str, type[ResNetSpec] | type[VGGSpec] | type[DenseNetSpec]] = {
    "resnet": ResNetSpec,
    "preact_resnet": ResNetSpec,
    "wide_resnet": ResNetSpec,
    "vgg": VGGSpec,
    "densenet": DenseNetSpec,
}


def spec_from_dict(data: Mapping[str, Any]) -> ModelSpec:
    """Rebuild a spec from the dict that ``dataclasses.asdict`` made (or its JSON/YAML round trip).

    Args:
        data: A mapping with a ``family`` key and the spec's fields.

    Returns:
        The spec of that family.

    Raises:
        UserError: on an unknown family, unknown or missing fields, or invalid values.
    """
    family = data.get("family")
    if family not in SPEC_TYPES:
        raise UserError(f"unknown model family {family!r}; valid: {', '.join(SPEC_TYPES)}")
    cls = SPEC_TYPES[family]
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    try:
        return cls(**data)
    except TypeError as err:
        raise UserError(f"invalid {cls.__name__}: {err}") from None
