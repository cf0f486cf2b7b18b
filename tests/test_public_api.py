"""The public API: every exported name resolves, importing the package stays light, and the names work."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ensemblekit
from ensemblekit.data import DATASETS
from ensemblekit.methods import METHODS
from ensemblekit.models import MODELS


def test_every_exported_name_resolves_and_is_listed_by_dir():
    for name in ensemblekit.__all__:
        assert getattr(ensemblekit, name) is not None, name
    assert set(ensemblekit.__all__) <= set(dir(ensemblekit))


def test_the_api_covers_configs_runs_prediction_and_registries():
    expected = {
        "load_config", "config_from_dict", "Config", "train", "evaluate", "evaluate_robustness", "describe", "grow",
        "interpolate", "fit", "load", "Predictor", "Prediction", "export", "create_model", "list_models",
        "list_methods", "list_datasets", "Ensemble", "MemberEnsemble", "combine_logits", "predict", "UserError",
    }  # fmt: skip
    assert expected <= set(ensemblekit.__all__)


def test_all_lists_exactly_the_lazy_names_and_the_package_level_ones():
    from ensemblekit import _PUBLIC

    assert set(ensemblekit.__all__) == set(_PUBLIC) | {"UserError", "__version__", "list_datasets", "list_methods"}


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'runner'"):
        ensemblekit.runner  # noqa: B018


def test_importing_the_package_does_not_import_torch():
    code = "import sys, ensemblekit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_registry_listings_equal_the_registries():
    assert ensemblekit.list_methods() == METHODS.names() and "fission" in ensemblekit.list_methods()
    assert ensemblekit.list_models() == MODELS.names() and "resnet20" in ensemblekit.list_models()
    assert ensemblekit.list_datasets() == DATASETS.names() and "cifar10" in ensemblekit.list_datasets()


def test_load_config_and_describe_through_the_public_api():
    cfg = ensemblekit.load_config(None, ["model.name=resnet8", "method.name=deep_ensemble", "method.members=3"])
    assert isinstance(cfg, ensemblekit.Config)
    costs = ensemblekit.describe(cfg)
    assert costs["num_members"] == 3
    assert costs["inference_flops_vs_single"] == pytest.approx(3.0, rel=1e-6)
