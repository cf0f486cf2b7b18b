"""What a run costs: parameters and inference FLOPs of an ensemble, and ``ensemblekit describe``.

The ``costs`` keys of ``metrics.json`` that do not depend on training (training costs come from the engine's
:class:`~ensemblekit.metrics.TrainCostMeter`). FLOPs are counted by ``torch.utils.flop_counter`` on one image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ensemblekit.config import Config
from ensemblekit.methods import Method
from ensemblekit.metrics import count_parameters, inference_flops
from ensemblekit.metrics.costs import inference_parameter_count
from ensemblekit.metrics.sparse_costs import sparse_model_costs
from ensemblekit.runs.loading import build_ensemble, load_run_data


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
