import pytest

from ensemblekit.config import Config, apply_overrides, parse_override
from ensemblekit.errors import UserError
from ensemblekit.resolve import load_config


def test_defaults_match_the_documented_schema():
    cfg = Config()
    assert cfg.data.name == "cifar10" and cfg.data.batch_size == 128 and cfg.data.val_size == 0
    assert cfg.model.name == "resnet20" and cfg.model.dropout == 0.0
    assert cfg.method.name == "deep_ensemble"
    assert cfg.train.optimizer == "sgd" and cfg.train.lr == 0.1 and cfg.train.nesterov is True
    assert cfg.train.weight_decay == 5.0e-4 and cfg.train.schedule == "cosine"
    assert cfg.runtime.precision == "32-true" and cfg.runtime.strategy == "auto"


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=0.05") == (["train", "lr"], 0.05)
    assert parse_override("train.milestones=[5, 10]") == (["train", "milestones"], [5, 10])
    raw = apply_overrides({}, ["model.name=resnet8", "method.members=3", "method.training=joint"])
    cfg = load_config(None, ["model.name=resnet8", "method.members=3", "method.training=joint"])
    assert raw["model"]["name"] == "resnet8"
    assert cfg.method.members == 3 and cfg.method.options() == {"members": 3, "training": "joint"}


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  name: resnet8\n")
    cfg = load_config(path, ["train.lr=0.2"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.name) == (3, 0.2, "resnet8")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=0.1"], "train.lrr: unknown key"),
        (["bogus.x=1"], "bogus: unknown key"),
        (["train.lr=abc"], "train.lr"),
        (["train.epochs=-1"], "train.epochs"),
        (["train.schedule=linearish"], "train.schedule"),
        (["model.name=resnet9000"], "model.name: unknown model 'resnet9000'; valid: "),
        (["method.name=nope"], "method.name: unknown method 'nope'; valid: "),
        (["data.name=mnist"], "data.name: unknown dataset 'mnist'; valid: "),
        (["train.milestones=[10, 5]"], "milestones must be increasing"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_field(overrides, expected):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError) as info:
        load_config(None, ["method.name=nope"])
    assert "deep_ensemble" in str(info.value) and "single" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("train: [1, 2", "not valid YAML"), ("- a\n- b\n", "must be a mapping"), ("train: 3\n", "train")],
)
def test_bad_files(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_config(path)


def test_missing_file():
    with pytest.raises(UserError, match="config file not found"):
        load_config("does/not/exist.yaml")


def test_method_options_are_checked_when_the_config_is_loaded():
    with pytest.raises(UserError, match=r"method\.foo: unknown option for deep_ensemble"):
        load_config(None, ["method.foo=1"])
    with pytest.raises(UserError, match=r"method\.dropout"):
        load_config(None, ["method.name=mc_dropout", "method.dropout=1.5"])


def test_config_module_is_the_schema_only():
    """config.py imports nothing of ensemblekit but errors and safe_yaml (loading is ensemblekit.resolve)."""
    import ast
    from pathlib import Path

    import ensemblekit.config

    tree = ast.parse(Path(ensemblekit.config.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert {m for m in imported if m.startswith("ensemblekit")} == {"ensemblekit.errors", "ensemblekit.safe_yaml"}
    assert not hasattr(ensemblekit.config, "load_config") and not hasattr(ensemblekit.config, "config_from_dict")
