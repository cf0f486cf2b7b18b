"""The engine's loop for a packed stage: M members of one architecture trained in one pass per step.

Same contract as the sequential loop (``Engine._run_epoch``): every member draws the batches of its own stage
(its own loader, seeded by its own ``data_seed``), the loss is checked for divergence, checkpoints are written at
every epoch's end (and on Ctrl-C) with the members' own module states, and ``log.csv`` gets one row per member
and epoch under the member's stage name, exactly as when the members run one after another. Costs are charged
to every member's own stage (the wall time split equally).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from ensemblekit.metrics import ensemble_metrics
from ensemblekit.training.optim import build_optimizer, build_scheduler
from ensemblekit.training.packed_members import MemberPack, packed_member_losses
from ensemblekit.training.stage import Stage
from ensemblekit.training.steps import FINITE_CHECK_EVERY, TrainingInterrupted, measure_stage_flops

if TYPE_CHECKING:
    from ensemblekit.training.engine import Engine


def run_packed_stage(
    engine: Engine, index: int, stage: Stage, saved: dict | None, start_epoch: int, start_step: int
) -> None:
    """Train the members of ``stage.packed`` together (see :mod:`ensemblekit.training.packed_members`)."""
    members = stage.packed or []
    fabric = engine.fabric
    ctx = engine.stage_context(stage, index)
    engine.logger.event("stage_start", stage=stage.name, index=index, epochs=stage.epochs, start_epoch=start_epoch)
    if start_epoch < stage.epochs:
        loaders = [engine.train_loader(s) for s in members]
        steps = min(len(loader) for loader in loaders)
        if engine.max_steps_per_epoch is not None:
            steps = min(steps, engine.max_steps_per_epoch)
        if steps == 0:
            from ensemblekit.errors import UserError

            raise UserError(f"stage {stage.name!r}: the training set is smaller than one batch")
        pack = MemberPack([s.module for s in members])
        groups = pack.param_groups(stage.optim.decay_bn_and_bias)
        optimizer = build_optimizer(groups, stage.optim, fused=engine.fused_optimizer)
        scheduler = build_scheduler(optimizer, stage.schedule, steps, stage.epochs)
        if saved is not None and saved.get("optimizer") is not None:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        optimizer = fabric.setup_optimizers(optimizer)
        ctx.optimizer = optimizer
        engine.progress.start_stage(
            stage.name,
            stage.epochs,
            steps,
            start_epoch,
            index=index,
            batch_size=engine.batch_size,
            start_step=start_step,
        )
        try:
            for epoch in range(start_epoch, stage.epochs):
                acc = saved.get("epoch_accumulators", {}) if (saved and epoch == start_epoch) else {}
                first = start_step if epoch == start_epoch else 0
                _run_packed_epoch(engine, ctx, pack, optimizer, scheduler, loaders, epoch, steps, first, acc)
        finally:
            engine.progress.end_stage()
        pack.write_back()
    ctx.epoch = stage.epochs
    engine.sync_buffers()
    costs = engine.cost_meter.summary()["stages"]
    engine.logger.event("stage_end", stage=stage.name, index=index, costs={s.name: costs.get(s.name) for s in members})


def _run_packed_epoch(engine, ctx, pack: MemberPack, optimizer, scheduler, loaders, epoch, steps, first_step, acc):
    stage, fabric = ctx.stage, engine.fabric
    members: list[Stage] = stage.packed
    m = len(members)
    device = fabric.device
    for loader in loaders:
        loader.set_epoch(epoch)
    pack.train(True)
    ctx.epoch = epoch
    dtype = next(iter(pack.params.values())).dtype
    loss_sum = torch.tensor(acc.get("loss_sum", [0.0] * m), dtype=torch.float64, device=device)
    correct = torch.tensor(acc.get("correct", [0.0] * m), dtype=torch.float64, device=device)
    seen = int(acc.get("seen", 0))
    t0, images, flops = time.perf_counter(), 0, None
    ctx.global_step = epoch * steps + first_step
    sync_free = engine.check_loss_every_step
    forward = pack.forward if engine.compile_mode is None else torch.compile(pack.forward, mode=engine.compile_mode)

    for step, batches in enumerate(zip(*loaders, strict=False)):
        if step >= steps:
            break
        if step < first_step:
            continue
        if flops is None:
            flops = stage.flops_per_image or measure_stage_flops(members[0], *batches[0])
        xs = torch.stack([x for x, _ in batches])
        ys = torch.stack([y for _, y in batches])
        if xs.is_floating_point() and xs.dtype != dtype and dtype in (torch.float32, torch.float64):
            xs = xs.to(dtype)
        batch = ys.shape[1]
        with fabric.autocast():
            out = (
                forward(xs) if step > first_step or engine.compile_mode is None else engine._first_compiled(forward, xs)
            )
        losses = packed_member_losses(out, ys, stage.label_smoothing)
        if sync_free or (step + 1) % FINITE_CHECK_EVERY == 0:
            value = losses.detach() if sync_free else loss_sum / max(seen, 1)
            engine._check_finite(value, stage, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(losses.sum())
        if stage.grad_clip is not None:
            pack.clip_grad_norms_(stage.grad_clip)
        lr = float(optimizer.param_groups[0]["lr"])  # the rate this step uses (the scheduler moves on below)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            correct += (out.detach().argmax(-1) == ys).sum(1).double()
            loss_sum += losses.detach().double() * batch
            seen += batch
        images += batch
        for member in members:
            engine.cost_meter.start_stage(member.name)
            engine.cost_meter.add_step(batch * fabric.world_size, flops)
        ctx.step, ctx.loss = step, None
        ctx.global_step += 1
        engine.global_step += 1  # one optimiser step trains every member of the pack
        if engine.global_step % engine.log_every_steps == 0:
            row = {"epoch": epoch + 1, "step": step + 1, "global_step": engine.global_step, "lr": lr}
            for i, member in enumerate(members):
                engine.logger.step({"stage": member.name, **row, "loss": float(losses[i].detach())})
        engine.progress.step(
            epoch,
            step,
            lambda ls=loss_sum, c=correct, n=seen, im=images: _stats(
                ls.sum(), c.sum(), n * m, optimizer, m * im / max(1e-9, time.perf_counter() - t0)
            ),
        )
        if engine._interrupted:
            if not sync_free:
                engine._check_finite(loss_sum / max(seen, 1), stage, epoch, step)
            _charge_time(engine, members, time.perf_counter() - t0)
            pack.write_back()
            acc_state = {"loss_sum": loss_sum.tolist(), "correct": correct.tolist(), "seen": seen}
            engine.save(ctx.stage_index, epoch, step + 1, optimizer, scheduler, acc_state)
            raise TrainingInterrupted(f"interrupted in stage {stage.name!r}, epoch {epoch + 1}, step {step + 1}")
    if not sync_free:
        engine._check_finite(loss_sum / max(seen, 1), stage, epoch, steps - 1)
    pack.write_back()
    engine._check_finite_weights(stage, epoch)
    seconds = time.perf_counter() - t0
    _charge_time(engine, members, seconds)
    rows = []
    for i, member in enumerate(members):
        stats = _stats(loss_sum[i], correct[i], seen, optimizer, images / max(seconds, 1e-9))
        if engine.data.val is not None:
            probs, labels = engine.member_probs(member.module, "val")
            val = ensemble_metrics(probs, labels, combine="probs")
            stats.update(val_accuracy=val["accuracy"], val_nll=val["nll"])
        rows.append(stats)
        engine.logger.epoch({"stage": member.name, "epoch": epoch + 1, "seconds": seconds / m, **stats})
        scalars = {f"epoch_{k}": v for k, v in stats.items() if k in ("loss", "acc", "val_accuracy", "val_nll")}
        engine.logger.scalars(member.name, engine.global_step, scalars)
    mean = {k: sum(r[k] for r in rows) / m for k in rows[0]}
    mean["img_s"] = m * images / max(seconds, 1e-9)
    ctx.loss = mean["loss"]
    engine.progress.end_epoch(epoch, mean)
    engine.save(ctx.stage_index, epoch + 1, 0, optimizer, scheduler)


def _charge_time(engine, members: list[Stage], seconds: float) -> None:
    for member in members:
        engine.cost_meter.start_stage(member.name)
        engine.cost_meter.add_time(seconds / len(members))


def _stats(loss_sum, correct, seen, optimizer, img_s: float) -> dict[str, float]:
    seen = max(1, seen)
    return {
        "loss": float(loss_sum) / seen,
        "acc": float(correct) / seen,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "img_s": img_s,
    }
