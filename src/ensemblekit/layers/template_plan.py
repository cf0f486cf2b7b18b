"""Template-bank planning for MixtureEnsembles: parameter groups, budget split, template assignment.

Pure bookkeeping (no tensors): given the conv/linear layers of the plain backbone in creation order, decide
which layers mix templates from a bank, how many templates each bank holds, and which templates every
(layer, member) pair combines. The modules in :mod:`ensemblekit.layers.template` execute the plan.

Rules (MixtureEnsembles, "MixtureEnsembles: Leveraging Parameter Sharing for Efficient Ensembles", anonymous ICLR
submission, section 3.1; docs/methods/mixture.md; Savarese & Maire 2019; Plummer et al. 2022, "Neural Parameter
Allocation Search" / Shapeshifter Networks, whose code fixes the details the paper leaves open):

* **Groups** (``sharing="groups"``): layers are grouped by (layer type, exact weight shape). A group with one
  layer (a *singleton*: stem conv, channel-changing convs, projection shortcuts, classifier) is a plain layer
  shared by all members, unless ``bank_singletons`` (the paper's *Thin* variant) makes it a one-layer bank.
* **Budget split** (SSN rule): with P the budget and S the parameters of shared plain layers (plus the biases
  of template layers, which are shared too), group g gets share_g = ⌊(P − S)·|g| / Σ_h |h|⌋ where |g| is
  the group's parameter count in the plain network, and n_g = ⌊share_g / |θ_g|⌋ templates. A group whose share
  is smaller than one template (n_g = 0) becomes plain shared layers; its cost moves into S and the split is
  redone. The rounding remainder R = P − S − Σ n_g|θ_g| is then filled greedily: one more template for the
  group with the largest template that still fits in R, until none fits; finally the group with the
  smallest template gets one more if that lands closer to P than stopping. So bank + shared misses P by at
  most half the smallest template (above or below). A plan further than ``tolerance`` (1 %) from P is
  refused with an error that suggests ``sharing: blob``.
* **Round robin** (``template_assignment="shared"``, the CIFAR setting): with t = min(templates_per_layer,
  n_g), layer j of its group (creation order) combines templates {(j·t + r) mod n_g : r < t}; every member
  uses the same subset.
* **Disjoint** (``"disjoint"``, the ImageNet greedy assignment): the round robin runs over (layer, member)
  pairs, c = j·M + i, and member i of layer j combines {(c·t + r) mod n_g : r < t}; members therefore get
  disjoint templates while M·t ≤ n_g and templates are reused only once every template has been handed out.
* **Blob** (``sharing="blob"``, the low-budget mode of section 5.1): one flat bank of P − (template biases)
  parameters for *all* conv/linear layers (singletons included). Layer j takes the next t·|θ_j| parameters
  of the blob as its t templates: a window starting where the previous layer's window ended, wrapping
  around to the blob's start. If a window is longer than the blob, it wraps more than once, so a layer's
  templates reuse blob entries (SSN upsamples a smaller slice by bilinear interpolation instead; the
  MixtureEnsembles paper does not say, we wrap). A blob larger than all windows together would hold
  parameters no layer reads and is refused. With ``disjoint`` the windows advance over (layer, member) pairs.

Budget: ``param_budget`` ≤ 100 is a multiple of the plain backbone's conv + linear parameters (its size
without BatchNorm, which is per-member overhead here), so 1.0 gives every group exactly L_g templates and
bank + shared equals the plain network's layers; a value > 100 is an absolute parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Literal

from ensemblekit.errors import UserError

Kind = Literal["conv", "linear"]
BUDGET_MULTIPLE_MAX = 100.0
TOLERANCE = 0.01


@dataclass(frozen=True)
class LayerRecord:
    """A conv or linear layer of the plain backbone, as the layer factory saw it.

    Attributes:
        index: Creation order among the network's conv and linear layers.
        kind: ``"conv"`` or ``"linear"``.
        shape: Weight shape (``[out, in, k, k]`` or ``[out, in]``).
        bias: Whether the layer has a bias.
        stride: Conv stride (1 for linear).
        padding: Conv padding (0 for linear).
    """

    index: int
    kind: Kind
    shape: tuple[int, ...]
    bias: bool
    stride: int = 1
    padding: int = 0

    @property
    def numel(self) -> int:
        """Weight parameters |θ|."""
        return prod(self.shape)

    @property
    def bias_numel(self) -> int:
        """Bias parameters (0 without bias)."""
        return self.shape[0] if self.bias else 0

    @property
    def fan_in(self) -> int:
        """Inputs per output unit: in·k·k (conv) or in (linear)."""
        return prod(self.shape[1:])

    @property
    def key(self) -> str:
        """Group name: type and exact weight shape, e.g. ``conv_64x64x3x3``."""
        return f"{self.kind}_{'x'.join(map(str, self.shape))}"


@dataclass
class LayerPlan:
    """What one layer becomes.

    Attributes:
        record: The plain layer.
        role: ``"template"`` (member weights mix templates) or ``"shared"`` (one plain layer for all members).
        group: Bank name (group key, or ``"blob"``); ``None`` for shared layers.
        position: Index of the layer within its group (creation order).
        templates: Per member, the template ids combined (groups mode); empty for shared layers.
        windows: Per member, the blob window ``(start, length)`` (blob mode); empty otherwise.
        t: Templates combined per member (coefficients per member).
    """

    record: LayerRecord
    role: Literal["template", "shared"]
    group: str | None = None
    position: int = 0
    templates: tuple[tuple[int, ...], ...] = ()
    windows: tuple[tuple[int, int], ...] = ()
    t: int = 0


@dataclass
class GroupPlan:
    """A template bank of one group.

    Attributes:
        name: Group key (also the bank's parameter name).
        kind: Layer type.
        shape: Template (= weight) shape.
        layers: Indices (``LayerRecord.index``) of the group's layers.
        share: Parameters the proportional split gave the group.
        num_templates: n_g.
    """

    name: str
    kind: Kind
    shape: tuple[int, ...]
    layers: list[int]
    share: int = 0
    num_templates: int = 0

    @property
    def template_numel(self) -> int:
        """|θ_g|."""
        return prod(self.shape)

    @property
    def plain_numel(self) -> int:
        """The group's weight parameters in the plain network, L_g·|θ_g|."""
        return len(self.layers) * self.template_numel


@dataclass
class MixturePlan:
    """The whole plan; see the module docstring for the rules.

    Attributes:
        members: M.
        budget: Requested parameters P (bank + shared).
        plain: Conv + linear parameters of the plain backbone (the base of budget multiples).
        sharing: ``"groups"`` or ``"blob"``.
        assignment: ``"shared"`` or ``"disjoint"``.
        layers: One :class:`LayerPlan` per conv/linear layer, in creation order.
        groups: Template banks by name (groups mode).
        blob_size: Blob parameters (blob mode, else 0).
        blob_init: ``(start, end, fan_in)`` blob segments, each initialised with the fan-in of the first
            layer whose window covers it.
    """

    members: int
    budget: int
    plain: int
    sharing: Literal["groups", "blob"]
    assignment: Literal["shared", "disjoint"]
    layers: list[LayerPlan]
    groups: dict[str, GroupPlan] = field(default_factory=dict)
    blob_size: int = 0
    blob_init: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def bank_params(self) -> int:
        """Parameters in the template banks (Σ n_g·|θ_g|, or the blob)."""
        if self.sharing == "blob":
            return self.blob_size
        return sum(g.num_templates * g.template_numel for g in self.groups.values())

    @property
    def shared_params(self) -> int:
        """Parameters of the plain layers shared by all members, plus the (shared) biases of template layers."""
        total = 0
        for lp in self.layers:
            total += lp.record.bias_numel
            if lp.role == "shared":
                total += lp.record.numel
        return total

    @property
    def coefficients_per_member(self) -> int:
        """α values per member, Σ_j t_j."""
        return sum(lp.t for lp in self.layers if lp.role == "template")


def resolve_budget(param_budget: float, plain: int) -> int:
    """The requested parameter count: a multiple of ``plain`` when ≤ 100, else an absolute count.

    Args:
        param_budget: The option's value (> 0).
        plain: The plain backbone's conv + linear parameters.

    Returns:
        P as an int (``round(param_budget·plain)`` or ``round(param_budget)``).
    """
    if not param_budget > 0:
        raise UserError(f"param_budget must be > 0, got {param_budget!r}")
    if param_budget <= BUDGET_MULTIPLE_MAX:
        return round(param_budget * plain)
    return round(param_budget)


def _groups_of(records: list[LayerRecord]) -> dict[str, GroupPlan]:
    groups: dict[str, GroupPlan] = {}
    for r in records:
        g = groups.setdefault(r.key, GroupPlan(r.key, r.kind, r.shape, []))
        g.layers.append(r.index)
    return groups


def _split(budget: int, fixed: int, groups: list[GroupPlan]) -> list[GroupPlan]:
    """Proportional split with demotion of groups below one template; returns the demoted groups."""
    demoted: list[GroupPlan] = []
    active = list(groups)
    while active:
        rest = budget - fixed - sum(g.plain_numel for g in demoted)
        total = sum(g.plain_numel for g in active)
        for g in active:
            g.share = max(0, rest) * g.plain_numel // total
            g.num_templates = g.share // g.template_numel
        small = [g for g in active if g.num_templates == 0]
        if not small:
            break
        demoted += small
        active = [g for g in active if g.num_templates > 0]
    # Fill the rounding remainder with whole templates, largest template that fits first.
    if active:
        left = (
            budget
            - fixed
            - sum(g.plain_numel for g in demoted)
            - sum(g.num_templates * g.template_numel for g in active)
        )
        while True:
            fitting = [g for g in active if g.template_numel <= left]
            if not fitting:
                break
            g = max(fitting, key=lambda h: h.template_numel)
            g.num_templates += 1
            left -= g.template_numel
        smallest = min(active, key=lambda h: h.template_numel)
        if smallest.template_numel - left < left:  # one more template lands closer to P than stopping
            smallest.num_templates += 1
    return demoted


def _round_robin(c: int, t: int, n: int) -> tuple[int, ...]:
    return tuple((c * t + r) % n for r in range(t))


def plan_groups(
    records: list[LayerRecord],
    budget: int,
    members: int,
    templates_per_layer: int = 5,
    assignment: Literal["shared", "disjoint"] = "shared",
    bank_singletons: bool = False,
    tolerance: float = TOLERANCE,
) -> MixturePlan:
    """Plan a groups-mode mixture (see the module docstring).

    Args:
        records: The plain backbone's conv/linear layers in creation order.
        budget: P, parameters for bank + shared layers.
        members: M.
        templates_per_layer: t (each layer combines min(t, n_g) templates).
        assignment: ``"shared"`` or ``"disjoint"``.
        bank_singletons: Give singleton layers a bank too (the paper's Thin variant).
        tolerance: Largest accepted relative distance of bank + shared from P.

    Returns:
        The plan.

    Raises:
        UserError: when P cannot be met within ``tolerance``.
    """
    plain = sum(r.numel + r.bias_numel for r in records)
    groups = _groups_of(records)
    banked = [g for g in groups.values() if len(g.layers) > 1 or bank_singletons]
    fixed = sum(r.bias_numel for r in records) + sum(g.plain_numel for g in groups.values() if g not in banked)
    demoted = _split(budget, fixed, banked)
    banks = {g.name: g for g in banked if g not in demoted}
    layers: list[LayerPlan] = []
    position: dict[str, int] = {}
    for r in records:
        g = banks.get(r.key)
        if g is None:
            layers.append(LayerPlan(r, "shared"))
            continue
        j = position[r.key] = position.get(r.key, -1) + 1
        t = min(templates_per_layer, g.num_templates)
        if assignment == "shared":
            subsets = (_round_robin(j, t, g.num_templates),) * members
        else:
            subsets = tuple(_round_robin(j * members + i, t, g.num_templates) for i in range(members))
        layers.append(LayerPlan(r, "template", g.name, j, templates=subsets, t=t))
    plan = MixturePlan(members, budget, plain, "groups", assignment, layers, groups=banks)
    _check_budget(plan, tolerance)
    return plan


def plan_blob(
    records: list[LayerRecord],
    budget: int,
    members: int,
    templates_per_layer: int = 5,
    assignment: Literal["shared", "disjoint"] = "shared",
) -> MixturePlan:
    """Plan a blob-mode mixture: one bank for all layers, round-robin windows (see the module docstring).

    Raises:
        UserError: when the blob would be empty or larger than all windows together.
    """
    plain = sum(r.numel + r.bias_numel for r in records)
    t = templates_per_layer
    blob = budget - sum(r.bias_numel for r in records)
    per_pair = [(r, i) for r in records for i in range(members if assignment == "disjoint" else 1)]
    covered = sum(t * r.numel for r, _ in per_pair)
    if blob <= 0:
        raise UserError(f"param_budget {budget} leaves no parameters for the blob (the layers' biases need more)")
    if blob > covered:
        raise UserError(
            f"sharing: blob with param_budget {budget} holds more parameters than the layers can read "
            f"({covered} = {t} templates per layer); use sharing: groups or a smaller budget"
        )
    layers, cursor, init = [], 0, []
    windows: dict[int, list[tuple[int, int]]] = {}
    for r, _ in per_pair:
        length = t * r.numel
        if cursor < blob:
            init.append((cursor, min(blob, cursor + length), r.fan_in))
        windows.setdefault(r.index, []).append((cursor % blob, length))
        cursor += length
    for j, r in enumerate(records):
        w = windows[r.index]
        layers.append(LayerPlan(r, "template", "blob", j, windows=tuple(w * members if len(w) == 1 else w), t=t))
    return MixturePlan(members, budget, plain, "blob", assignment, layers, blob_size=blob, blob_init=init)


def _check_budget(plan: MixturePlan, tolerance: float) -> None:
    got = plan.bank_params + plan.shared_params
    if abs(got - plan.budget) > tolerance * plan.budget:
        raise UserError(
            f"mixture: sharing: groups cannot meet param_budget {plan.budget} within {tolerance:.0%} "
            f"(bank + shared layers = {got}, {got / plan.budget:.2f}x; groups whose share is below one template "
            "become plain shared layers); use sharing: blob for budgets this small, or a larger budget"
        )
