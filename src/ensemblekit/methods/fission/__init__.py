"""Network Fission Ensembles (``method: fission``): see :mod:`ensemblekit.methods.fission.method`."""

from ensemblekit.methods.fission.method import Fission, FissionOptions

__all__ = ["Fission", "FissionOptions"]
