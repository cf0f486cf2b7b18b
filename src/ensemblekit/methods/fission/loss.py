"""The training loss of Network Fission Ensembles: ensemble knowledge distillation among the exits.

Lee & Lee, "Network Fission Ensembles for Low-Cost Self-Ensembles" (2024), step 5 (docs/methods/fission.md).
For exit logits z_i (i = 1..N) of a batch of size B:

    z_E = (1/N) Σ_i z_i,   q_E = softmax(z_E / T)  (stop-gradient: the teacher),   p_i^T = softmax(z_i / T)
    L = Σ_i CE(z_i, y) + T² · Σ_i KL(q_E ‖ p_i^T)

with KL summed over classes and averaged over the batch ("batchmean"), CE averaged over the batch and both
terms *summed* over exits, no weights (official code, T = 3). The KL term is computed in float64 (the tensors are
only ``[N, B, C]``), so identical exits give 0 up to float64 rounding of the mean. ``distill=False`` is the
paper's "CE" ablation, L = Σ_i CE(z_i, y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ensemble_teacher(exit_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's log-probabilities log q_E = log_softmax(mean_i z_i / T), detached (``[B, C]``)."""
    return F.log_softmax(exit_logits.detach().double().mean(0) / temperature, dim=-1)


def distillation_term(exit_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · Σ_i KL(q_E ‖ softmax(z_i / T)), batch-mean over the B rows of ``exit_logits`` ``[N, B, C]``."""
    b = exit_logits.shape[1]
    log_teacher = ensemble_teacher(exit_logits, temperature)
    log_students = F.log_softmax(exit_logits.double() / temperature, dim=-1)
    kl = F.kl_div(log_students, log_teacher.expand_as(log_students), reduction="sum", log_target=True) / b
    return (temperature**2 * kl).float()


def fission_loss(
    exit_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 3.0, distill: bool = True
) -> torch.Tensor:
    """L = Σ_i CE(z_i, y) [+ T² Σ_i KL(q_E ‖ p_i^T)] for exit logits ``[N, B, C]`` (see module docstring)."""
    if exit_logits.dim() == 2:
        exit_logits = exit_logits.unsqueeze(0)
    n, b, c = exit_logits.shape
    ce = F.cross_entropy(exit_logits.float().reshape(n * b, c), targets.repeat(n)) * n
    if not distill:
        return ce
    return ce + distillation_term(exit_logits, temperature)
