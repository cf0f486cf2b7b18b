"""The method contract: a registered name that builds an ensemble and describes its recipe.

A method is a subclass of ``Method`` registered in ``METHODS``. It declares its options as a pydantic model
(``Options``; unknown options are refused), builds the ensemble module (``build``), and returns the list of
stages the engine runs (``recipe``). It never writes a training loop.

Example:
    >>> from ensemblekit.methods import METHODS
    >>> sorted(METHODS.names())[:2]
    ['deep_ensemble', 'mc_dropout']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from ensemblekit.config import MAX_EPOCHS, MAX_MEMBERS, Config, validation_error
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError, config_error
from ensemblekit.models import create_model, list_models
from ensemblekit.registry import Registry
from ensemblekit.training.stage import Stage

METHODS = Registry("method", name_attribute="name")

BUILTIN_MODELS = frozenset(list_models())
"""The models ensemblekit registers itself (all :class:`~ensemblekit.models.Backbone`); others are custom."""


NEEDS_STAGES = "it needs stage boundaries: set model.stages to the layers where each stage, then the head, begins"
"""The ``requires`` of methods that split a backbone by stage (:meth:`Method.split_stage_count`)."""


class RunReader(Protocol):
    """How a method reads another finished run (a distillation teacher, a subnetwork or FGE parent).

    Methods sit below the run layer, so they do not load run directories themselves: the run layer hands them a
    reader (:class:`ensemblekit.runs.loading.RunFiles`) when it builds them. Every failure is a one-line ``UserError``.
    """

    def config(self, run_dir: Path) -> Config:
        """The run's resolved ``config.yaml``."""
        ...

    def model_state(self, run_dir: Path) -> dict[str, torch.Tensor]:
        """The ensemble weights in the run's ``model.pt`` (its ``state_dict``)."""
        ...

    def recorded_costs(self, run_dir: Path) -> dict[str, Any]:
        """The ``costs`` the run recorded in ``metrics.json``."""
        ...

    def trained_ensemble(self, run_dir: Path, num_classes: int, train_size: int) -> nn.Module:
        """The run's trained ensemble, rebuilt from its config and loaded from its ``model.pt``."""
        ...


@dataclass(frozen=True)
class RecordContext:
    """What :meth:`Method.record_extras` sees of a finished training run (the run layer fills it in).

    Attributes:
        image_shape: ``(C, H, W)`` of the training images.
        costs: The run's ``costs`` so far: the dense model costs and the training cost summary (``train_flops``,
            ``train_epoch_equivalents``, ``stages`` with each stage's epoch equivalents, ...).
        member_probs: ``(module, split) -> (probs [M, N, C], labels [N])`` on the ``test`` or ``val`` split.
        steps_per_epoch: ``(stage) -> int``: optimiser steps one epoch of ``stage`` took (per process).
    """

    image_shape: tuple[int, ...]
    costs: Mapping[str, Any]
    member_probs: Callable[[nn.Module, str], tuple[torch.Tensor, torch.Tensor]]
    steps_per_epoch: Callable[[Stage], int]


class MethodOptions(BaseModel):
    """Options every method accepts; subclasses add theirs. Unknown options are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    members: int = 4

    @model_validator(mode="after")
    def _bounded_counts(self) -> MethodOptions:
        """Every count stays runnable: ``members`` <= 1024, ``*epochs`` <= 100,000, other integers <= 10^7."""
        for field, value in self:
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            limit = MAX_MEMBERS if field == "members" else MAX_EPOCHS if field.endswith("epochs") else 10**7
            if abs(value) > limit:
                raise ValueError(f"{field}: must be at most {limit:,} (got {value:,})")
        return self


class Method:
    """Base class of every method.

    Its options are validated once, when the config is loaded (:mod:`ensemblekit.resolve`): the ``Options``
    model checks them among themselves, :meth:`check_config` against the other sections. The method receives
    them resolved (``cfg.method.resolved_options()``) as ``self.options`` and never raises a config error.

    Args:
        cfg: The resolved run configuration.
        num_classes: Number of classes of the data set.
        train_size: Number of training images (for budgets and bootstrap samples).
        runs: How to read other finished runs (teacher and parent runs); the run layer passes one.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    summary: ClassVar[str] = ""
    requires: ClassVar[str] = "it needs an ensemblekit backbone (stem, stages, head and an architecture spec)"
    """What the method needs of a backbone, said when it refuses a custom model (README "Bring your own model")."""

    def __init__(self, cfg: Config, num_classes: int, train_size: int, runs: RunReader | None = None) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.train_size = train_size
        self._runs = runs
        options = cfg.method.resolved_options()
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} needs {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    @classmethod
    def parse_options(cls, raw: dict[str, Any]) -> MethodOptions:
        """Validate the method's options; one-line ``UserError`` naming the field otherwise."""
        try:
            return cls.Options.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                valid = ", ".join(sorted(cls.Options.model_fields))
                raise config_error(f"method.{field}", f"unknown option for {cls.name} (valid: {valid})") from None
            raise validation_error(err, prefix="method.") from None

    @classmethod
    def check_config(cls, cfg: Config, options: MethodOptions) -> None:
        """Check the options against the other sections (``data``, ``model``, ``train``); none by default.

        Called when the config is loaded, before any data: a method whose options must agree with another
        section raises :func:`~ensemblekit.errors.config_error` here (checks among the options themselves are
        validators of its ``Options`` model).
        """

    @classmethod
    def inference_config(cls, cfg: Config) -> Config:
        """The config to rebuild a trained ensemble from for prediction (:func:`ensemblekit.load`).

        The default is ``cfg`` itself; a method whose ``build`` reads things only training needs (another run's
        files) drops them here, so a model file loads without them.
        """
        return cfg

    # -- what subclasses implement -------------------------------------------------------------
    def build(self) -> Ensemble:
        """Build the ensemble module with its final structure (stages only change values).

        The ensemble carries its own combine rule (``Ensemble.combine``: ``probs`` unless the method's paper
        averages logits, as fission does); nothing above the method changes it.
        """
        raise NotImplementedError

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        """The stages that train ``ensemble``."""
        raise NotImplementedError

    def state_modules(self, ensemble: Ensemble) -> dict[str, nn.Module]:
        """Every module whose state a checkpoint must hold (the ensemble and any auxiliary networks)."""
        return {"ensemble": ensemble}

    def batch_tile(self) -> int:
        """Copies of every training image in the batch the trained module sees (rows ``[t·B + j]``; 1: none).

        ``train.replica_batch_size`` keeps an image's copies in one replica (:mod:`ensemblekit.training.replica_bn`).
        """
        return 1

    def record_extras(self, ensemble: Ensemble, ctx: RecordContext) -> dict[str, Any]:
        """What the method adds to the run record (``metrics.json``) of the trained ``ensemble``; ``{}`` by default.

        The one extension point of the record (``train`` and ``grow`` call it). The returned dict is merged into
        the record one level deep: a section the record has (``costs``) is updated key by key, any other key
        (e.g. ``subnetwork``) becomes a section of its own. Every key is documented in
        :class:`ensemblekit.runs.record.RunRecord` (sparse costs: :mod:`ensemblekit.metrics.sparse_costs`).
        """
        return {}

    def sparse_nets(self, ensemble: Ensemble) -> list[nn.Module] | None:
        """Networks whose masked (zero) weights the sparse costs skip (:mod:`ensemblekit.metrics.sparse_costs`).

        ``None`` (the default) for a dense method: it reports no sparse costs.
        """
        return None

    def estimate_sparsity(self, ensemble: Ensemble, image_shape: tuple[int, ...]) -> str:
        """Give a freshly built ensemble the zero weights a run would have, for ``describe`` (no training).

        Methods with :meth:`sparse_nets` implement it (random data where their pruning needs data). Returns a short
        note that says whether the resulting sparse costs are exact or an estimate.
        """
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------
    @property
    def runs(self) -> RunReader:
        """The reader of other finished runs this method was built with (see :class:`RunReader`)."""
        if self._runs is None:
            raise RuntimeError(
                f"method {self.name} reads another run but was built without a RunReader: build it with "
                "ensemblekit.runs.build_ensemble"
            )
        return self._runs

    def backbone(self, **overrides: Any) -> nn.Module:
        """A fresh backbone as the config's ``model`` section describes it (overrides win).

        A custom model (``model.factory``, or a registered factory that returns a plain ``nn.Module``) is built
        by its factory; a ``dropout`` then goes before its classifier (:mod:`ensemblekit.models.custom`), and a
        ``layers`` factory (which only ensemblekit backbones take) is refused.
        """
        m = self.cfg.model
        kwargs: dict[str, Any] = dict(m.kwargs)
        if m.width is not None:
            kwargs["width"] = m.width
        if m.dropout:
            kwargs["dropout"] = m.dropout
        kwargs.update(overrides)
        if not self.custom_backbone():
            return create_model(m.name, num_classes=self.num_classes, **kwargs)
        return self._custom_backbone(kwargs)

    def _custom_backbone(self, kwargs: dict[str, Any]) -> nn.Module:
        from ensemblekit.models import MODELS
        from ensemblekit.models.custom import add_dropout_before_classifier, build_custom_model, load_factory

        m = self.cfg.model
        factory = load_factory(m.factory) if m.factory is not None else MODELS.get(m.name)
        label = m.factory or repr(m.name)
        takes_dropout = "dropout" in _parameters(factory)
        dropout = 0.0 if takes_dropout else kwargs.pop("dropout", 0.0)  # a factory's own dropout option wins
        if kwargs.get("layers") is not None:
            raise UserError(f"method {self.name} cannot use the custom model {label}: {self.requires}")
        kwargs.pop("layers", None)
        model = build_custom_model(label, factory, self.num_classes, kwargs)
        if dropout:
            add_dropout_before_classifier(model, dropout)
        if m.stages:
            from ensemblekit.models.custom import staged_backbone

            model = staged_backbone(model, list(m.stages))
        return model

    def custom_backbone(self) -> bool:
        """Whether the configured backbone is the user's own module (:func:`is_custom_model`)."""
        return is_custom_model(self.cfg)

    @classmethod
    def refuse_custom_model(cls, cfg: Config) -> None:
        """Refuse a custom backbone in one line saying what the method needs.

        Called at config load by the :meth:`check_config` of methods that need an ensemblekit backbone's structure.
        """
        if is_custom_model(cfg):
            label = cfg.model.factory or repr(cfg.model.name)
            field = "model.factory" if cfg.model.factory is not None else "model.name"
            raise config_error(field, f"method {cls.name} cannot use the custom model {label}: {cls.requires}")

    @classmethod
    def split_stage_count(cls, cfg: Config) -> int | None:
        """Stages K of the backbone a method splits stage by stage (fission's paths, TreeNet's trunk and branches).

        A custom module must name its stage boundaries (``model.stages``), else it is refused in one line; ``None``
        when K is known only once the backbone is built (a registered custom builder).
        """
        if not cfg.model.stages:
            cls.refuse_custom_model(cfg)
        return stage_count(cfg)

    def single_backbone(self) -> nn.Module:
        """The single network the costs are compared against (the config's backbone, no dropout)."""
        return self.backbone(dropout=0.0) if self.cfg.model.dropout else self.backbone()

    def member_seed(self, i: int) -> int:
        """Seed of member ``i``'s data order; member 0 of any method uses the same order as ``single``."""
        return self.cfg.train.seed * 1000 + i


def _parameters(factory: Any) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def is_custom_model(cfg: Config) -> bool:
    """Whether the configured backbone is the user's own module (not an ensemblekit ``Backbone`` builder).

    ``model.factory`` always is; a registered name is one unless it is built in or its factory takes ``layers=``
    (an ensemblekit-style builder that returns a ``Backbone``).
    """
    m = cfg.model
    return m.factory is not None or (m.name not in BUILTIN_MODELS and not is_backbone_builder(m.name))


def is_backbone_builder(name: str) -> bool:
    """Whether registered model ``name`` is an ensemblekit-style builder (its factory takes ``layers=``)."""
    from ensemblekit.models import MODELS

    return "layers" in _parameters(MODELS.get(name))


def meta_backbone(cfg: Config) -> nn.Module | None:
    """The configured built-in backbone, built on the meta device, for checks of its structure at config load.

    No memory, no data and no draw from the global RNG; ``None`` for a custom model (``model.factory`` or a
    registered non-built-in name), whose structure a method checks when it builds it.
    """
    m = cfg.model
    if m.factory is not None or m.name not in BUILTIN_MODELS:
        return None
    kwargs: dict[str, Any] = dict(m.kwargs)
    if m.width is not None:
        kwargs["width"] = m.width
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return create_model(m.name, num_classes=2, **kwargs)


def stage_count(cfg: Config) -> int | None:
    """Stages K of the configured backbone, known from the config alone (``None``: known only when built).

    ``model.stages`` names each stage's first layer and then the head's (K = its length − 1); a built-in backbone
    is built on the meta device (:func:`meta_backbone`).
    """
    if cfg.model.stages:
        return len(cfg.model.stages) - 1
    net = meta_backbone(cfg)
    return None if net is None else len(net.stages)


def build_method(cfg: Config, num_classes: int, train_size: int, runs: RunReader | None = None) -> Method:
    """Instantiate the configured method (``runs``: how it reads other runs, see :class:`RunReader`)."""
    cls = METHODS.get(cfg.method.name)
    return cls(cfg, num_classes, train_size, runs)
