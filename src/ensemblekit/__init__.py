"""ensemblekit: low-cost deep ensembles for PyTorch, measured side by side."""

from ensemblekit.ensemble import Ensemble, MemberEnsemble, combine_logits, predict
from ensemblekit.errors import UserError

__version__ = "0.1.0"

__all__ = ["Ensemble", "MemberEnsemble", "UserError", "__version__", "combine_logits", "predict"]
