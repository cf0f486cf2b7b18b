"""Benchmark suites: one YAML file fixes the data, the backbone and a training budget, and lists the runs.

A suite answers "which ensemble gives me the most accuracy, calibration and robustness for my budget?" by
training every listed method under the same data, backbone and training cost::

    name: quick
    description: CIFAR-10 subset, resnet8, every method at 16 single-model epochs of training
    base:                       # a run config (every section optional); the runs start from it
      data: {name: cifar10, train_size: 10000, test_size: 2000}
      model: {name: resnet8}
      train: {lr: 0.1, schedule: cosine}
    budget: 16                  # training budget per run in single-model epoch-equivalents (null: as configured)
    budget_unit: epoch_equivalents   # or seconds: wall-clock seconds of training per run
    budget_tolerance: 0.1       # a run off its budget by more than 10 % is flagged; frontiers ignore smaller gaps
    equal_flops_control: false  # true (every run) or a list of run names: add a single network with the run's
                                # inference FLOPs (model.width), trained on the same budget (run "<name>.control")
    seeds: 1                    # seeds per run (train.seed = 0 .. seeds-1); --seeds overrides
    runs:
      - name: single
        method: {name: single}
      - name: deep_ensemble
        method: {name: deep_ensemble, members: 4}
      - name: mixture_2x
        method: {name: mixture, param_budget: 2.0}
        set: {train.lr: 0.05}   # dotted overrides of the base config for this run
        budget: 32              # a run may have its own budget (cost curves)
    interpolation_points: 11    # optional: member 0 -> 1 interpolation curve of every run that supports it
    corruptions:                # optional: evaluate every run on corrupted test images (corruptions.json)
      names: [all]
      severities: [1, 2, 3, 4, 5]
      max_images: 500           # a stratified subset of the test split (None: all of it)

``budget`` is met by choosing ``train.epochs`` (see :mod:`ensemblekit.bench.budget`): every method's recipe
derives its stages' epochs from ``train.epochs``, so the suite needs no per-method code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ensemblekit.bench.budget import TRIAL_EPOCHS
from ensemblekit.config import Config, apply_overrides, read_yaml
from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONTROL_SUFFIX = ".control"


class SuiteRun(BaseModel):
    """One entry of a suite's ``runs``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    method: dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict)
    budget: float | None = Field(default=None, gt=0)


class SuiteCorruptions(BaseModel):
    """Corruption evaluation after every run (``ensemblekit evaluate --corruptions``), written to corruptions.json.

    Attributes:
        names: Corruption names, or ``all`` (the 15 CIFAR-10-C benchmark corruptions) / ``extra`` (its 4 extras).
        severities: Severities (1..5).
        max_images: Corrupt a seeded stratified subset of this many test images (None: the whole test split).
        seed: Seed of the corruptions.
        precision: ``"32"`` or ``"bf16"`` (forward passes under bfloat16 autocast).
    """

    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(default_factory=lambda: ["all"])
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    max_images: int | None = Field(default=None, gt=0)
    seed: int = 0
    precision: Literal["32", "bf16"] = "32"


class Suite(BaseModel):
    """A benchmark suite (see the module docstring for the file format)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    budget: float | None = Field(default=None, gt=0)
    budget_unit: Literal["epoch_equivalents", "seconds"] = "epoch_equivalents"
    budget_tolerance: float = Field(default=0.1, ge=0, lt=1)
    equal_flops_control: bool | list[str] = False
    seeds: int = Field(default=1, gt=0)
    corruptions: SuiteCorruptions | None = None
    interpolation_points: int | None = Field(default=None, ge=2)
    runs: list[SuiteRun]

    def run_budget(self, run: SuiteRun) -> float | None:
        """The run's budget in ``budget_unit`` (its own, else the suite's)."""
        return run.budget if run.budget is not None else self.budget

    def wants_control(self, run: SuiteRun) -> bool:
        """Whether ``equal_flops_control`` asks for an equal-FLOPs single network beside ``run``."""
        if run.method.get("name") == "single" or run.name.endswith(CONTROL_SUFFIX):
            return False
        control = self.equal_flops_control
        return control if isinstance(control, bool) else run.name in control

    def control_run(self, run: SuiteRun) -> SuiteRun:
        """The equal-FLOPs control of ``run``: ``single`` on the base config (``model.width`` is set when fitted)."""
        return SuiteRun(name=run.name + CONTROL_SUFFIX, method={"name": "single"}, budget=run.budget)

    def run_config(self, run: SuiteRun, seed: int) -> dict[str, Any]:
        """The run's config dict (base + method + overrides, ``train.seed = seed``), before budget fitting."""
        raw = copy.deepcopy(self.base)
        raw["method"] = copy.deepcopy(run.method)
        apply_overrides(raw, [f"{k}={_yaml_value(v)}" for k, v in run.set.items()])
        raw.setdefault("train", {})["seed"] = seed
        return raw


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a one-line ``UserError``.

    Each run's config is validated (names, options) before anything is trained.
    """
    raw = read_yaml(path)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise UserError(f"suite {path}: {loc}: {msg}") from None
    if suite.corruptions is not None:
        from ensemblekit.data.corruptions import parse_severities, resolve_corruptions

        try:
            resolve_corruptions(suite.corruptions.names)
            parse_severities(",".join(str(v) for v in suite.corruptions.severities))
        except UserError as exc:
            raise UserError(f"suite {path}: corruptions: {exc}") from None
    names = [r.name for r in suite.runs]
    if not names:
        raise UserError(f"suite {path}: runs: the suite lists no runs")
    for name in names:
        if not _NAME.match(name):
            raise UserError(f"suite {path}: run name {name!r} must be letters, digits, '_', '-' or '.'")
    if isinstance(suite.equal_flops_control, list):
        unknown = [n for n in suite.equal_flops_control if n not in names]
        if unknown:
            raise UserError(f"suite {path}: equal_flops_control: no run named {unknown[0]} (runs: {', '.join(names)})")
    if any(n.endswith(CONTROL_SUFFIX) for n in names):
        raise UserError(f"suite {path}: run names ending in {CONTROL_SUFFIX} are reserved for equal-FLOPs controls")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"suite {path}: run names must be unique; repeated: {', '.join(dupes)}")
    for run in suite.runs:
        try:
            check_run_config(suite, run)
        except UserError as exc:
            raise UserError(f"suite {path}: run {run.name}: {exc}") from None
    return suite


def check_run_config(suite: Suite, run: SuiteRun) -> Config:
    """Validate one run's config (seed 0).

    A run with a budget has its ``train.epochs`` chosen by the budget fit, which tries the epochs the method
    accepts (a snapshot run needs a multiple of its cycles): such a run is valid when some ``train.epochs`` in
    :data:`~ensemblekit.bench.budget.TRIAL_EPOCHS` makes its config valid.
    """
    if "name" not in run.method:
        raise UserError("method.name is missing")
    raw = suite.run_config(run, 0)
    try:
        return config_from_dict(raw)
    except UserError as exc:
        if suite.run_budget(run) is None:
            raise
        error = exc
    for epochs in TRIAL_EPOCHS:
        try:
            return config_from_dict({**raw, "train": {**raw.get("train", {}), "epochs": epochs}})
        except UserError:
            continue
    raise error


def select_runs(suite: Suite, only: list[str] | None) -> list[SuiteRun]:
    """The runs named by ``--only`` (all when None); an unknown name is an error listing the valid ones."""
    if not only:
        return list(suite.runs)
    known = {r.name: r for r in suite.runs}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise UserError(f"--only {unknown[0]}: no such run in suite {suite.name} (runs: {', '.join(known)})")
    return [known[n] for n in only]
