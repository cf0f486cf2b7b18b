"""Every method's ``build()`` returns an ensemble that carries its own combine rule (no layer above sets it)."""

import pytest
import yaml

from ensemblekit.methods import METHODS
from ensemblekit.methods.base import build_method
from ensemblekit.resolve import config_from_dict
from tests.conftest import REPO, tiny_config

DOCUMENTED = {"fission": "logits"}
"""The rule each method's page documents; every other method averages probabilities (``probs``)."""


def _built(name: str, **options):
    quick = yaml.safe_load((REPO / "configs" / "quick" / f"{name}.yaml").read_text())["method"]
    cfg = config_from_dict(tiny_config(method={**quick, **options}))
    return build_method(cfg, 10, 192).build()  # the method layer alone: no runs.build_ensemble


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_built_ensemble_has_the_documented_combine_rule(name):
    assert _built(name).combine == DOCUMENTED.get(name, "probs")


def test_subnetwork_combine_option_sets_the_built_ensembles_rule():
    assert _built("subnetwork", combine="logits").combine == "logits"
