import os
import pickle
import random

import numpy as np
import pytest
import torch

from ensemblekit.errors import CheckpointError
from ensemblekit.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint


def test_round_trip_and_no_temp_files(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"w": torch.arange(5.0), "epoch": 3, "nested": {"a": [1, 2]}})
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(5.0)) and state["epoch"] == 3 and state["nested"] == {"a": [1, 2]}
    assert os.listdir(path.parent) == ["last.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"epoch": 2, "bad": Boom()})
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_rng_state_round_trip_survives_weights_only(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
