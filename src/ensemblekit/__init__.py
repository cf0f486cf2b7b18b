"""ensemblekit: low-cost deep ensembles for PyTorch, measured side by side.

The public names are imported lazily (PEP 562), so ``ensemblekit.cli`` starts without importing torch and a
Ctrl-C during start-up still ends in one line.
"""

from __future__ import annotations

from typing import Any

from ensemblekit.errors import UserError

__version__ = "0.1.0"

_LAZY = {"Ensemble", "MemberEnsemble", "combine_logits", "predict"}
_PREDICTOR = {"load", "Predictor", "Prediction"}
_FIT = {"fit"}

__all__ = [
    "Ensemble",
    "MemberEnsemble",
    "Prediction",
    "Predictor",
    "UserError",
    "__version__",
    "combine_logits",
    "fit",
    "load",
    "predict",
]


def __getattr__(name: str) -> Any:
    if name in _FIT:
        from ensemblekit import user_data

        return user_data.fit
    if name in _PREDICTOR:
        from ensemblekit import predictor

        return getattr(predictor, name)
    if name in _LAZY:
        from ensemblekit import ensemble

        return getattr(ensemble, name)
    raise AttributeError(f"module 'ensemblekit' has no attribute {name!r}")
