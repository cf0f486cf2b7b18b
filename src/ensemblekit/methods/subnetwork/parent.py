"""Where a parent comes from: trained in the run, read from another run, or a user's weights file.

A pre-trained model is a valid parent (methods.md section 2(a): "the parent may be a public pre-trained model").
Two sources besides training:

* ``parent_run: DIR``: a finished ensemblekit run whose ``model.pt`` holds one backbone of the same model
  config: a ``single`` run (``members.0.*``), a ``subnetwork`` run (its ``parent.*``) or any run of one member.
* ``parent_weights: FILE``: a ``state_dict`` of the backbone (``torch.save(model.state_dict(), FILE)``), or a dict
  holding one under ``state_dict``; loaded with ``weights_only=True``.

Every failure (missing file, foreign file, mismatching architecture) is a one-line ``UserError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.config import config_to_dict
from ensemblekit.errors import UserError
from ensemblekit.training.checkpoint import load_checkpoint

PARENT_PREFIXES = ("parent.", "members.0.")


def plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with masked weights as plain ``<layer>.weight`` (the effective, masked value)."""
    out = {}
    for key, value in module.state_dict().items():
        if ".parametrizations.weight.original" in key or ".parametrizations.weight.0.mask" in key:
            continue
        out[key] = value
    for name, layer in module.named_modules():
        if hasattr(layer, "parametrizations") and "weight" in layer.parametrizations:
            out[f"{name}.weight"] = layer.weight.detach().clone()
    return out


@torch.no_grad()
def load_plain_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a plain backbone state dict into ``module``, whose layers may carry weight masks (reset to ones).

    Raises:
        UserError: When keys or shapes do not match (one line naming ``source``).
    """
    target = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        masked = layer is not None and f"{layer}.parametrizations.weight.original" in target
        mapped[f"{layer}.parametrizations.weight.original" if masked else key] = value
        if masked:
            mapped[f"{layer}.parametrizations.weight.0.mask"] = torch.ones_like(
                target[f"{layer}.parametrizations.weight.0.mask"]
            )
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserError(f"parent {source} does not match the configured model ({what})")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise UserError(
                f"parent {source} does not match the configured model ({key}: {tuple(value.shape)} "
                f"vs {tuple(target[key].shape)})"
            )
    module.load_state_dict(mapped)


def _strip(state: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_parent_run(run_dir: str | Path, model_cfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The parent backbone state of a finished run and that run's recorded training costs.

    Args:
        run_dir: The run directory.
        model_cfg: This run's ``model`` section (the parent run's must be equal).
    """
    from ensemblekit.run_dir import read_metrics, read_run_config  # run loading sits above methods (issue 14)

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"method.parent_run: {run_dir} is not a run directory (no config.yaml)")
    cfg = read_run_config(run_dir)
    theirs = config_to_dict(cfg)["model"]
    if theirs != model_cfg:
        raise UserError(f"method.parent_run: {run_dir} trained model {theirs}, this run configures {model_cfg}")
    model = run_dir / "model.pt"
    if not model.is_file():
        raise UserError(f"method.parent_run: {run_dir} has no model.pt (the run has not finished)")
    state = load_checkpoint(model).get("state_dict")
    if not isinstance(state, dict):
        raise UserError(f"method.parent_run: {model} is not an ensemblekit model file")
    for prefix in PARENT_PREFIXES:
        sub = _strip(state, prefix)
        if sub and not (prefix == "members.0." and any(k.startswith("members.1.") for k in state)):
            return sub, read_metrics(run_dir).get("costs", {})
    raise UserError(f"method.parent_run: {run_dir} does not hold a single backbone (a single or subnetwork run)")


def read_parent_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A user's backbone ``state_dict`` file (or a dict with one under ``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"method.parent_weights: file not found: {path}")
    state = load_checkpoint(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"method.parent_weights: {path} is not a state_dict of tensors")
    return state


def parent_loader(run: str | None, weights: str | None, charge: bool, model_cfg: dict[str, Any], field: str):
    """A deterministic stage-end hook that loads the parent into the stage's module.

    With ``run`` and ``charge``, the parent's recorded training cost (its ``parent`` stage for a subnetwork run,
    else the whole run) is charged to the current stage of the cost meter: FLOPs, images and seconds.

    Args:
        run: ``parent_run`` directory, or None.
        weights: ``parent_weights`` file, or None.
        charge: Charge the parent run's cost.
        model_cfg: This run's ``model`` section.
        field: The option's name for error messages (``parent`` or ``pretrain``).
    """

    def load(ctx) -> None:
        if run is not None:
            try:
                state, costs = read_parent_run(run, model_cfg)
            except UserError as exc:
                raise UserError(str(exc).replace("method.parent_run", f"method.{field}_run")) from None
            load_plain_state(ctx.module, state, f"run {run}")
            if charge:
                spent = costs.get("stages", {}).get("parent", costs)  # a subnetwork run: its parent stage only
                flops, images = float(spent.get("train_flops", 0.0)), int(spent.get("images_seen", 0))
                if images > 0:
                    ctx.engine.cost_meter.add_step(images, flops / (3.0 * images))
                ctx.engine.cost_meter.add_time(float(spent.get("train_seconds", 0.0)))
        else:
            try:
                state = read_parent_weights(weights)
            except UserError as exc:
                raise UserError(str(exc).replace("method.parent_weights", f"method.{field}_weights")) from None
            load_plain_state(ctx.module, state, f"weights {weights}")

    return load
