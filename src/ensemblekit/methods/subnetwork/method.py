"""``subnetwork``: Neural Subnetwork Ensembles (Whitaker, dissertation; Prune and Tune, SMD, SSA, Neural Partitioning).

Recipe (Whitaker, "Neural Subnetwork Ensembles", arXiv 2311.14101, 2023; docs/methods/subnetwork.md):

1. ``parent``: train the parent θ_P with the config's ``train`` section (data order of ``single``), or train 0
   epochs and load it in the stage's end hook from ``parent_run`` / ``parent_weights``.
2. For every child i: ``child_i_make`` (0 epochs; its end hook copies θ_P into child i and perturbs it:
   sparse Gaussian mutation, a pruning mask, or the first SSA mask; optional BN refresh), then ``child_i``: tune
   ``child_epochs`` epochs with its own data order (seed ``1000·train.seed + 1 + i``) and by default the
   one-cycle schedule of Prune and Tune. SSA children redraw their mask after every step.
3. ``select`` (only when ``candidates > members``): keep the top-``members`` children by validation accuracy
   or NLL (never test data).

Children's randomness is a function of (``train.seed``, child index, or pair/partition group), never of how many
children exist, so ``ensemblekit grow`` adds children identical to those a larger run would have trained.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ensemblekit.config import Config, config_to_dict
from ensemblekit.errors import config_error
from ensemblekit.methods.base import METHODS, Method, RecordContext, RunReader
from ensemblekit.methods.subnetwork import anneal, noise
from ensemblekit.methods.subnetwork.ensemble import SubnetworkEnsemble
from ensemblekit.methods.subnetwork.options import MASKED_FAMILIES, SubnetworkOptions, group_size
from ensemblekit.methods.subnetwork.parent import load_plain_state, parent_loader
from ensemblekit.metrics import ensemble_metrics, inference_flops
from ensemblekit.metrics.sparse_costs import (
    SPARSE_TRAIN_KEY,
    skipped_flops,
    sparse_epoch_equivalents,
    sparse_model_costs,
)
from ensemblekit.pruning import add_masks, prunable_layers, set_masks
from ensemblekit.pruning import subnetwork_masks as sm
from ensemblekit.training.stage import ScheduleSpec, Stage, StageContext, StageHooks, optim_from_train, stage_from_train


@METHODS.register("subnetwork")
class Subnetwork(Method):
    """Children sampled from one parent, perturbed (noise, masks or annealed masks) and briefly tuned."""

    Options = SubnetworkOptions
    summary = "Neural Subnetwork Ensembles: perturbed, tuned children of one parent (Whitaker, 2023)"

    def __init__(self, cfg, num_classes: int, train_size: int, runs: RunReader | None = None) -> None:
        super().__init__(cfg, num_classes, train_size, runs)
        o: SubnetworkOptions = self.options  # type: ignore[assignment]
        self.candidates = o.candidates or o.members
        self._targets: dict[int, dict[str, torch.Tensor]] = {}
        self._warned_identical = False

    @classmethod
    def check_config(cls, cfg: Config, options: SubnetworkOptions) -> None:
        """Selecting the top ``members`` of more ``candidates`` needs a validation split (never test data)."""
        if (options.candidates or options.members) > options.members and cfg.data.val_size == 0:
            raise config_error(
                "method.candidates", "selecting the top members needs a validation split: set data.val_size > 0"
            )

    # ------------------------------------------------------------------ structure
    @property
    def opts(self) -> SubnetworkOptions:
        return self.options  # type: ignore[return-value]

    @property
    def group_size(self) -> int:
        """Children sharing one random draw: 2 for anti-random pairs, k for partitions, else 1."""
        return group_size(self.opts, self.candidates)

    def build(self) -> SubnetworkEnsemble:
        o = self.opts
        parent = self.backbone()
        children = [self.backbone() for _ in range(self.candidates)]
        if o.family in MASKED_FAMILIES:
            for child in children:
                add_masks(child)
        return SubnetworkEnsemble(parent, children, o.members, include_parent=o.include_parent, combine=o.combine)

    # ------------------------------------------------------------------ recipe
    def recipe(self, ensemble: nn.Module) -> list[Stage]:
        o, train = self.opts, self.cfg.train
        loads = o.parent_run is not None or o.parent_weights is not None
        parent = stage_from_train(
            "parent",
            ensemble.parent,
            train,
            epochs=0 if loads else train.epochs,
            data_seed=self.member_seed(0),
            hooks=StageHooks(
                at_end=[
                    parent_loader(
                        self.runs if o.parent_run else None,
                        o.parent_run,
                        o.parent_weights,
                        o.charge_parent,
                        self._model_cfg(),
                        "parent",
                    )
                ]
                if loads
                else []
            ),
        )
        stages = [parent, *self.child_stages(ensemble, range(self.candidates))]
        if self.candidates > o.members:
            stages.append(Stage("select", ensemble, 0, hooks=StageHooks(at_end=[self._select])))
        return stages

    def _model_cfg(self) -> dict[str, Any]:
        return config_to_dict(self.cfg)["model"]

    def child_stages(self, ensemble: nn.Module, indices) -> list[Stage]:
        """``child_i_make`` and ``child_i`` for every index (``ensemblekit grow`` uses it for new children)."""
        o, train = self.opts, self.cfg.train
        optim = optim_from_train(train)
        if o.child_lr is not None:
            optim.lr = o.child_lr
        if o.child_schedule == "onecycle":
            schedule = ScheduleSpec(name="onecycle", pct_start=0.1, div_factor=100.0, final_div_factor=1.0e4)
        else:
            schedule = ScheduleSpec(name=o.child_schedule)
        stages = []
        for i in indices:
            child = ensemble.child_nets[i]
            tune = stage_from_train(f"child_{i}", child, train, epochs=o.child_epochs, optim=optim, schedule=schedule)
            tune.data_seed = self.member_seed(1 + i)
            make_hooks = StageHooks(at_end=[self._maker(ensemble, i, tune)])
            make = Stage(f"child_{i}_make", child, 0, hooks=make_hooks, hoist=True, needs=("parent",))  # child i alone
            tune.needs = (make.name,)
            if o.family == "stochastic":
                tune.hooks = StageHooks(after_step=[self._annealer(i, tune)], at_end=[self._finish_annealing(i)])
            stages += [make, tune]
        return stages

    # ------------------------------------------------------------------ seeds
    def _seed(self, kind: int, index: int) -> int:
        return (self.cfg.train.seed * 1_000_003 + kind * 100_003 + index) % (2**62)

    def _generator(self, kind: int, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed(kind, index))

    # ------------------------------------------------------------------ hooks
    def child_masks(self, i: int, ensemble: SubnetworkEnsemble) -> dict[str, torch.Tensor]:
        """The (target) mask of child ``i``: a pure function of the seed, the index and the parent's weights."""
        if i in self._targets:
            return self._targets[i]
        o = self.opts
        child = ensemble.child_nets[i]
        shapes = {name: tuple(m.weight.shape) for name, m in prunable_layers(child).items()}
        sparsity = 0.5 if o.sparsity is None else o.sparsity
        if o.masks == "random":
            masks = sm.random_masks(shapes, sparsity, self._generator(1, i))
        elif o.masks == "neurons":
            masks = sm.neuron_masks(shapes, sparsity, self._generator(1, i))
        elif o.masks == "magnitude":
            parent = dict(ensemble.parent.named_modules())
            masks = sm.magnitude_masks({n: parent[n].weight for n in shapes}, sparsity)
        elif o.masks == "anti_random":
            masks = sm.anti_random_pair(shapes, self._generator(2, i // 2))[i % 2]
        elif o.masks == "anti_random_neurons":
            masks = sm.anti_random_neuron_pair(shapes, self._generator(8, i // 2))[i % 2]
        else:
            k = self.group_size
            masks = sm.partition_masks(shapes, k, self._generator(3, i // k))[i % k]
        self._targets[i] = masks
        if o.family == "sparse":
            self._warn_if_identical(i, masks)
        return masks

    def _warn_if_identical(self, i: int, masks: dict[str, torch.Tensor]) -> None:
        """Warn (once per run) when child ``i``'s mask equals an earlier child's: they differ only in data order.

        ``magnitude`` masks depend only on the parent's weights, so all its children get the same mask.
        """
        if self._warned_identical:
            return
        for j, other in self._targets.items():
            if j != i and other.keys() == masks.keys() and all(torch.equal(other[n], masks[n]) for n in masks):
                self._warned_identical = True
                why = " (magnitude masks depend only on the parent)" if self.opts.masks == "magnitude" else ""
                warnings.warn(
                    f"subnetwork: children {j} and {i} have identical {self.opts.masks} masks{why}; they differ only "
                    "in their tuning data order (use masks: random/anti_random, or family: stochastic)",
                    UserWarning,
                    stacklevel=2,
                )
                return

    def _maker(self, ensemble: SubnetworkEnsemble, i: int, tune: Stage):
        o = self.opts

        def make(ctx: StageContext) -> None:
            child = ensemble.child_nets[i]
            load_plain_state(child, ensemble.parent.state_dict(), "network")
            if o.family == "noisy":
                self._mutate(child, i)
            elif o.family == "sparse":
                set_masks(child, self.child_masks(i, ensemble))
            else:
                steps = self._anneal_steps(ctx.steps_per_epoch, tune)
                set_masks(child, anneal.sample_masks(self.child_masks(i, ensemble), 0, steps, *self._anneal_args(i)))
            if o.bn_refresh_batches > 0:
                batches = ctx.sample_batches(o.bn_refresh_batches, seed=self._seed(5, i))
                images = noise.refresh_bn(child, batches)
                ctx.cost_meter.add_step(images, _child_flops(child, ctx.image_shape), backward=False)

        return make

    def _mutate(self, child: nn.Module, i: int) -> None:
        o = self.opts
        tensors = noise.noise_targets(child, o.noise_scope)
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        if o.noise_decomposition:
            k = self.group_size
            supports = sm.partition_masks(shapes, k, self._generator(4, i // k))[i % k]
        elif o.noise_density == 0.0:
            return
        else:
            supports = (
                sm.random_masks(shapes, 1.0 - o.noise_density, self._generator(4, i))
                if o.noise_density < 1
                else {n: torch.ones(s) for n, s in shapes.items()}
            )
        noise.mutate(tensors, o.noise_sigma, supports, self._generator(6, i))

    def _anneal_args(self, i: int) -> tuple[float, str, int]:
        o = self.opts
        return o.anneal_p0, o.anneal_schedule, self._seed(7, i)

    def _anneal_steps(self, steps_per_epoch: Callable[[Stage], int], tune: Stage) -> int:
        """T_a = round(anneal_fraction · steps of the tuning stage)."""
        return round(self.opts.anneal_fraction * steps_per_epoch(tune) * tune.epochs)

    def _annealer(self, i: int, tune: Stage):
        cache: dict = {}

        def resample(ctx: StageContext) -> None:
            ensemble = ctx.ensemble
            if "steps" not in cache:
                cache["steps"] = self._anneal_steps(ctx.steps_per_epoch, tune)
            steps = cache["steps"]
            if ctx.global_step > steps:
                return  # the target mask has been in place since step T_a
            if "targets" not in cache:  # the target masks on the child's device, copied once
                device = next(ctx.module.parameters()).device
                cache["targets"] = {n: t.to(device) for n, t in self.child_masks(i, ensemble).items()}
            masks = anneal.sample_masks(cache["targets"], ctx.global_step, steps, *self._anneal_args(i))
            set_masks(ctx.module, masks)

        return resample

    def _finish_annealing(self, i: int):
        def finish(ctx: StageContext) -> None:
            set_masks(ctx.module, self.child_masks(i, ctx.ensemble))

        return finish

    def _select(self, ctx: StageContext) -> None:
        ensemble: SubnetworkEnsemble = ctx.ensemble  # type: ignore[assignment]
        o = self.opts
        scores = []
        for child in ensemble.child_nets:
            probs, labels = ctx.member_probs(child, "val")
            m = ensemble_metrics(probs, labels)
            scores.append(m["accuracy"] if o.select_by == "val_accuracy" else -m["nll"])
            ctx.cost_meter.add_step(len(labels), _child_flops(child, ctx.image_shape), backward=False)
        ranked = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[: o.members]
        ensemble.selected.copy_(torch.tensor(sorted(ranked), dtype=torch.long))
        signed = [s if o.select_by == "val_accuracy" else -s for s in scores]
        ensemble.val_scores.copy_(torch.tensor(signed, dtype=torch.float64))

    # ------------------------------------------------------------------ reporting
    def mean_density_factor(
        self, i: int, steps_per_epoch: Callable[[Stage], int], ensemble: SubnetworkEnsemble
    ) -> float:
        """Mean over tuning steps of the fraction of non-target weights that were sampled (SSA); else 0."""
        if self.opts.family != "stochastic":
            return 0.0
        tune = next(s for s in self.child_stages(ensemble, [i]) if s.name == f"child_{i}")
        total = steps_per_epoch(tune) * tune.epochs
        if total == 0:
            return 0.0
        steps = self._anneal_steps(steps_per_epoch, tune)
        p0, schedule, _ = self._anneal_args(i)
        return sum(anneal.keep_probability(t, steps, p0, schedule) for t in range(total)) / total

    def sparse_nets(self, ensemble: SubnetworkEnsemble) -> list[nn.Module]:
        """The member networks: their masked weights are what the sparse costs skip."""
        return ensemble.member_nets()

    def estimate_sparsity(self, ensemble: SubnetworkEnsemble, image_shape: tuple[int, ...]) -> str:
        """Give the member children their (target) masks for ``describe``.

        Every mask family keeps exactly round((1 − s)·n_l) weights of layer l (or whole rows for ``neurons``), so
        the sparse FLOPs of the untrained children are those of the trained ones (``magnitude`` picks other weights
        of the untrained parent, in the same numbers). Noisy children are dense.
        """
        o = self.opts
        if o.family not in MASKED_FAMILIES:
            return "exact: noisy children are dense"
        for i in ensemble.selected.tolist():
            set_masks(ensemble.child_nets[i], self.child_masks(i, ensemble))
        return f"exact: the children's {o.masks} masks (layer-wise counts)"

    def child_sparse_fraction(
        self, i: int, steps_per_epoch: Callable[[Stage], int], ensemble: SubnetworkEnsemble, shape: tuple[int, ...]
    ) -> float:
        """The sparse fraction f of child i's tuning stage: 1 − (1 − ē)·Σ_l (F_l − F_l^nz) / F_child.

        ē is the mean fraction of non-target weights sampled during tuning (SSA, :meth:`mean_density_factor`;
        0 otherwise), so a 50 %-sparse child epoch counts 0.5 (Whitaker's survey accounting).
        """
        child = ensemble.child_nets[i]
        extra = self.mean_density_factor(i, steps_per_epoch, ensemble)
        return 1.0 - (1.0 - extra) * skipped_flops(child, shape) / float(inference_flops(child, shape))

    def record_extras(self, ensemble: SubnetworkEnsemble, ctx: RecordContext) -> dict[str, Any]:
        """The sparse costs, and a ``subnetwork`` section: the parent's own test metrics, the selection, densities.

        ``costs``: :func:`~ensemblekit.metrics.sparse_costs.sparse_model_costs` of the member children and
        ``train_epoch_equivalents_sparse`` with every tuning stage scaled by :meth:`child_sparse_fraction`.
        """
        costs = ctx.costs
        shape = (1, *ctx.image_shape)
        sparse = sparse_model_costs(self.sparse_nets(ensemble), costs, shape)
        tuned = [n for n in costs["stages"] if n.startswith("child_") and not n.endswith("_make")]
        fractions = {
            n: self.child_sparse_fraction(int(n.split("_")[1]), ctx.steps_per_epoch, ensemble, shape) for n in tuned
        }
        sparse[SPARSE_TRAIN_KEY] = sparse_epoch_equivalents(costs["stages"], fractions)
        parent_probs, labels = ctx.member_probs(ensemble.parent, "test")
        parent = ensemble_metrics(parent_probs, labels)
        o = self.opts
        section = {
            "family": o.family,
            "masks": o.masks if o.family in MASKED_FAMILIES else None,
            "candidates": self.candidates,
            "group_size": self.group_size,
            "selected": ensemble.selected.tolist(),
            "val_scores": [None if math.isnan(v) else v for v in ensemble.val_scores.tolist()],
            "include_parent": o.include_parent,
            "parent_source": "run" if o.parent_run else ("weights" if o.parent_weights else "trained"),
            "parent_test": {k: parent[k] for k in ("accuracy", "nll", "ece", "brier")},
            "child_density": [_density(net) for net in (ensemble.child_nets[i] for i in ensemble.selected.tolist())],
        }
        return {"costs": sparse, "subnetwork": section}


def _child_flops(child: nn.Module, image_shape: tuple[int, ...]) -> float:
    return float(inference_flops(child, (1, *image_shape)))


def _density(net: nn.Module) -> float:
    dens = [(m.weight != 0).sum().item() / m.weight.numel() for m in prunable_layers(net).values()]
    sizes = [m.weight.numel() for m in prunable_layers(net).values()]
    return sum(d * s for d, s in zip(dens, sizes, strict=True)) / max(1, sum(sizes))
