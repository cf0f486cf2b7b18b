"""Run loading, in one place: the data and the ensemble a config describes, ``model.pt`` I/O, finished runs.

* :func:`load_run_data` and :func:`build_ensemble`: what a config describes, freshly initialised.
* ``model.pt``: :func:`save_model` writes the weights with the config that made them; :func:`read_model_file`,
  :func:`check_model_identity` and :func:`load_weights` read them back (``weights_only``: no code runs).
* :func:`load_run`: a finished run rebuilt from ``config.yaml`` and ``model.pt``; :func:`same_run`; a run's recorded
  costs (:func:`recorded_costs`).
* :class:`RunFiles`: how methods that start from another run (a distillation teacher, a subnetwork parent) read it;
  methods sit below this layer and get it handed in (:class:`~ensemblekit.methods.base.RunReader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.atomic import atomic_torch_save
from ensemblekit.config import Config, config_to_dict
from ensemblekit.data import DataBundle, ImageTensors, load_data
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError, first_line
from ensemblekit.methods import Method, build_method
from ensemblekit.resolve import resolve_method_section
from ensemblekit.runs.directory import read_metrics, read_run_config
from ensemblekit.runs.extend import config_differences
from ensemblekit.runs.fabric import use_channels_last
from ensemblekit.training.checkpoint import load_checkpoint
from ensemblekit.training.evaluate import collect_member_probs
from ensemblekit.training.replica_bn import use_replica_batchnorm


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
    method = build_method(cfg, num_classes, train_size, RUN_FILES)
    state = torch.get_rng_state()
    torch.manual_seed(cfg.train.seed)
    try:
        ensemble = method.build()
    finally:
        torch.set_rng_state(state)
    if cfg.train.replica_batch_size:
        for module in method.state_modules(ensemble).values():
            use_replica_batchnorm(module, cfg.train.replica_batch_size, method.batch_tile())
    return method, ensemble


MODEL_FORMAT = 1
"""The ``format`` of ``model.pt`` files this version writes and reads."""


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


@dataclass
class LoadedRun:
    """A finished run ready to evaluate: its config, data, trained ensemble and where it runs."""

    run_dir: Path
    cfg: Config
    data: DataBundle
    ensemble: Ensemble
    device: torch.device
    channels_last: bool
    batch_size: int
    precision: str = "32"  # "bf16": forward passes under bfloat16 autocast

    def member_probs(self, split: ImageTensors) -> torch.Tensor:
        """Member probabilities ``[M, N, C]`` on ``split`` (normalised with the run's statistics).

        The torch RNG is seeded with ``train.seed + 1`` as in ``ensemblekit evaluate`` (stochastic members
        such as MC dropout), and restored afterwards.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 1)
            probs, _ = collect_member_probs(
                self.ensemble,
                split,
                mean=self.data.mean,
                std=self.data.std,
                batch_size=self.batch_size,
                channels_last=self.channels_last,
                autocast_dtype=torch.bfloat16 if self.precision == "bf16" else None,
            )
        return probs


def trained_ensemble(run_dir: Path, cfg: Config, num_classes: int, train_size: int) -> Ensemble:
    """A finished run's ensemble as ``cfg`` builds it, with its ``model.pt`` weights (another config's are refused)."""
    model_path = Path(run_dir) / "model.pt"
    if not model_path.is_file():
        raise UserError(f"{run_dir} has no model.pt (the run has not finished)")
    _, ensemble = build_ensemble(cfg, num_classes, train_size)
    load_model_into(model_path, ensemble, cfg)
    return ensemble


def load_run(run_dir: str | Path, batch_size: int | None = None) -> LoadedRun:
    """Rebuild a finished run's ensemble from ``config.yaml`` and ``model.pt`` (as ``ensemblekit evaluate`` does)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if not (run_dir / "model.pt").is_file():  # refused before the data load
        raise UserError(f"{run_dir} has no model.pt (the run has not finished)")
    data = load_run_data(cfg)
    ensemble = trained_ensemble(run_dir, cfg, data.num_classes, len(data.train.labels))
    wants_gpu = cfg.runtime.accelerator in ("auto", "cuda", "gpu")
    device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
    ensemble.to(device)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        ensemble.to(memory_format=torch.channels_last)
    if cfg.runtime.num_threads is not None:
        torch.set_num_threads(cfg.runtime.num_threads)
    return LoadedRun(run_dir, cfg, data, ensemble, device, channels_last, batch_size or cfg.data.eval_batch_size)


def same_run(a: Config, b: Config) -> bool:
    """Whether two configs describe the same run (``runtime`` and ``meta`` aside)."""
    return not config_differences(a, b)


def recorded_costs(run_dir: str | Path) -> dict[str, Any]:
    """The ``costs`` a finished run recorded in its ``metrics.json`` (``{}`` when it recorded none)."""
    costs = read_metrics(Path(run_dir)).get("costs", {})
    return costs if isinstance(costs, dict) else {}


class RunFiles:
    """The :class:`~ensemblekit.methods.base.RunReader` the run layer hands every method it builds."""

    def config(self, run_dir: Path) -> Config:
        return read_run_config(Path(run_dir))

    def model_state(self, run_dir: Path) -> dict[str, torch.Tensor]:
        return read_model_file(Path(run_dir) / "model.pt")["state_dict"]

    def recorded_costs(self, run_dir: Path) -> dict[str, Any]:
        return recorded_costs(run_dir)

    def trained_ensemble(self, run_dir: Path, num_classes: int, train_size: int) -> nn.Module:
        return trained_ensemble(Path(run_dir), read_run_config(Path(run_dir)), num_classes, train_size)


RUN_FILES = RunFiles()
