"""``--resume`` with another config: the differing fields are named; ``train.epochs`` may grow where honest."""

import json

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from tests.conftest import tiny_config


def _cfg(**sections):
    return config_from_dict(tiny_config(**sections))


def _weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def test_a_changed_config_names_the_fields_that_differ(tmp_path):
    out = tmp_path / "run"
    train(_cfg(train={"epochs": 1}), out, quiet=True)
    changed = _cfg(train={"epochs": 1, "lr": 0.02}, data={"batch_size": 16})
    with pytest.raises(UserError) as err:
        train(changed, out, resume=True, quiet=True)
    message = str(err.value)
    assert "data.batch_size 32 -> 16" in message and "train.lr 0.05 -> 0.02" in message, message
    assert "\n" not in message


def test_more_epochs_continue_a_finished_step_schedule_run_exactly(tmp_path, capsys):
    """1 epoch, then --resume with train.epochs=2, equals 2 epochs from the start (step schedule, CPU: bitwise)."""
    train_cfg = {"epochs": 2, "schedule": "step", "milestones": [1], "gamma": 0.1}
    straight = tmp_path / "straight"
    train(_cfg(train=train_cfg), straight, quiet=True)
    extended = tmp_path / "extended"
    train(_cfg(train={**train_cfg, "epochs": 1}), extended, quiet=True)
    (extended / "eval.json").write_text(json.dumps({"metrics": {"accuracy": 0.5}}))
    record = train(_cfg(train=train_cfg), extended, resume=True, progress="plain")
    a, b = _weights(straight), _weights(extended)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(2.0)
    rows = (extended / "log.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["1", "2"]  # log.csv extended, not restarted
    assert "resuming at stage 1/1 (train), epoch 2/2" in capsys.readouterr().out
    assert json.loads((extended / "eval.json").read_text())["stale"].startswith("computed before train.epochs grew")
    assert "epochs: 2" in (extended / "config.yaml").read_text()


def test_more_epochs_are_refused_for_a_cosine_schedule_with_the_alternative(tmp_path):
    out = tmp_path / "run"
    train(_cfg(train={"epochs": 1}), out, quiet=True)
    with pytest.raises(UserError, match=r"cosine schedule depends on the run's length.*--set train.epochs=2"):
        train(_cfg(train={"epochs": 2}), out, resume=True, quiet=True)


def test_more_epochs_are_refused_for_a_recipe_of_several_stages(tmp_path):
    method = {"name": "deep_ensemble", "members": 2}
    out = tmp_path / "run"
    train(_cfg(method=method, train={"epochs": 1, "schedule": "constant"}), out, quiet=True)
    with pytest.raises(UserError, match=r"recipe has 2 stage\(s\)"):
        train(_cfg(method=method, train={"epochs": 2, "schedule": "constant"}), out, resume=True, quiet=True)


def test_resuming_a_finished_run_says_it_only_re_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    method = {"name": "deep_ensemble", "members": 2}
    train(_cfg(method=method, train={"epochs": 1}), out, quiet=True)
    train(_cfg(method=method, train={"epochs": 1}), out, resume=True, progress="plain")
    printed = capsys.readouterr().out
    assert "all 2 stage(s) had finished: re-evaluating" in printed
    assert "3/2" not in printed


def test_more_epochs_check_the_stage_s_own_schedule_not_train_schedule(tmp_path):
    """Snapshot replaces train.schedule by its cyclic cosine: a constant train.schedule does not make it extendable."""
    method = {"name": "snapshot", "members": 1}
    out = tmp_path / "run"
    train(_cfg(method=method, train={"epochs": 1, "schedule": "constant"}), out, quiet=True)
    with pytest.raises(UserError, match="cyclic_cosine schedule depends on the run's length"):
        train(_cfg(method=method, train={"epochs": 2, "schedule": "constant"}), out, resume=True, quiet=True)
