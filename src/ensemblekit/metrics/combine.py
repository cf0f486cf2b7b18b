"""The rules by which an ensemble's members are combined into one prediction.

``probs``: the mean of the members' softmax probabilities, p̄ = (1/M) Σ_i softmax(z_i) (deep ensembles,
Lakshminarayanan et al., 2017); ``logits``: the softmax of the mean logit, softmax((1/M) Σ_i z_i) (multi-exit
networks such as Network Fission Ensembles, Lee & Lee, 2024, average their exits' logits).
"""

from __future__ import annotations

from typing import Literal

Combine = Literal["probs", "logits"]
COMBINE_RULES: tuple[str, ...] = ("probs", "logits")
