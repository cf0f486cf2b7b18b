"""Load a run configuration: the schema (:mod:`ensemblekit.config`), then names and the method's options resolved.

A config is resolved once, here: :func:`config_from_dict` validates the sections, refuses unknown model, method
and data-set names (and model options), validates the method's options with its ``Options`` model (defaults
filled, derived values written) and its cross-section checks (:meth:`Method.check_config
<ensemblekit.methods.base.Method.check_config>`), and keeps the validated options in ``cfg.method``. Every config
error is raised here, before any data loads; ``config.yaml`` (:func:`~ensemblekit.config.config_to_dict`) then
records every option with its value, and the method receives the resolved options without parsing them again.

A ``config.yaml`` written before options were resolved (``members: null``, options left out) resolves to the same
defaults, so old run directories still evaluate and resume.

Example:
    >>> cfg = load_config(None, overrides=["model.name=resnet8", "train.epochs=1"])
    >>> cfg.model.name, cfg.train.epochs, cfg.method.members
    ('resnet8', 1, 4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ensemblekit.config import Config, MethodConfig, apply_overrides, read_yaml, validation_error
from ensemblekit.data import DATASETS
from ensemblekit.errors import UserError, config_error, shorten
from ensemblekit.methods import METHODS
from ensemblekit.methods.base import BUILTIN_MODELS
from ensemblekit.models import MODELS, check_model_options
from ensemblekit.models.custom import check_factory_options, load_factory


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a resolved ``Config``: schema, registered names, the method's options."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err) from None
    check_names(cfg)
    return resolve_method(cfg)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides and resolve it."""
    raw = read_yaml(path) if path is not None else {}
    apply_overrides(raw, list(overrides or []))
    return config_from_dict(raw)


def resolve_method(cfg: Config) -> Config:
    """``cfg`` with its method section resolved: options validated, defaults filled, cross-section checks run.

    The method's ``Options`` model checks the options among themselves; :meth:`Method.check_config` checks them
    against the other sections (``data``, ``model``, ``train``). ``cfg`` itself is not changed.
    """
    cls = METHODS.get(cfg.method.name)
    options = cls.parse_options(cfg.method.options())
    cls.check_config(cfg, options)
    resolved = cfg.model_copy()
    resolved.method = MethodConfig.from_options(cfg.method.name, options)
    return resolved


def resolve_method_section(section: dict[str, Any]) -> dict[str, Any]:
    """A recorded ``method`` section (a dict, possibly written before options were resolved) with every option.

    Used to compare a ``model.pt``'s recorded identity with a resolved config; the section's own checks run, the
    cross-section ones do not (they belong to the whole config). A section that no longer validates is returned
    as recorded.
    """
    name = section.get("name")
    if name not in METHODS:
        return dict(section)
    opts = {k: v for k, v in section.items() if k != "name" and not (k == "members" and v is None)}
    try:
        return {"name": name, **METHODS.get(name).parse_options(opts).model_dump(mode="json")}
    except UserError:
        return dict(section)  # no longer valid: compared as recorded (and then differs)


def check_names(cfg: Config) -> None:
    """Refuse unknown model, method and data-set names, listing the valid ones, and unknown model options."""
    checks = [("model.name", MODELS, cfg.model.name)] if cfg.model.factory is None else []
    for field, registry, name in (
        *checks,
        ("method.name", METHODS, cfg.method.name),
        ("data.name", DATASETS, cfg.data.name),
    ):
        if name not in registry:
            raise config_error(field, f"unknown {registry.kind} {shorten(name)}; valid: {', '.join(registry.names())}")
    if cfg.model.factory is not None:
        check_factory_options(cfg.model.factory, load_factory(cfg.model.factory), cfg.model.kwargs)
        if cfg.model.width is not None:
            raise config_error("model.width", "applies to the built-in models only, not to model.factory")
        return
    if cfg.model.stages and cfg.model.name in BUILTIN_MODELS:
        raise config_error("model.stages", "applies to custom models (model.factory); built-ins have stages")
    try:
        check_model_options(cfg.model.name, cfg.model.kwargs)
    except UserError as exc:
        raise config_error("model.kwargs", str(exc)) from None
