"""Config resolution (ensemblekit.resolve): method options validated once, defaults written, every error at load."""

from pathlib import Path

import pytest
import yaml

from ensemblekit.config import Config, config_to_dict
from ensemblekit.errors import UserError, config_error
from ensemblekit.methods import METHODS, build_method
from ensemblekit.resolve import config_from_dict, load_config, resolve_method_section
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*/*.yaml"))
RUN_CONFIGS = [p for p in SHIPPED if p.parent.name != "suites"]


def _resolved_method(name: str, **options) -> dict:
    return config_to_dict(config_from_dict(tiny_config(method={"name": name, **options})))["method"]


@pytest.mark.parametrize("name", METHODS.names())
def test_config_records_every_option_with_its_default(name):
    given = {"members": 2} if name == "snapshot" else {}  # tiny: 2 epochs, 2 snapshot cycles
    method = _resolved_method(name, **given)
    assert method == {"name": name, **METHODS.get(name).Options.model_validate(given).model_dump(mode="json")}
    assert isinstance(method["members"], int)  # never members: null


def test_deep_ensemble_records_members_and_training():
    assert _resolved_method("deep_ensemble") == {"name": "deep_ensemble", "members": 4, "training": "sequential"}


def test_a_derived_member_count_is_written():
    archs = [{"name": "resnet8"}, {"name": "resnet14"}]
    assert _resolved_method("bagging", architectures=archs)["members"] == 2
    assert _resolved_method("distillation", architectures=archs)["members"] == 2


def test_official_fission_records_the_independent_paths_it_trains():
    assert _resolved_method("fission", reference="official")["path_init"] == "independent"


def _round_trip(cfg: Config) -> Config:
    return config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_written_config_resolves_to_itself(path):
    cfg = load_config(path)
    assert config_to_dict(_round_trip(cfg)) == config_to_dict(cfg)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fission", {"reference": "official"}),
        ("bagging", {"architectures": [{"name": "resnet8"}, {"name": "resnet14", "width": 0.5}]}),
        ("subnetwork", {"members": 4, "masks": "partition"}),
        ("mothernets", {"stop": "plateau"}),
    ],
)
def test_written_options_resolve_to_themselves(name, options):
    data = {"val_size": 16} if name == "mothernets" else {}
    cfg = config_from_dict(tiny_config(method={"name": name, **options}, data=data))
    assert config_to_dict(_round_trip(cfg)) == config_to_dict(cfg)


def test_the_method_receives_the_resolved_options_object():
    cfg = config_from_dict(tiny_config(method={"name": "snapshot", "members": 2}))
    method = build_method(cfg, 10, 192)
    assert method.options is cfg.method.resolved_options()
    assert method.cycles == 2 and cfg.method.cycles is None  # cycles: null means "= members", kept as written


def test_an_unresolved_or_edited_section_is_not_handed_to_a_method():
    with pytest.raises(RuntimeError, match="not resolved"):
        build_method(Config(), 10, 192)
    cfg = config_from_dict(tiny_config(method={"name": "deep_ensemble"}))
    cfg.method.members = 3  # the resolved options no longer describe the section
    with pytest.raises(RuntimeError, match="not resolved"):
        build_method(cfg, 10, 192)


def test_an_old_method_section_resolves_to_the_defaults():
    assert resolve_method_section({"name": "deep_ensemble", "members": None}) == {
        "name": "deep_ensemble",
        "members": 4,
        "training": "sequential",
    }


# Every cross-field check of a method's options is raised when the config is loaded, before any data: the data
# root below does not exist, so loading any data would fail with another message.
MOVED_CHECKS = [
    ("snapshot", {"members": 4, "cycles": 3}, {}, "method.cycles: must be >= members (4)"),
    ("snapshot", {"members": 4}, {"train.epochs": 6}, "train.epochs: 6 epochs cannot form 4 equal snapshot cycles"),
    ("fge", {"cycle_epochs": 3}, {}, "method.cycle_epochs: must be even (got 3)"),
    ("fge", {"pretrain_run": "a", "pretrain_weights": "b"}, {}, "method.pretrain_run: give pretrain_run or"),
    ("distillation", {"teacher_run": "a", "teacher_epochs": 1}, {}, "method.teacher/teacher_epochs: apply only"),
    ("mothernets", {"stop": "plateau"}, {}, "method.stop: plateau needs a validation split"),
    ("subnetwork", {"members": 4, "candidates": 2}, {}, "method.candidates: must be >= members (4), got 2"),
    ("subnetwork", {"members": 2, "candidates": 4}, {}, "method.candidates: selecting the top members needs a"),
    ("subnetwork", {"members": 2, "parent_run": "a", "parent_weights": "b"}, {}, "method.parent_run: give"),
    ("subnetwork", {"members": 2, "sparsity": 0.3}, {}, "method.sparsity: anti_random masks fix their own"),
    ("subnetwork", {"members": 3}, {}, "method.members: 3 children cannot form anti_random pairs"),
    ("treenet", {"shared_stages": 4}, {}, "method.shared_stages: the backbone has 3 stages, got 4"),
    ("fission", {"members": 4}, {}, "method.members: 4 exits need a backbone with >= 4 stages; it has 3"),
    ("fission", {"grouping": "channels"}, {"model.name": "vgg11"}, "method.grouping: channels supports the"),
    ("fission", {"path_execution": "packed"}, {}, "method.path_execution: packed needs grouping: channels"),
    ("packed", {}, {"model.name": "vgg11"}, "model.name: packed supports residual backbones"),
    ("mixture", {"execution": "packed"}, {"model.name": "densenet_bc40_12"}, "method.execution: packed does not"),
    ("mc_dropout", {"dropout": 0.0}, {}, "method.dropout: Input should be greater than 0"),
    ("packed", {}, {"model.factory": "tests.byo.custom_nets:make_net"}, "model.factory: method packed cannot use"),
    (
        "treenet",
        {"shared_stages": 3},
        {"model.factory": "tests.byo.custom_nets:make_net", "model.stages": "[a, b, c]"},
        "method.shared_stages: the backbone has 2 stages, got 3",
    ),
]


@pytest.mark.parametrize(
    ("name", "options", "sets", "message"), MOVED_CHECKS, ids=[f"{c[0]}-{c[3].split(':')[0]}" for c in MOVED_CHECKS]
)
def test_every_option_check_is_a_config_error_at_load(tmp_path, name, options, sets, message):
    raw = tiny_config(method={"name": name, **options}, data={"name": "cifar10", "root": str(tmp_path / "none")})
    if "model.factory" in sets:  # a custom module: no built-in width
        raw["model"] = {}
    overrides = [f"{k}={v}" for k, v in sets.items()]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    text = str(info.value)
    assert text.startswith(f"config error: {message}"), text
    assert "\n" not in text


def test_config_errors_have_one_formatter():
    """Every "config error: <field>: <message>" is made by errors.config_error (no hand-built copies)."""
    src = REPO / "src" / "ensemblekit"
    hand_built = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        if p.name != "errors.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if '"config error:' in line
    ]
    assert hand_built == []
    assert str(config_error("method.cycles", "must be >= members (4)")) == (
        "config error: method.cycles: must be >= members (4)"
    )
