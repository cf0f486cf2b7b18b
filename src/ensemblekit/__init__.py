"""ensemblekit: low-cost deep ensembles for PyTorch, measured side by side.

The public API is what this module exports (``__all__``); everything else is machinery whose layout may change.

* Configs: :func:`load_config` (a YAML file and ``key=value`` overrides), :func:`config_from_dict`, :class:`Config`.
* Runs: :func:`train`, :func:`evaluate`, :func:`evaluate_robustness`, :func:`describe`, :func:`grow`,
  :func:`interpolate`; :func:`fit` trains on tensors you hold in memory.
* Trained ensembles: :func:`load` a run (or a ``model.pt``) into a :class:`Predictor`; :func:`export` it.
* Registries: :func:`list_methods`, :func:`list_models`, :func:`list_datasets`, :func:`create_model`.
* The ensemble contract: :class:`Ensemble`, :class:`MemberEnsemble`, :func:`combine_logits`, :func:`predict`.

Adding a method or a model: ``ensemblekit.methods`` (``METHODS``, ``Method``, ``MethodOptions``) and
``ensemblekit.models`` (``MODELS``); see docs/design.md.

The names are imported lazily (PEP 562), so ``import ensemblekit`` (and the CLI's start) does not import torch and a
Ctrl-C during start-up still ends in one line.

Example:
    >>> import ensemblekit
    >>> cfg = ensemblekit.load_config(None, ["model.name=resnet8", "method.name=deep_ensemble"])
    >>> "deep_ensemble" in ensemblekit.list_methods()
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from ensemblekit.errors import UserError

__version__ = "0.1.0"

_PUBLIC: dict[str, tuple[str, str]] = {
    "Config": ("ensemblekit.config", "Config"),
    "load_config": ("ensemblekit.resolve", "load_config"),
    "config_from_dict": ("ensemblekit.resolve", "config_from_dict"),
    "train": ("ensemblekit.runs", "train"),
    "evaluate": ("ensemblekit.runs", "evaluate"),
    "describe": ("ensemblekit.runs", "describe"),
    "grow": ("ensemblekit.runs", "grow"),
    "interpolate": ("ensemblekit.runs", "interpolate"),
    "evaluate_robustness": ("ensemblekit.evaluation", "evaluate_robustness"),
    "fit": ("ensemblekit.user_data", "fit"),
    "load": ("ensemblekit.predictor", "load"),
    "Predictor": ("ensemblekit.predictor", "Predictor"),
    "Prediction": ("ensemblekit.predictor", "Prediction"),
    "export": ("ensemblekit.export", "export"),
    "create_model": ("ensemblekit.models", "create_model"),
    "list_models": ("ensemblekit.models", "list_models"),
    "Ensemble": ("ensemblekit.ensemble", "Ensemble"),
    "MemberEnsemble": ("ensemblekit.ensemble", "MemberEnsemble"),
    "combine_logits": ("ensemblekit.ensemble", "combine_logits"),
    "predict": ("ensemblekit.ensemble", "predict"),
}

__all__ = [
    "Config",
    "Ensemble",
    "MemberEnsemble",
    "Prediction",
    "Predictor",
    "UserError",
    "__version__",
    "combine_logits",
    "config_from_dict",
    "create_model",
    "describe",
    "evaluate",
    "evaluate_robustness",
    "export",
    "fit",
    "grow",
    "interpolate",
    "list_datasets",
    "list_methods",
    "list_models",
    "load",
    "load_config",
    "predict",
    "train",
]


def list_methods() -> list[str]:
    """The registered method names, sorted (``method.name`` in a config)."""
    from ensemblekit.methods import METHODS

    return METHODS.names()


def list_datasets() -> list[str]:
    """The registered data set names, sorted (``data.name`` in a config)."""
    from ensemblekit.data import DATASETS

    return DATASETS.names()


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'ensemblekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
