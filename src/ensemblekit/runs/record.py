"""The run record, ``metrics.json``: one schema (:class:`RunRecord`) that documents every key.

``train`` and ``grow`` validate the record against it before writing it; ``compare`` (:mod:`ensemblekit.bench.tables`)
and the suite's ``results.csv`` / ``results.md`` (:mod:`ensemblekit.bench.results`) take their columns from the
schema's field metadata (:func:`columns`): a field shown in a table carries its ``label`` (the header), ``format`` and
the ``tables`` that show it. Sections keep keys the schema does not name (``extra="allow"``), so a method may add
its own (:meth:`ensemblekit.methods.Method.record_extras`). Records written before the schema, or before a key
existed, are still read: tables show ``-`` for a missing key, and the sparse costs that older ``fission`` runs
wrote under other names are read through :data:`ensemblekit.metrics.sparse_costs.LEGACY_KEYS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from torch import nn

from ensemblekit.methods import Method
from ensemblekit.methods.base import RecordContext

Table = Literal["compare", "results", "report"]
"""``compare``: ``ensemblekit compare``; ``results``: the suite's ``results.csv``; ``report``: its ``results.md``."""


def _field(
    description: str,
    *,
    default: Any = ...,
    label: str | None = None,
    format: str = "s",
    tables: tuple[Table, ...] = (),
    name: str | None = None,
    sparse: bool = False,
    scaled: bool = False,
) -> Any:
    """A documented field; ``label``/``format``/``tables`` when tables show it.

    ``name`` is the column's name in ``results.csv`` (default: the key); ``sparse`` marks a sparse cost (shown only
    when a run reports it); ``scaled`` a cost in units of the suite's backbone (rescaled for equal-FLOPs controls).
    """
    extra = {"label": label, "format": format, "tables": list(tables), "name": name, "sparse": sparse}
    return Field(default, description=description, json_schema_extra={**extra, "scaled": scaled})


ALL: tuple[Table, ...] = ("compare", "results", "report")


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class StageCosts(_Section):
    """The training cost of one stage of the recipe."""

    train_flops: float = _field("Training FLOPs (forward + backward = 3x forward per image).")
    train_epoch_equivalents: float = _field("train_flops / (3 x single-network forward FLOPs x training-set size).")
    train_seconds: float = _field("Wall-clock seconds.")
    images_seen: int = _field("Training images processed.")


class Costs(_Section):
    """``costs``: parameters, inference FLOPs per image, training cost; masked methods add the sparse costs."""

    params: int = _field(
        "Each member's parameters, shared ones counted once per member.",
        label="params",
        format=",d",
        tables=("compare", "results"),
    )
    unique_params: int = _field(
        "Parameters stored (every tensor counted once).",
        label="unique params",
        format=",d",
        tables=("compare", "results"),
    )
    inference_params: int = _field(
        "Parameters the prediction uses (a subnetwork ensemble's stored parent is not).",
        label="params used",
        format=",d",
        tables=ALL,
    )
    params_nonzero: int | None = _field(
        "params minus the weights a mask sets to zero (masked methods).",
        default=None,
        label="nonzero params",
        format=",d",
        tables=ALL,
        sparse=True,
    )
    inference_flops: float = _field("Inference FLOPs per image, all members (2 FLOPs per multiply-add).")
    inference_flops_vs_single: float = _field(
        "inference_flops / single_inference_flops.",
        label="FLOPs x single",
        format=".2f",
        tables=ALL,
        name="inference_flops_x_single",
        scaled=True,
    )
    inference_flops_sparse: float | None = _field(
        "inference_flops minus the FLOPs that multiply a masked weight (masked methods).", default=None
    )
    inference_flops_sparse_vs_single: float | None = _field(
        "inference_flops_sparse / single_inference_flops (masked methods).",
        default=None,
        label="sparse FLOPs x single",
        format=".2f",
        tables=ALL,
        name="inference_flops_sparse_x_single",
        sparse=True,
        scaled=True,
    )
    single_inference_flops: float = _field("Inference FLOPs of the single backbone: the unit of the ratios.")
    single_params: int = _field("Parameters of the single backbone.")
    train_flops: float = _field("Training FLOPs of every stage.")
    train_epoch_equivalents: float = _field(
        "train_flops in single-network epochs: train_flops / (3 x single_inference_flops x training-set size).",
        label="train epoch-eq",
        format=".2f",
        tables=ALL,
        scaled=True,
    )
    train_epoch_equivalents_sparse: float | None = _field(
        "Each stage's epoch equivalents times the fraction of its FLOPs that touch unmasked weights (masked methods).",
        default=None,
        label="sparse train epoch-eq",
        format=".2f",
        tables=ALL,
        sparse=True,
        scaled=True,
    )
    train_seconds: float = _field("Wall-clock training seconds.", label="train s", format=".0f", tables=ALL)
    images_seen: int = _field("Training images processed.")
    stages: dict[str, StageCosts] = _field("The training cost of every stage of the recipe, in stage order.")


class Metrics(_Section):
    """``metrics``: the ensemble's prediction on the test split (``ensemblekit.metrics.ensemble_metrics``)."""

    accuracy: float = _field("Top-1 accuracy.", label="acc %", format="%", tables=ALL)
    nll: float = _field("Negative log-likelihood.", label="NLL", format=".3f", tables=ALL)
    ece: float = _field("Expected calibration error (15 bins).", label="ECE", format=".3f", tables=ALL)
    brier: float = _field("Brier score.", label="Brier", format=".3f", tables=ALL)
    member_accuracy_mean: float = _field(
        "Mean accuracy of the members on their own.",
        label="member acc %",
        format="%",
        tables=("compare", "results"),
        name="member_accuracy",
    )
    member_nll_mean: float = _field("Mean NLL of the members on their own.")
    disagreement: float = _field("Mean pairwise top-1 disagreement.", label="disagree", format=".3f", tables=ALL)
    normalized_disagreement: float = _field(
        "disagreement divided by the reference member's error (Fort et al., 2019), over ordered pairs.",
        label="Fort div",
        format=".3f",
        tables=("compare", "results"),
    )
    pairwise_kl: float = _field("Mean pairwise KL divergence between members' predictions.")
    mutual_information: float = _field("Mean mutual information (predictive entropy minus mean member entropy).")
    predictive_entropy: float = _field("Mean entropy of the combined prediction.")
    output_correlation: float = _field("Mean pairwise correlation of members' probabilities (NaN for one member).")
    num_members: float = _field("Number of members.")
    calibrated_nll: float | None = _field("NLL after temperature scaling fitted on the validation split.", default=None)
    temperature: float | None = _field("The fitted temperature (with a validation split).", default=None)


class MemberMetrics(_Section):
    """One member's own test metrics."""

    accuracy: float = _field("Top-1 accuracy.")
    nll: float = _field("Negative log-likelihood.")
    ece: float = _field("Expected calibration error (15 bins).")
    brier: float = _field("Brier score.")


class Reliability(_Section):
    """The data of the test split's reliability diagram (15 equal-width confidence bins; Guo et al., 2017)."""

    edges: list[float] = _field("The 16 bin edges.")
    count: list[int] = _field("Predictions per bin.")
    confidence: list[float | None] = _field("Mean confidence per bin (null for an empty bin).")
    accuracy: list[float | None] = _field("Accuracy per bin (null for an empty bin).")


class DataInfo(_Section):
    """``data``: the sizes of the splits the run used and where the images came from."""

    train_size: int = _field("Training images.")
    val_size: int = _field("Validation images (0: no validation split).")
    test_size: int = _field("Test images.")
    source: str | None = _field("Where the images came from.", default=None)


class RunRecord(_Section):
    """``metrics.json``: what ``train`` (and ``grow``) record of a finished run."""

    method: str = _field("The method's name.", label="method", tables=("compare", "results"))
    backbone: str = _field("The model's name.")
    dataset: str = _field("The data set's name.")
    num_members: int = _field("Members of the ensemble.", label="M", format="d", tables=ALL, name="members")
    combine: Literal["probs", "logits"] = _field("How members combine: mean of softmax (probs) or of logits.")
    metrics: Metrics = _field(Metrics.__doc__ or "")
    members: list[MemberMetrics] = _field("One entry per member: its own test metrics.")
    reliability: Reliability | None = _field(Reliability.__doc__ or "", default=None)
    costs: Costs = _field(Costs.__doc__ or "")
    data: DataInfo | None = _field(DataInfo.__doc__ or "", default=None)
    subnetwork: dict[str, Any] | None = _field(
        "subnetwork runs: family, masks, candidates, group_size, selected, val_scores, include_parent, "
        "parent_source, parent_test (the parent's own test metrics), child_density, grown.",
        default=None,
    )
    history: list[dict[str, Any]] | None = _field(
        "Grown runs: num_members, metrics and costs before every grow.", default=None
    )


@dataclass(frozen=True)
class Column:
    """A table column generated from a schema field."""

    path: str
    """Where it is in ``metrics.json`` (``costs.params``)."""
    name: str
    """The column's name in ``results.csv``."""
    label: str
    """Its header in ``compare`` and ``results.md``."""
    format: str
    """Format spec: a ``format()`` spec, ``s`` (text) or ``%`` (a fraction shown as a percent)."""
    sparse: bool
    scaled: bool


def _sections() -> list[tuple[str, type[BaseModel]]]:
    """The sections tables draw from, in column order: the run's identity, costs, metrics."""
    return [("", RunRecord), ("costs.", Costs), ("metrics.", Metrics)]


def columns(table: Table) -> list[Column]:
    """The columns ``table`` shows, in schema order (see the module docstring)."""
    out = []
    for prefix, model in _sections():
        for key, info in model.model_fields.items():
            meta = _meta(info)
            if table in meta.get("tables", ()):
                out.append(
                    Column(
                        path=prefix + key,
                        name=meta.get("name") or key,
                        label=meta["label"],
                        format=meta["format"],
                        sparse=meta["sparse"],
                        scaled=meta["scaled"],
                    )
                )
    return out


def _meta(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def validate_record(record: Mapping[str, Any]) -> None:
    """Check a record against :class:`RunRecord` before it is written (a failure is a bug: pydantic's error)."""
    RunRecord.model_validate(record)


def record_context(engine: Any, costs: Mapping[str, Any]) -> RecordContext:
    """What :meth:`~ensemblekit.methods.Method.record_extras` sees of a run the ``engine`` trained."""
    return RecordContext(
        image_shape=tuple(engine.data.train.images.shape[1:]),
        costs=costs,
        member_probs=engine.member_probs,
        steps_per_epoch=engine.steps_per_epoch,
    )


def add_method_extras(record: dict[str, Any], method: Method, ensemble: nn.Module, ctx: RecordContext) -> None:
    """Merge ``method.record_extras(ensemble, ctx)`` into ``record`` one level deep (sections updated key by key)."""
    for key, value in method.record_extras(ensemble, ctx).items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key].update(value)
        else:
            record[key] = value
