"""Load a finished run for extra evaluations, and score ``uint8`` images with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ensemblekit.config import Config
from ensemblekit.data import DataBundle, ImageTensors
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError
from ensemblekit.run_dir import read_run_config
from ensemblekit.training.evaluate import collect_member_probs


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


def load_run(run_dir: str | Path, batch_size: int | None = None) -> LoadedRun:
    """Rebuild a finished run's ensemble from ``config.yaml`` and ``model.pt`` (as ``ensemblekit evaluate`` does)."""
    from ensemblekit.runner import build_ensemble, load_model_into, load_run_data, use_channels_last

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    model_path = run_dir / "model.pt"
    if not model_path.is_file():
        raise UserError(f"{run_dir} has no model.pt (the run has not finished)")
    data = load_run_data(cfg)
    _, ensemble = build_ensemble(cfg, data.num_classes, len(data.train.labels))
    load_model_into(model_path, ensemble, cfg)
    wants_gpu = cfg.runtime.accelerator in ("auto", "cuda", "gpu")
    device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
    ensemble.to(device)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        ensemble.to(memory_format=torch.channels_last)
    if cfg.runtime.num_threads is not None:
        torch.set_num_threads(cfg.runtime.num_threads)
    return LoadedRun(run_dir, cfg, data, ensemble, device, channels_last, batch_size or cfg.data.eval_batch_size)
