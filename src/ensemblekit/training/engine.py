"""The training engine: runs a method's stages with Lightning Fabric.

Fabric owns devices, precision and distribution; the engine owns the loop, progress, logs, checkpoints at
the end of every epoch (and on Ctrl-C), resume at the recorded stage/epoch/step, the non-finite-loss guard
and the training cost meter. Everything random in an epoch is a function of the checkpointed state (model,
optimiser, scheduler, RNG states) and of (stage data seed, epoch) for the data order and augmentation, so on
CPU a killed and resumed run ends with weights bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.data import BatchLoader, DataBundle
from ensemblekit.errors import UserError, first_line
from ensemblekit.metrics import TrainCostMeter, ensemble_metrics
from ensemblekit.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ensemblekit.training.evaluate import collect_member_probs
from ensemblekit.training.logs import RunLogger
from ensemblekit.training.losses import member_cross_entropy
from ensemblekit.training.optim import build_optimizer, build_scheduler, default_param_groups
from ensemblekit.training.progress import Progress
from ensemblekit.training.stage import Stage, StageContext
from ensemblekit.training.steps import (
    FINITE_CHECK_EVERY,
    NonFiniteLossError,
    TrainingInterrupted,
    batch_correct,
    checks_loss_every_step,
    measure_stage_flops,
)
from ensemblekit.training.stopping import PlateauStopper

CHECKPOINT_FORMAT = 1


class Engine:
    """Runs stages in order and keeps the run resumable.

    Args:
        fabric: A launched ``lightning.fabric.Fabric``.
        data: The data bundle (train/val/test and normalisation).
        modules: Every module whose state must be checkpointed, by name (at least ``{"ensemble": ...}``).
        batch_size: Training batch size (per process).
        eval_batch_size: Evaluation batch size.
        augment: Random crop + flip on training batches.
        cost_meter: The training cost meter to feed.
        run_dir: Run directory (``None``: no logs and no checkpoints).
        progress: Progress reporter.
        max_steps_per_epoch: Optional cap on steps per epoch (smoke tests).
        channels_last: Feed image batches in channels-last memory format (faster convolutions on CPU; the
            modules must have been converted with ``.to(memory_format=torch.channels_last)``).
        max_loss: A mean training loss above this is divergence, like NaN or inf (``train.max_loss``).
        crop_padding: Zero padding of the random crop of the augmentation (``data.crop_padding``).
        flip: Random horizontal flips in the augmentation (``data.flip``).
        logger: ``"csv"`` (``log.csv``, ``steps.csv``, ``events.jsonl``) or ``"tensorboard"`` (the same plus
            TensorBoard scalars under ``tensorboard/``): ``runtime.logger``.
        log_every_steps: Optimiser steps between per-step scalars (``runtime.log_every_steps``; each one reads
            the loss, a device sync on accelerators).
        fused_optimizer: Build fused SGD/AdamW kernels (CUDA; ``runtime.fused_optimizer``).
        eval_autocast: Autocast dtype of evaluation forwards (``None``: float32); softmax stays float32.
        compile_mode: ``torch.compile`` mode of the trained modules (``None``: eager; ``runtime.compile``).
    """

    def __init__(
        self,
        fabric,
        data: DataBundle,
        modules: dict[str, nn.Module],
        *,
        batch_size: int,
        eval_batch_size: int = 500,
        augment: bool = True,
        cost_meter: TrainCostMeter,
        run_dir: str | Path | None = None,
        progress: Progress | None = None,
        max_steps_per_epoch: int | None = None,
        channels_last: bool = False,
        max_loss: float = float("inf"),
        crop_padding: int = 4,
        flip: bool = True,
        logger: str = "csv",
        log_every_steps: int = 10,
        fused_optimizer: bool = False,
        eval_autocast: torch.dtype | None = None,
        compile_mode: str | None = None,
    ) -> None:
        self.fabric = fabric
        self.crop_padding, self.flip = crop_padding, flip
        self.data = data
        self.modules = modules
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.augment = augment
        self.cost_meter = cost_meter
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.is_main = fabric.global_rank == 0
        self.progress = progress if (progress is not None and self.is_main) else Progress("quiet")
        self.logger = RunLogger(self.run_dir if self.is_main else None, logger)
        self.log_every_steps = log_every_steps
        self.global_step = 0  # optimiser steps of the whole run (checkpointed): the x axis of per-step scalars
        self.max_steps_per_epoch = max_steps_per_epoch
        self.channels_last = channels_last
        self.max_loss = max_loss
        self.fused_optimizer = fused_optimizer
        self.eval_autocast = eval_autocast
        self.compile_mode = compile_mode
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt" if self.run_dir is not None else None
        self._interrupted = False
        self._stage_names: list[str] | None = None
        self.check_loss_every_step = checks_loss_every_step(fabric.device)
        self.stopper: PlateauStopper | None = None  # the running stage's plateau stopping, when it has one

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupted:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._interrupted = True
        self.progress.message("interrupt received: saving a checkpoint after this step (Ctrl-C again to abort)")

    # ------------------------------------------------------------------ checkpoints
    def _state(self, stage_index: int, epoch: int, step: int, opt, sched, acc: dict[str, float]) -> dict[str, Any]:
        """The resumable state.

        After a stage (``epoch`` 0 of the next one), ``opt``/``sched`` are the finished stage's, kept under
        ``finished_stage`` so that a finished single-stage run can later be extended (``ensemblekit.runs.extend``).
        """
        between_stages = epoch == 0 and step == 0 and stage_index > 0 and opt is not None
        if between_stages:
            return {
                **self._state(stage_index, 0, 0, None, None, acc),
                "finished_stage": {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
            }
        return {
            "format": CHECKPOINT_FORMAT,
            "stage_index": stage_index,
            "epoch": epoch,
            "step": step,
            "modules": {name: m.state_dict() for name, m in self.modules.items()},
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "rng": capture_rng_state(),
            "cost_meter": self.cost_meter.state_dict(),
            "epoch_accumulators": acc,
            "global_step": self.global_step,
            "stop": self.stopper.state_dict() if self.stopper is not None else None,
            "stage_names": self._stage_names,
        }

    def save(self, stage_index: int, epoch: int, step: int = 0, opt=None, sched=None, acc=None) -> None:
        """Write ``checkpoints/last.pt`` atomically (rank 0 only)."""
        if self.checkpoint_path is not None and self.is_main:
            save_checkpoint(self.checkpoint_path, self._state(stage_index, epoch, step, opt, sched, acc or {}))
        if self.fabric.world_size > 1:
            self.fabric.barrier()

    def load(self, path: str | Path) -> dict[str, Any]:
        """Load a checkpoint into the modules and RNGs; return it for the optimiser/scheduler states."""
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT or "modules" not in state:
            raise UserError(f"checkpoint {path} was not written by this version of ensemblekit")
        for name, module in self.modules.items():
            if name not in state["modules"]:
                raise UserError(f"checkpoint {path} has no state for {name!r}")
            try:
                module.load_state_dict(state["modules"][name])
            except RuntimeError as exc:
                raise UserError(f"checkpoint {path} does not match this run's model ({first_line(exc)})") from None
        self.cost_meter.load_state_dict(state["cost_meter"])
        restore_rng_state(state["rng"])
        self.global_step = int(state.get("global_step", 0))
        return state

    # ------------------------------------------------------------------ helpers
    def sync_buffers(self) -> None:
        """Give every process rank 0's buffers (BN running statistics differ per rank after DDP training)."""
        if self.fabric.world_size <= 1:
            return
        import torch.distributed as dist

        for module in self.modules.values():
            for buf in module.buffers():
                dist.broadcast(buf.data, src=0)

    def train_loader(self, stage: Stage) -> BatchLoader:
        """The training batches of a stage (its own data order; sharded across processes)."""
        n = len(stage.train_indices) if stage.train_indices is not None else len(self.data.train.labels)
        per_rank = n // self.fabric.world_size
        return BatchLoader(
            self.data.train,
            self.batch_size,
            mean=self.data.mean,
            std=self.data.std,
            shuffle=True,
            augment=self.augment,
            seed=stage.data_seed,
            drop_last=per_rank % self.batch_size == 1,
            device=self.fabric.device,
            rank=self.fabric.global_rank,
            world_size=self.fabric.world_size,
            indices=stage.train_indices,
            crop_padding=self.crop_padding,
            flip=self.flip,
        )

    def sample_batches(
        self,
        num_batches: int,
        seed: int,
        *,
        batch_size: int | None = None,
        augment: bool | None = None,
        indices: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``num_batches`` training batches on the device, for hooks that need data (pruning scores, BN refresh).

        The batches are a pure function of ``seed`` (shuffled and, unless ``augment=False``, augmented as in
        training), normalised, in the engine's memory format; drawing them changes no RNG state. ``indices``
        restricts them to those training rows (e.g. a class-balanced sample).
        """
        loader = BatchLoader(
            self.data.train,
            batch_size or self.batch_size,
            mean=self.data.mean,
            std=self.data.std,
            shuffle=True,
            augment=self.augment if augment is None else augment,
            seed=seed,
            device=self.fabric.device,
            rank=self.fabric.global_rank,
            world_size=self.fabric.world_size,
            indices=indices,
            crop_padding=self.crop_padding,
            flip=self.flip,
        )
        batches = []
        for x, y in loader:
            if len(batches) >= num_batches:
                break
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batches.append((x, y))
        return batches

    def steps_per_epoch(self, stage: Stage) -> int:
        """Optimiser steps one epoch of ``stage`` takes in this process (``max_steps_per_epoch`` applied)."""
        steps = len(self.train_loader(stage))
        return steps if self.max_steps_per_epoch is None else min(steps, self.max_steps_per_epoch)

    def stage_context(self, stage: Stage, index: int) -> StageContext:
        """The context ``stage``'s hooks get: its place in the run and what hooks use of the engine."""
        return StageContext(
            stage=stage,
            stage_index=index,
            ensemble=self.modules["ensemble"],
            module=stage.module,
            cost_meter=self.cost_meter,
            image_shape=tuple(self.data.train.images.shape[1:]),
            world_size=self.fabric.world_size,
            train_labels=self.data.train.labels,
            sample_batches=self.sample_batches,
            member_probs=self.member_probs,
            steps_per_epoch=self.steps_per_epoch,
            sync_buffers=self.sync_buffers,
            log_event=lambda name, **fields: self.logger.event(name, **fields),
        )

    def member_probs(self, module: nn.Module, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities ``[M, N, C]`` and labels of ``module`` on ``split`` (``test`` or ``val``)."""
        data = self.data.test if split == "test" else self.data.val
        if data is None:
            raise UserError(f"no {split} split in this run (set data.val_size)")
        return collect_member_probs(
            module,
            data,
            mean=self.data.mean,
            std=self.data.std,
            batch_size=self.eval_batch_size,
            fabric=self.fabric,
            channels_last=self.channels_last,
            autocast_dtype=self.eval_autocast,
        )

    # ------------------------------------------------------------------ the loop
    def run(self, stages: list[Stage], resume_from: str | Path | None = None) -> None:
        """Run ``stages`` in order, resuming from a checkpoint when given."""
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        stopping = [s.name for s in stages if s.stop is not None]
        if stopping and self.data.val is None:
            raise UserError(f"plateau stopping (stage {stopping[0]!r}) needs a validation split: set data.val_size > 0")
        self._stage_names = names
        start_stage, start_epoch, start_step, saved = 0, 0, 0, None
        if resume_from is not None:
            saved = self.load(resume_from)
            if saved.get("stage_names") not in (None, names):
                raise UserError(
                    f"checkpoint {resume_from} was written for the stages {saved['stage_names']}, this run has {names}"
                    " (was runtime.member_execution or the device changed?)"
                )
            start_stage, start_epoch, start_step = saved["stage_index"], saved["epoch"], saved["step"]
            log_names = [tuple(p.name for p in s.packed) if s.packed else s.name for s in stages]
            dropped = self.logger.truncate_after(log_names, start_stage, start_epoch) if self.is_main else 0
            dropped_steps = self.logger.truncate_steps_after(self.global_step) if self.is_main else 0
            self.logger.event(
                "resume",
                stage_index=start_stage,
                epoch=start_epoch,
                step=start_step,
                dropped_rows=dropped,
                dropped_steps=dropped_steps,
            )
            self.progress.message(resume_message(stages, start_stage, start_epoch, start_step))
        self.progress.start_run([(s.name, s.epochs, self._images_per_epoch(s)) for s in stages])
        self.logger.open_tensorboard(purge_step=self.global_step if saved is not None else None)
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main_thread else None
        try:
            for index in range(start_stage, len(stages)):
                resume = saved if index == start_stage and saved is not None else None
                first_epoch, first_step = (start_epoch, start_step) if resume else (0, 0)
                finished = self._run_stage(index, stages[index], resume, first_epoch, first_step)
                self.stopper = None
                self.save(index + 1, 0, 0, *finished)
        finally:
            self.logger.close()
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)

    def _images_per_epoch(self, stage: Stage) -> int:
        """Training images one process sees per epoch of ``stage`` (for the run's ETA)."""
        n = len(stage.train_indices) if stage.train_indices is not None else len(self.data.train.labels)
        n //= max(1, self.fabric.world_size)
        if self.max_steps_per_epoch is not None:
            n = min(n, self.max_steps_per_epoch * self.batch_size)
        return n

    def _run_stage(
        self, index: int, stage: Stage, saved: dict | None, start_epoch: int, start_step: int
    ) -> tuple[Any, Any]:
        """Run one stage; return its optimiser and scheduler (``None, None`` when it trained nothing)."""
        if stage.packed is not None:
            from ensemblekit.training.packed_loop import run_packed_stage

            run_packed_stage(self, index, stage, saved, start_epoch, start_step)
            return None, None
        fabric = self.fabric
        optimizer = scheduler = None
        module = stage.module
        ctx = self.stage_context(stage, index)
        self.cost_meter.start_stage(stage.name)
        self.stopper = PlateauStopper(stage.stop) if stage.stop is not None else None
        if self.stopper is not None and saved is not None and saved.get("stop") is not None:
            self.stopper.load_state_dict(saved["stop"])
        self.logger.event("stage_start", stage=stage.name, index=index, epochs=stage.epochs, start_epoch=start_epoch)
        if stage.epochs > 0 and start_epoch < stage.epochs:
            loader = self.train_loader(stage)
            steps = len(loader) if self.max_steps_per_epoch is None else min(len(loader), self.max_steps_per_epoch)
            if steps == 0:
                raise UserError(f"stage {stage.name!r}: the training set is smaller than one batch")
            groups = stage.param_groups(module) if stage.param_groups else default_param_groups(module, stage.optim)
            optimizer = build_optimizer(groups, stage.optim, fused=self.fused_optimizer)
            scheduler = build_scheduler(optimizer, stage.schedule, steps, stage.epochs)
            if saved is not None and saved.get("optimizer") is not None:
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
            wrapped, optimizer = fabric.setup(self.compiled(module), optimizer)
            ctx.optimizer = optimizer
            self.progress.start_stage(
                stage.name,
                stage.epochs,
                steps,
                start_epoch,
                index=index,
                batch_size=self.batch_size,
                start_step=start_step,
            )
            try:
                for epoch in range(start_epoch, stage.epochs):
                    if self.stopper is not None and self.stopper.stopped:
                        break
                    acc = saved.get("epoch_accumulators", {}) if (saved and epoch == start_epoch) else {}
                    first = start_step if epoch == start_epoch else 0
                    self._run_epoch(ctx, wrapped, optimizer, scheduler, loader, epoch, steps, first, acc)
            finally:
                self.progress.end_stage()
        stopped = self.stopper is not None and self.stopper.stopped
        ctx.epoch = self.stopper.epochs_run if stopped else stage.epochs
        self.sync_buffers()
        for hook in stage.hooks.at_end:
            hook(ctx)
        self.logger.event(
            "stage_end", stage=stage.name, index=index, costs=self.cost_meter.summary()["stages"].get(stage.name)
        )
        return optimizer, scheduler

    def _run_epoch(self, ctx, wrapped, optimizer, scheduler, loader, epoch, steps, first_step, acc) -> None:
        stage, fabric = ctx.stage, self.fabric
        loader.set_epoch(epoch)
        wrapped.train()
        ctx.epoch = epoch
        loss_sum = torch.tensor(acc.get("loss_sum", 0.0), dtype=torch.float64, device=fabric.device)
        correct = torch.tensor(acc.get("correct", 0.0), dtype=torch.float64, device=fabric.device)
        seen = int(acc.get("seen", 0))
        t0, images, flops = time.perf_counter(), 0, None
        lr = optimizer.param_groups[0]["lr"]
        ctx.global_step = epoch * steps + first_step
        sync_free = self.check_loss_every_step
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            if step < first_step:
                continue
            if flops is None:
                flops = measure_stage_flops(stage, x, y)
            batch = len(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if stage.prepare_batch is not None:
                with fabric.autocast():  # a teacher's forward (distillation) runs in the run's precision
                    x, y = stage.prepare_batch(x, y)
            out = wrapped(x) if step > first_step or self.compile_mode is None else self._first_compiled(wrapped, x)
            loss = (
                stage.loss(out, y)
                if stage.loss is not None
                else member_cross_entropy(out, y, stage.member_loss, stage.label_smoothing)
            )
            # On CPU every step's loss is checked before its update. On an accelerator the check forces a device
            # sync, so the running loss sum is checked every FINITE_CHECK_EVERY steps and at the epoch's end
            # instead (before any checkpoint is written, so the last checkpoint on disk is always finite).
            if sync_free or (step + 1) % FINITE_CHECK_EVERY == 0:
                self._check_finite(loss.detach() if sync_free else loss_sum / max(seen, 1), stage, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if stage.grad_clip is not None:
                fabric.clip_gradients(wrapped, optimizer, max_norm=stage.grad_clip)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler moves it on next)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                hits, rows = batch_correct(out.detach(), y)
                correct += hits
                loss_sum += loss.detach().double() * rows
                seen += rows
            images += batch
            self.cost_meter.add_step(batch * fabric.world_size, flops)
            ctx.step, ctx.loss = step, None
            ctx.global_step += 1
            self.global_step += 1
            if self.global_step % self.log_every_steps == 0:
                row = {"epoch": epoch + 1, "step": step + 1, "global_step": self.global_step, "lr": lr}
                self.logger.step({"stage": stage.name, **row, "loss": float(loss.detach())})
            for hook in stage.hooks.after_step:
                hook(ctx)
            self.progress.step(
                epoch,
                step,
                lambda lr=lr, ls=loss_sum, c=correct, n=seen, im=images: self._stats(
                    ls, c, n, lr, im / max(1e-9, time.perf_counter() - t0)
                ),
            )
            if self._interrupted:
                if not sync_free:
                    self._check_finite(loss_sum / max(seen, 1), stage, epoch, step)
                self.cost_meter.add_time(time.perf_counter() - t0)
                acc_state = {"loss_sum": float(loss_sum), "correct": float(correct), "seen": seen}
                self.save(ctx.stage_index, epoch, step + 1, optimizer, scheduler, acc_state)
                raise TrainingInterrupted(f"interrupted in stage {stage.name!r}, epoch {epoch + 1}, step {step + 1}")
        if not sync_free:
            self._check_finite(loss_sum / max(seen, 1), stage, epoch, steps - 1)
        self._check_finite_weights(stage, epoch)
        seconds = time.perf_counter() - t0
        self.cost_meter.add_time(seconds)
        stats = self._stats(loss_sum, correct, seen, lr, images / max(seconds, 1e-9))
        if self.data.val is not None:
            probs, labels = self.member_probs(stage.module, "val")
            val = ensemble_metrics(probs, labels, combine=getattr(stage.module, "combine", "probs"))
            stats.update(val_accuracy=val["accuracy"], val_nll=val["nll"])
        ctx.loss = stats["loss"]
        if self.stopper is not None and self.stopper.update(stats, epoch + 1):
            best = {"best": self.stopper.best, "best_epoch": self.stopper.best_epoch}
            self.logger.event("plateau_stop", stage=stage.name, epoch=epoch + 1, monitor=stage.stop.monitor, **best)
            self.progress.message(f"{stage.name}: {stage.stop.monitor} on a plateau, stopping after epoch {epoch + 1}")
        for hook in stage.hooks.after_epoch:
            hook(ctx)
        self.progress.end_epoch(epoch, stats)
        self.logger.epoch({"stage": stage.name, "epoch": epoch + 1, "seconds": seconds, **stats})
        epoch_scalars = {f"epoch_{k}": v for k, v in stats.items() if k in ("loss", "acc", "val_accuracy", "val_nll")}
        self.logger.scalars(stage.name, self.global_step, epoch_scalars)
        self.save(ctx.stage_index, epoch + 1, 0, optimizer, scheduler)

    def compiled(self, module: nn.Module) -> nn.Module:
        """``module`` under ``torch.compile`` with ``runtime.compile``'s mode, or ``module`` itself when off."""
        return module if self.compile_mode is None else torch.compile(module, mode=self.compile_mode)

    def _first_compiled(self, forward, x: torch.Tensor) -> torch.Tensor:
        """The first forward of a compiled module: a compilation failure becomes one line (a ``UserError``)."""
        try:
            return forward(x)
        except Exception as exc:  # torch._dynamo / inductor raise many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(
                f"runtime.compile={self.compile_mode}: this method cannot be compiled ({first}); "
                "set runtime.compile: off"
            ) from None

    def _check_finite(self, value: torch.Tensor, stage: Stage, epoch: int, step: int) -> None:
        """Stop a diverged run: a NaN/inf loss, or a mean loss above ``max_loss`` (an exploding run)."""
        if not bool(torch.isfinite(value).all() & (value <= self.max_loss).all()):
            what = (
                "non-finite" if not bool(torch.isfinite(value).all()) else f"exploding (> max_loss {self.max_loss:g})"
            )
            self._diverged(
                f"{what} loss ({float(value.max()):.4g}) in stage {stage.name!r}, epoch {epoch + 1}, step {step + 1}"
            )

    def _check_finite_weights(self, stage: Stage, epoch: int) -> None:
        """At an epoch's end (one device sync): the last update must not have left NaN/inf weights behind."""
        params = [p for p in stage.module.parameters() if p.is_floating_point()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            self._diverged(f"non-finite weights after stage {stage.name!r}, epoch {epoch + 1}")

    def _diverged(self, what: str) -> None:
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            kept = f"the last good checkpoint is kept at {self.checkpoint_path}"
        else:
            kept = "no checkpoint was written yet (it diverged in its first epoch)"
        raise NonFiniteLossError(f"training diverged: {what}; {kept}; try a lower train.lr or train.grad_clip")

    @staticmethod
    def _stats(loss_sum, correct, seen, lr: float, img_s: float) -> dict[str, float]:
        """The epoch so far: mean loss and accuracy, the learning rate of the last step taken, images per second."""
        seen = max(1, seen)
        return {"loss": float(loss_sum) / seen, "acc": float(correct) / seen, "lr": float(lr), "img_s": img_s}


def resume_message(stages: list[Stage], stage_index: int, epoch: int, step: int) -> str:
    """What a resumed run says about where it continues (a finished run only re-evaluates)."""
    n = len(stages)
    if stage_index >= n:
        return f"all {n} stage(s) had finished: re-evaluating the final model"
    where = f"epoch {epoch + 1}/{stages[stage_index].epochs}" + (f", step {step + 1}" if step else "")
    return f"resuming at stage {stage_index + 1}/{n} ({stages[stage_index].name}), {where}"
