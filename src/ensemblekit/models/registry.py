"""The model registry: ``create_model(name, **kw)``, ``list_models()`` and ``build_model(spec)``.

Two registries hold the backbones:

* ``MODELS`` maps a model name (``"resnet20"``, ``"wrn28_10"``, ...) to a factory
  ``fn(num_classes=10, *, width=..., dropout=..., layers=None, ...) -> Backbone``.
* ``FAMILIES`` maps a spec family (``"resnet"``, ``"vgg"``, ...) to its builder
  ``fn(spec, layers=None) -> Backbone``; :func:`build_model` dispatches on ``spec.family``.

Example:
    >>> model = create_model("resnet20", num_classes=10)
    >>> same = build_model(model.spec)
"""

from __future__ import annotations

import inspect
from typing import Any

from ensemblekit.errors import UserError, one_line, shorten
from ensemblekit.models.backbone import Backbone
from ensemblekit.models.factory import LayerFactory
from ensemblekit.models.spec import ModelSpec
from ensemblekit.registry import Registry

MODELS = Registry("model")
FAMILIES = Registry("model family")


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return MODELS.names()


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> Backbone:
    """Build the registered model ``name``.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Classifier outputs.
        **kwargs: Options the model's factory accepts (e.g. ``width``, ``dropout``, ``layers``,
            ``shortcut``, ``final_bn``); see each factory's docstring.

    Returns:
        The backbone, with ``spec``, ``stem``, ``stages`` and ``head``.

    Raises:
        UserError: for an unknown name (listing the valid ones), an unknown option (naming it and listing
            the valid ones) or an invalid option value.
    """
    factory = MODELS.get(name)
    check_model_options(name, kwargs, internal=True)
    try:
        return factory(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AttributeError, OverflowError, IndexError, KeyError) as exc:
        shown = ", ".join(f"{k}={shorten(v, 30)}" for k, v in kwargs.items() if k != "layers")
        why = one_line(exc, 160)
        raise UserError(f"model {name!r} cannot be built with {shown or 'its defaults'}: {why}") from None


INTERNAL_OPTIONS = frozenset({"layers", "num_classes"})
"""Factory arguments set by ensemblekit itself, never by a config's ``model.kwargs``."""


def check_model_options(name: str, kwargs: dict[str, Any], *, internal: bool = False) -> None:
    """Refuse options the factory of model ``name`` does not take (``internal``: allow ``layers``).

    Raises:
        UserError: naming the unknown option(s) and listing the valid ones.
    """
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    named = [p for p, spec in params.items() if spec.kind not in variadic]
    open_kwargs = any(spec.kind is inspect.Parameter.VAR_KEYWORD for spec in params.values())
    reserved = frozenset() if internal else INTERNAL_OPTIONS
    unknown = sorted(str(k) for k in kwargs if k in reserved or (not open_kwargs and k not in named))
    if unknown:
        valid = ", ".join(p for p in named if p not in INTERNAL_OPTIONS)
        shown = ", ".join(k if k.isidentifier() else shorten(k, 40) for k in unknown)
        raise UserError(f"model {name!r} has no option(s) {shown}; valid: {valid}")


def build_model(spec: ModelSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build the backbone that ``spec`` describes, with layers from ``layers`` (default plain PyTorch).

    Args:
        spec: A :class:`~ensemblekit.models.spec.ResNetSpec`, ``VGGSpec`` or ``DenseNetSpec``.
        layers: The layer factory.

    Returns:
        The freshly initialised backbone; ``model.spec`` is ``spec``.
    """
    return FAMILIES.get(spec.family)(spec, layers=layers)
