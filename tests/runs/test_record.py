"""The run record: the schema documents every key ``train`` writes; tables take their columns from it; methods add
to the record through ``record_extras`` only."""

import json

import pytest
from pydantic import BaseModel, ValidationError

from ensemblekit.bench.results import FIELDS, TABLE, get_cost
from ensemblekit.bench.tables import COLUMNS, SPARSE_COLUMNS
from ensemblekit.methods import METHODS, Method
from ensemblekit.methods.base import RecordContext
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.runs.record import Costs, Metrics, RunRecord, add_method_extras, columns, validate_record
from tests.conftest import tiny_config

FAST = {"epochs": 1, "max_steps_per_epoch": 2}


def _undocumented(value, model: type[BaseModel], where: str = "") -> list[str]:
    """Keys of ``value`` that ``model`` (recursively) does not declare."""
    out = []
    for key, item in value.items():
        if key not in model.model_fields:
            out.append(where + key)
            continue
        out += _undocumented_in(item, model.model_fields[key].annotation, f"{where}{key}.")
    return out


def _undocumented_in(item, annotation, where: str) -> list[str]:
    """Recurse into a section (``Model``), a list of them or a dict of them (``dict[str, Model]``)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return _undocumented(item, candidate, where) if isinstance(item, dict) else []
        args = getattr(candidate, "__args__", ())
        if args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            items = item.values() if isinstance(item, dict) else item if isinstance(item, list) else []
            return [k for value in items for k in _undocumented(value, args[-1], where)]
    return []


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """metrics.json of the two methods that add to the record (fission, subnetwork); every other key is common."""
    out = {}
    for method in (
        {"name": "fission", "members": 2},
        {"name": "subnetwork", "members": 2, "child_epochs": 1},
    ):
        run = tmp_path_factory.mktemp(method["name"])
        train(config_from_dict(tiny_config(method=method, train=FAST, data={"val_size": 32})), run, quiet=True)
        out[method["name"]] = json.loads((run / "metrics.json").read_text())
    return out


def test_every_key_train_writes_is_documented_by_the_schema(records):
    for name, record in records.items():
        validate_record(record)
        assert _undocumented(record, RunRecord) == [], name
    assert "subnetwork" in records["subnetwork"] and "train_epoch_equivalents_sparse" in records["fission"]["costs"]
    stray = json.loads(json.dumps(records["fission"]))
    stray["costs"]["stages"]["train"]["typo"] = 1
    assert _undocumented(stray, RunRecord) == ["costs.stages.typo"]
    for model in (RunRecord, Costs, Metrics):
        assert all(info.description for info in model.model_fields.values())


def test_a_record_that_breaks_the_schema_is_refused(records):
    broken = json.loads(json.dumps(records["subnetwork"]))
    del broken["costs"]["train_epoch_equivalents"]
    with pytest.raises(ValidationError, match="train_epoch_equivalents"):
        validate_record(broken)
    broken = json.loads(json.dumps(records["subnetwork"]))
    broken["combine"] = "votes"
    with pytest.raises(ValidationError, match="combine"):
        validate_record(broken)


def test_table_columns_come_from_the_schema_and_resolve_in_a_written_record(records):
    schema = {c.path: c for c in columns("compare")}
    assert COLUMNS == [(c.label, c.path, c.format) for c in schema.values() if not c.sparse]
    assert SPARSE_COLUMNS == [(c.label, c.path, c.format) for c in schema.values() if c.sparse]
    assert {path for _, path, _ in SPARSE_COLUMNS} == {
        "costs.params_nonzero",
        "costs.inference_flops_sparse_vs_single",
        "costs.train_epoch_equivalents_sparse",
    }
    assert [name for name, path in FIELDS if not path.startswith("corruptions:")] == [
        c.name for c in columns("results")
    ]
    assert {c.label for c in columns("report")} <= {label for label, _, _ in TABLE}
    for path in schema:  # fission reports every column, sparse ones included
        assert get_cost(records["fission"], path) is not None, path
    assert len({c.label for c in columns("compare")}) == len(columns("compare"))


def test_only_record_extras_adds_to_the_record():
    assert Method.record_extras is not None
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert not hasattr(cls, "update_record") and not hasattr(cls, "extra_costs"), name

    class Extra(Method):
        def record_extras(self, ensemble, ctx):
            return {"costs": {"extra_cost": ctx.image_shape[0]}, "mine": {"a": 1}}

    record = {"costs": {"params": 3}, "method": "x"}
    ctx = RecordContext(image_shape=(3, 8, 8), costs=record["costs"], member_probs=None, steps_per_epoch=None)
    add_method_extras(record, Extra.__new__(Extra), None, ctx)
    assert record == {"costs": {"params": 3, "extra_cost": 3}, "method": "x", "mine": {"a": 1}}
