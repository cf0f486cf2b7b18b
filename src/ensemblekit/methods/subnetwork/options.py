"""Options of ``method: subnetwork``: every choice the sources leave open is an option (docs/methods/subnetwork.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ensemblekit.methods.base import MethodOptions

MASKED_FAMILIES = ("sparse", "stochastic")
"""Families whose children carry weight masks."""

PAIRED_MASKS = ("anti_random", "anti_random_neurons")
"""Mask kinds whose children come in complementary pairs (child 2k and 2k + 1 share one draw)."""


class SubnetworkOptions(MethodOptions):
    """Options of ``subnetwork``.

    Attributes:
        members: Children in the ensemble (k of top-k).
        candidates: Children generated and tuned (the population); ``None`` = ``members``. More than ``members``
            keeps the top-``members`` by ``select_by`` on the validation split (needs ``data.val_size > 0``).
        select_by: ``val_accuracy`` (higher is better) or ``val_nll`` (lower is better).
        include_parent: Make the parent a member too (the official PAT evaluation silently does).
        combine: ``probs`` (mean of softmax) or ``logits`` (mean of logits, the PAT evaluation script).
        family: ``noisy`` (sparse Gaussian mutation), ``sparse`` (pruning masks) or ``stochastic`` (SSA).
        masks: Child masks of ``sparse`` and SSA targets of ``stochastic``: ``random``, ``magnitude``,
            ``anti_random`` (complementary 50 % pairs), ``partition`` (Neural Partitioning), ``neurons``
            (structured, output channels), ``anti_random_neurons`` (structured pairs: complementary channel sets).
        sparsity: Pruned fraction for ``random``, ``magnitude`` and ``neurons`` (default 0.5); ``anti_random``
            and ``anti_random_neurons`` (always 0.5) and ``partition`` (1 − 1/parts) refuse it.
        partition_parts: k of Neural Partitioning (default: ``candidates``); ``candidates`` must be a multiple.
            ``ensemblekit grow`` records the group size here when it was left unset, so grown children
            keep the run's partition size.
        noise_density: ρ, fraction of each tensor's entries mutated (0 = the parent itself, 1 = dense).
        noise_sigma: σ_rel, the noise std relative to each tensor's std.
        noise_scope: ``weights`` (conv and linear weights, classifier included) or ``all`` parameters.
        noise_decomposition: Give the children of a group of ``partition_parts`` disjoint mutation supports
            (a partition of every tensor; ρ = 1/k, ``noise_density`` is then ignored).
        anneal_p0: SSA initial inclusion probability p₀ of non-target weights.
        anneal_fraction: SSA annealing span T_a as a fraction of the child's tuning steps (0 = one-shot pruning).
        anneal_schedule: ``linear``, ``cosine`` or ``exponential`` annealing of p(t).
        bn_refresh_batches: Re-estimate BN statistics on this many training batches after perturbing (0 = off).
        parent_run: A finished run directory (``single`` or ``subnetwork``) whose backbone is the parent; the
            parent stage then trains 0 epochs.
        parent_weights: A backbone ``state_dict`` file used as the parent (e.g. a user's pre-trained model).
        charge_parent: With ``parent_run``, charge that run's parent training cost to this run's ``parent``
            stage (so epoch equivalents include the parent); a ``parent_weights`` parent costs 0 (unknown).
        child_epochs: Tuning epochs per child (0 = no tuning).
        child_lr: Maximum tuning learning rate (default ``train.lr``).
        child_schedule: ``onecycle`` (PAT: 10 % warm-up from lr/100 to lr, cosine to lr/1e6, per batch, momentum
            cycled 0.95 → 0.85 → 0.95), ``constant`` (PAT's ``fixed``) or ``cosine``.
    """

    members: int = Field(default=6, gt=0)
    candidates: int | None = Field(default=None, gt=0)
    select_by: Literal["val_accuracy", "val_nll"] = "val_accuracy"
    include_parent: bool = False
    combine: Literal["probs", "logits"] = "probs"
    family: Literal["noisy", "sparse", "stochastic"] = "sparse"
    masks: Literal["random", "magnitude", "anti_random", "partition", "neurons", "anti_random_neurons"] = "anti_random"
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    partition_parts: int | None = Field(default=None, ge=2)
    noise_density: float = Field(default=0.1, ge=0.0, le=1.0)
    noise_sigma: float = Field(default=0.1, ge=0.0)
    noise_scope: Literal["weights", "all"] = "weights"
    noise_decomposition: bool = False
    anneal_p0: float = Field(default=0.5, ge=0.0, le=1.0)
    anneal_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    anneal_schedule: Literal["linear", "cosine", "exponential"] = "cosine"
    bn_refresh_batches: int = Field(default=0, ge=0)
    parent_run: str | None = None
    parent_weights: str | None = None
    charge_parent: bool = True
    child_epochs: int = Field(default=2, ge=0)
    child_lr: float | None = Field(default=None, gt=0)
    child_schedule: Literal["onecycle", "constant", "cosine"] = "onecycle"

    @model_validator(mode="after")
    def _children_fit(self) -> SubnetworkOptions:
        """Candidates >= members, one parent source, and children that form whole pairs or partitions."""
        candidates = self.candidates or self.members
        if candidates < self.members:
            raise ValueError(f"candidates: must be >= members ({self.members}), got {candidates}")
        if self.parent_run is not None and self.parent_weights is not None:
            raise ValueError("parent_run: give parent_run or parent_weights, not both")
        if self.family not in MASKED_FAMILIES and not self.noise_decomposition:
            return self
        if self.family in MASKED_FAMILIES and self.masks in (*PAIRED_MASKS, "partition") and self.sparsity is not None:
            raise ValueError(f"sparsity: {self.masks} masks fix their own sparsity; remove method.sparsity")
        size = group_size(self, candidates)
        if size > 1 and candidates % size:
            what = f"{self.masks} pairs" if size == 2 and self.masks in PAIRED_MASKS else f"groups of {size}"
            field = "candidates" if self.candidates is not None else "members"  # name the field the user set
            raise ValueError(f"{field}: {candidates} children cannot form {what} (use a multiple of {size})")
        return self


def group_size(o: SubnetworkOptions, candidates: int) -> int:
    """Children sharing one random draw (a group).

    k = ``partition_parts`` (default ``candidates``) for partitions (``masks: partition`` of a masked family, or
    ``noise_decomposition``), 2 for anti-random pairs (``anti_random``, ``anti_random_neurons``), else 1.
    """
    if is_partitioned(o):
        return o.partition_parts or candidates
    if o.family in MASKED_FAMILIES and o.masks in PAIRED_MASKS:
        return 2
    return 1


def is_partitioned(o: SubnetworkOptions) -> bool:
    """Whether the children of a group share a partition (Neural Partitioning masks or SMD supports)."""
    return (o.family in MASKED_FAMILIES and o.masks == "partition") or (o.family == "noisy" and o.noise_decomposition)
