"""Train a run: ``train(cfg, out)`` runs the whole pipeline into a run directory.

config -> data + backbone -> the method builds the ensemble -> the engine runs the method's stages -> metrics and
costs -> ``metrics.json`` and ``model.pt``. The run directory is locked while it trains
(:mod:`ensemblekit.runs.lock`); ``--resume`` continues from its checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from ensemblekit.atomic import write_json
from ensemblekit.config import Config
from ensemblekit.data import DataBundle
from ensemblekit.errors import UserError
from ensemblekit.runs.costs import describe_costs, model_cost_fields
from ensemblekit.runs.directory import checkpoint_path, prepare_run_dir, read_run_config, write_run_config
from ensemblekit.runs.evaluate import evaluate_ensemble
from ensemblekit.runs.extend import check_resume_config, mark_stale, rewind_finished_checkpoint
from ensemblekit.runs.fabric import make_engine, make_fabric, make_rank_fabric
from ensemblekit.runs.loading import build_ensemble, load_run_data, save_model
from ensemblekit.runs.lock import run_lock
from ensemblekit.runs.record import add_method_extras, record_context, validate_record
from ensemblekit.training.checkpoint import load_checkpoint
from ensemblekit.training.logs import RunLogger, check_logger_available
from ensemblekit.training.member_parallel import MemberParallelRun, rank_paths
from ensemblekit.training.packed_members import pack_member_stages, repack_like


def train(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    progress: str = "auto",
    data: DataBundle | None = None,
) -> dict[str, Any]:
    """Train and evaluate a run in ``out``; return what was written to ``metrics.json``.

    With ``resume`` the run continues from ``out/checkpoints/last.pt`` with the run's own config (a different
    config is refused, naming the fields that differ); a finished single-stage run with a constant or step
    schedule may be continued with a larger ``train.epochs`` (:mod:`ensemblekit.runs.extend`). ``data`` gives the
    data directly (:func:`ensemblekit.fit`) instead of the config's.
    """
    check_logger_available(cfg.runtime.logger)
    run_dir = Path(out)
    fabric = make_fabric(cfg)
    data = load_run_data(cfg, quiet) if data is None else data  # missing data is refused before anything is written
    method, ensemble = build_ensemble(cfg, data.num_classes, len(data.train.labels))  # so is an unbuildable model
    with contextlib.ExitStack() as held:
        error, has_checkpoint = None, False
        if fabric.global_rank == 0:
            try:
                if resume and not (run_dir / "config.yaml").is_file():
                    raise UserError(f"nothing to resume in {run_dir}: no config.yaml (start it without --resume)")
                held.enter_context(run_lock(run_dir, "train", create=True))  # one writer per run directory
                has_checkpoint = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
                if resume:
                    saved = read_run_config(run_dir)
                    extend = check_resume_config(run_dir, saved, cfg, lambda: method.recipe(ensemble))
                    if has_checkpoint:
                        load_checkpoint(checkpoint_path(run_dir))  # a corrupt checkpoint is refused before any write
                    if extend:
                        _extend_run(run_dir, saved, cfg, has_checkpoint, mark_stale, rewind_finished_checkpoint)
                else:
                    write_run_config(run_dir, cfg)
            except UserError as exc:
                error = str(exc)
        if fabric.world_size > 1:
            error, has_checkpoint = fabric.broadcast((error, has_checkpoint), src=0)
        if error is not None:
            raise UserError(error)
        return _train_run(cfg, run_dir, fabric, data, method, ensemble, resume, has_checkpoint, quiet, progress)


def _extend_run(run_dir: Path, saved: Config, cfg: Config, has_checkpoint: bool, mark_stale, rewind) -> None:
    """Prepare a run whose ``train.epochs`` grew: rewind its final checkpoint, record the new config."""
    if has_checkpoint:
        rewind(checkpoint_path(run_dir), saved.train.epochs)
    write_run_config(run_dir, cfg)
    stale = mark_stale(run_dir, f"computed before train.epochs grew from {saved.train.epochs} to {cfg.train.epochs}")
    RunLogger(run_dir).event("extend", epochs_from=saved.train.epochs, epochs_to=cfg.train.epochs, stale=stale)


def _train_run(cfg, run_dir, fabric, data, method, ensemble, resume, has_checkpoint, quiet, progress) -> dict:
    """The rest of :func:`train`, run while the run directory is locked."""
    costs = describe_costs(method, ensemble, tuple(data.train.images.shape[1:]))
    engine = make_engine(
        cfg,
        fabric,
        data,
        method.state_modules(ensemble),
        costs,
        run_dir=run_dir,
        progress="quiet" if quiet else progress,
    )
    channels_last, meter = engine.channels_last, engine.cost_meter
    recipe = method.recipe(ensemble)
    stages, notes = pack_member_stages(
        recipe, cfg.runtime.member_execution, fabric.device, world_size=fabric.world_size
    )
    if has_checkpoint and not member_parallel(cfg, fabric):  # continue in the form the checkpoint was written in
        saved_names = load_checkpoint(checkpoint_path(run_dir)).get("stage_names")
        stages = (repack_like(recipe, saved_names) if saved_names else None) or stages
    for note in notes:
        engine.progress.message(note)
    engine.logger.event("train_start", method=cfg.method.name, stages=[s.name for s in stages], resume=resume)
    resume_from = checkpoint_path(run_dir) if has_checkpoint else None
    trainer = engine  # the engine whose loaders trained the stages (one process's data, member-parallel)
    if member_parallel(cfg, fabric):
        trainer = _rank_engine(cfg, fabric, data, method.state_modules(ensemble), costs, run_dir, quiet, progress)
        MemberParallelRun(engine, trainer, fabric).run(stages, resume_from=resume_from)
    else:
        engine.run(stages, resume_from=resume_from)

    torch.manual_seed(cfg.train.seed + 1)  # stochastic evaluation (MC dropout) is reproducible
    result = evaluate_ensemble(
        ensemble, data, "test", cfg.data.eval_batch_size, fabric, channels_last, engine.eval_autocast
    )
    train_costs = meter.summary()
    record = {
        "method": cfg.method.name,
        "backbone": cfg.model.name,
        "dataset": cfg.data.name,
        "num_members": ensemble.num_members,
        "combine": ensemble.combine,
        "metrics": result["metrics"],
        "members": result["members"],
        "reliability": result["reliability"],
        "costs": {
            **model_cost_fields(costs),
            "train_flops": train_costs["train_flops"],
            "train_epoch_equivalents": train_costs["train_epoch_equivalents"],
            "train_seconds": train_costs["train_seconds"],
            "images_seen": train_costs["images_seen"],
            "stages": train_costs["stages"],
        },
        "data": {
            "train_size": len(data.train.labels),
            "val_size": 0 if data.val is None else len(data.val.labels),
            "test_size": len(data.test.labels),
            "source": data.source,
        },
    }
    add_method_extras(record, method, ensemble, record_context(trainer, record["costs"]))
    if fabric.global_rank == 0:
        save_model(run_dir / "model.pt", cfg, ensemble, data)
        validate_record(record)  # the schema of metrics.json (runs/record.py)
        write_json(run_dir / "metrics.json", record)
        engine.logger.event("train_end", metrics=result["metrics"])
    return record


def member_parallel(cfg: Config, fabric) -> bool:
    """Whether this run trains member-parallel: ``runtime.parallel: members`` with more than one process."""
    return cfg.runtime.parallel == "members" and fabric.world_size > 1


def _rank_engine(cfg, fabric, data, modules, costs, run_dir, quiet, progress):
    """This rank's one-process engine: logs in ``ranks/<rank>/``, checkpoint ``checkpoints/rank<rank>.pt``."""
    log_dir, checkpoint = rank_paths(run_dir, fabric.global_rank)
    log_dir.mkdir(parents=True, exist_ok=True)
    shown = "quiet" if quiet or fabric.global_rank != 0 else progress
    rng = torch.get_rng_state()  # make_engine seeds torch: the run's RNG stays as the run's engine left it
    local = make_engine(cfg, make_rank_fabric(cfg, fabric), data, modules, costs, run_dir=log_dir, progress=shown)
    torch.set_rng_state(rng)
    local.checkpoint_path = checkpoint
    return local


def default_out_dir(cfg: Config) -> Path:
    """``runs/<method>-<model>-<dataset>-<n>``: the first free name."""
    base = Path(os.environ.get("ENSEMBLEKIT_RUNS", "runs"))
    stem = f"{cfg.method.name}-{cfg.model.name}-{cfg.data.name}"
    n = 0
    while (base / f"{stem}-{n}").exists():
        n += 1
    return base / f"{stem}-{n}"
