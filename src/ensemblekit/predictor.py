"""Load a trained ensemble from its run directory and predict on new images.

Example:
    >>> import ensemblekit
    >>> predictor = ensemblekit.load("runs/deep_ensemble-resnet20-cifar10-0")  # doctest: +SKIP
    >>> out = predictor.predict(["cat.jpg", "folder_of_images/"])  # doctest: +SKIP
    >>> out.labels[:2], out.probs.shape, out.mutual_information.shape  # doctest: +SKIP

The predictor needs only ``model.pt``: it holds the resolved config, the class names, the normalisation
mean and std and the input size (:func:`ensemblekit.runs.loading.save_model`). Files written before these were
recorded are still loaded, from ``config.yaml`` and the training data (which must then still be found).

Uncertainty scores, in nats, from the member probabilities ``p_i`` (``[M, N, C]``):

* predictive entropy ``H(p̂) = -Σ_c p̂_c log p̂_c`` of the ensemble's prediction ``p̂`` (its combine rule:
  probability mean, or softmax of the mean logits for Network Fission Ensembles);
* mutual information ``I = H(p̄) - (1/M) Σ_i H(p_i)`` with ``p̄ = (1/M) Σ_i p_i`` (the BALD score of
  Houlsby et al., 2011; Depeweg et al., 2018): the members' disagreement, 0 for a single network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ensemblekit.config import Config
from ensemblekit.data import ImageTensors
from ensemblekit.data.images import images_to_tensor
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError
from ensemblekit.metrics.classification import combine_probs, entropy_per_sample
from ensemblekit.metrics.diversity import mutual_information_per_sample
from ensemblekit.resolve import config_from_dict
from ensemblekit.training.evaluate import collect_member_probs


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns for ``N`` images.

    Attributes:
        probs: The ensemble's class probabilities ``[N, C]`` (its combine rule).
        member_probs: Every member's class probabilities ``[M, N, C]``.
        entropy: Predictive entropy ``H(p̂)`` per image ``[N]`` (nats).
        mutual_information: ``H(p̄) - (1/M) Σ_i H(p_i)`` per image ``[N]`` (nats, >= 0).
        classes: Class names, indexed by label.
    """

    probs: torch.Tensor
    member_probs: torch.Tensor
    entropy: torch.Tensor
    mutual_information: torch.Tensor
    classes: list[str]

    @property
    def predicted(self) -> torch.Tensor:
        """The most probable label per image ``[N]``."""
        return self.probs.argmax(dim=-1)

    @property
    def labels(self) -> list[str]:
        """The most probable class name per image."""
        return [self.classes[int(i)] for i in self.predicted]

    @property
    def confidence(self) -> torch.Tensor:
        """The ensemble's probability of its predicted class per image ``[N]``."""
        return self.probs.max(dim=-1).values


def uncertainty(member_probs: torch.Tensor, combine: str = "probs") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ensemble probabilities ``[N, C]``, predictive entropy ``[N]`` and mutual information ``[N]`` (float32).

    See the module docstring for the formulas; the mutual information is clamped at 0 (rounding).
    """
    p = member_probs.double()
    probs = combine_probs(p, combine)
    entropy = entropy_per_sample(probs)
    mi = mutual_information_per_sample(entropy_per_sample(p), p.mean(dim=0)).clamp_min(0.0)
    return probs.float(), entropy.float(), mi.float()


@dataclass
class Predictor:
    """A trained ensemble ready to predict (see :func:`load`).

    Attributes:
        ensemble: The ensemble module (eval mode, on ``device``).
        cfg: The run's resolved config.
        classes: Class names, indexed by label.
        mean: Per-channel normalisation mean (pixels in ``[0, 1]``).
        std: Per-channel normalisation standard deviation.
        image_shape: The network's input ``(C, H, W)``.
        device: Where the ensemble runs.
        run_dir: The run directory it was loaded from.
    """

    ensemble: Ensemble
    cfg: Config
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]
    device: torch.device
    run_dir: Path

    @property
    def method(self) -> str:
        """The method's registered name."""
        return self.cfg.method.name

    @property
    def options(self) -> dict[str, Any]:
        """The method's resolved options (every option with its value)."""
        return self.cfg.method.options()

    @property
    def combine(self) -> str:
        """How the members' outputs are combined (``"probs"`` or ``"logits"``)."""
        return str(getattr(self.ensemble, "combine", "probs"))

    @property
    def num_members(self) -> int:
        """The number of members ``M``."""
        return int(self.ensemble.num_members)

    def prepare(self, images: Any) -> torch.Tensor:
        """``images`` (see :meth:`predict`) as one ``uint8 [N, 3, H, W]`` batch at the network's input size."""
        return images_to_tensor(images, (self.image_shape[1], self.image_shape[2]))

    def predict(self, images: Any, batch_size: int = 256) -> Prediction:
        """Predict ``images``: uint8 tensors ``[N, 3, H, W]``/``[3, H, W]``, PIL images, paths or folders, or a list.

        Images of another size are resized to cover the input size and centre-cropped. Stochastic members
        (MC dropout) are sampled with the seed ``train.seed + 1``, as ``ensemblekit evaluate`` does.
        """
        x = self.prepare(images)
        split = ImageTensors(x, torch.zeros(len(x), dtype=torch.int64), list(self.classes))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 1)
            member_probs, _ = collect_member_probs(
                self.ensemble, split, mean=self.mean, std=self.std, batch_size=batch_size
            )
        probs, entropy, mi = uncertainty(member_probs, self.combine)
        return Prediction(probs, member_probs, entropy, mi, list(self.classes))


def prediction_csv(prediction: Prediction, names: list[str]) -> str:
    """CSV text of ``prediction``: one row per image (``names``).

    Columns: image, predicted class, confidence, entropy, mutual information, then the ensemble's probability
    of every class (``p_<class>``).
    """
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["image", "prediction", "confidence", "entropy", "mutual_information"] + [f"p_{c}" for c in prediction.classes]
    )
    for i, name in enumerate(names):
        row = [
            name,
            prediction.labels[i],
            f"{float(prediction.confidence[i]):.6f}",
            f"{float(prediction.entropy[i]):.6f}",
            f"{float(prediction.mutual_information[i]):.6f}",
        ]
        writer.writerow(row + [f"{float(v):.6f}" for v in prediction.probs[i]])
    return buf.getvalue()


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here (use --device cpu)")
    return dev


def _saved_inputs(state: dict[str, Any], run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The config and inputs a ``model.pt`` records; older files: ``config.yaml`` and the training data."""
    from ensemblekit.runs import check_model_identity, load_run_data, model_inputs
    from ensemblekit.runs.directory import read_run_config

    if isinstance(state.get("config"), dict) and isinstance(state.get("inputs"), dict):
        return config_from_dict(state["config"]), state["inputs"]
    cfg = read_run_config(run_dir)
    check_model_identity(run_dir / "model.pt", state, cfg)
    return cfg, model_inputs(load_run_data(cfg))


def load(run_dir: str | os.PathLike[str], device: str | torch.device | None = None) -> Predictor:
    """Load the trained ensemble of a finished run as a :class:`Predictor`.

    Args:
        run_dir: The run directory (holding ``model.pt``).
        device: Where to run it (default: CUDA when available, else CPU).

    Raises:
        UserError: if there is no ``model.pt``, it is not an ensemblekit model, or it does not match its config.
    """
    from ensemblekit.methods import METHODS
    from ensemblekit.runs import build_ensemble, load_weights, read_model_file

    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise UserError(f"{run_dir} has no model.pt (not a finished run)")
    state = read_model_file(path)
    cfg, inputs = _saved_inputs(state, run_dir)
    build_cfg = METHODS.get(cfg.method.name).inference_config(cfg)
    _, ensemble = build_ensemble(build_cfg, len(inputs["classes"]), int(inputs["train_size"]))
    load_weights(path, ensemble, state)
    dev = _device(device)
    ensemble.to(dev).eval()
    return Predictor(
        ensemble=ensemble,
        cfg=cfg,
        classes=[str(c) for c in inputs["classes"]],
        mean=tuple(float(v) for v in inputs["mean"]),
        std=tuple(float(v) for v in inputs["std"]),
        image_shape=tuple(int(v) for v in inputs["image_shape"]),  # type: ignore[arg-type]
        device=dev,
        run_dir=run_dir,
    )
