"""A small name -> factory registry, in the style of timm's ``register_model``.

Every kind of thing that a config names (models, methods, data sets) lives in one ``Registry``.
Registering an entry makes it discoverable (``names()``) and adds it to the registry-parametrised tests.

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(num_classes=10):
    ...     return num_classes
    >>> MODELS.get("tiny")(num_classes=3)
    3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ensemblekit.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Maps names to factories and refuses unknown names with the list of valid ones.

    Args:
        kind: What the registry holds ("model", "method", "dataset"); used in error messages.
        name_attribute: When set, registering a class sets this class attribute to the registered name, so the
            name is written once, in the decorator (``METHODS`` sets ``Method.name``). A class that already
            defines the attribute itself must agree with the name it is registered under.
    """

    def __init__(self, kind: str, *, name_attribute: str | None = None) -> None:
        self.kind = kind
        self.name_attribute = name_attribute
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name`` (default: the function's name)."""

        def decorator(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            if self.name_attribute is not None and isinstance(fn, type):
                own = vars(fn).get(self.name_attribute, key)
                if own != key:
                    raise ValueError(f"{self.kind} {key!r}: the class sets {self.name_attribute} = {own!r}")
                setattr(fn, self.name_attribute, key)
            self._entries[key] = fn
            return fn

        return decorator

    def add(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn`` under ``name`` without a decorator."""
        self.register(name)(fn)

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered as ``name``.

        Raises:
            UserError: if ``name`` is unknown; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
