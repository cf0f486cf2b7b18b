"""Template banks and template-mixing layers (MixtureEnsembles; Savarese & Maire, ICLR 2019).

MixtureEnsembles: "MixtureEnsembles: Leveraging Parameter Sharing for Efficient Ensembles", anonymous ICLR
submission (docs/methods/mixture.md).

Member i's weight of template layer j is a linear combination of templates from a shared bank,

    θ_{j,i} = Σ_r α_{j,i,r} · T_{idx(j,i,r)}        (paper eq. 2),

formed for all M members at once with one contraction per layer and forward pass,
``W = A @ T`` with ``A`` the ``[M, K]`` coefficients (K templates the layer reads) and ``T`` the ``[K, |θ|]``
templates. The layer then runs one convolution per member (loop form) or one grouped convolution over
members packed on channels (:mod:`ensemblekit.layers.packed`): parameters are combined, never features.

Which templates a layer reads, and how many templates a bank holds, is decided by
:mod:`ensemblekit.layers.template_plan`. :class:`RecordingFactory` lists a backbone's layers and
:class:`MixtureFactory` builds the same backbone from mixture layers, so every backbone built through a
:class:`~ensemblekit.models.factory.LayerFactory` works.

Initialisation (:func:`init_mixture`, following the soft-sharing and SSN code): templates Kaiming-normal with
the layer's fan-in, std = √(2/fan_in), each template independently; coefficients orthogonal per group —
for each member an independent orthogonal ``[L_g, t]`` matrix (``nn.init.orthogonal_``, also for
rectangular shapes) whose row j is layer j's α; template-layer biases 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.layers.packed import ForwardState, MemberBatchNorm2d, SharedConv2d, SharedLinear
from ensemblekit.layers.template_plan import LayerPlan, LayerRecord, MixturePlan
from ensemblekit.models.factory import LayerFactory


class TemplateBank(nn.Module):
    """The shared parameters templates are read from: one tensor ``[n_g, |θ_g|]`` per group, or a flat blob.

    Templates are stored flattened (row l of a group is template T_l reshaped to the layer's weight shape), so
    ``module.to(memory_format=torch.channels_last)``, which converts 4-d and 5-d tensors, leaves them alone.

    Args:
        plan: The mixture plan.
    """

    def __init__(self, plan: MixturePlan) -> None:
        super().__init__()
        self.sharing = plan.sharing
        self.groups = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(g.num_templates, g.template_numel)) for name, g in plan.groups.items()}
        )
        self.blob = nn.Parameter(torch.empty(plan.blob_size)) if plan.sharing == "blob" else None

    def window(self, start: int, length: int) -> torch.Tensor:
        """``length`` blob entries from ``start``, wrapping around the blob's end (as often as needed)."""
        blob = self.blob
        n = blob.numel()
        if start + length <= n:
            return blob[start : start + length]
        pieces, pos, rest = [], start, length
        while rest > 0:
            take = min(rest, n - pos)
            pieces.append(blob[pos : pos + take])
            rest, pos = rest - take, 0
        return torch.cat(pieces)


class TemplateLayer(nn.Module):
    """Base of template-mixing layers: coefficients ``[M, t]`` and the formation of the M member weights.

    Args:
        plan: The layer's plan (role ``"template"``).
        bank: The ensemble's template bank (referenced, not owned).
        state: The network's forward state.

    Attributes:
        coefficients: α, ``[M, t]``; row i is member i's (no weight decay, see the method's recipe).
        bias: The layer's bias, shared by all members (``None`` without bias).
    """

    def __init__(self, plan: LayerPlan, bank: TemplateBank, state: ForwardState) -> None:
        super().__init__()
        r = plan.record
        m = state.num_members
        self.shape = r.shape
        self.group = plan.group
        self.t = plan.t
        object.__setattr__(self, "_bank", bank)
        object.__setattr__(self, "_state", state)
        if plan.windows:  # blob: one window per distinct member subset
            sources = sorted(set(plan.windows), key=plan.windows.index)
            positions = [[sources.index(w) * self.t + k for k in range(self.t)] for w in plan.windows]
            self._windows = sources
            self._rows: list[int] = []
        else:
            self._rows = list(dict.fromkeys(tid for subset in plan.templates for tid in subset))
            positions = [[self._rows.index(tid) for tid in subset] for subset in plan.templates]
            self._windows = []
        self.num_sources = len(self._windows) * self.t if self._windows else len(self._rows)
        self._contiguous = bool(self._rows) and self._rows == list(
            range(self._rows[0], self._rows[0] + len(self._rows))
        )
        self.identity = all(p == list(range(self.t)) for p in positions) and self.num_sources == self.t
        self.register_buffer(
            "positions", torch.tensor(positions, dtype=torch.long).reshape(m, self.t), persistent=False
        )
        # the template rows as an index tensor, built once (it follows the module's device)
        self.register_buffer("row_index", torch.tensor(self._rows, dtype=torch.long), persistent=False)
        self.coefficients = nn.Parameter(torch.empty(m, self.t))
        self.bias = nn.Parameter(torch.zeros(r.shape[0])) if r.bias else None

    def templates(self) -> torch.Tensor:
        """The K templates this layer reads, flattened: ``[K, |θ|]``."""
        numel = math.prod(self.shape)
        if self._windows:
            return torch.cat([self._bank.window(s, n).view(self.t, numel) for s, n in self._windows])
        bank = self._bank.groups[self.group]
        if self._contiguous:
            return bank[self._rows[0] : self._rows[0] + len(self._rows)]
        return bank.index_select(0, self.row_index)

    def dense_coefficients(self) -> torch.Tensor:
        """``A [M, K]``: member i's α scattered onto the columns of the templates it combines."""
        if self.identity:
            return self.coefficients
        m = self.coefficients.shape[0]
        a = self.coefficients.new_zeros(m, self.num_sources)
        return a.scatter_add(1, self.positions, self.coefficients)

    def member_weights(self) -> torch.Tensor:
        """All members' weights ``[M, *shape]`` = ``A @ T`` (one contraction; cached for the forward pass)."""
        cache = self._state.cache
        if cache is not None and id(self) in cache:
            return cache[id(self)]
        templates = self.templates()
        a = self.dense_coefficients().to(templates.dtype)
        w = (a @ templates).view(a.shape[0], *self.shape)
        if cache is not None:
            cache[id(self)] = w
        return w

    def extra_repr(self) -> str:
        return f"{tuple(self.shape)}, bank={self.group}, t={self.t}, sources={self.num_sources}"


class TemplateConv2d(TemplateLayer):
    """A convolution whose member weights mix templates; grouped over members when packed."""

    def __init__(self, plan: LayerPlan, bank: TemplateBank, state: ForwardState) -> None:
        super().__init__(plan, bank, state)
        self.stride = plan.record.stride
        self.padding = plan.record.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.member_weights()
        if self._state.packed:
            m = w.shape[0]
            bias = None if self.bias is None else self.bias.repeat(m)
            return F.conv2d(x, w.flatten(0, 1), bias, self.stride, self.padding, 1, m)
        return F.conv2d(x, w[self._state.current_member()], self.bias, self.stride, self.padding)


class TemplateLinear(TemplateLayer):
    """A linear layer whose member weights mix templates; a grouped (per-member) linear when packed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.member_weights()
        if self._state.packed:
            b, m = x.shape[0], w.shape[0]
            out = torch.einsum("bmi,moi->bmo", x.reshape(b, m, -1), w)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(b, -1)
        return F.linear(x, w[self._state.current_member()], self.bias)


class RecordingFactory(LayerFactory):
    """A plain layer factory that records every conv and linear layer it creates (in order)."""

    def __init__(self) -> None:
        self.records: list[LayerRecord] = []

    def conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.records.append(LayerRecord(len(self.records), "conv", shape, bias, stride, padding))
        return super().conv2d(in_channels, out_channels, kernel_size, stride, padding, bias)

    def linear(self, in_features, out_features, bias=True):
        self.records.append(LayerRecord(len(self.records), "linear", (out_features, in_features), bias))
        return super().linear(in_features, out_features, bias)


class MixtureFactory(LayerFactory):
    """Builds a backbone from mixture layers, following a plan made from the same backbone's records.

    Args:
        plan: The mixture plan.
        bank: The template bank the template layers read.
        state: The forward state shared by the network's layers.
    """

    def __init__(self, plan: MixturePlan, bank: TemplateBank, state: ForwardState) -> None:
        self.plan = plan
        self.bank = bank
        self.state = state
        self._next = 0

    def _take(self, kind: str, shape: tuple[int, ...]) -> LayerPlan:
        if self._next >= len(self.plan.layers):
            raise RuntimeError("the backbone creates more layers than the mixture plan lists")
        lp = self.plan.layers[self._next]
        if (lp.record.kind, lp.record.shape) != (kind, shape):
            raise RuntimeError(
                f"layer {self._next}: the plan expects {lp.record.key}, the backbone builds {kind} {shape}"
            )
        self._next += 1
        return lp

    def conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        lp = self._take("conv", (out_channels, in_channels, kernel_size, kernel_size))
        if lp.role == "template":
            return TemplateConv2d(lp, self.bank, self.state)
        return SharedConv2d(
            self.state, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )

    def batchnorm2d(self, channels):
        return MemberBatchNorm2d(channels, self.state.num_members, self.state)

    def linear(self, in_features, out_features, bias=True):
        lp = self._take("linear", (out_features, in_features))
        if lp.role == "template":
            return TemplateLinear(lp, self.bank, self.state)
        return SharedLinear(self.state, in_features, out_features, bias=bias)


@torch.no_grad()
def init_mixture(net: nn.Module, bank: TemplateBank, plan: MixturePlan) -> None:
    """Initialise templates (Kaiming-normal, fan-in) and coefficients (orthogonal per group and member).

    Args:
        net: The backbone built by :class:`MixtureFactory`.
        bank: Its template bank.
        plan: The plan both were built from.
    """
    if any(p.is_meta for p in bank.parameters()):
        return  # shapes only (e.g. counting parameters of a large model on the meta device)
    for name, g in plan.groups.items():
        fan_in = math.prod(g.shape[1:])
        bank.groups[name].normal_(0.0, math.sqrt(2.0 / fan_in))
    for start, end, fan_in in plan.blob_init:
        bank.blob[start:end].normal_(0.0, math.sqrt(2.0 / fan_in))
    by_group: dict[str, list[TemplateLayer]] = {}
    for module in net.modules():
        if isinstance(module, TemplateLayer):
            by_group.setdefault(module.group, []).append(module)
    for layers in by_group.values():
        t = layers[0].t
        for i in range(plan.members):
            q = torch.empty(len(layers), t)
            nn.init.orthogonal_(q)
            for j, layer in enumerate(layers):
                layer.coefficients[i].copy_(q[j])
