"""The model registry: architecture families, registered architectures, ``create_model`` and ``build_model``.

A built-in model is a registered *architecture*: a name bound to a family and the arguments that make the
variant, written once (the idea of timm's ``register_model`` with default configs; the code is ours)::

    register_family("wide_resnet", make_spec=wrn_spec, build=build_wide_resnet)
    register_model("wrn28_10", family="wide_resnet", depth=28, widen_factor=10, doc="WideResNet WRN-28-10 ...")

* ``FAMILIES`` maps a spec family (``"resnet"``, ``"wide_resnet"``, ``"vgg"``, ...) to a :class:`Family`: its
  spec function ``make_spec(num_classes=..., **arguments) -> spec`` and its builder ``build(spec, layers)``.
  The spec function's keyword parameters (less ``num_classes``) are the family's arguments and its defaults
  their defaults.
* ``MODELS`` maps a model name (``"resnet20"``, ``"wrn28_10"``, ...) to a :class:`ModelEntry`. The arguments
  given at registration are fixed by the name; the family's other arguments are the model's *options*, which
  ``create_model`` and a config's ``model.kwargs`` may set. A name registered without arguments (``"resnet"``,
  ``"wrn"``, ...) takes every argument of its family.

``create_model(name, num_classes, **options)`` builds ``family.build(family.make_spec(num_classes,
**fixed, **options))``; :func:`build_model` builds a spec directly. A user's own factory registered with
``MODELS.add(name, fn)`` (any callable returning an ``nn.Module``; :mod:`ensemblekit.models.custom`) is called
as ``fn(num_classes=..., **kwargs)`` and its options are its signature's.

Example:
    >>> model = create_model("resnet20", num_classes=10)
    >>> same = build_model(model.spec)
    >>> MODELS.get("wrn28_10").options["dropout"]
    0.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ensemblekit.errors import UserError, one_line, shorten
from ensemblekit.models.backbone import Backbone
from ensemblekit.models.factory import LayerFactory
from ensemblekit.models.spec import ModelSpec
from ensemblekit.registry import Registry

MODELS = Registry("model")
FAMILIES = Registry("model family")

INTERNAL_OPTIONS = frozenset({"layers", "num_classes"})
"""Factory arguments set by ensemblekit itself, never by a config's ``model.kwargs``."""

BUILD_ERRORS = (TypeError, ValueError, AttributeError, OverflowError, IndexError, KeyError)
"""What a spec function or a user's factory may raise on a bad option value (turned into one-line UserErrors)."""


@dataclass(frozen=True)
class Family:
    """An architecture family: how its arguments make a spec, and how a spec becomes a network.

    Attributes:
        name: The spec family (``spec.family``).
        make_spec: ``make_spec(num_classes=..., **arguments) -> spec``; it validates the arguments and raises
            ``UserError`` for invalid ones.
        build: ``build(spec, layers) -> Backbone`` (``layers``: a :class:`LayerFactory` or ``None``).
    """

    name: str
    make_spec: Callable[..., ModelSpec]
    build: Callable[..., Backbone]

    @property
    def arguments(self) -> dict[str, Any]:
        """The family's arguments and their defaults (``inspect.Parameter.empty`` for a required one)."""
        params = inspect.signature(self.make_spec).parameters.values()
        return {p.name: p.default for p in params if p.name != "num_classes"}


def register_family(name: str, *, make_spec: Callable[..., ModelSpec], build: Callable[..., Backbone]) -> Family:
    """Register the family ``name`` (its spec function and builder) in ``FAMILIES``.

    Raises:
        ValueError: when the name is taken or ``make_spec`` lacks a ``num_classes`` parameter (a bug, at import).
    """
    params = inspect.signature(make_spec).parameters
    if "num_classes" not in params:
        raise ValueError(f"model family {name!r}: {make_spec.__name__} must take num_classes")
    family = Family(name, make_spec, build)
    FAMILIES.add(name, family)
    return family


class ModelEntry:
    """A registered architecture: a family and the arguments its name fixes; callable like a factory.

    ``entry(num_classes=10, *, layers=None, **options)`` builds the backbone; :attr:`options` are the arguments
    it accepts, with their defaults. The entry's signature (``inspect.signature``) lists them, so the entry is
    introspectable like the wrapper functions it replaces.

    Args:
        name: The model name.
        family: A name registered in ``FAMILIES``.
        arguments: The family arguments this name fixes (``{"depth": 28, "widen_factor": 10}``).
        doc: What the model is: paper, structure, parameter count; the entry's ``__doc__`` adds its options
            and their defaults, taken from the spec function.
    """

    def __init__(self, name: str, family: str, arguments: Mapping[str, Any], doc: str) -> None:
        accepted = FAMILIES.get(family).arguments
        unknown = sorted(set(arguments) - set(accepted))
        if unknown:
            raise ValueError(f"model {name!r}: family {family!r} has no argument(s) {', '.join(unknown)}")
        self.name = name
        self.family = family
        self._arguments = tuple(arguments.items())
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        self.__doc__ = f"{doc} Options: {options} (see ``{FAMILIES.get(family).make_spec.__name__}``)."
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=10)]
            + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in self.options.items()]
            + [inspect.Parameter("layers", inspect.Parameter.KEYWORD_ONLY, default=None)]
        )

    @property
    def arguments(self) -> dict[str, Any]:
        """The family arguments this name fixes (a copy)."""
        return dict(self._arguments)

    @property
    def options(self) -> dict[str, Any]:
        """The options a caller may set (the family's arguments less the fixed ones), with their defaults."""
        return {k: v for k, v in FAMILIES.get(self.family).arguments.items() if k not in self.arguments}

    def spec(self, num_classes: int = 10, **options: Any) -> ModelSpec:
        """The spec of this model with ``options`` (checked: an unknown one is a one-line ``UserError``)."""
        self.check_options(options)
        return FAMILIES.get(self.family).make_spec(num_classes=num_classes, **self.arguments, **options)

    def __call__(self, num_classes: int = 10, *, layers: LayerFactory | None = None, **options: Any) -> Backbone:
        """Build the backbone (fresh initialisation from the global RNG), its layers from ``layers``."""
        return FAMILIES.get(self.family).build(self.spec(num_classes, **options), layers=layers)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse option names this model does not take, in one line listing the valid ones.

        Raises:
            UserError: naming the unknown option(s); for one the name fixes, saying which model takes it.
        """
        valid = self.options
        unknown = sorted(str(k) for k in options if k not in valid)
        if not unknown:
            return
        shown = ", ".join(k if k.isidentifier() else shorten(k, 40) for k in unknown)
        fixed = [k for k in unknown if k in self.arguments]
        hint = ""
        if fixed:
            general = [n for n in MODELS.names() if _is_general(MODELS.get(n), self.family)]
            where = f"; model {general[0]!r} takes it" if general else ""
            hint = f" ({fixed[0]} is fixed at {self.arguments[fixed[0]]!r} by the name{where})"
        raise UserError(f"model {self.name!r} has no option(s) {shown}; valid: {', '.join(valid)}{hint}")

    def __repr__(self) -> str:
        fixed = "".join(f", {k}={v!r}" for k, v in self.arguments.items())
        return f"ModelEntry({self.name!r}, family={self.family!r}{fixed})"


def _is_general(entry: Any, family: str) -> bool:
    return isinstance(entry, ModelEntry) and entry.family == family and not entry.arguments


def register_model(name: str, *, family: str, doc: str, **arguments: Any) -> ModelEntry:
    """Register the architecture ``name``: ``family`` with ``arguments`` fixed (see the module docstring).

    Args:
        name: The model name (``model.name`` in a config).
        family: A registered family.
        doc: One paragraph: the paper, the structure, the parameter count for 10 classes (the options are
            added from the family's spec function).
        **arguments: Family arguments that the name fixes; the others stay options.

    Returns:
        The entry (also in ``MODELS``).

    Raises:
        ValueError: for a taken name or an argument the family does not have (a bug, at import).
    """
    entry = ModelEntry(name, family, arguments, doc)
    MODELS.add(name, entry)
    return entry


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return MODELS.names()


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> Backbone:
    """Build the registered model ``name``.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Classifier outputs.
        **kwargs: The model's options (``MODELS.get(name).options``: e.g. ``width``, ``dropout``,
            ``shortcut``, ``final_bn``) and ``layers`` (a :class:`LayerFactory`).

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
    except BUILD_ERRORS as exc:
        raise _cannot_build(name, kwargs, exc) from None


def _cannot_build(name: str, kwargs: Mapping[str, Any], exc: BaseException) -> UserError:
    shown = ", ".join(f"{k}={shorten(v, 30)}" for k, v in kwargs.items() if k != "layers")
    return UserError(f"model {name!r} cannot be built with {shown or 'its defaults'}: {one_line(exc, 160)}")


def check_model_options(name: str, kwargs: Mapping[str, Any], *, internal: bool = False) -> None:
    """Refuse options that model ``name`` does not take (``internal``: also allow ``layers``).

    For a registered architecture the valid options are its family's arguments less the ones its name fixes,
    and their values are checked too (the spec is made; no network is built). For a user's own registered
    factory they are its signature's parameters.

    Raises:
        UserError: naming the unknown option(s) and listing the valid ones, or saying why a value is invalid.
    """
    factory = MODELS.get(name)
    if isinstance(factory, ModelEntry):
        options = {k: v for k, v in kwargs.items() if not (internal and k == "layers")}
        factory.check_options(options)  # before the spec is made: num_classes is not an option
        try:
            factory.spec(**options)
        except BUILD_ERRORS as exc:
            raise _cannot_build(name, options, exc) from None
        return
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
    return FAMILIES.get(spec.family).build(spec, layers=layers)
