"""Dynamic growth of a finished Subnetwork Ensemble run: ``ensemblekit grow RUN_DIR --children K``.

Children can be produced at any time from the stored parent (Whitaker, "Neural Subnetwork Ensembles", 2023;
docs/methods/subnetwork.md). ``grow`` rebuilds the run's ensemble with ``members + K`` children, loads ``model.pt``
(parent and existing children, bitwise), runs only the new children's ``child_i_make``/``child_i`` stages, re-evaluates
on the test split and rewrites ``model.pt``, ``config.yaml`` and ``metrics.json`` (each atomically). The new stages'
epochs are appended to ``log.csv`` (and ``events.jsonl``); ``eval.json``, ``ood.json``, ``corruptions.json`` and
``interpolation.json``, computed from the smaller ensemble, are marked ``"stale"``. Costs add the new stages to the
recorded ones; the previous metrics are kept under ``history``. Child i's randomness depends only on (seed, i, its
group), so a grown run equals a run trained from the start with the grown ``config.yaml`` (for a partition with
``partition_parts`` unset, that config records the run's group size; see :func:`grown_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ensemblekit.atomic import write_json
from ensemblekit.config import config_to_dict
from ensemblekit.errors import UserError
from ensemblekit.methods.subnetwork.options import SubnetworkOptions, group_size, is_partitioned
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs.costs import describe_costs, model_cost_fields
from ensemblekit.runs.directory import read_metrics, read_run_config, write_run_config
from ensemblekit.runs.evaluate import evaluate_ensemble
from ensemblekit.runs.extend import mark_stale
from ensemblekit.runs.fabric import make_engine, make_fabric
from ensemblekit.runs.loading import build_ensemble, check_model_identity, load_run_data, save_model
from ensemblekit.runs.lock import run_lock
from ensemblekit.runs.record import add_method_extras, record_context, validate_record
from ensemblekit.training.checkpoint import load_checkpoint
from ensemblekit.training.logs import RunLogger

TOTAL_KEYS = ("train_flops", "train_epoch_equivalents", "train_seconds", "images_seen")


def grown_config(cfg, old_members: int, children: int):
    """The run's config with ``children`` more members (and candidates, when the config names them).

    A partitioned run (``masks: partition`` or ``noise_decomposition``) whose ``partition_parts`` was unset used
    groups of ``old_members`` children (the default k is the number of candidates); the grown config records that
    k, so the new children form new groups of the same size (and density 1/k) instead of sub-masks of a larger
    partition. Training the grown config from scratch gives the grown run.
    """
    raw = config_to_dict(cfg)
    raw.pop("meta", None)
    method = raw["method"]
    opts: SubnetworkOptions = cfg.method.resolved_options()
    if is_partitioned(opts) and opts.partition_parts is None:
        if old_members < 2:
            raise UserError(
                "grow: this run's partition has one part (the parent itself); set method.partition_parts and retrain"
            )
        method["partition_parts"] = old_members
    method["members"] = old_members + children
    if method.get("candidates") is not None:
        method["candidates"] = old_members + children
    return config_from_dict(raw)


def grow(run_dir: str | Path, children: int, *, quiet: bool = True) -> dict[str, Any]:
    """Add ``children`` tuned children to the finished ``subnetwork`` run in ``run_dir``; return the new record.

    The run directory's writer lock is held throughout (see :mod:`ensemblekit.runs.lock`).
    """
    with run_lock(run_dir, "grow"):
        return _grow(run_dir, children, quiet=quiet)


def _grow(run_dir: str | Path, children: int, *, quiet: bool = True) -> dict[str, Any]:

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if cfg.method.name != "subnetwork":
        raise UserError(f"grow: {run_dir} is a {cfg.method.name} run; only subnetwork runs can grow")
    if children < 1:
        raise UserError(f"grow: --children must be >= 1, got {children}")
    model_path = run_dir / "model.pt"
    if not model_path.is_file():
        raise UserError(f"grow: {run_dir} has no model.pt (the run has not finished)")
    old_record = read_metrics(run_dir)
    old_opts: SubnetworkOptions = cfg.method.resolved_options()
    old_members = old_opts.members
    if old_opts.candidates not in (None, old_members):
        raise UserError("grow: this run selected its members from more candidates; growing it is not supported")
    _check_group_multiple(old_opts, children)  # before the grown config is resolved (it would refuse odd groups)
    new_cfg = grown_config(cfg, old_members, children)

    fabric = make_fabric(new_cfg)
    data = load_run_data(new_cfg)
    try:
        method, ensemble = build_ensemble(new_cfg, data.num_classes, len(data.train.labels))
    except UserError as exc:
        raise UserError(f"grow: cannot add {children} children: {exc}") from None
    saved = load_checkpoint(model_path)
    check_model_identity(model_path, saved, cfg)  # an edited config.yaml no longer describes model.pt
    _load_existing(ensemble, saved.get("state_dict"), model_path)

    costs = describe_costs(method, ensemble, tuple(data.train.images.shape[1:]))
    engine = make_engine(
        new_cfg, fabric, data, {"ensemble": ensemble}, costs, run_dir=None, progress="quiet" if quiet else "auto"
    )
    channels_last, meter = engine.channels_last, engine.cost_meter
    if fabric.global_rank == 0:
        engine.logger = RunLogger(run_dir, new_cfg.runtime.logger)  # log.csv goes on; checkpoints/last.pt is kept
    new = range(old_members, old_members + children)
    engine.run(method.child_stages(ensemble, new))

    torch.manual_seed(new_cfg.train.seed + 1)
    result = evaluate_ensemble(ensemble, data, "test", new_cfg.data.eval_batch_size, fabric, channels_last)
    added = meter.summary()
    stages = dict(old_record["costs"].get("stages", {}))
    stages.update(added["stages"])
    totals = {k: old_record["costs"].get(k, 0) + added[k] for k in TOTAL_KEYS}
    history = list(old_record.get("history", []))
    history.append({k: old_record[k] for k in ("num_members", "metrics", "costs") if k in old_record})
    record = {
        **{k: v for k, v in old_record.items() if k not in ("subnetwork", "history")},
        "num_members": ensemble.num_members,
        **{k: v for k, v in result.items() if k != "split"},  # metrics, members (and whatever evaluation adds)
        "costs": {
            **model_cost_fields(costs),
            **totals,
            "stages": stages,
        },
        "history": history,
    }
    add_method_extras(record, method, ensemble, record_context(engine, record["costs"]))
    record["subnetwork"]["grown"] = [*old_record.get("subnetwork", {}).get("grown", []), {"children": children}]
    validate_record(record)  # before anything is rewritten
    if fabric.global_rank == 0:
        save_model(model_path, new_cfg, ensemble, data)
        write_run_config(run_dir, new_cfg)
        write_json(run_dir / "metrics.json", record)
        stale = mark_stale(run_dir, f"computed before grow added {children} children to {old_members}")
        RunLogger(run_dir).event(
            "grow", children=children, members=ensemble.num_members, metrics=result["metrics"], stale=stale
        )
    return record


def _check_group_multiple(opts: SubnetworkOptions, children: int) -> None:
    """Refuse ``--children`` that cannot form whole groups (anti-random pairs, partitions of k) in one line.

    ``opts`` are the run's own options: an unset ``partition_parts`` is the run's group size (``members``), which
    :func:`grown_config` records.
    """
    size = group_size(opts, opts.candidates or opts.members)
    if size > 1 and children % size:
        what = f"{opts.masks} children come in pairs" if size == 2 else f"children come in groups of {size}"
        raise UserError(f"grow: this run's {what}; --children must be a multiple of {size}, got {children}")


def _load_existing(ensemble, state: dict | None, path: Path) -> None:
    """Load the saved parent and children into the first slots of the grown ensemble (shapes checked)."""
    if not isinstance(state, dict):
        raise UserError(f"grow: {path} is not an ensemblekit model file")
    target = ensemble.state_dict()
    merged = dict(target)
    for key, value in state.items():
        if key in ("selected", "val_scores"):
            continue
        if key not in target or tuple(target[key].shape) != tuple(value.shape):
            raise UserError(f"grow: {path} does not match the run's config ({key})")
        merged[key] = value
    ensemble.load_state_dict(merged)
