"""Weight initialisation shared by the backbones.

* Convolutions: Kaiming-normal with ``mode="fan_out"``, ReLU gain (He et al. 2015; the torchvision and
  Zagoruyko & Komodakis choice), std = sqrt(2 / (out_channels * k * k)); conv biases 0.
* BatchNorm: weight (gamma) 1, bias (beta) 0.
* Linear: ``"default"`` keeps PyTorch's uniform(+-1/sqrt(fan_in)) weight and sets the bias to 0 (ResNets,
  WRNs, DenseNets); ``"normal"`` draws the weight from N(0, 0.01^2) with bias 0 (VGG, as in torchvision).

Only modules that are instances of ``nn.Conv2d``, ``nn.BatchNorm2d`` or ``nn.Linear`` (subclasses included)
are touched; other layer types a custom :class:`~ensemblekit.models.factory.LayerFactory` returns keep their
own initialisation.
"""

from __future__ import annotations

from typing import Literal

from torch import nn


def init_weights(model: nn.Module, linear: Literal["default", "normal"] = "default") -> None:
    """Initialise ``model``'s convs, BatchNorms and linears in place (see the module docstring).

    Args:
        model: The network.
        linear: The classifier scheme, ``"default"`` or ``"normal"``.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear == "normal":
                nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
