"""Your own ``nn.Module`` as the backbone: by import path (``model.factory``) or by registration.

Two ways to use any image classifier ``[B, 3, H, W] -> [B, num_classes]`` logits:

* name its factory by import path in the config (the module must be importable: on ``PYTHONPATH``, installed,
  or in the current directory)::

      model:
        factory: "mypkg.nets:make_net"   # make_net(num_classes=..., **kwargs) -> nn.Module
        kwargs: {channels: 32}

* or register it from Python before training (``name`` then refers to it)::

      from ensemblekit.models import MODELS
      MODELS.add("mynet", make_net)      # or @MODELS.register("mynet") on the factory

The factory is called as ``factory(num_classes=C, **model.kwargs)`` and must return an ``nn.Module``. Methods that
treat the backbone as a black box (deep_ensemble, bagging, snapshot, fge, distillation, subnetwork, mc_dropout) work
on it as it is; the others convert its layers or refuse it in one line naming what they need (see README "Bring your
own model"). ``model.dropout`` on a custom module puts an ``nn.Dropout`` before its classifier (the last
``nn.Linear``); ``model.width`` applies to the built-in models only.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ensemblekit.errors import UserError, config_error, one_line, shorten

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def _import(module_name: str) -> Any:
    """Import ``module_name``; when it is not found, look in the current directory too (as ``python -m`` does)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def load_factory(path: str) -> Callable[..., Any]:
    """The callable that ``"package.module:function"`` names (attributes may be dotted: ``mod:Class.create``).

    Only the named module is imported (no code is evaluated from the string itself).

    Raises:
        UserError: for a malformed path, a module that cannot be imported, a missing attribute or a
            non-callable one, in one line.
    """
    if not isinstance(path, str) or not _IMPORT_PATH.match(path):
        raise config_error("model.factory", f"expected 'package.module:function', got {shorten(path)}")
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = _import(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        why = one_line(f"{type(exc).__name__}: {exc}", 200)
        raise config_error("model.factory", f"cannot import {module_name!r} ({why}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise config_error("model.factory", f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise config_error("model.factory", f"{path} is not callable")
    return obj


def check_factory_options(label: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Refuse ``kwargs`` the factory does not accept (``num_classes`` is set by ensemblekit)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable: let the call itself check
    named_ok = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if "num_classes" not in named and not named_ok:
        signature = shorten(str(inspect.signature(factory)), 80)
        raise UserError(f"model {label} must accept num_classes=... (its signature: {signature})")
    unknown = sorted(str(k) for k in kwargs if k == "num_classes" or (not named_ok and k not in named))
    if unknown:
        valid = ", ".join(n for n in named if n != "num_classes") or "none"
        raise config_error("model.kwargs", f"model {label} has no option(s) {', '.join(unknown)}; valid: {valid}")


def build_custom_model(label: str, factory: Callable[..., Any], num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """``factory(num_classes=num_classes, **kwargs)``, checked to be an ``nn.Module``.

    Raises:
        UserError: when the factory raises or returns something else, in one line.
    """
    check_factory_options(label, factory, kwargs)
    try:
        model = factory(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RuntimeError) as exc:
        raise UserError(f"model {label} cannot be built with {shorten(kwargs, 80)}: {one_line(exc, 160)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {label} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def classifier_path(model: nn.Module) -> str:
    """Qualified name of the classifier: ``head.fc`` for ensemblekit backbones, else the last ``nn.Linear``.

    Raises:
        UserError: when the module has no ``nn.Linear``.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    if "head.fc" in linears:
        return "head.fc"
    if not linears:
        raise UserError(f"the model {type(model).__name__} has no nn.Linear classifier (its last layer must be one)")
    return linears[-1]


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the qualified name ``path`` of ``model``."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def add_dropout_before_classifier(model: nn.Module, rate: float) -> nn.Module:
    """Insert ``nn.Dropout(rate)`` before the classifier of ``model`` (in place; returns ``model``).

    The classifier at name ``p`` becomes ``nn.Sequential(Dropout, Linear)``, so its weights move to ``p.1``.
    MC dropout (Gal & Ghahramani, 2016) then samples this dropout at test time.
    """
    path = classifier_path(model)
    replace_module(model, path, nn.Sequential(nn.Dropout(rate), model.get_submodule(path)))
    return model


def _square(value: Any, what: str, layer: str, method: str) -> int:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if isinstance(pair[0], str) or pair[0] != pair[1]:
        raise UserError(f"{method}: cannot convert layer {layer!r}: its {what} {value!r} is not one square integer")
    return int(pair[0])


def _conv_arguments(conv: nn.Conv2d, layer: str, method: str) -> dict[str, Any]:
    if conv.groups != 1 or _square(conv.dilation, "dilation", layer, method) != 1 or conv.padding_mode != "zeros":
        raise UserError(
            f"{method}: cannot convert layer {layer!r}: only ungrouped, undilated, zero-padded convolutions convert"
        )
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": _square(conv.kernel_size, "kernel size", layer, method),
        "stride": _square(conv.stride, "stride", layer, method),
        "padding": _square(conv.padding, "padding", layer, method),
        "bias": conv.bias is not None,
    }


def convert_layers(model: nn.Module, layers: Any, method: str) -> nn.Module:
    """Replace every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` by the layer factory's (in module order).

    ``nn.BatchNorm2d`` is replaced only where the factory makes another type (per-member BN). The new layers are
    freshly initialised by the factory (the method's initialisation); the module is changed in place and returned.

    Args:
        model: The user's network.
        layers: A :class:`~ensemblekit.models.factory.LayerFactory` (BatchEnsemble, mixture templates).
        method: The method's name, for error messages.

    Raises:
        UserError: when a layer cannot be converted (grouped, dilated, non-square) or nothing was converted
            (no silent success: a network without Conv2d/Linear would train as if it were the plain one).
    """
    converted = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv2d:
            replace_module(model, name, layers.conv2d(**_conv_arguments(module, name, method)))
            converted += 1
        elif type(module) is nn.Linear:
            bias = module.bias is not None
            replace_module(model, name, layers.linear(module.in_features, module.out_features, bias=bias))
            converted += 1
        elif type(module) is nn.BatchNorm2d:
            norm = layers.batchnorm2d(module.num_features)
            if type(norm) is not nn.BatchNorm2d:
                replace_module(model, name, norm)
    if converted == 0:
        raise UserError(f"{method}: the model has no nn.Conv2d or nn.Linear layer to convert; nothing would change")
    return model


def first_conv_path(model: nn.Module) -> str:
    """Qualified name of the first ``nn.Conv2d`` in module order (the input convolution).

    Raises:
        UserError: when the module has no ``nn.Conv2d``.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise UserError(f"the model {type(model).__name__} has no nn.Conv2d input layer")


def widen_input_and_classifier(model: nn.Module, members: int) -> tuple[nn.Module, int]:
    """MIMO's change to any network: the input conv takes ``members`` images, the classifier has ``members`` heads.

    The first ``nn.Conv2d`` (in module order) gets ``in_channels · M`` inputs and the classifier (last
    ``nn.Linear``) ``num_classes · M`` outputs, both freshly initialised (Havasi et al., 2021, section 2).

    Returns:
        ``(model, image_channels)``; the model is changed in place.
    """
    conv_path, fc_path = first_conv_path(model), classifier_path(model)
    conv, fc = model.get_submodule(conv_path), model.get_submodule(fc_path)
    if conv.groups != 1:
        raise UserError(f"mimo: the input layer {conv_path!r} is a grouped convolution; it cannot take M images")
    wide = nn.Conv2d(
        conv.in_channels * members,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    replace_module(model, conv_path, wide)
    replace_module(model, fc_path, nn.Linear(fc.in_features, fc.out_features * members, bias=fc.bias is not None))
    return model, conv.in_channels


class CustomSpec:
    """The ``spec`` of a staged custom module: it describes no architecture (``family`` is ``"custom"``)."""

    family = "custom"
    in_channels = 3


class StagedHead(nn.Module):
    """The head of a staged custom module: its layers after the last stage, the classifier at ``fc``."""

    def __init__(self, body: list[nn.Module], fc: nn.Linear) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.fc = fc

    def forward(self, x):
        """Logits of the classifier applied after the head's other layers."""
        return self.fc(self.body(x))


def sequential_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module's layers in order: its children, with every ``nn.Sequential`` expanded (qualified names)."""

    def expand(prefix: str, module: nn.Module, top: bool) -> list[tuple[str, nn.Module]]:
        if (top or isinstance(module, nn.Sequential)) and len(module._modules) > 0:
            return [
                item for name, child in module.named_children() for item in expand(_join(prefix, name), child, False)
            ]
        return [(prefix, module)]

    return expand("", model, True)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def staged_backbone(model: nn.Module, starts: list[str], image_shape: tuple[int, ...] = (3, 32, 32)):
    """The user's module as an ensemblekit ``Backbone`` (stem, stages, head) split at the named modules.

    ``starts`` names the layer where each stage begins and, last, the layer where the head begins; the layers are
    the module's children in order, nested ``nn.Sequential`` expanded (:func:`sequential_layers`). The module's
    forward must be those layers applied in order (checked on a random input) and its last layer the
    ``nn.Linear`` classifier. Methods that work on stages (fission, treenet) then run on it.

    Raises:
        UserError: for an unknown or misordered name, a head that does not end in an ``nn.Linear``, or a forward
            that is not the layers in order.
    """
    from ensemblekit.models.backbone import Backbone

    layers = sequential_layers(model)
    names = [n for n, _ in layers]
    unknown = [s for s in starts if s not in names]
    if unknown:
        raise config_error("model.stages", f"no layer {unknown[0]!r}; the layers in order: {', '.join(names)}")
    cuts = [names.index(s) for s in starts]
    if len(starts) < 2 or cuts != sorted(set(cuts)):
        raise config_error("model.stages", "name >= 1 stage start and then the head start, in layer order")
    mods = [m for _, m in layers]
    if not isinstance(mods[-1], nn.Linear):
        raise config_error("model.stages", f"the last layer {names[-1]!r} must be the nn.Linear classifier")
    stem = nn.Sequential(*mods[: cuts[0]]) if cuts[0] > 0 else nn.Identity()
    stages = [nn.Sequential(*mods[a:b]) for a, b in itertools.pairwise(cuts)]
    head = StagedHead(mods[cuts[-1] : -1], mods[-1])
    staged = Backbone(CustomSpec(), stem, stages, head)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
            same = torch.allclose(staged(x), model(x), atol=1e-5, rtol=1e-4)
    except RuntimeError:
        same = False
    finally:
        model.train(was_training)
    if not same:
        shape = "x".join(map(str, image_shape))
        raise config_error(
            "model.stages",
            "the module's forward is not its layers applied in order (nested "
            f"nn.Sequential expanded; checked on random {shape} images), so it cannot be split",
        )
    return staged.train(was_training)
