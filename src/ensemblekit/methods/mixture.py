"""``mixture``: MixtureEnsembles — members mix templates from a shared parameter bank.

Anonymous ICLR submission "MixtureEnsembles: Leveraging Parameter Sharing for Efficient Ensembles", built on
Savarese & Maire (ICLR 2019, soft parameter sharing) and Plummer et al. (ICLR 2022, Shapeshifter Networks).
Layers of the backbone are grouped by (type, weight shape); each group's share of the parameter budget is a
bank of templates; member i's weight of layer j is θ_{j,i} = Σ_r α_{j,i,r}·T_{idx(j,r)} (eq. 2). Members own
their coefficients α and all their BatchNorm layers; singleton layers are plain layers shared by all members.
All members see the same mini-batches and are trained jointly; predictions average the members' softmax.

Costs: parameters = the budget (bank + shared layers) + M·(coefficients + 2·BN channels); inference and
training = M member passes (+ forming the M weights of each template layer once per step). See
``docs/methods/mixture.md`` and :mod:`ensemblekit.layers.template_plan` for every rule and option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ensemblekit.config import Config
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError, config_error
from ensemblekit.layers.packed import ForwardState, MemberBatchNorm2d, replace_zero_pad_shortcuts
from ensemblekit.layers.template import MixtureFactory, RecordingFactory, TemplateBank, TemplateLayer, init_mixture
from ensemblekit.layers.template_plan import MixturePlan, plan_blob, plan_groups, resolve_budget
from ensemblekit.methods.base import METHODS, Method, MethodOptions, meta_backbone
from ensemblekit.models.factory import LayerFactory
from ensemblekit.training.optim import default_param_groups
from ensemblekit.training.stage import OptimSpec, Stage, stage_from_train

Layout = Literal["auto", "loop", "packed"]
"""The forward layout of a MixtureEnsemble (config key ``method.execution``): ``loop`` runs the network once per
member, ``packed`` stacks the members on channels (grouped convolutions); ``auto`` picks per device."""

# What layout ``execution: auto`` runs per device type: loop on CPU (the packed form's grouped-convolution backward is
# the slower one there), packed on CUDA (one grouped convolution per layer instead of M small launches) and on other
# devices. The timings behind the choice: docs/methods/mixture.md, "Execution forms" (benchmarks/bench_mixture.py).
AUTO_LAYOUT: dict[str, str] = {"cpu": "loop", "cuda": "packed"}
UNPACKABLE_FAMILIES: tuple[str, ...] = ("densenet",)  # dense concatenation breaks the member-major channel layout


def check_packable(family: str | None) -> None:
    """Refuse the packed layout for a family whose layout it cannot pack (a config error)."""
    if family in UNPACKABLE_FAMILIES:
        raise config_error("method.execution", f"packed does not support {family} backbones; use loop or auto")


def configured_layout(options: MixtureOptions, cfg: Config) -> Layout:
    """``method.execution``, or ``runtime.member_execution`` when that forces a form and the method says ``auto``."""
    if options.execution == "auto" and cfg.runtime.member_execution != "auto":
        return cfg.runtime.member_execution
    return options.execution


class MixtureEnsemble(Ensemble):
    """M members that mix templates of one bank; ``forward(x) -> [M, B, C]``.

    Args:
        net: The backbone built from mixture layers (:class:`~ensemblekit.layers.template.MixtureFactory`).
        bank: The template bank.
        plan: The plan both follow.
        state: The forward state shared by the net's layers.
        layout: ``auto`` (per device, :data:`AUTO_LAYOUT`), ``loop`` or ``packed``.
    """

    combine = "probs"

    def __init__(
        self, net: nn.Module, bank: TemplateBank, plan: MixturePlan, state: ForwardState, layout: Layout
    ) -> None:
        super().__init__()
        self.net = net
        self.bank = bank
        self.plan = plan
        self.state = state
        family = getattr(getattr(net, "spec", None), "family", None)
        self.packable = family not in UNPACKABLE_FAMILIES
        if layout == "packed":
            check_packable(family)
        self.layout = layout

    @property
    def num_members(self) -> int:
        return self.state.num_members

    def resolve_layout(self, device: torch.device) -> str:
        """``loop`` or ``packed`` for inputs on ``device``."""
        if self.layout != "auto":
            return self.layout
        mode = AUTO_LAYOUT.get(device.type, "packed")
        return mode if self.packable else "loop"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[M, B, C]`` for images ``[B, 3, H, W]``."""
        m, b = self.state.num_members, x.shape[0]
        self.state.cache = {}
        try:
            if self.resolve_layout(x.device) == "packed":
                self.state.packed = True
                xs = x.repeat(1, m, 1, 1)
                if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                    xs = xs.contiguous(memory_format=torch.channels_last)
                return self.net(xs).reshape(b, m, -1).transpose(0, 1)
            outs = []
            for i in range(m):
                self.state.member = i
                outs.append(self.net(x))
            return torch.stack(outs, dim=0)
        finally:
            self.state.packed, self.state.member, self.state.cache = False, None, None

    def member_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of member ``i`` alone (loop form)."""
        self.state.cache, self.state.member = {}, i
        try:
            return self.net(x)
        finally:
            self.state.member, self.state.cache = None, None

    # -- costs ------------------------------------------------------------------------------------
    def total_parameter_count(self) -> int:
        """Members share the bank, so the ensemble's size is its unique parameter count."""
        seen = {id(p): p.numel() for p in self.parameters()}
        return sum(seen.values())

    def budget_report(self) -> dict[str, Any]:
        """The parameter bookkeeping: requested budget, bank, shared layers and per-member overhead.

        ``bank + shared`` is what the budget counts; ``per_member_overhead`` (coefficients + 2·BN channels)
        is paid once per member on top, so ``unique_params = bank + shared + M·per_member_overhead``.
        """
        plan = self.plan
        coefficients = sum(m.coefficients[0].numel() for m in self.net.modules() if isinstance(m, TemplateLayer))
        bn = sum(2 * m.channels for m in self.net.modules() if isinstance(m, MemberBatchNorm2d) and m.affine)
        used = plan.bank_params + plan.shared_params
        return {
            "requested": plan.budget,
            "plain": plan.plain,
            "bank": plan.bank_params,
            "shared": plan.shared_params,
            "budget_used": used,
            "relative_error": (used - plan.budget) / plan.budget,
            "coefficients_per_member": coefficients,
            "bn_params_per_member": bn,
            "per_member_overhead": coefficients + bn,
            "members": plan.members,
            "unique_params": used + plan.members * (coefficients + bn),
            "sharing": plan.sharing,
            "templates": {name: g.num_templates for name, g in plan.groups.items()},
        }

    # -- per-member parameters (interpolation analysis) -------------------------------------------
    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s own parameters: every layer's α row and its BatchNorm γ/β slices (copies).

        Interpolating these is interpolating the member weights, θ_j(λ) = Σ_r ((1−λ)α_a + λα_b)_r T_r =
        (1−λ)θ_{j,a} + λθ_{j,b}, only when members combine the same templates (``template_assignment:
        shared``); with ``disjoint`` this is refused.
        """
        if self.plan.assignment != "shared":
            raise UserError(
                "member interpolation needs template_assignment: shared (members combine the same templates)"
            )
        state = {}
        for name, module in self.net.named_modules():
            if isinstance(module, TemplateLayer):
                state[f"{name}.coefficients"] = module.coefficients[i].detach().clone()
            elif isinstance(module, MemberBatchNorm2d) and module.affine:
                s = module.member_slice(i)
                state[f"{name}.weight"] = module.weight[s].detach().clone()
                state[f"{name}.bias"] = module.bias[s].detach().clone()
        return state

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Write a :meth:`member_state` dict into member ``i``'s slots."""
        modules = dict(self.net.named_modules())
        for key, value in state.items():
            name, attr = key.rsplit(".", 1)
            module = modules[name]
            if attr == "coefficients":
                module.coefficients[i].copy_(value)
            else:
                getattr(module, attr)[module.member_slice(i)].copy_(value)


def build_mixture_ensemble(
    make_backbone: Callable[[LayerFactory | None], nn.Module],
    members: int = 4,
    param_budget: float = 1.0,
    templates_per_layer: int = 5,
    sharing: Literal["groups", "blob"] = "groups",
    template_assignment: Literal["shared", "disjoint"] = "shared",
    bank_singletons: bool = False,
    layout: Layout = "auto",
) -> MixtureEnsemble:
    """Plan and build a MixtureEnsemble around the backbone ``make_backbone(layers)`` builds.

    The backbone is first built on the meta device with a recording factory (to list its layers), then again
    from mixture layers. Built under ``torch.device("meta")`` the result has shapes only (for counting).

    Args:
        make_backbone: ``layers -> backbone`` (e.g. ``lambda layers: create_model("resnet20", layers=layers)``).
        members: M.
        param_budget: ≤ 100: multiple of the plain backbone's conv + linear parameters; > 100: absolute count.
        templates_per_layer: t.
        sharing: ``groups`` or ``blob``.
        template_assignment: ``shared`` or ``disjoint``.
        bank_singletons: Banks for singleton layers too (Thin variant).
        layout: ``auto``, ``loop`` or ``packed`` (see :data:`Layout`).

    Returns:
        The initialised ensemble.
    """
    if members < 1 or templates_per_layer < 1:
        raise UserError("mixture: members and templates_per_layer must be >= 1")
    recorder = RecordingFactory()
    with torch.device("meta"):
        make_backbone(recorder)
    plain = sum(r.numel + r.bias_numel for r in recorder.records)
    budget = resolve_budget(param_budget, plain)
    if sharing == "blob":
        plan = plan_blob(recorder.records, budget, members, templates_per_layer, template_assignment)
    else:
        plan = plan_groups(recorder.records, budget, members, templates_per_layer, template_assignment, bank_singletons)
    state = ForwardState(members)
    bank = TemplateBank(plan)
    net = make_backbone(MixtureFactory(plan, bank, state))
    if not any(isinstance(m, TemplateLayer) for m in net.modules()):  # no silent success: members would be one net
        raise UserError(
            "mixture: no layer mixes templates (every Conv2d/Linear shape occurs once, so all are shared): the members "
            "would be one network; set method.bank_singletons: true or method.sharing: blob"
        )
    replace_zero_pad_shortcuts(net, state)
    init_mixture(net, bank, plan)
    return MixtureEnsemble(net, bank, plan, state, layout)


class MixtureOptions(MethodOptions):
    """Options of ``mixture`` (docs/methods/mixture.md explains each and what the paper leaves open).

    Attributes:
        members: Number of members M (the paper's best: 4).
        param_budget: Parameters of bank + shared layers: ≤ 100 means a multiple of the plain backbone's
            conv + linear parameters (1.0 = one backbone, 3.3 ≈ the paper's 120 M for WRN-28-10); > 100 an
            absolute count. Met within 1 % or refused.
        templates_per_layer: t, templates each layer combines (105 coefficients / 21 layers = 5 in the paper).
        sharing: ``groups`` (banks per layer type and shape) or ``blob`` (one bank for all layers: the paper's
            low-budget mode).
        template_assignment: ``shared`` (CIFAR: members combine the same templates) or ``disjoint`` (ImageNet:
            members get disjoint templates first).
        bank_singletons: Banks for singleton layers too (the paper's Thin variant); default plain shared layers.
        member_loss: ``sum`` (default: every member gets a standard CE and the templates the sum of the
            members' gradients) or ``mean``.
        execution: The forward layout (:data:`Layout`): ``auto`` (faster form per device;
            ``runtime.member_execution: loop`` turns it into ``loop``), ``loop`` or ``packed``.
    """

    members: int = Field(default=4, ge=1)
    param_budget: float = Field(default=1.0, gt=0)
    templates_per_layer: int = Field(default=5, ge=1)
    sharing: Literal["groups", "blob"] = "groups"
    template_assignment: Literal["shared", "disjoint"] = "shared"
    bank_singletons: bool = False
    member_loss: Literal["sum", "mean"] = "sum"
    execution: Layout = "auto"


def coefficient_param_groups(spec: OptimSpec) -> Callable[[nn.Module], list[dict[str, Any]]]:
    """Parameter groups: the stage's default groups without the α coefficients, plus α without weight decay."""

    def groups(module: nn.Module) -> list[dict[str, Any]]:
        coefficients = [m.coefficients for m in module.modules() if isinstance(m, TemplateLayer)]
        ids = {id(p) for p in coefficients}
        base = [
            {**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in default_param_groups(module, spec)
        ]
        return [*base, {"params": coefficients, "weight_decay": 0.0}]

    return groups


@METHODS.register("mixture")
class Mixture(Method):
    """MixtureEnsembles: template banks shared by members that own coefficients and BatchNorm."""

    Options = MixtureOptions
    summary = "members mix templates of a shared parameter bank (MixtureEnsembles, ICLR submission)"

    @classmethod
    def check_config(cls, cfg: Config, options: MixtureOptions) -> None:
        """A packed layout needs a packable built-in family (a custom module's is checked when built).

        The ``param_budget`` is checked when the ensemble is built: it counts the classifier, whose size depends on
        the number of classes, which only the data tell.
        """
        net = meta_backbone(cfg)
        if net is not None and configured_layout(options, cfg) == "packed":
            check_packable(net.spec.family)

    def build(self) -> Ensemble:
        o = self.options
        layout = configured_layout(o, self.cfg)  # runtime.member_execution: loop|packed forces a form
        return build_mixture_ensemble(
            self._make_backbone,
            members=o.members,
            param_budget=o.param_budget,
            templates_per_layer=o.templates_per_layer,
            sharing=o.sharing,
            template_assignment=o.template_assignment,
            bank_singletons=o.bank_singletons,
            layout=layout,
        )

    def _make_backbone(self, layers: LayerFactory) -> nn.Module:
        """The backbone built from ``layers``; the user's module has its Conv2d/Linear layers converted."""
        if self.custom_backbone():
            from ensemblekit.models.custom import convert_layers

            return convert_layers(self.backbone(), layers, self.name)
        return self.backbone(layers=layers)

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        stage = stage_from_train(
            "joint", ensemble, self.cfg.train, data_seed=self.member_seed(0), member_loss=self.options.member_loss
        )
        stage.param_groups = coefficient_param_groups(stage.optim)
        return [stage]
