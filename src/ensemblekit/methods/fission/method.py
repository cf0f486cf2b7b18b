"""``fission``: Network Fission Ensembles, one pruned network split into a multi-exit ensemble.

Lee & Lee, "Network Fission Ensembles for Low-Cost Self-Ensembles", arXiv 2408.02301, 2024; official code
``hjdw2/NFE``; docs/methods/fission.md.

One backbone becomes a multi-exit network whose N exits form the ensemble:

1. prune the backbone at initialisation (``criterion``, global threshold by default; the classifier and the 1x1
   shortcut convs are never pruned) to density d = 1 − ``sparsity``;
2. split the surviving weights of every stage traversed by several paths into disjoint groups, one per path
   (``grouping``: ``balanced`` / ``bernoulli`` masks on full-width copies, or ``channels``: filters, so that each
   path is a genuinely thinner dense network);
3. exit k branches after stage k; stage s has min(s, N) copies, each carrying one group; shortcuts, BN and heads
   are per path (:mod:`ensemblekit.methods.fission.network`);
4. train all exits jointly with L = Σ_i CE(z_i, y) + T² Σ_i KL(q_E ‖ softmax(z_i / T)), q_E the detached
   softmax(mean_i z_i / T) (``loss: kd``; ``ce`` drops the KL term);
5. predict softmax(mean_i z_i) (the built :class:`FissionNetwork` has ``combine = "logits"``).

``reference: official`` trains as the official code does (gradient-hook masks, independent inits, SNIP on a
Xavier copy with NLL on raw logits, shortcuts ranked): :mod:`ensemblekit.methods.fission.official`.

Recipe: a zero-epoch ``prune`` stage whose ``at_end`` hook does steps 1-2 (the structure exists from ``build``;
the hook only writes masks or values and is deterministic, so a resumed run may re-run it), then ``train``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ensemblekit.config import Config
from ensemblekit.ensemble import Ensemble
from ensemblekit.methods.base import METHODS, NEEDS_STAGES, Method, MethodOptions, RecordContext, meta_backbone
from ensemblekit.methods.fission.build import (
    check_exits,
    masked_fission,
    scored_layers,
    thin_fission,
    thin_spec,
)
from ensemblekit.methods.fission.loss import fission_loss
from ensemblekit.methods.fission.network import FissionNetwork
from ensemblekit.methods.fission.official import xavier_scoring_copy
from ensemblekit.methods.fission.split import split_masks, transfer_channels
from ensemblekit.metrics import count_parameters, inference_flops
from ensemblekit.metrics.sparse_costs import SPARSE_TRAIN_KEY, sparse_epoch_equivalents, sparse_model_costs
from ensemblekit.models import Backbone, build_model
from ensemblekit.pruning.criteria import compute_scores
from ensemblekit.pruning.masks import density_report, get_masks, masks_from_scores, set_masks
from ensemblekit.pruning.score_data import class_balanced_indices
from ensemblekit.training.stage import Stage, StageContext, StageHooks, stage_from_train

DATA_CRITERIA = ("snip", "grasp")
DESCRIBE_BATCH = 64
"""Largest random batch ``describe`` scores with SNIP / GraSP (:meth:`Fission.estimate_sparsity`)."""


class FissionOptions(MethodOptions):
    """Options of ``fission`` (defaults: the paper's N = 3, s = 0.5, SNIP, T = 3).

    Attributes:
        members: Number of exits N (1 <= N <= number of backbone stages; N = 1 is the pruned single network).
        sparsity: Fraction s of the prunable weights removed (stem and stage convs; not the classifier, not the
            1x1 shortcuts). 0.5 in the paper's runs (the official argparse default is 0).
        criterion: Pruning at initialisation: ``random``, ``magnitude``, ``snip`` (official code), ``grasp``,
            ``synflow`` (:mod:`ensemblekit.pruning.criteria`).
        scope: ``global`` threshold over all prunable layers (official code) or ``layerwise``.
        grouping: How a split layer's weights are divided among its paths: ``balanced`` (random permutation
            cut into equal chunks), ``bernoulli`` (the official code's coin flips, made disjoint) or
            ``channels`` (structured: each path gets its own filters and is a thinner dense network).
        loss: ``kd`` (CE + ensemble distillation, the paper's EED) or ``ce`` (the paper's ablation).
        temperature: Distillation temperature T (3).
        path_init: ``split``: every copy starts from the scored backbone's initial weights (so the paths
            partition one pruned network); ``independent``: each path's copies come from its own freshly
            initialised backbone (the official code scores a different initialisation than it trains). With
            ``channels``, ``independent`` keeps the thin paths' own initialisation (no filter transfer).
        score_batches: Mini-batches for SNIP / GraSP scores (1 in the code).
        score_batch_size: Their batch size (512 in the code).
        synflow_rounds: SynFlow pruning rounds (100, exponential schedule).
        grasp_temperature: Temperature of the GraSP loss (200, as in the GraSP code).
        reference: ``corrected`` (default: forward masks, the paths partition one pruned network) or
            ``official``: as the official code trains (:mod:`ensemblekit.methods.fission.official`): masks act
            on the gradient only, every path is independently initialised (``path_init: independent``), the
            scoring copy is Xavier re-initialised, SNIP uses the NLL of raw logits and the 1x1 shortcuts are
            ranked in the global threshold. Unstructured groupings only.
        grasp_samples_per_class: GraSP scores on class-balanced batches of this many examples per class (10, the
            GraSP code's CIFAR-10 setting; ``score_batches`` such batches, ``score_batch_size`` is not used).
        path_execution: How the copies of a stage (and the heads) run with ``grouping: channels``: ``loop`` (one
            after another), ``packed`` (one batched pass over stacked parameters, a grouped convolution:
            :mod:`ensemblekit.methods.fission.packed_paths`) or ``auto`` (packed on CUDA, loop on CPU). Same
            function, gradients and checkpoints either way. The masked groupings always loop.
    """

    members: int = Field(default=3, ge=1)
    sparsity: float = Field(default=0.5, ge=0.0, lt=1.0)
    criterion: Literal["random", "magnitude", "snip", "grasp", "synflow"] = "snip"
    scope: Literal["global", "layerwise"] = "global"
    grouping: Literal["balanced", "bernoulli", "channels"] = "balanced"
    loss: Literal["kd", "ce"] = "kd"
    temperature: float = Field(default=3.0, gt=0.0)
    path_init: Literal["split", "independent"] = "split"
    score_batches: int = Field(default=1, ge=1)
    score_batch_size: int = Field(default=512, ge=1)
    synflow_rounds: int = Field(default=100, ge=1)
    grasp_temperature: float = Field(default=200.0, gt=0.0)
    reference: Literal["corrected", "official"] = "corrected"
    path_execution: Literal["auto", "loop", "packed"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _official_paths_independent(cls, data: Any) -> Any:
        """``reference: official`` resolves an unset ``path_init`` to ``independent`` (what the official code does)."""
        if isinstance(data, dict) and data.get("reference") == "official" and data.get("path_init") is None:
            return {**data, "path_init": "independent"}
        return data

    @model_validator(mode="after")
    def _official_fits(self) -> FissionOptions:
        if self.path_execution == "packed" and self.grouping != "channels":
            raise ValueError(
                "path_execution: packed needs grouping: channels (masked copies always loop); use auto or loop"
            )
        if self.reference != "official":
            return self
        if self.grouping == "channels":
            raise ValueError(
                "reference: official reproduces the official code's masked copies; "
                "use grouping balanced or bernoulli, not channels"
            )
        if self.path_init == "split":
            raise ValueError(
                "path_init: split contradicts reference: official "
                "(the official code initialises every path independently); drop path_init"
            )
        return self

    grasp_samples_per_class: int = Field(default=10, ge=1)


@METHODS.register("fission")
class Fission(Method):
    """Prune at init, group the surviving weights among N paths of a multi-exit network, distil among exits."""

    Options = FissionOptions
    summary = "one pruned network split into a multi-exit ensemble (Lee & Lee, 2024)"
    requires = NEEDS_STAGES

    @classmethod
    def check_config(cls, cfg: Config, options: FissionOptions) -> None:
        """N exits need N backbone stages; ``grouping: channels`` needs a residual family (built-in backbones)."""
        stages = cls.split_stage_count(cfg)
        if stages is not None:  # else checked when the backbone is built
            check_exits(stages, options.members)
        net = meta_backbone(cfg)
        if net is not None and options.grouping == "channels":
            thin_spec(net.spec, options.members, 1.0 - options.sparsity)

    # -- structure -----------------------------------------------------------------------------
    def reference(self, dropout: bool = False) -> Backbone:
        """The backbone that is scored and split; a pure function of ``train.seed`` (the RNG is left untouched).

        ``dropout=False`` builds it without dropout modules (for scoring); the weights are the same either way.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed)
            return self.backbone() if dropout else self.backbone(dropout=0.0)

    def build(self) -> Ensemble:
        o = self.options
        ref = self.reference(dropout=True)
        check_exits(len(ref.stages), o.members)
        if o.grouping == "channels":
            spec = thin_spec(ref.spec, o.members, 1.0 - o.sparsity)
            net = thin_fission([build_model(spec) for _ in range(o.members)], o.members)
            net.path_execution = o.path_execution
            return net
        official = o.reference == "official"
        if o.path_init == "split" and not official:
            nets = [ref] * o.members
        else:
            nets = [self.backbone() for _ in range(o.members)]
        return masked_fission(nets, o.members, enforce="gradient" if official else "forward")

    # -- the prune stage -----------------------------------------------------------------------
    def apply_fission(
        self,
        ensemble: FissionNetwork,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        image_shape: tuple[int, ...] = (3, 32, 32),
    ) -> dict[str, Any]:
        """Score the reference backbone, prune it and split it into ``ensemble`` (steps 1-2; deterministic).

        Returns:
            A report: the pruned backbone's per-layer densities, its non-zero count and the densities of the
            fission network's copies.
        """
        o = self.options
        official = o.reference == "official"
        device = next(ensemble.parameters()).device
        ref = self.reference().to(device).train()
        layers = scored_layers(ref)
        density = 1.0 - o.sparsity
        if o.grouping == "channels" and o.path_init == "independent":
            return {"criterion": None, "grouping": "channels", "transfer": False}
        scoring = xavier_scoring_copy(ref, self.cfg.train.seed + 29).train() if official else ref
        ranked = scored_layers(ref, shortcuts=official)  # official: the 1x1 shortcuts are ranked, never masked
        scores = compute_scores(
            o.criterion,
            scoring,
            ranked,
            batches=batches,
            density=density,
            generator=torch.Generator().manual_seed(self.cfg.train.seed + 17),
            scope=o.scope,
            image_shape=image_shape,
            synflow_rounds=o.synflow_rounds,
            grasp_temperature=o.grasp_temperature,
            snip_loss="logit_nll" if official else "cross_entropy",
        )
        report: dict[str, Any] = {"criterion": o.criterion, "grouping": o.grouping, "scope": o.scope}
        if o.grouping == "channels":
            selection = transfer_channels(ensemble, ref, scores, o.members, self.cfg.train.seed)
            report["channels"] = {space: [len(c) for c in chunks] for space, chunks in selection.items()}
            return report
        ranked_masks = masks_from_scores(scores, density, o.scope)
        masks = {name: ranked_masks[name] for name in layers}
        fission_masks = split_masks(masks, len(ref.stages), o.members, o.grouping, self.cfg.train.seed)
        set_masks(ensemble, fission_masks)
        report["backbone_density"] = {n: float(m.float().mean()) for n, m in ranked_masks.items()}
        report["backbone_nonzero"] = int(sum(int(m.sum()) for m in masks.values()))
        report["backbone_weights"] = int(sum(m.numel() for m in masks.values()))
        if official:  # the weights stay dense in the forward pass: report what each copy's mask trains
            report["reference"] = "official"
            report["fission_density"] = {n: float(m.float().mean()) for n, m in get_masks(ensemble).items()}
        else:
            report["fission_density"] = {n: r["density"] for n, r in density_report(ensemble).items()}
        return report

    def score_data(self, sample_batches, train_labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches SNIP / GraSP score on (seeded by ``train.seed``).

        SNIP: ``score_batches`` shuffled batches of ``score_batch_size``. GraSP: ``score_batches`` class-balanced
        batches of ``grasp_samples_per_class`` examples of every class each (Wang, Zhang & Grosse, ICLR 2020;
        :func:`ensemblekit.pruning.score_data.class_balanced_indices`).

        Args:
            sample_batches: Draws training batches (:attr:`~ensemblekit.training.stage.StageContext.sample_batches`).
            train_labels: Labels of the training set (for the class-balanced GraSP batches).
        """
        o, seed = self.options, self.cfg.train.seed + 7
        if o.criterion != "grasp":
            return sample_batches(o.score_batches, seed, batch_size=o.score_batch_size)
        batches = []
        for k in range(o.score_batches):
            rows = class_balanced_indices(
                train_labels, o.grasp_samples_per_class, torch.Generator().manual_seed(seed + k)
            )
            batches += sample_batches(1, seed + k, batch_size=len(rows), indices=rows)
        return batches

    def _prune_hook(self, ctx: StageContext) -> None:
        o, meter, image_shape = self.options, ctx.cost_meter, ctx.image_shape
        with meter.timer():
            batches = []
            if o.criterion in DATA_CRITERIA and not (o.grouping == "channels" and o.path_init == "independent"):
                batches = self.score_data(ctx.sample_batches, ctx.train_labels)
            report = self.apply_fission(ctx.ensemble, batches, image_shape)
            ctx.sync_buffers()  # DDP: every rank takes rank 0's masks (its batches differ per rank)
        images = sum(len(x) for x, _ in batches)
        steps = {"snip": 1, "grasp": 3}.get(o.criterion, 0)
        for _ in range(steps):  # SNIP: one forward+backward per image; GraSP: g, then H g (about two more)
            meter.add_step(images, meter.single_forward_flops)
        if o.criterion == "synflow" and report.get("criterion"):
            meter.add_step(o.synflow_rounds, meter.single_forward_flops)
        report.update(self.pruning_report_costs(ctx.ensemble, image_shape))
        ctx.log_event("pruning", **report)

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        o = self.options
        loss = functools.partial(fission_loss, temperature=o.temperature, distill=o.loss == "kd")
        prune = Stage(name="prune", module=ensemble, epochs=0, hooks=StageHooks(at_end=[self._prune_hook]))
        train = stage_from_train("train", ensemble, self.cfg.train, data_seed=self.member_seed(0), loss=loss)
        return [prune, train]

    # -- costs ---------------------------------------------------------------------------------
    def sparse_nets(self, ensemble: Ensemble) -> list[nn.Module]:
        """The fission network (one module holding every exit): its masked weights are what sparse costs skip."""
        return [ensemble]

    def _dense_costs(self, ensemble: Ensemble, shape: tuple[int, ...]) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            single = inference_flops(self.single_backbone(), shape)
        return {
            "inference_flops": inference_flops(ensemble, shape),
            "single_inference_flops": single,
            "params": count_parameters(ensemble)["params"],
        }

    def record_extras(self, ensemble: Ensemble, ctx: RecordContext) -> dict[str, Any]:
        """The sparse costs (:mod:`ensemblekit.metrics.sparse_costs`) of the pruned network, under ``costs``.

        The ``train`` stage runs the pruned network, so with zero-skipping kernels its FLOPs scale by
        f = inference_flops_sparse / inference_flops (forward and both backward products skip the same zero
        weights); the ``prune`` stage scores the dense backbone (f = 1).
        """
        sparse = sparse_model_costs([ensemble], ctx.costs, (1, *ctx.image_shape))
        fraction = sparse["inference_flops_sparse"] / ctx.costs["inference_flops"]
        sparse[SPARSE_TRAIN_KEY] = sparse_epoch_equivalents(ctx.costs["stages"], {"train": fraction})
        return {"costs": sparse}

    def estimate_sparsity(self, ensemble: Ensemble, image_shape: tuple[int, ...]) -> str:
        """Run the prune stage on a freshly built ensemble for ``describe``; SNIP/GraSP score random batches.

        Returns:
            How exact the resulting sparse costs are: data-free criteria give the run's own masks; SNIP and GraSP
            score ``score_batches`` batches of random images (at most :data:`DESCRIBE_BATCH` each) and random
            labels instead of the training data, so the per-layer densities (hence the FLOPs) are an estimate.
        """
        o = self.options
        if o.grouping == "channels":
            return "exact: structured paths are thin dense networks (no zero weights)"
        batches = []
        if o.criterion in DATA_CRITERIA:
            gen = torch.Generator().manual_seed(self.cfg.train.seed + 7)
            size = min(o.score_batch_size, DESCRIBE_BATCH)
            for _ in range(o.score_batches):
                images = torch.randn((size, *image_shape), generator=gen)
                batches.append((images, torch.randint(self.num_classes, (size,), generator=gen)))
        self.apply_fission(ensemble, batches, image_shape)
        if not batches:
            return f"exact: {o.criterion} pruning needs no data (the masks a run starts from)"
        return (
            f"estimate: {o.criterion} pruning on {len(batches)} batch(es) of {size} random images "
            f"{tuple(image_shape)} (a run scores its training data)"
        )

    def pruning_report_costs(self, ensemble: Ensemble, image_shape: tuple[int, ...]) -> dict[str, Any]:
        """The pruning event's costs: the sparse model costs and ``prunable_nonzero`` (non-zero scored weights)."""
        shape = (1, *image_shape)
        table = dict(ensemble.named_modules())
        nonzero = sum(int((table[n].weight.detach() != 0).sum()) for n in scored_layers(ensemble))
        sparse = sparse_model_costs([ensemble], self._dense_costs(ensemble, shape), shape)
        return {**sparse, "prunable_nonzero": nonzero}
