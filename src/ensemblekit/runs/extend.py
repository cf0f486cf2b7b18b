"""``--resume`` with another config: name what differs, and continue a finished run with more epochs.

A resumed run must use the config it started with (only ``runtime`` may change). One change is allowed:
``train.epochs`` may grow (``ensemblekit train CONFIG --out RUN --resume --set train.epochs=N``) when the result
is exactly the run that N epochs from the start would have given:

* the method's recipe is one stage trained for ``train.epochs`` epochs (``single``, ``mc_dropout``,
  ``batch_ensemble``, ``mimo``, ``packed``, ...); recipes of several stages (a deep ensemble's members one after
  another, a parent and its children) cannot be continued, because their later stages were trained from the
  earlier ones' end;
* the learning-rate schedule does not depend on the run's length: ``constant`` or ``step`` (fixed milestones, in
  epochs; an optional warm-up of fixed length). ``cosine``, ``onecycle``, ``cyclic_cosine`` and ``flat_linear``
  are functions of t/T: the run has already decayed to the end of its T-epoch schedule, and continuing it is not
  the N-epoch run (restarting the decay would be a warm restart, Loshchilov & Hutter 2017, another recipe).
  Those are refused with the alternative (a new run with ``--set train.epochs=N``).

The optimiser and scheduler state of the finished stage are kept in the final checkpoint (``finished_stage``),
so the continued run picks up the momentum buffers and step count where the last epoch left them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemblekit.atomic import write_json
from ensemblekit.config import Config, config_to_dict
from ensemblekit.errors import UserError, shorten
from ensemblekit.training.checkpoint import load_checkpoint, save_checkpoint

LENGTH_FREE_SCHEDULES = ("constant", "step")
"""Schedules whose learning rate at epoch e does not depend on the total number of epochs."""

STALE_FILES = ("eval.json", "ood.json", "corruptions.json", "interpolation.json")
"""Results computed from ``model.pt`` that a later change of the model (grow, more epochs) makes stale."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if d else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): d}


def config_differences(saved: Config, current: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted config fields whose values differ, as ``{field: (saved, current)}`` (``runtime`` and ``meta`` ignored)."""
    a, b = config_to_dict(saved), config_to_dict(current)
    for d in (a, b):
        d.pop("runtime", None)
        d.pop("meta", None)
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def describe_differences(diffs: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    """``train.lr 0.1 -> 0.05, method.members 2 -> 3 (+1 more)``: values shortened."""
    parts = [f"{k} {shorten(old, 24)} -> {shorten(new, 24)}" for k, (old, new) in list(diffs.items())[:limit]]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(parts) + more


def check_resume_config(run_dir: Path, saved: Config, cfg: Config, recipe: Callable[[], list]) -> bool:
    """Refuse a resume whose config differs from the run's own, naming the fields; allow ``train.epochs`` to grow.

    Args:
        run_dir: The run directory.
        saved: The run's ``config.yaml``.
        cfg: The config given to ``--resume``.
        recipe: Builds ``cfg``'s stages (called only when ``train.epochs`` grew).

    Returns:
        Whether the run is being extended (``train.epochs`` grew).
    """
    diffs = config_differences(saved, cfg)
    if not diffs:
        return False
    if set(diffs) != {"train.epochs"} or cfg.train.epochs <= saved.train.epochs:
        raise UserError(
            f"the config differs from the one {run_dir} was started with: {describe_differences(diffs)}; resume "
            "without changes (only runtime.* may change, and train.epochs may grow for some recipes)"
        )
    old, new = saved.train.epochs, cfg.train.epochs
    stages = recipe()
    cannot = f"cannot continue {run_dir} from {old} to {new} epochs"
    alternative = f"start a new run with --set train.epochs={new} instead"
    if len(stages) != 1 or stages[0].epochs != new:
        raise UserError(
            f"{cannot}: {cfg.method.name}'s recipe has {len(stages)} stage(s) ({', '.join(s.name for s in stages)}), "
            f"and only a recipe of one stage trained for train.epochs can be extended; {alternative}"
        )
    stage = stages[0]
    schedule = stage.schedule.name  # the stage's own (a method may replace train.schedule, e.g. snapshot's cycles)
    if schedule not in LENGTH_FREE_SCHEDULES:
        raise UserError(
            f"{cannot}: its {schedule} schedule depends on the run's length (it has already decayed to the end of "
            f"{old} epochs), so the result would not be the {new}-epoch run; only constant and step schedules can "
            f"be extended; {alternative}"
        )
    if stage.hooks.at_end or stage.hooks.after_epoch:
        raise UserError(
            f"{cannot}: {cfg.method.name} acts at the end of its epochs or stage (snapshots, statistics), which a "
            f"longer run would have done at other times; {alternative}"
        )
    return True


def rewind_finished_checkpoint(path: Path, old_epochs: int) -> None:
    """Turn a finished single-stage run's final checkpoint into the checkpoint after its last epoch.

    The final checkpoint sits between stages (stage 1, epoch 0) and holds the finished stage's optimiser and
    scheduler under ``finished_stage``; the rewound one is at (stage 0, epoch ``old_epochs``, step 0) with that
    state, which the engine then continues up to the new ``train.epochs``. A checkpoint still inside its stage
    (an interrupted run) is left as it is.
    """
    state = load_checkpoint(path)
    if state.get("stage_index", 0) == 0:
        return
    finished = state.get("finished_stage")
    if state.get("stage_index") != 1 or not isinstance(finished, dict):
        raise UserError(
            f"cannot continue {path.parent.parent}: its final checkpoint does not hold the optimiser state (written "
            "by an older version of ensemblekit); start a new run with the larger train.epochs instead"
        )
    state.pop("finished_stage")
    state.update(stage_index=0, epoch=old_epochs, step=0, epoch_accumulators={}, **finished)
    save_checkpoint(path, state)


def mark_stale(run_dir: Path, reason: str) -> list[str]:
    """Mark results computed from an older ``model.pt`` as stale: ``"stale": reason`` is added to each file.

    The values stay readable (``ensemblekit evaluate`` writes fresh ones); returns the names of the marked files.
    """
    import json

    marked = []
    for name in STALE_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            record["stale"] = reason
            write_json(path, record)
            marked.append(name)
    return marked
