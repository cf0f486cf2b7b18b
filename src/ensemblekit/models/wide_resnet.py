"""Wide Residual Networks WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Architecture: a 3x3 conv stem with 16 filters; three stages of n = (d - 4) / 6 pre-activation basic
blocks ("B(3,3)") with 16k, 32k, 64k filters and strides 1/2/2; dropout (if any) between the two convs of
each block; bias-free convs; a 1x1 conv shortcut (no BN) on the pre-activated input where the shape
changes; final BN-ReLU, global average pooling, linear classifier. WRN-28-10 has 36,479,194 parameters and
WRN-16-4 2,748,890 for 10 classes.

``width`` multiplies all channels on top of k (stem 16 * width, stages 16k * width, ...; rounded half up,
at least 1), which gives cheap variants for tests. ``conv_bias=True`` reproduces the biased convs of the
NFE / Prune-and-Tune code bases.

Init (:mod:`ensemblekit.models.init`): Kaiming-normal fan_out convs, BN 1/0, PyTorch-default linear weight
with zero bias.
"""

from __future__ import annotations

from ensemblekit.errors import UserError
from ensemblekit.models.backbone import Backbone
from ensemblekit.models.factory import LayerFactory
from ensemblekit.models.preact_resnet import build_preact_network
from ensemblekit.models.registry import register_family, register_model
from ensemblekit.models.spec import ResNetSpec, scale_channels

VARIANTS: tuple[tuple[int, int], ...] = ((16, 4), (16, 8), (22, 2), (28, 2), (28, 10), (40, 2))


def wrn_spec(
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    *,
    width: float = 1.0,
    dropout: float = 0.0,
    conv_bias: bool = False,
    in_channels: int = 3,
) -> ResNetSpec:
    """The spec of WRN-depth-widen_factor.

    Args:
        depth: 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...).
        widen_factor: k, multiplying the 16/32/64 channels of the stages (not the stem).
        num_classes: Classifier outputs.
        width: Extra multiplier of every channel count (rounded half up, at least 1).
        dropout: Rate of the dropout between the two convs of every block (0.3 in the paper's runs).
        conv_bias: Whether convs have biases (False in the paper; True in the NFE / Prune-and-Tune code).
        in_channels: Input image channels.

    Returns:
        The spec.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise UserError(f"WRN depth must be 6n+4 >= 10 (e.g. 16, 22, 28, 40), got {depth!r}")
    if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
        raise UserError(f"WRN widen_factor must be an integer >= 1, got {widen_factor!r}")
    return ResNetSpec(
        family="wide_resnet",
        block="preact_basic",
        stem_channels=scale_channels(16, width),
        stage_blocks=((depth - 4) // 6,) * 3,
        stage_channels=tuple(scale_channels(c * widen_factor, width) for c in (16, 32, 64)),
        stage_strides=(1, 2, 2),
        shortcut="projection",
        final_bn=True,
        conv_bias=conv_bias,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def build_wide_resnet(spec: ResNetSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build a family ``"wide_resnet"`` spec with pre-activation blocks.

    Args:
        spec: The architecture.
        layers: The layer factory (default plain PyTorch layers).

    Returns:
        The initialised backbone (structure as in
        :func:`~ensemblekit.models.preact_resnet.build_preact_network`).
    """
    if spec.family != "wide_resnet":
        raise UserError(f"build_wide_resnet needs family 'wide_resnet', got {spec.family!r}")
    return build_preact_network(spec, layers)


register_family("wide_resnet", make_spec=wrn_spec, build=build_wide_resnet)
register_model(
    "wrn",
    family="wide_resnet",
    doc="WideResNet WRN-depth-widen_factor (Zagoruyko & Komodakis 2016; pre-activation, final BN-ReLU).",
)
for _depth, _k in VARIANTS:
    register_model(
        f"wrn{_depth}_{_k}",
        family="wide_resnet",
        depth=_depth,
        widen_factor=_k,
        doc=f"WideResNet WRN-{_depth}-{_k} (Zagoruyko & Komodakis 2016): {(_depth - 4) // 6} pre-activation "
        f"blocks per stage, channels {16 * _k}/{32 * _k}/{64 * _k} x width, bias-free convs, 1x1-conv projection "
        "shortcuts, final BN-ReLU.",
    )
