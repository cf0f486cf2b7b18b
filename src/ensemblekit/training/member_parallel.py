"""Member-parallel training: independent stages of a recipe train on different processes at the same time.

With ``runtime.parallel: members`` and W processes, the stages are grouped into *waves* by the dependencies they
declare (``Stage.needs``): a stage's wave is one more than the latest wave of a stage it needs (0 when it needs
none). Within a wave the stages go round-robin to the ranks (stage j of the wave to rank j mod W); each rank trains
its stages whole, one after another, with an engine of its own that sees one process (no DDP wrapping, no gradient
all-reduce, no data sharding: every stage has the data order of a one-process run). At the end of a wave every
tensor of the run's modules that one rank changed is broadcast from that rank, so all ranks hold the same weights
before the next wave; rank 0 then writes the run's checkpoint (the finished stages), merges the ranks' logs into the
run directory and sums their training costs.

Nothing here knows a method: the waves come from the declared needs alone.

Resume: ``checkpoints/last.pt`` holds the weights after the last finished wave (in the engine's format, with the
finished stages first), and each rank keeps ``checkpoints/rank<k>.pt`` for its stages of the running wave (written
at every epoch's end, as in a one-process run). A killed run resumes every rank in its stage and epoch.

Bitwise equality with a one-process run: a stage's result is a function of its module's state at the start, its
data seed and the run's RNG. The data order and augmentation come from the stage's own generator, so a stage that
draws nothing from the global RNG (no dropout, no random hooks) ends with the same weights whichever process trains
it and whatever trained before it in that process (given the same threads per process and device).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.errors import UserError, one_line
from ensemblekit.metrics import TrainCostMeter
from ensemblekit.training.checkpoint import load_checkpoint
from ensemblekit.training.stage import Stage

RANK_CHECKPOINT = "rank{rank}.pt"
RANKS_DIR = "ranks"
"""Per-rank logs of the running wave, under the run directory; merged into the run's logs at the wave's end."""


def stage_dependencies(stages: list[Stage]) -> list[set[int]]:
    """The indices of the stages each stage needs (``needs=None``: every earlier stage).

    Raises:
        ValueError: A stage needs a stage that is not earlier in the recipe.
    """
    position = {s.name: i for i, s in enumerate(stages)}
    deps: list[set[int]] = []
    for i, stage in enumerate(stages):
        if stage.needs is None:
            deps.append(set(range(i)))
            continue
        wrong = [n for n in stage.needs if position.get(n, i) >= i]
        if wrong:
            raise ValueError(f"stage {stage.name!r} needs {wrong}, which are not earlier stages of the recipe")
        deps.append({position[n] for n in stage.needs})
    return deps


def stage_waves(stages: list[Stage], done: frozenset[str] | set[str] = frozenset()) -> list[list[int]]:
    """Group the stages not in ``done`` into waves of stages that need nothing of one another.

    ``wave(i) = 0`` if every stage that stage i needs is done, else ``1 + max wave of the stages it needs``. Each
    wave lists its stages in recipe order.
    """
    deps = stage_dependencies(stages)
    level: dict[int, int] = {}
    for i, stage in enumerate(stages):
        if stage.name in done:
            continue
        pending = [level[d] for d in deps[i] if stages[d].name not in done]
        level[i] = 1 + max(pending) if pending else 0
    waves: list[list[int]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for i, wave in level.items():
        waves[wave].append(i)
    return waves


def assign_ranks(wave: list[int], world_size: int) -> list[list[int]]:
    """Stage j of the wave goes to rank ``j mod world_size``: the stages of each rank, in order."""
    return [wave[rank::world_size] for rank in range(world_size)]


def state_tensors(modules: dict[str, nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the modules' state dicts (parameters and buffers), named ``module.key``."""
    return [(f"{name}.{key}", t) for name, m in modules.items() for key, t in m.state_dict().items()]


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values, NaN equal to NaN (an unset score is not a change)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


def broadcast_changes(tensors: list[tuple[str, torch.Tensor]], before: list[torch.Tensor], rank: int, world: int):
    """Give every rank the tensors that one rank changed since ``before`` (its copy at the wave's start).

    Each changed tensor is broadcast from the rank that changed it (one flat broadcast per rank and dtype).

    Raises:
        RuntimeError: Two ranks changed the same tensor (a stage's ``needs`` are missing a dependency).
    """
    import torch.distributed as dist

    device = tensors[0][1].device if tensors else torch.device("cpu")
    changed = torch.tensor([not same_values(t, b) for (_, t), b in zip(tensors, before)], dtype=torch.int64)
    owner = torch.where(changed.bool(), rank, -1).to(device)
    count = changed.to(device)
    dist.all_reduce(count)
    dist.all_reduce(owner, op=dist.ReduceOp.MAX)
    clashes = [tensors[i][0] for i in torch.nonzero(count > 1).flatten().tolist()]
    if clashes:
        raise RuntimeError(
            f"stages on different processes changed the same tensors ({', '.join(clashes[:3])}): a stage's needs "
            "must name the stages whose modules it changes"
        )
    owners = owner.tolist()
    for src in range(world):
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for (_, t), o in zip(tensors, owners):
            if o == src:
                by_dtype.setdefault(t.dtype, []).append(t)
        for dtype, group in by_dtype.items():
            wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool
            total = sum(t.numel() for t in group)
            if rank == src:
                flat = torch.cat([t.detach().reshape(-1) for t in group]).view(wire)
            else:
                flat = torch.empty(total, dtype=wire, device=device)
            dist.broadcast(flat, src=src)
            if rank != src:
                flat, offset = flat.view(dtype), 0
                with torch.no_grad():
                    for t in group:
                        t.copy_(flat[offset : offset + t.numel()].view(t.shape))
                        offset += t.numel()


def merge_costs(meter: TrainCostMeter, states: list[dict[str, Any]], order: list[str]) -> None:
    """Add the ranks' cost-meter stages (``states``: one ``state_dict`` per rank) to ``meter``; stages in ``order``."""
    totals: dict[str, dict[str, float]] = {}
    for state in states:
        for s in state["stages"]:
            t = totals.setdefault(s["name"], {"train_flops": 0.0, "train_seconds": 0.0, "images_seen": 0})
            for key in t:
                t[key] += s[key]
    merged = meter.state_dict()
    existing = {s["name"]: s for s in merged["stages"]}
    rank = {name: i for i, name in enumerate(order)}
    for name in sorted(totals, key=lambda n: rank.get(n, len(rank))):
        entry = existing.get(name)
        if entry is None:
            entry = {"name": name, "train_flops": 0.0, "train_seconds": 0.0, "images_seen": 0}
            merged["stages"].append(entry)
        for key, value in totals[name].items():
            entry[key] += value
        merged["current_stage"] = name
    merged["stages"].sort(key=lambda entry: rank.get(entry["name"], len(rank)))  # stable: unknown names keep order
    meter.load_state_dict(merged)


def read_rank_logs(rank_dir: Path) -> dict[str, str]:
    """The text of a rank's ``log.csv``, ``steps.csv`` and ``events.jsonl`` (empty when missing)."""
    out = {}
    for name in ("log.csv", "steps.csv", "events.jsonl"):
        path = rank_dir / name
        out[name] = path.read_text(errors="replace") if path.is_file() else ""
    return out


def merge_rank_logs(logger, logs: list[dict[str, str]], order: list[str]) -> None:
    """Append the ranks' epoch rows, step rows and events to the run's logs (rows in recipe stage order).

    Step rows keep the ``global_step`` of the process that trained them; events get a ``rank`` field.
    """
    position = {name: i for i, name in enumerate(order)}

    def rows(name: str) -> list[dict[str, str]]:
        found = [r for text in logs for r in csv.DictReader(io.StringIO(text[name], newline="")) if None not in r]
        return sorted(found, key=lambda r: position.get(r.get("stage", ""), len(position)))  # stable within a stage

    for row in rows("log.csv"):
        logger.epoch(row)
    for row in rows("steps.csv"):
        logger.step(row)
    for rank, text in enumerate(logs):
        for line in text["events.jsonl"].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            kind = record.pop("event", "event")
            record.pop("time", None)
            record.pop("rank", None)
            logger.event(kind, rank=rank, **record)


def raise_wave_failures(error: BaseException | None, failures: list[str | None], rank: int) -> None:
    """After a wave, every rank learns whether any rank failed, and all stop together.

    ``failures`` holds every rank's one-line error (``None``: it finished its stages), gathered after the wave, so
    a rank whose stages failed does not leave the others waiting at the next collective. The failing rank
    re-raises its own exception (a divergence stays a ``UserError``, Ctrl-C stays an interrupt); the others stop
    with a ``UserError`` naming the first failing rank.
    """
    if error is not None:
        raise error
    for other, message in enumerate(failures):
        if message is not None and other != rank:
            raise UserError(f"member-parallel: process {other} failed, so this process stops too: {message}")


class MemberParallelRun:
    """Runs a recipe wave by wave across the processes of a launched Fabric.

    Args:
        engine: The run's engine on the real (multi-process) Fabric: its modules, cost meter, logger and
            ``checkpoints/last.pt``. It trains nothing itself.
        local: This rank's engine: a one-process Fabric on this rank's device, the same module objects, logs in
            ``ranks/<rank>/`` of the run directory and its checkpoint in ``checkpoints/rank<rank>.pt``.
        fabric: The real Fabric (rank, world size; its process group carries the broadcasts).
    """

    def __init__(self, engine, local, fabric) -> None:
        self.engine, self.local, self.fabric = engine, local, fabric
        self.rank, self.world = fabric.global_rank, fabric.world_size

    def run(self, stages: list[Stage], resume_from: str | Path | None = None) -> None:
        """Train ``stages`` (resuming from the run's checkpoint when given)."""
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        done: list[str] = []
        if resume_from is not None:
            done = self._load(resume_from, names)
        elif self.rank == 0 and self.engine.run_dir is not None:
            self.engine.logger.event("member_parallel", world_size=self.world)
        for wave in stage_waves(stages, set(done)):
            mine = [stages[i] for i in assign_ranks(wave, self.world)[self.rank]]
            self._run_wave(mine)
            self._finish_wave(stages, [names[i] for i in wave], done)
        self._cleanup()

    # ------------------------------------------------------------------ one wave
    def _run_wave(self, mine: list[Stage]) -> None:
        tensors = state_tensors(self.local.modules)
        before = [t.detach().clone() for _, t in tensors]
        checkpoint = self._rank_checkpoint()
        resume = None
        if checkpoint is not None and checkpoint.is_file():
            saved = load_checkpoint(checkpoint).get("stage_names")
            if saved == [s.name for s in mine]:
                resume = checkpoint
            else:  # left by another wave (a kill between the run's checkpoint and this file's removal)
                self._remove_rank_files()
        fresh = TrainCostMeter(self.local.cost_meter.single_forward_flops, self.local.cost_meter.train_set_size)
        self.local.cost_meter.load_state_dict(fresh.state_dict())
        error: BaseException | None = None
        try:
            if mine:
                self.local.run(mine, resume_from=resume)
        except BaseException as exc:  # every rank must hear of it (see raise_wave_failures)
            if self.world == 1:
                raise
            error = exc
        if self.world > 1:
            import torch.distributed as dist

            failures: list[Any] = [None] * self.world
            dist.all_gather_object(failures, None if error is None else one_line(str(error) or type(error).__name__))
            raise_wave_failures(error, failures, self.rank)
            broadcast_changes(tensors, before, self.rank, self.world)

    def _finish_wave(self, stages: list[Stage], wave_names: list[str], done: list[str]) -> None:
        """Merge costs and logs, write the run's checkpoint, drop the ranks' wave files."""
        names = [s.name for s in stages]
        logs = read_rank_logs(self._rank_dir()) if self._rank_dir() is not None else {}
        meters = [self.local.cost_meter.state_dict()]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            import torch.distributed as dist

            dist.all_gather_object(gathered, (meters[0], logs))
            meters, all_logs = [g[0] for g in gathered], [g[1] for g in gathered]
        else:
            all_logs = [logs]
        merge_costs(self.engine.cost_meter, meters, names)
        done.extend(n for n in names if n in set(wave_names))
        order = [*done, *(n for n in names if n not in set(done))]
        if self.rank == 0 and self.engine.run_dir is not None:
            merge_rank_logs(self.engine.logger, [x for x in all_logs if x], order)
        self.engine._stage_names = order  # what the checkpoint's stage_index counts in (Engine.run sets it itself)
        self.engine.save(len(done), 0, 0)  # rank 0 writes, all wait
        self._remove_rank_files()

    # ------------------------------------------------------------------ resume
    def _load(self, path: str | Path, names: list[str]) -> list[str]:
        """Load the run's checkpoint; return the finished stages. Cut the run's logs back to them."""
        saved = self.engine.load(path)
        order = saved.get("stage_names") or names
        if sorted(order) != sorted(names):
            raise UserError(f"checkpoint {path} was written for the stages {order}, this run has {names}")
        if saved["epoch"] != 0 or saved["step"] != 0:
            raise UserError(
                f"checkpoint {path} stopped inside stage {order[saved['stage_index']]!r} (a run without "
                "runtime.parallel: members wrote it): resume it with runtime.parallel: none"
            )
        done = list(order[: saved["stage_index"]])
        if self.rank == 0 and self.engine.run_dir is not None:
            logger = self.engine.logger
            dropped = logger.truncate_after(order, len(done), 0)
            dropped_steps = logger.keep_steps_of(done)
            logger.event("resume", finished_stages=done, dropped_rows=dropped, dropped_steps=dropped_steps)
        return done

    # ------------------------------------------------------------------ files
    def _rank_dir(self) -> Path | None:
        return self.local.run_dir

    def _rank_checkpoint(self) -> Path | None:
        return self.local.checkpoint_path

    def _remove_rank_files(self) -> None:
        if self.local.checkpoint_path is not None:
            self.local.checkpoint_path.unlink(missing_ok=True)
        if self.local.run_dir is not None:
            for name in ("log.csv", "steps.csv", "events.jsonl"):
                (self.local.run_dir / name).unlink(missing_ok=True)

    def _cleanup(self) -> None:
        """Remove this rank's (empty) log folder, and rank 0 the ``ranks`` folder once every rank has."""
        if self.local.run_dir is not None:
            shutil.rmtree(self.local.run_dir, ignore_errors=True)
        if self.world > 1:
            self.fabric.barrier()
        if self.rank == 0 and self.local.run_dir is not None:
            parent = self.local.run_dir.parent
            if parent.name == RANKS_DIR and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def rank_paths(run_dir: Path | None, rank: int) -> tuple[Path | None, Path | None]:
    """This rank's log folder (``ranks/<rank>``) and checkpoint (``checkpoints/rank<rank>.pt``) in a run directory."""
    if run_dir is None:
        return None, None
    return run_dir / RANKS_DIR / str(rank), run_dir / "checkpoints" / RANK_CHECKPOINT.format(rank=rank)
