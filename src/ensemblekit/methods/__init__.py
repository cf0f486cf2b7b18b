"""Methods: each registers how to build its ensemble and its recipe (``METHODS``)."""

from ensemblekit.methods import (  # noqa: F401  (registration)
    bagging,
    batch_ensemble,
    deep_ensemble,
    distillation,
    fge,
    fission,
    mc_dropout,
    mimo,
    mixture,
    mothernets,
    packed,
    single,
    snapshot,
    subnetwork,
    treenet,
)
from ensemblekit.methods.base import METHODS, Method, MethodOptions, build_method

__all__ = ["METHODS", "Method", "MethodOptions", "build_method"]
