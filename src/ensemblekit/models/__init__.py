"""Backbones for CIFAR-sized images: CIFAR ResNets, pre-activation ResNet-18, WideResNets, VGG, DenseNet.

Every backbone is a :class:`Backbone` ``head(stages(stem(x)))`` built from a spec (``model.spec``) through a
:class:`LayerFactory`. A model name is a registered architecture: a family plus the arguments the name fixes
(:func:`register_model`; :mod:`ensemblekit.models.registry`).

Example:
    >>> from ensemblekit.models import create_model, list_models
    >>> model = create_model("resnet20", num_classes=10, width=0.5)
    >>> "wrn28_10" in list_models()
    True
"""

# Importing the family modules registers their models and builders.
from ensemblekit.models import densenet, preact_resnet, resnet_cifar, vgg, wide_resnet  # noqa: F401
from ensemblekit.models.backbone import Backbone, ClassifierHead, ConvStem
from ensemblekit.models.factory import LayerFactory
from ensemblekit.models.registry import (
    FAMILIES,
    MODELS,
    Family,
    ModelEntry,
    build_model,
    check_model_options,
    create_model,
    list_models,
    register_family,
    register_model,
)
from ensemblekit.models.spec import DenseNetSpec, ModelSpec, ResNetSpec, VGGSpec, scale_channels, spec_from_dict

__all__ = [
    "FAMILIES",
    "MODELS",
    "Backbone",
    "ClassifierHead",
    "ConvStem",
    "DenseNetSpec",
    "Family",
    "LayerFactory",
    "ModelEntry",
    "ModelSpec",
    "ResNetSpec",
    "VGGSpec",
    "build_model",
    "check_model_options",
    "create_model",
    "list_models",
    "register_family",
    "register_model",
    "scale_channels",
    "spec_from_dict",
]
