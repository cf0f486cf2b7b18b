"""Bounded YAML reading: alias bombs, recursive aliases, special files and size limits end in one line."""

import os
import time

import pytest

from ensemblekit.config import read_yaml
from ensemblekit.errors import UserError
from ensemblekit.resolve import load_config
from ensemblekit.safe_yaml import MAX_EXPANDED_NODES, MAX_YAML_BYTES, _expanded_size, safe_yaml_load


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: ``width ** levels`` leaves from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_expanded_size_counts_every_alias_use():
    import yaml

    # a mapping of 2 keys: b's value is the 3-node list [1, 2] used twice -> 1 + 2 keys + 2 * 3
    assert _expanded_size(yaml.compose("{a: &x [1, 2], b: *x}")) == 1 + 2 + 2 * 3
    assert _expanded_size(yaml.compose("[1, [2, 3]]")) == 5


def test_aliases_within_the_bound_load_normally():
    assert safe_yaml_load("{a: &x [1, 2], b: *x}", "t") == {"a": [1, 2], "b": [1, 2]}


def test_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    text = billion_laughs()
    assert len(text) < 600  # a few hundred bytes that expand to 9**9 nodes
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="aliases expand to more than") as err:
        read_yaml(path)
    assert time.perf_counter() - t0 < 2.0
    assert len(str(err.value)) < 300
    assert f"{MAX_EXPANDED_NODES:,}" in str(err.value)


def test_alias_bomb_inside_a_config_value_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(billion_laughs().replace("a0:", "lol: \n  a0:", 1).replace("\na", "\n  a"))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert len(str(err.value)) < 500


def test_bomb_in_a_set_value_is_refused():
    bomb = "{" + billion_laughs().strip().replace("\n", ", ") + "}"
    with pytest.raises(UserError, match=r"--set model\.kwargs"):
        load_config(None, [f"model.kwargs={bomb}"])


@pytest.mark.parametrize("text", ["a: &a [*a]", "&a [1, [2, *a]]", "&m {k: *m}"])
def test_recursive_alias_is_refused(text):
    with pytest.raises(UserError, match="refers to itself"):
        safe_yaml_load(text, "t")


def test_fifo_and_device_are_not_read(tmp_path):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        read_yaml(fifo)  # would block forever if it were opened
    with pytest.raises(UserError, match="not a regular file"):
        read_yaml("/dev/zero")


def test_large_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_YAML_BYTES + 1))
    with pytest.raises(UserError, match="too large"):
        read_yaml(path)


def test_not_utf8_and_directory(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"train: {lr: 0.1}\n# caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_yaml(path)
    with pytest.raises(UserError, match="directory"):
        read_yaml(tmp_path)


def test_invalid_set_yaml_is_a_plain_string():
    cfg = load_config(None, ["data.root=[unclosed"])
    assert cfg.data.root == "[unclosed"
