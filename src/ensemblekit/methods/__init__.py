"""Methods: each registers how to build its ensemble and its recipe (``METHODS``)."""

from ensemblekit.methods import bagging, distillation, mothernets, treenet  # noqa: F401, I001  (registration)
from ensemblekit.methods import batch_ensemble, deep_ensemble, mc_dropout, mimo, mixture, single  # noqa: F401  (registration)
from ensemblekit.methods.base import METHODS, Method, MethodOptions, build_method


def list_methods() -> list[str]:
    """Names of all registered methods."""
    return METHODS.names()


__all__ = ["METHODS", "Method", "MethodOptions", "build_method", "list_methods"]
