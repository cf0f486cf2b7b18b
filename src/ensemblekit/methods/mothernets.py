"""``mothernets``: train one MotherNet per cluster of members, hatch the members from it, train them further.

Wasay, Hentschel, Liao, Chen & Idreos, "MotherNets: Rapid Deep Ensemble Learning", MLSys 2020 (arXiv
1809.04270); docs/methods/mothernets.md. For an ensemble of (possibly all different) architectures:

1. cluster the members into ``clusters`` = g groups of compatible architectures, greedily merging the pair whose
   merged MotherNet keeps the largest share of its members' parameters
   (:func:`~ensemblekit.models.transforms.cluster_architectures`);
2. the MotherNet of a cluster takes, per position, the minimum number of layers/blocks, width and kernel size
   over its members (:func:`~ensemblekit.models.transforms.mother_spec`);
3. train each MotherNet (stage ``mother_k``);
4. at the end of that stage, hatch every member of the cluster by function-preserving Net2Net transforms
   (:func:`~ensemblekit.models.transforms.hatch`), then add noise N(0, (noise · std(W))²) to every conv/linear
   weight W to break the symmetry of replicated units (:func:`~ensemblekit.models.transforms.perturb_`);
5. train every hatched member with its own data order (stages ``member_i``);
6. predict with the mean of the members' softmax probabilities.

Every MotherNet and member exists from ``build()`` on (the MotherNets are checkpointed as ``mothers``); hatching
only writes values, deterministically (maps and noise come from a generator seeded by ``train.seed`` and the
member index), so a re-run of the hook after a resume gives the same weights.

Epoch budget (``stop: fixed``, the default): ``train.epochs`` = E is the per-member budget of training from
scratch; by default the MotherNet gets round(``mother_fraction`` · E) epochs and every hatched member the rest
(0.8: 40 + 10 of 50 epochs). ``stop: plateau`` trains as the paper does (steps 4 and 7: "until
convergence"): the MotherNet and then every hatched member each train until their validation accuracy has not
improved by more than ``min_delta`` for ``patience`` epochs, at most ``max_epochs`` each
(:mod:`ensemblekit.training.stopping`; needs ``data.val_size`` > 0).
Training cost = Σ_clusters T(MotherNet) + Σ_members T(member), in epochs of the largest member.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ensemblekit.config import Config
from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.errors import config_error
from ensemblekit.methods.base import METHODS
from ensemblekit.methods.heterogeneous import HeterogeneousMembers, HeterogeneousOptions
from ensemblekit.metrics import inference_flops
from ensemblekit.models import build_model
from ensemblekit.models.transforms import cluster_architectures, hatch, mother_spec, perturb_, refine_identity_bns
from ensemblekit.training.stage import Stage, StageContext, StageHooks, optim_from_train, stage_from_train
from ensemblekit.training.stopping import StopSpec


class MotherNetsOptions(HeterogeneousOptions):
    """Options of ``mothernets``.

    Attributes:
        architectures: Member architectures (see :mod:`ensemblekit.methods.heterogeneous`).
        clusters: g, the number of MotherNets (1 = fastest .. M = every member is its own MotherNet).
        mother_fraction: Share of ``train.epochs`` given to the MotherNet when ``mother_epochs`` is not set.
        mother_epochs: Epochs of every MotherNet (default round(mother_fraction · train.epochs)).
        member_epochs: Epochs of every hatched member (default train.epochs − mother_epochs).
        member_lr: Peak learning rate of the hatched members' stages (default ``train.lr``).
        noise: λ, the scale of the post-hatching noise: every conv/linear weight tensor W of a hatched member gets
            W ← W + N(0, (λ·std(W))²) (0 = none). Wasay et al. (MotherNets, MLSys 2020) add "random noise
            perturbation after hatching" to break the symmetry of the units Net2Net replicates (which otherwise
            get identical gradients) and to make the members diverse; the paper gives no distribution or scale
            (our default λ = 0.01, range 0.01–0.05; ablation: docs/methods/mothernets.md).
        bn_batches: Training batches used to set the statistics of the BNs of identity layers added to VGG
            members (Net2Net; forward-only, charged to the cost); 0 keeps mean 0 / variance 1.
        from_scratch: Baseline switch: no MotherNet; every member trains ``train.epochs`` from its own random
            initialisation (the "same members trained from scratch" of the paper's comparisons).
        stop: ``fixed`` (the epoch split above) or ``plateau``: every MotherNet and member stage trains until its
            validation accuracy has not improved by more than ``min_delta`` for ``patience`` epochs, at most
            ``max_epochs`` (the paper's "until convergence"; needs ``data.val_size`` > 0).
        patience: ``plateau``: epochs without improvement that end a stage.
        min_delta: ``plateau``: the smallest gain of validation accuracy that counts as an improvement.
        max_epochs: ``plateau``: the cap of every stage (default ``train.epochs``; the ``train`` schedule is laid
            out over the cap).
    """

    clusters: int = Field(default=1, ge=1)
    mother_fraction: float = Field(default=0.8, ge=0.0, le=1.0)
    mother_epochs: int | None = Field(default=None, ge=0)
    member_epochs: int | None = Field(default=None, ge=0)
    member_lr: float | None = Field(default=None, gt=0)
    noise: float = Field(default=0.01, ge=0.0)
    bn_batches: int = Field(default=4, ge=0)
    from_scratch: bool = False
    stop: Literal["fixed", "plateau"] = "fixed"
    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)
    max_epochs: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _clusters_fit(self) -> MotherNetsOptions:
        if self.clusters > self.members:
            raise ValueError(f"clusters: {self.clusters} cannot exceed the number of members ({self.members})")
        if self.stop == "plateau" and (self.mother_epochs is not None or self.member_epochs is not None):
            raise ValueError("stop: mother_epochs/member_epochs apply to stop: fixed; with plateau use max_epochs")
        return self


@METHODS.register("mothernets")
class MotherNets(HeterogeneousMembers):
    """MotherNets (Wasay et al., MLSys 2020): shared MotherNet epochs, Net2Net hatching, member training."""

    Options = MotherNetsOptions
    summary = "MotherNets: hatch (heterogeneous) members from per-cluster MotherNets (Wasay et al., 2020)"
    requires = "it grows members from an architecture spec (a built-in model's spec), which a custom module lacks"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clusters: list[list[int]] = []
        self.mothers = nn.ModuleList()

    @classmethod
    def check_config(cls, cfg: Config, options: MotherNetsOptions) -> None:
        """An ensemblekit backbone (members grow from its spec); ``stop: plateau`` needs a validation split."""
        cls.refuse_custom_model(cfg)
        if options.stop == "plateau" and cfg.data.val_size == 0:
            raise config_error("method.stop", "plateau needs a validation split: set data.val_size > 0")

    def build(self) -> Ensemble:
        members = self.member_backbones()
        self.clusters = []
        self.mothers = nn.ModuleList()
        if not self.options.from_scratch:
            specs = [m.spec for m in members]
            self.clusters = cluster_architectures(specs, self.options.clusters)
            for cluster in self.clusters:
                self.mothers.append(build_model(mother_spec([specs[i] for i in cluster])))
        return MemberEnsemble(members)

    def state_modules(self, ensemble: Ensemble) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"ensemble": ensemble}
        if len(self.mothers):
            modules["mothers"] = self.mothers
        return modules

    def epochs(self) -> tuple[int, int]:
        """(MotherNet epochs, hatched-member epochs) of the recipe; with ``stop: plateau`` both are caps."""
        total, o = self.cfg.train.epochs, self.options
        if o.stop == "plateau":
            cap = o.max_epochs if o.max_epochs is not None else total
            return (0 if o.from_scratch else cap), cap
        if o.from_scratch:
            return 0, total
        mother = o.mother_epochs if o.mother_epochs is not None else round(o.mother_fraction * total)
        member = o.member_epochs if o.member_epochs is not None else max(0, total - mother)
        return mother, member

    def hatch_seed(self, i: int) -> int:
        """Seed of member i's widening maps and noise."""
        return self.cfg.train.seed * 1000 + 700 + i

    def stop_spec(self) -> StopSpec | None:
        """The plateau stopping of every stage (``stop: plateau``), else None."""
        o = self.options
        return StopSpec(patience=o.patience, min_delta=o.min_delta) if o.stop == "plateau" else None

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        train = self.cfg.train
        mother_epochs, member_epochs = self.epochs()
        stop = self.stop_spec()
        stages = []
        for k, mother in enumerate(self.mothers):
            hook = functools.partial(self._hatch_cluster, k, ensemble)
            stages.append(
                stage_from_train(
                    f"mother_{k}",
                    mother,
                    train,
                    epochs=mother_epochs,
                    data_seed=train.seed * 1000 + 500 + k,
                    hooks=StageHooks(at_end=[hook]),
                    stop=stop,
                    needs=(),
                )
            )
        optim = optim_from_train(train)
        if self.options.member_lr is not None and not self.options.from_scratch:
            optim.lr = self.options.member_lr
        for i, member in enumerate(ensemble.members):
            stages.append(
                stage_from_train(
                    f"member_{i}",
                    member,
                    train,
                    epochs=member_epochs,
                    optim=optim,
                    data_seed=self.member_seed(i),
                    stop=stop,
                    needs=tuple(f"mother_{k}" for k, cluster in enumerate(self.clusters) if i in cluster),
                )
            )
        return stages

    def _hatch_cluster(self, k: int, ensemble: MemberEnsemble, ctx: StageContext) -> None:
        """At the end of ``mother_k``: hatch, refine identity BNs, add noise, for every member of cluster k."""
        mother = self.mothers[k]
        for i in self.clusters[k]:
            member = ensemble.members[i]
            gen = torch.Generator().manual_seed(self.hatch_seed(i))
            new_bns = hatch(mother, member, gen)
            if new_bns and self.options.bn_batches and ctx.cost_meter is not None:  # inside the engine
                batches = [x for x, _ in ctx.sample_batches(self.options.bn_batches, self.hatch_seed(i))]
                refine_identity_bns(member, new_bns, batches)
                flops = inference_flops(member, (1, *batches[0].shape[1:]))
                ctx.cost_meter.add_step(sum(len(x) for x in batches) * ctx.world_size, flops, backward=False)
            perturb_(member, self.options.noise, gen)
