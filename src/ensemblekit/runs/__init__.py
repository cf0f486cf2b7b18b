"""Runs: train, evaluate, describe and grow run directories, and load what they hold.

The layer between the methods (which describe an ensemble and its recipe) and the tools that use runs (the CLI,
``bench``, evaluation). A run directory holds ``config.yaml``, ``checkpoints/last.pt``, ``log.csv``,
``metrics.json`` and ``model.pt`` (README "Run directories").

Modules: :mod:`~ensemblekit.runs.train` (``train``), :mod:`~ensemblekit.runs.evaluate` (``evaluate``,
``interpolate``), :mod:`~ensemblekit.runs.costs` (``describe``), :mod:`~ensemblekit.runs.grow` (``grow`` a subnetwork
run), :mod:`~ensemblekit.runs.loading` (run loading and ``model.pt`` I/O), :mod:`~ensemblekit.runs.fabric` (devices),
:mod:`~ensemblekit.runs.directory` (the folder's files), :mod:`~ensemblekit.runs.lock` (one writer per run) and
:mod:`~ensemblekit.runs.extend` (resume checks, extending a finished run).
"""

from ensemblekit.runs.costs import describe, describe_costs, model_cost_fields
from ensemblekit.runs.evaluate import evaluate, evaluate_ensemble, interpolate
from ensemblekit.runs.fabric import (
    eval_autocast_dtype,
    make_engine,
    make_fabric,
    use_channels_last,
    use_cudnn_benchmark,
    use_fused_optimizer,
)
from ensemblekit.runs.grow import grow
from ensemblekit.runs.loading import (
    MODEL_FORMAT,
    LoadedRun,
    build_ensemble,
    check_model_identity,
    load_model_into,
    load_run,
    load_run_data,
    load_weights,
    model_identity,
    model_inputs,
    read_model_file,
    recorded_costs,
    same_run,
    save_model,
)
from ensemblekit.runs.train import default_out_dir, train

__all__ = [
    "MODEL_FORMAT",
    "LoadedRun",
    "build_ensemble",
    "check_model_identity",
    "default_out_dir",
    "describe",
    "describe_costs",
    "eval_autocast_dtype",
    "evaluate",
    "evaluate_ensemble",
    "grow",
    "interpolate",
    "load_model_into",
    "load_run",
    "load_run_data",
    "load_weights",
    "make_engine",
    "make_fabric",
    "model_cost_fields",
    "model_identity",
    "model_inputs",
    "read_model_file",
    "recorded_costs",
    "same_run",
    "save_model",
    "train",
    "use_channels_last",
    "use_cudnn_benchmark",
    "use_fused_optimizer",
]
