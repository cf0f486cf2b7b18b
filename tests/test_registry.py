"""The name registry: a method's name is written once, in its ``@METHODS.register`` decorator."""

from __future__ import annotations

import pytest

from ensemblekit.errors import UserError
from ensemblekit.methods import METHODS
from ensemblekit.registry import Registry


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_class_carries_its_registered_name(name):
    cls = METHODS.get(name)
    assert cls.name == name
    assert "name" in vars(cls)  # set on the class itself by the decorator, not inherited


def test_decorator_sets_the_name_attribute_and_refuses_a_contradicting_one():
    things = Registry("thing", name_attribute="name")

    @things.register("alpha")
    class Alpha:
        pass

    class Beta(Alpha):
        pass

    things.add("beta", Beta)
    assert Alpha.name == "alpha" and Beta.name == "beta" and things.get("beta") is Beta

    with pytest.raises(ValueError, match=r"thing 'gamma': the class sets name = 'delta'"):

        @things.register("gamma")
        class Gamma:
            name = "delta"

    assert "gamma" not in things
    with pytest.raises(ValueError, match="already registered"):
        things.add("alpha", Alpha)
    with pytest.raises(UserError, match=r"unknown thing 'omega'; valid: alpha, beta"):
        things.get("omega")


def test_functions_and_registries_without_a_name_attribute_are_left_alone():
    plain = Registry("model")

    def make(num_classes=10):
        return num_classes

    plain.add("made", make)

    class Net:
        name = "other"

    plain.add("net", Net)
    assert not hasattr(make, "name") and Net.name == "other"
