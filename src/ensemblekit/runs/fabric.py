"""The device side of a run: a launched Lightning Fabric, and the engine of a run with the config's runtime options.

Also the per-device defaults of the ``runtime`` section (``auto``: channels-last on CPU and CUDA, cuDNN autotuning
and fused optimisers on CUDA, evaluation in the run's mixed precision).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.config import Config
from ensemblekit.data import DataBundle
from ensemblekit.errors import config_error, first_line
from ensemblekit.metrics import TrainCostMeter
from ensemblekit.training.engine import Engine
from ensemblekit.training.progress import Progress


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


def make_rank_fabric(cfg: Config, fabric):
    """A one-process Fabric on this rank's device (member-parallel training: no DDP wrapping, no all-reduce).

    It shares the run's precision; its rank is 0 and its world size 1, whatever the launched ``fabric``'s are.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import SingleDeviceStrategy

    precision = "32-true" if cfg.runtime.precision == "32" else cfg.runtime.precision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerator = "cuda" if fabric.device.type == "cuda" else fabric.device.type
        return Fabric(accelerator=accelerator, strategy=SingleDeviceStrategy(device=fabric.device), precision=precision)


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
