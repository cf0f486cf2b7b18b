"""Train, evaluate and describe runs: the functions behind the CLI.

``train(cfg, out)`` runs the whole pipeline: config -> data + backbone -> the method builds the ensemble ->
the engine runs the method's stages -> metrics and costs -> run directory.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.config import Config, config_to_dict
from ensemblekit.data import DataBundle, load_data
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError, config_error, first_line
from ensemblekit.methods import Method, build_method
from ensemblekit.metrics import (
    TrainCostMeter,
    calibrated_nll,
    combine_probs,
    count_parameters,
    ensemble_metrics,
    inference_flops,
    member_metrics,
    reliability_bins,
)
from ensemblekit.metrics.costs import inference_parameter_count
from ensemblekit.metrics.sparse_costs import sparse_model_costs
from ensemblekit.resolve import resolve_method_section
from ensemblekit.run_dir import (
    checkpoint_path,
    prepare_run_dir,
    read_run_config,
    write_json,
    write_run_config,
)
from ensemblekit.run_lock import run_lock
from ensemblekit.training.checkpoint import atomic_torch_save, load_checkpoint
from ensemblekit.training.engine import Engine
from ensemblekit.training.evaluate import collect_member_probs
from ensemblekit.training.packed_members import pack_member_stages, repack_like
from ensemblekit.training.progress import Progress
from ensemblekit.training.replica_bn import use_replica_batchnorm

MODEL_FORMAT = 1


def make_fabric(cfg: Config):
    """A launched Lightning Fabric for the config's ``runtime`` section."""
    from lightning.fabric import Fabric

    rt = cfg.runtime
    if rt.num_threads is not None:
        torch.set_num_threads(rt.num_threads)
    accelerator = rt.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "32-true" if rt.precision == "32" else rt.precision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fabric = Fabric(
                accelerator=accelerator,
                devices=rt.devices,
                num_nodes=rt.num_nodes,
                strategy=rt.strategy,
                precision=precision,
            )
        except (ValueError, RuntimeError, TypeError) as exc:
            raise config_error("runtime", first_line(exc)) from None
        fabric.launch()
    if rt.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = use_cudnn_benchmark(cfg, fabric.device)
    return fabric


def use_cudnn_benchmark(cfg: Config, device: torch.device) -> bool:
    """Whether cuDNN autotunes its convolution algorithms (``auto``: on CUDA unless ``runtime.deterministic``)."""
    setting = cfg.runtime.cudnn_benchmark
    return setting == "on" or (setting == "auto" and device.type == "cuda" and not cfg.runtime.deterministic)


def use_fused_optimizer(cfg: Config, device: torch.device) -> bool:
    """Whether SGD/AdamW use PyTorch's fused kernels (``auto``: on CUDA)."""
    setting = cfg.runtime.fused_optimizer
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def eval_autocast_dtype(cfg: Config) -> torch.dtype | None:
    """Autocast dtype of evaluation forwards: the run's mixed precision unless ``runtime.eval_precision: 32``."""
    if cfg.runtime.eval_precision == "32":
        return None
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(cfg.runtime.precision)


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether to run in channels-last memory format.

    ``auto``: on CPU and CUDA, where convolutions run faster in it (oneDNN on CPU, tensor-core cuDNN kernels on
    CUDA; the built-in models are all convolutional).
    """
    setting = cfg.runtime.channels_last
    return setting == "on" or (setting == "auto" and device.type in ("cpu", "cuda"))


def load_run_data(cfg: Config, quiet: bool = False) -> DataBundle:
    """The data bundle the config describes (``quiet``: no download progress on stderr)."""
    d = cfg.data
    return load_data(
        d.name,
        root=d.root,
        train_size=d.train_size,
        test_size=d.test_size,
        val_size=d.val_size,
        seed=d.seed,
        download=d.download,
        classes=d.classes,
        image_size=d.image_hw(),
        progress="quiet" if quiet else "auto",
    )


def build_ensemble(cfg: Config, num_classes: int, train_size: int) -> tuple[Method, Ensemble]:
    """The method and its freshly initialised ensemble (initialisation seeded by ``train.seed``)."""
    method = build_method(cfg, num_classes, train_size)
    state = torch.get_rng_state()
    torch.manual_seed(cfg.train.seed)
    try:
        ensemble = method.build()
    finally:
        torch.set_rng_state(state)
    if method.combine != "probs":
        ensemble.combine = method.combine
    if cfg.train.replica_batch_size:
        for module in method.state_modules(ensemble).values():
            use_replica_batchnorm(module, cfg.train.replica_batch_size, method.batch_tile())
    return method, ensemble


def describe_costs(method: Method, ensemble: nn.Module, image_shape: tuple[int, ...] = (3, 32, 32)) -> dict[str, Any]:
    """Parameters (also those used at inference), inference FLOPs per image and FLOPs relative to the single net."""
    with torch.random.fork_rng(devices=[]):
        single = method.single_backbone()
        shape = (1, *image_shape)
        single_flops = inference_flops(single, shape)
        flops = inference_flops(ensemble, shape)
        used = inference_parameter_count(ensemble, shape)  # a stochastic forward (MC dropout) draws no global RNG
    counts = count_parameters(ensemble)
    return {
        "params": counts["params"],
        "unique_params": counts["unique_params"],
        "inference_params": used,
        "trainable_params": counts["trainable_params"],
        "inference_flops": flops,
        "single_inference_flops": single_flops,
        "inference_flops_vs_single": flops / single_flops if single_flops else float("nan"),
        "single_params": count_parameters(single)["unique_params"],
    }


def model_cost_fields(costs: dict[str, Any]) -> dict[str, Any]:
    """The parameter and inference-FLOP fields of ``metrics.json`` costs (from :func:`describe_costs`).

    ``single_inference_flops`` is the unit of the ``*_vs_single`` ratios and of the epoch-equivalents.
    """
    keys = ("params", "unique_params", "inference_params", "inference_flops", "inference_flops_vs_single")
    return {
        **{k: costs[k] for k in keys},
        "single_inference_flops": costs["single_inference_flops"],
        "single_params": costs["single_params"],
    }


def make_engine(
    cfg: Config,
    fabric,
    data: DataBundle,
    modules: dict[str, nn.Module],
    costs: dict[str, Any],
    *,
    run_dir: Path | None,
    progress: str = "auto",
) -> Engine:
    """The engine of a run: ``modules`` moved to the device (channels-last where the config wants it).

    Seeds torch with ``train.seed``; the cost meter counts in units of the single backbone of ``costs``.
    """
    channels_last = use_channels_last(cfg, fabric.device)
    for m in modules.values():
        m.to(fabric.device)
        if channels_last:
            m.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.train.seed)
    return Engine(
        fabric,
        data,
        modules,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        augment=cfg.data.augment,
        cost_meter=TrainCostMeter(costs["single_inference_flops"], len(data.train.labels)),
        run_dir=run_dir,
        progress=Progress(
            progress, every_seconds=cfg.runtime.progress_every_seconds, every_steps=cfg.runtime.progress_every_steps
        ),
        max_steps_per_epoch=cfg.train.max_steps_per_epoch,
        channels_last=channels_last,
        max_loss=cfg.train.max_loss,
        crop_padding=cfg.data.crop_padding,
        flip=cfg.data.flip,
        logger=cfg.runtime.logger,
        log_every_steps=cfg.runtime.log_every_steps,
        fused_optimizer=use_fused_optimizer(cfg, fabric.device),
        eval_autocast=eval_autocast_dtype(cfg),
        compile_mode=None if cfg.runtime.compile == "off" else cfg.runtime.compile,
    )


def _num_classes_hint(cfg: Config) -> int | None:
    if cfg.data.classes is not None:
        return len(cfg.data.classes)
    return {"cifar10": 10, "cifar100": 100, "synthetic": 10}.get(cfg.data.name)


def describe(cfg: Config) -> dict[str, Any]:
    """Build the ensemble without training and return its costs (the ``costs`` keys of ``metrics.json``).

    Masked methods (``fission``, ``subnetwork``) also report the sparse model costs after running their pruning on
    the untrained ensemble; ``sparse_costs`` says whether that is exact or an estimate (random data).
    """
    num_classes = _num_classes_hint(cfg)
    train_size = cfg.data.train_size or 50000
    image_shape = (3, 32, 32)
    if num_classes is None:
        data = load_run_data(cfg)
        num_classes, train_size = data.num_classes, len(data.train.labels)
        image_shape = tuple(data.train.images.shape[1:])
    method, ensemble = build_ensemble(cfg, num_classes, train_size)
    costs = describe_costs(method, ensemble, image_shape)
    nets = method.sparse_nets(ensemble)
    if nets is not None:  # masked methods: run their pruning (random data where it needs data) for sparse costs
        with torch.random.fork_rng(devices=[]):
            note = method.estimate_sparsity(ensemble, image_shape)
        costs.update({**sparse_model_costs(nets, costs, (1, *image_shape)), "sparse_costs": note})
    return {
        "method": cfg.method.name,
        "backbone": cfg.model.name,
        "num_members": ensemble.num_members,
        "combine": ensemble.combine,
        **costs,
    }


def evaluate_ensemble(
    ensemble: Ensemble,
    data: DataBundle,
    split: str,
    batch_size: int,
    fabric=None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Metrics of ``ensemble`` on ``split``; with a validation split, also the temperature-scaled NLL.

    ``autocast_dtype`` runs the forwards under autocast (the run's precision); softmax and metrics are float32.
    """
    split_data = data.test if split == "test" else data.val
    if split_data is None:
        raise UserError(f"this run has no {split} split (data.val_size is 0)")
    kw = {
        "mean": data.mean,
        "std": data.std,
        "batch_size": batch_size,
        "fabric": fabric,
        "channels_last": channels_last,
        "autocast_dtype": autocast_dtype,
    }
    probs, labels = collect_member_probs(ensemble, split_data, **kw)
    if not bool(torch.isfinite(probs).all()):
        raise UserError(
            f"the ensemble's {split} predictions are not finite (NaN/inf weights or statistics): the training "
            "diverged; try a lower train.lr or train.grad_clip"
        )
    metrics = ensemble_metrics(probs, labels, combine=ensemble.combine)
    result: dict[str, Any] = {
        "split": split,
        "metrics": metrics,
        "members": member_metrics(probs, labels),
        "reliability": reliability_bins(combine_probs(probs, ensemble.combine), labels),
    }
    if data.val is not None and split == "test":
        val_probs, val_labels = collect_member_probs(ensemble, data.val, **kw)
        cal = calibrated_nll(
            combine_probs(val_probs, ensemble.combine),
            val_labels,
            combine_probs(probs, ensemble.combine),
            labels,
        )
        metrics["calibrated_nll"] = cal["nll"]
        metrics["temperature"] = cal["temperature"]
    return result


def model_identity(cfg: Config) -> dict[str, Any]:
    """What ``model.pt`` records of the config that made it: everything that shapes the trained ensemble.

    The ``method`` and ``model`` sections and the data set's name and classes; an edited ``config.yaml`` that
    differs here no longer describes the weights (``evaluate`` would report them under another method).
    """
    d = config_to_dict(cfg)
    return {"method": d["method"], "model": d["model"], "data": {k: d["data"][k] for k in ("name", "classes")}}


def model_inputs(data: DataBundle) -> dict[str, Any]:
    """What a predictor needs to know of the data a model was trained on (``model.pt`` ``inputs``).

    Class names, the per-channel normalisation mean and std, the input shape ``[C, H, W]`` and the number of
    training images (some methods size their ensemble by it).
    """
    return {
        "classes": [str(c) for c in data.classes],
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "image_shape": [int(v) for v in data.train.images.shape[1:]],
        "train_size": len(data.train.labels),
    }


def save_model(path: Path, cfg: Config, ensemble: nn.Module, data: DataBundle | None = None) -> None:
    """Write the final ensemble weights (loaded later with ``weights_only=True``) and what made them.

    Besides the weights, ``model.pt`` holds the resolved config (``config``), the ``identity`` checked against
    ``config.yaml``, the ensemble's ``combine`` rule and member count and, given ``data``, the ``inputs`` of
    :func:`model_inputs`: with these :func:`ensemblekit.load` needs nothing but the file.
    """
    state = {
        "format": MODEL_FORMAT,
        "method": cfg.method.name,
        "backbone": cfg.model.name,
        "identity": model_identity(cfg),
        "config": config_to_dict(cfg),
        "combine": str(getattr(ensemble, "combine", "probs")),
        "num_members": int(getattr(ensemble, "num_members", 1)),
        "state_dict": {k: v.detach().cpu() for k, v in ensemble.state_dict().items()},
    }
    if data is not None:
        state["inputs"] = model_inputs(data)
    atomic_torch_save(path, state)


def _identity_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += _identity_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [prefix.rstrip(".")]


def check_model_identity(path: Path, state: dict[str, Any], cfg: Config) -> None:
    """Refuse a ``model.pt`` that another config made (an edited ``config.yaml``), naming the fields that differ.

    Files written before the identity was recorded are checked on their method and backbone names only.
    """
    current = model_identity(cfg)
    saved = state.get("identity")
    if isinstance(saved, dict) and isinstance(saved.get("method"), dict):  # recorded before options were resolved
        saved = {**saved, "method": resolve_method_section(saved["method"])}
    if saved is None:
        saved = {"method": {"name": state.get("method")}, "model": {"name": state.get("backbone")}}
        current = {"method": {"name": cfg.method.name}, "model": {"name": cfg.model.name}}
    diff = _identity_differences(saved, current)
    if diff:
        fields = ", ".join(diff[:5]) + (f" (+{len(diff) - 5} more)" if len(diff) > 5 else "")
        raise UserError(
            f"{path} was trained with another config than {path.parent / 'config.yaml'} describes (differs in: "
            f"{fields}); was config.yaml edited?"
        )


def read_model_file(path: Path) -> dict[str, Any]:
    """``model.pt``'s contents (``weights_only`` load), refused in one line when it is not an ensemblekit model."""
    state = load_checkpoint(path)
    if state.get("format") != MODEL_FORMAT or "state_dict" not in state:
        raise UserError(f"{path} is not an ensemblekit model file")
    return state


def load_weights(path: Path, ensemble: nn.Module, state: dict[str, Any]) -> None:
    """Load :func:`read_model_file`'s weights into a freshly built ensemble; a mismatch is one line."""
    try:
        ensemble.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path} does not match the run's config ({first_line(exc)})") from None


def load_model_into(path: Path, ensemble: nn.Module, cfg: Config | None = None) -> None:
    """Load ``model.pt`` weights into a freshly built ensemble (checked against ``cfg`` when given)."""
    state = read_model_file(path)
    if cfg is not None:
        check_model_identity(path, state, cfg)
    load_weights(path, ensemble, state)


def _same_run(a: Config, b: Config) -> bool:
    """Whether two configs describe the same run (``runtime`` and ``meta`` aside)."""
    from ensemblekit.run_extend import config_differences

    return not config_differences(a, b)


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
    schedule may be continued with a larger ``train.epochs`` (:mod:`ensemblekit.run_extend`). ``data`` gives the
    data directly (:func:`ensemblekit.fit`) instead of the config's.
    """
    from ensemblekit.run_extend import check_resume_config, mark_stale, rewind_finished_checkpoint
    from ensemblekit.training.logs import check_logger_available

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
    from ensemblekit.training.logs import RunLogger

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
    if has_checkpoint:  # continue in the execution form the checkpoint was written in
        saved_names = load_checkpoint(checkpoint_path(run_dir)).get("stage_names")
        stages = (repack_like(recipe, saved_names) if saved_names else None) or stages
    for note in notes:
        engine.progress.message(note)
    engine.logger.event("train_start", method=cfg.method.name, stages=[s.name for s in stages], resume=resume)
    engine.run(stages, resume_from=checkpoint_path(run_dir) if has_checkpoint else None)

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
            **method.extra_costs(ensemble, tuple(data.train.images.shape[1:])),
        },
        "data": {
            "train_size": len(data.train.labels),
            "val_size": 0 if data.val is None else len(data.val.labels),
            "test_size": len(data.test.labels),
            "source": data.source,
        },
    }
    if hasattr(method, "update_record"):  # method-specific entries (e.g. sparse costs of subnetwork children)
        method.update_record(record, ensemble, engine)
    if fabric.global_rank == 0:
        save_model(run_dir / "model.pt", cfg, ensemble, data)
        write_json(run_dir / "metrics.json", record)
        engine.logger.event("train_end", metrics=result["metrics"])
    return record


def evaluate(run_dir: str | Path, split: str = "test", batch_size: int | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run from its ``config.yaml`` and ``model.pt``; write ``eval.json``."""
    from ensemblekit.evaluation.loading import load_run

    with run_lock(run_dir, "evaluate"):
        return _evaluate_locked(load_run(run_dir, batch_size), split)


def _evaluate_locked(run, split: str) -> dict[str, Any]:
    from ensemblekit.training.logs import RunLogger

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.cfg.train.seed + 1)
        result = evaluate_ensemble(run.ensemble, run.data, split, run.batch_size, None, run.channels_last)
    record = {"run": str(run.run_dir), "method": run.cfg.method.name, "num_members": run.ensemble.num_members}
    record.update(result)
    write_json(run.run_dir / "eval.json", record)
    RunLogger(run.run_dir).event("evaluate", split=split, device=str(run.device), metrics=result["metrics"])
    return record


def interpolate(run_dir: str | Path, a: int = 0, b: int = 1, points: int = 11, split: str = "test") -> dict[str, Any]:
    """Accuracy/NLL along the line between two members' parameters (BN in train mode); writes interpolation.json.

    See ``ensemblekit.analysis.interpolation.interpolate_members`` (MixtureEnsembles paper, section 5.3).
    """
    with run_lock(run_dir, "interpolate"):
        return _interpolate_locked(run_dir, a, b, points, split)


def _interpolate_locked(run_dir: str | Path, a: int, b: int, points: int, split: str) -> dict[str, Any]:
    from ensemblekit.analysis.interpolation import interpolate_members
    from ensemblekit.evaluation.loading import load_run

    run = load_run(run_dir)
    split_data = run.data.test if split == "test" else run.data.val
    if split_data is None:
        raise UserError(f"this run has no {split} split (data.val_size is 0)")
    curve = interpolate_members(
        run.ensemble, a, b, split_data, run.data.mean, run.data.std, points, batch_size=run.batch_size
    )
    record = {"run": str(run.run_dir), "method": run.cfg.method.name, "members": [a, b], "split": split, "curve": curve}
    write_json(run.run_dir / "interpolation.json", record)
    return record


def default_out_dir(cfg: Config) -> Path:
    """``runs/<method>-<model>-<dataset>-<n>``: the first free name."""
    base = Path(os.environ.get("ENSEMBLEKIT_RUNS", "runs"))
    stem = f"{cfg.method.name}-{cfg.model.name}-{cfg.data.name}"
    n = 0
    while (base / f"{stem}-{n}").exists():
        n += 1
    return base / f"{stem}-{n}"
