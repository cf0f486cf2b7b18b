"""Export a trained ensemble: TorchScript, ONNX, or its weights as safetensors.

The exported TorchScript and ONNX models take float32 images ``[B, 3, H, W]`` with pixels scaled to ``[0, 1]``
(``ToTensor()`` output, *not* normalised: the run's mean and std are built in) and return two tensors:

* ``probs`` ``[B, C]``: the ensemble's prediction under its combine rule, ``(1/M) Σ_i softmax(z_i)`` or
  ``softmax((1/M) Σ_i z_i)`` (Network Fission Ensembles);
* ``member_probs`` ``[M, B, C]``: every member's ``softmax(z_i)`` (for entropy and mutual information,
  :func:`ensemblekit.predictor.uncertainty`).

Both are traced from the eager ensemble in eval mode (``torch.jit.trace``; ONNX with the TorchScript-based
exporter, opset 17, dynamic batch size) and checked against it on random images before the file is kept.
Methods whose members are random samples (MC dropout) are refused: a traced model would be deterministic or
would freeze one sample.

``safetensors`` writes the ensemble's ``state_dict`` with the run's config and inputs as JSON metadata
(``ensemblekit.config``, ``ensemblekit.inputs``); :func:`load_safetensors_state` reads it back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemblekit.config import config_to_dict
from ensemblekit.errors import UserError, one_line
from ensemblekit.predictor import Predictor

FORMATS = ("torchscript", "onnx", "safetensors")
ONNX_OPSET = 17
CHECK_TOLERANCE = 1e-4
"""Largest absolute difference of probabilities allowed between the exported and the eager ensemble."""

NOT_EXPORTABLE = {"mc_dropout": "its members are random dropout samples, which a traced model cannot reproduce"}


class InferenceEnsemble(nn.Module):
    """An ensemble with its normalisation and combine rule built in: ``[0, 1]`` images -> ``(probs, member_probs)``.

    Args:
        ensemble: The trained ensemble (``forward(x) -> [M, B, C]`` logits, or ``[B, C]`` for one network).
        mean: Per-channel mean of the training pixels in ``[0, 1]``.
        std: Per-channel standard deviation.
        combine: ``"probs"`` or ``"logits"``.
    """

    def __init__(self, ensemble: nn.Module, mean, std, combine: str) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.average_logits = combine == "logits"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs [B, C], member_probs [M, B, C])`` for images ``[B, 3, H, W]`` in ``[0, 1]``."""
        logits = self.ensemble((images - self.mean) / self.std)
        if logits.dim() == 2:
            logits = logits.unsqueeze(0)
        logits = logits.float()
        member_probs = logits.softmax(dim=-1)
        probs = logits.mean(dim=0).softmax(dim=-1) if self.average_logits else member_probs.mean(dim=0)
        return probs, member_probs


@contextlib.contextmanager
def plain_operations(module: nn.Module):
    """Run BatchEnsemble convolutions with plain tensor operations (no custom autograd Function), as tracing needs.

    ``conv_execution="folded"`` with ``fused=False`` computes the same values (:class:`BatchEnsembleConv2d`).
    """
    from ensemblekit.layers.batch_ensemble import BatchEnsembleConv2d

    convs = [m for m in module.modules() if isinstance(m, BatchEnsembleConv2d)]
    saved = [(m.conv_execution, m.fused) for m in convs]
    for m in convs:
        m.conv_execution, m.fused = "folded", False
    try:
        yield module
    finally:
        for m, (conv_execution, fused) in zip(convs, saved):
            m.conv_execution, m.fused = conv_execution, fused


def inference_module(predictor: Predictor) -> InferenceEnsemble:
    """The predictor's ensemble on CPU in eval mode, wrapped as an :class:`InferenceEnsemble`."""
    module = InferenceEnsemble(predictor.ensemble, predictor.mean, predictor.std, predictor.combine)
    return module.cpu().eval()


def _example(predictor: Predictor, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *predictor.image_shape), generator=gen)


def _check(name: str, exported, eager: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = eager(x)
        got = exported(x)
    diff = max(float((torch.as_tensor(g) - w).abs().max()) for g, w in zip(got, want))
    if not diff <= CHECK_TOLERANCE:
        raise UserError(f"the exported {name} model differs from the ensemble by {diff:.3g} (> {CHECK_TOLERANCE})")


def _refuse_unexportable(predictor: Predictor, fmt: str) -> None:
    if fmt != "safetensors" and predictor.method in NOT_EXPORTABLE:
        raise UserError(f"method {predictor.method} cannot be exported to {fmt}: {NOT_EXPORTABLE[predictor.method]}")


def export_torchscript(predictor: Predictor, out: str | os.PathLike[str]) -> Path:
    """Trace the predictor's :class:`InferenceEnsemble`, check it against the eager one, save it (``torch.jit``)."""
    _refuse_unexportable(predictor, "torchscript")
    module = inference_module(predictor)
    example = _example(predictor, 2, 0)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), plain_operations(module):
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, buffer)
    except Exception as exc:  # tracing fails in many ways on unusual modules
        raise UserError(f"method {predictor.method} cannot be exported to torchscript: {one_line(exc, 200)}") from None
    buffer.seek(0)
    _check("torchscript", torch.jit.load(buffer), module, _example(predictor, 3, 1))
    out = Path(out)
    _write(out, buffer.getvalue())
    return out


def export_onnx(predictor: Predictor, out: str | os.PathLike[str]) -> Path:
    """Export the predictor's :class:`InferenceEnsemble` to ONNX (dynamic batch), checked with onnxruntime."""
    _refuse_unexportable(predictor, "onnx")
    try:
        import onnx  # noqa: F401  (the TorchScript-based exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    module = inference_module(predictor)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), plain_operations(module):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (_example(predictor, 2, 0),),
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["probs", "member_probs"],
                dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}, "member_probs": {1: "batch"}},
            )
    except Exception as exc:  # the exporter fails in many ways on unsupported operators
        raise UserError(f"method {predictor.method} cannot be exported to onnx: {one_line(exc, 200)}") from None
    data = buffer.getvalue()
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        _check("onnx", lambda x: session.run(None, {"images": x.numpy()}), module, _example(predictor, 3, 1))
    out = Path(out)
    _write(out, data)
    return out


def export_safetensors(predictor: Predictor, out: str | os.PathLike[str]) -> Path:
    """Save the ensemble's weights as safetensors, with the config and inputs as JSON metadata."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in predictor.ensemble.state_dict().items()}
    unique: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, tensor in state.items():  # safetensors refuses shared storage: store shared tensors as copies
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        unique[key] = tensor.clone() if ptr in seen and ptr != -1 else tensor
        seen.setdefault(ptr, key)
    inputs = {
        "classes": predictor.classes,
        "mean": list(predictor.mean),
        "std": list(predictor.std),
        "image_shape": list(predictor.image_shape),
    }
    metadata = {
        "ensemblekit.config": json.dumps(config_to_dict(predictor.cfg)),
        "ensemblekit.inputs": json.dumps(inputs),
        "ensemblekit.combine": predictor.combine,
    }
    out = Path(out)
    _write(out, save(unique, metadata=metadata))
    return out


def load_safetensors_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the decoded metadata (``config``, ``inputs``, ``combine``) of an exported file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    info = {
        "config": json.loads(meta.get("ensemblekit.config", "null")),
        "inputs": json.loads(meta.get("ensemblekit.inputs", "null")),
        "combine": meta.get("ensemblekit.combine"),
    }
    return load_file(str(path)), info


def _write(path: Path, data: bytes) -> None:
    from ensemblekit.atomic import atomic_write_bytes

    if path.parent and not path.parent.exists():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    atomic_write_bytes(path, lambda f: f.write(data))


def export(run_dir: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str]) -> Path:
    """Export the run in ``run_dir`` as ``fmt`` (``torchscript``, ``onnx`` or ``safetensors``) to ``out``."""
    from ensemblekit.predictor import load

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    predictor = load(run_dir, device="cpu")
    writer = {"torchscript": export_torchscript, "onnx": export_onnx, "safetensors": export_safetensors}[fmt]
    return writer(predictor, out)
