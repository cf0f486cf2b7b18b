"""``distillation``: members trained against a frozen teacher's soft predictions (Hinton, Vinyals & Dean, 2015).

The knowledge-distillation baseline of MotherNets (Wasay et al., MLSys 2020; docs/methods/distillation.md): a teacher
(a single network or a whole ensemble) is trained first, then every ensemble member (student) is trained on

    L = (1 − alpha) · CE(y, softmax(z_s)) + alpha · T² · KL(p_t^T ‖ softmax(z_s / T)),

with the teacher's tempered soft predictions p_t^T: for a teacher ensemble combining probabilities,
p_t^T = (1/M_t) Σ_i softmax(z_i / T); combining logits, softmax((1/M_t) Σ_i z_i / T). The T² factor keeps the
soft-target gradients on the scale of the hard-label ones (Hinton et al., section 2).

The teacher is either the ensemble of a finished run (``teacher_run``: rebuilt from its ``config.yaml`` and
``model.pt``) or a network trained here in a first stage ``teacher`` (the ``teacher`` architecture, default the
config's ``model``). During the students' stages it runs in eval mode under ``no_grad`` on every (augmented)
training batch; its forward FLOPs are charged to the training cost (forward only, 1×). A ``teacher_run``'s own
recorded training cost (``metrics.json``) is charged to stage ``teacher`` unless ``charge_teacher: false``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ensemblekit.config import Config, MethodConfig
from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.errors import UserError
from ensemblekit.methods.base import METHODS, RunReader
from ensemblekit.methods.heterogeneous import ArchitectureEntry, HeterogeneousMembers, HeterogeneousOptions
from ensemblekit.models import create_model
from ensemblekit.training.stage import Stage, StageContext, StageHooks, stage_from_train


class DistillationOptions(HeterogeneousOptions):
    """Options of ``distillation``.

    Attributes:
        architectures: Student architectures (see :mod:`ensemblekit.methods.heterogeneous`).
        teacher_run: Directory of a finished run whose ensemble is the teacher (``None``: train one here).
        teacher: Architecture of the teacher trained here (default: the config's ``model``).
        teacher_epochs: Epochs of the teacher trained here (default ``train.epochs``).
        alpha: Weight of the distillation term (1 − alpha weighs the hard-label cross-entropy).
        temperature: T of the soft targets.
        charge_teacher: Add a ``teacher_run``'s recorded training cost to this run's cost.
    """

    teacher_run: str | None = None
    teacher: ArchitectureEntry | None = None
    teacher_epochs: int | None = Field(default=None, ge=0)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    temperature: float = Field(default=4.0, gt=0.0)
    charge_teacher: bool = True

    @model_validator(mode="after")
    def _teacher_here_or_run(self) -> DistillationOptions:
        if self.teacher_run is not None and (self.teacher is not None or self.teacher_epochs is not None):
            raise ValueError("teacher/teacher_epochs: apply only without teacher_run")
        return self


def soft_targets(teacher_logits: torch.Tensor, temperature: float, combine: str = "probs") -> torch.Tensor:
    """Tempered teacher probabilities ``[B, C]`` from logits ``[B, C]`` or ``[M, B, C]`` (see module docstring)."""
    z = teacher_logits.float()
    if z.dim() == 2:
        z = z.unsqueeze(0)
    if combine == "logits":
        return (z.mean(0) / temperature).softmax(-1)
    return (z / temperature).softmax(-1).mean(0)


def distillation_loss(
    student_logits: torch.Tensor, targets: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """(1 − alpha) · CE(y, z_s) + alpha · T² · KL(p_t ‖ softmax(z_s / T)), batch-mean (Hinton et al., 2015)."""
    z = student_logits.float()
    hard = F.cross_entropy(z, targets)
    soft = F.kl_div(F.log_softmax(z / temperature, dim=-1), teacher_probs, reduction="batchmean")
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


class TeacherSignal:
    """Runs the frozen teacher on each training batch (``prepare_batch``) and serves the loss and its cost.

    The engine calls ``prepare(x, y)`` before the student's forward, then ``loss(outputs, y)``; the teacher's
    probabilities of the current batch are kept in between. The engine charges the teacher's forward FLOPs (the
    work of ``prepare_batch``, forward only) to the training cost with the student's forward and backward.
    """

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.combine = getattr(teacher, "combine", "probs")
        self.probs: torch.Tensor | None = None

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.teacher.eval()
        with torch.no_grad():
            self.probs = soft_targets(self.teacher(x), self.temperature, self.combine)
        return x, y

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.probs is None or len(self.probs) != len(outputs):
            raise RuntimeError("the teacher's predictions do not belong to this batch")
        return distillation_loss(outputs, targets, self.probs, self.temperature, self.alpha)


@METHODS.register("distillation")
class Distillation(HeterogeneousMembers):
    """Knowledge distillation from a teacher network or ensemble into each member (Hinton et al., 2015)."""

    Options = DistillationOptions
    summary = "members distilled from a teacher network/ensemble (Hinton et al., 2015)"

    @classmethod
    def inference_config(cls, cfg: Config) -> Config:
        """Without ``teacher_run``: prediction needs only the members, not the teacher run's files."""
        options = cfg.method.resolved_options()
        if options.teacher_run is None:
            return cfg
        inference = cfg.model_copy()
        inference.method = MethodConfig.from_options(cls.name, options.model_copy(update={"teacher_run": None}))
        return inference

    def build(self) -> Ensemble:
        ensemble = MemberEnsemble(self.member_backbones())
        o = self.options
        if o.teacher_run is not None:
            self.teacher = load_teacher_run(self.runs, o.teacher_run, self.num_classes, self.train_size)
        elif o.teacher is not None:
            self.teacher = create_model(o.teacher.name, num_classes=self.num_classes, **o.teacher.kwargs)
        else:
            self.teacher = self.backbone()
        return ensemble

    def state_modules(self, ensemble: Ensemble) -> dict[str, nn.Module]:
        return {"ensemble": ensemble, "teacher": self.teacher}

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        train, o = self.cfg.train, self.options
        stages = []
        needs: tuple[str, ...] = ()  # a teacher_run is read when the ensemble is built
        if o.teacher_run is None:
            needs = ("teacher",)
            epochs = train.epochs if o.teacher_epochs is None else o.teacher_epochs
            stages.append(
                stage_from_train("teacher", self.teacher, train, epochs=epochs, data_seed=train.seed * 1000 + 900)
            )
        elif o.charge_teacher:
            stages.append(Stage("teacher", self.teacher, epochs=0, hooks=StageHooks(at_end=[self._charge_teacher_run])))
        for i, member in enumerate(ensemble.members):
            signal = TeacherSignal(self.teacher, o.temperature, o.alpha)
            stages.append(
                stage_from_train(
                    f"member_{i}",
                    member,
                    train,
                    data_seed=self.member_seed(i),
                    loss=signal.loss,
                    prepare_batch=signal.prepare,
                    needs=needs,
                )
            )
        return stages

    def _charge_teacher_run(self, ctx: StageContext) -> None:
        """Charge the teacher run's recorded training FLOPs and seconds to stage ``teacher`` (once)."""
        meter = ctx.cost_meter
        if meter.summary()["stages"].get("teacher", {}).get("train_flops", 0.0) > 0:
            return  # already charged (the hook re-runs after a resume)
        path = Path(self.options.teacher_run) / "metrics.json"
        try:
            costs = json.loads(path.read_text())["costs"]
            flops, images, seconds = (
                float(costs["train_flops"]),
                int(costs["images_seen"]),
                float(costs["train_seconds"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(
                f"cannot read the teacher's training cost from {path} (set method.charge_teacher=false)"
            ) from None
        if images > 0 and flops > 0:
            meter.add_step(images, flops / (3.0 * images))
        meter.add_time(seconds)


def load_teacher_run(runs: RunReader, run_dir: str | Path, num_classes: int, train_size: int) -> nn.Module:
    """The finished run's ensemble, rebuilt from its ``config.yaml`` and ``model.pt``, frozen, in eval mode."""
    path = Path(run_dir)
    if not (path / "model.pt").is_file():
        raise UserError(f"teacher_run {path} has no model.pt (not a finished run)")
    return runs.trained_ensemble(path, num_classes, train_size).requires_grad_(False).eval()
