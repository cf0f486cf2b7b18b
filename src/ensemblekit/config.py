"""Run configuration schema: YAML with sections ``data``, ``model``, ``method``, ``train``, ``runtime``.

This module is the schema only (pydantic models, bounds, ``--set`` parsing, YAML reading); it imports nothing of
ensemblekit but :mod:`~ensemblekit.errors` and :mod:`~ensemblekit.safe_yaml`. Loading a config (names checked,
the method's options validated and resolved with their defaults) is :mod:`ensemblekit.resolve`. Unknown keys and
wrong types are refused with one line naming the field. ``--set key.sub=value`` overrides any field; the value is
parsed as YAML (``--set train.lr=0.05``, ``--set train.milestones=[5,10]``).

Example:
    >>> cfg = Config.model_validate({"model": {"name": "resnet8"}, "train": {"epochs": 1}})
    >>> cfg.model.name, cfg.train.epochs
    ('resnet8', 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ensemblekit.errors import UserError, config_error, shorten
from ensemblekit.safe_yaml import read_yaml_file, safe_yaml_load

# Bounds that keep every accepted config runnable (values past them crashed or ran forever; see README
# "Guarantees"). Floats must be finite everywhere (``allow_inf_nan=False``).
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 100_000
MAX_MEMBERS = 1024
MAX_IMAGES = 100_000_000
MAX_BATCH = 65_536
MAX_THREADS = 1024
MAX_WIDTH = 16.0
MAX_LR = 100.0
MAX_IMAGE_SIDE = 4096

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Which data, how much of it, and how batches are made."""

    name: str = "cifar10"
    root: str | None = None
    train_size: int | None = Field(default=None, gt=0, le=MAX_IMAGES)
    test_size: int | None = Field(default=None, gt=0, le=MAX_IMAGES)
    val_size: int = Field(default=0, ge=0, le=MAX_IMAGES)
    augment: bool = True
    crop_padding: int = Field(default=4, ge=0, le=256)
    """Zero padding of the augmentation's random crop (0: no crop); images keep their size."""
    flip: bool = True
    """Random horizontal flips in the augmentation."""
    batch_size: int = Field(default=128, gt=0, le=MAX_BATCH)
    eval_batch_size: int = Field(default=500, gt=0, le=MAX_BATCH)
    seed: Seed = 0
    download: bool = False
    classes: list[Annotated[int, Field(ge=0, le=MAX_IMAGES)]] | None = Field(default=None, min_length=1)
    """Train and test on these classes only, relabelled 0..k-1 in the given order (``None``: all)."""
    image_size: (
        Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)] | list[Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)]] | None
    ) = None
    """``image_folder``: bring every image to this size (``S`` or ``[H, W]``): scale to cover, centre-crop."""

    @field_validator("image_size")
    @classmethod
    def _height_width(cls, v: int | list[int] | None) -> int | list[int] | None:
        if isinstance(v, list) and len(v) != 2:
            raise ValueError("must be one size S or [height, width]")
        return v

    def image_hw(self) -> tuple[int, int] | None:
        """``image_size`` as ``(H, W)`` (``None`` when unset)."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        return (int(self.image_size[0]), int(self.image_size[1]))


class ModelConfig(_Section):
    """The backbone: a registered model name and its options (``kwargs`` for family-specific ones).

    ``factory`` names your own model's factory by import path, ``"package.module:function"``, called as
    ``function(num_classes=C, **kwargs)`` (see :mod:`ensemblekit.models.custom`); ``name`` is then only its label
    (default ``custom``).
    """

    name: str = "resnet20"
    factory: str | None = Field(default=None, max_length=300)
    stages: list[Annotated[str, Field(max_length=300)]] | None = Field(default=None, max_length=64)
    """A custom module's stage boundaries: the layers where each stage begins, then where the head begins."""
    width: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _custom_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("factory") and "name" not in data:
            return {**data, "name": "custom"}
        return data


class MethodConfig(BaseModel):
    """The method's name, its number of members, and its own options (validated by the method).

    A config loaded by :func:`ensemblekit.resolve.config_from_dict` is *resolved*: every option of the method is
    a field here with its value (defaults filled, derived values such as a member count written), and
    :meth:`resolved_options` holds the method's validated ``Options`` object. Setting a field afterwards drops
    the resolved options (resolve the config again).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    name: str = "deep_ensemble"
    members: int | None = Field(default=None, gt=0, le=MAX_MEMBERS)
    """``None`` only before resolution (a config file may leave it out, as old run directories record it)."""

    _resolved: BaseModel | None = PrivateAttr(default=None)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._resolved = None  # the resolved options no longer describe the section
        super().__setattr__(name, value)

    @classmethod
    def from_options(cls, name: str, options: BaseModel) -> MethodConfig:
        """The resolved section of method ``name``: every field of its validated ``options``, kept alongside."""
        section = cls.model_validate({"name": name, **options.model_dump(mode="json")})
        section._resolved = options
        return section

    def options(self) -> dict[str, Any]:
        """The method-specific options as given (everything except ``name``; ``members`` only when set)."""
        opts = dict(self.model_extra or {})
        if self.members is not None:
            opts["members"] = self.members
        return opts

    def resolved_options(self) -> Any:
        """The method's validated options object (its ``Options`` model, defaults filled).

        Raises:
            RuntimeError: the section was not resolved (build configs with :mod:`ensemblekit.resolve`).
        """
        if self._resolved is None:
            raise RuntimeError(
                f"the options of method {self.name!r} are not resolved: load the config with "
                "ensemblekit.resolve.config_from_dict or load_config"
            )
        return self._resolved


class TrainConfig(_Section):
    """The default training recipe; a method's stages start from it and change what their paper says."""

    epochs: int = Field(default=10, ge=0, le=MAX_EPOCHS)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0, le=MAX_LR)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5.0e-4, ge=0, le=1)
    decay_bn_and_bias: bool = True
    schedule: Literal["constant", "step", "cosine", "onecycle", "cyclic_cosine", "flat_linear"] = "cosine"
    milestones: list[Annotated[float, Field(ge=0, le=MAX_EPOCHS)]] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0, le=10)
    warmup_epochs: float = Field(default=0.0, ge=0, le=MAX_EPOCHS)
    cycles: int = Field(default=1, gt=0, le=MAX_EPOCHS)
    min_lr: float = Field(default=0.0, ge=0, le=MAX_LR)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    member_loss: Literal["mean", "sum"] = "mean"
    replica_batch_size: int | None = Field(default=None, gt=0)  # BN statistics per replica (training/replica_bn.py)
    grad_clip: float | None = Field(default=None, gt=0)
    max_steps_per_epoch: int | None = Field(default=None, gt=0, le=MAX_IMAGES)
    max_loss: float = Field(default=1.0e6, gt=0)
    """A training loss above this counts as divergence, like NaN or inf (an exploding run is stopped)."""
    seed: Seed = 0

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if list(v) != sorted(v):
            raise ValueError("milestones must be increasing")
        return v


class RuntimeConfig(_Section):
    """Devices, precision and distribution (Lightning Fabric) and how members are executed."""

    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: Annotated[int, Field(gt=0, le=MAX_THREADS)] | Annotated[str, Field(max_length=200)] = 1
    num_nodes: int = Field(default=1, gt=0, le=MAX_THREADS)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["32-true", "32", "bf16-mixed", "16-mixed"] = "32-true"
    member_execution: Literal["auto", "loop", "packed"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_threads: int | None = Field(default=None, gt=0, le=MAX_THREADS)
    deterministic: bool = False
    logger: Literal["csv", "tensorboard"] = "csv"
    log_every_steps: int = Field(default=10, gt=0, le=MAX_EPOCHS)
    progress_every_seconds: float = Field(default=30.0, gt=0, le=86_400)
    progress_every_steps: int | None = Field(default=None, gt=0, le=MAX_EPOCHS)
    cudnn_benchmark: Literal["auto", "on", "off"] = "auto"
    """``auto``: cuDNN autotuning on CUDA unless ``deterministic``."""
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    """``auto``: fused SGD/AdamW kernels on CUDA, PyTorch's default (foreach) elsewhere."""
    eval_precision: Literal["run", "32"] = "run"
    """``run``: evaluation forwards under the run's precision (softmax and metrics in float32); ``32``: float32."""
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    """``torch.compile`` mode of the trained modules (``off``: eager)."""
    parallel: Literal["none", "members"] = "none"
    """``members``: with several processes, stages that do not need one another (deep-ensemble members, ...) train
    on different processes at once, without gradient all-reduce (docs/scaling.md); ``none``: data parallel."""

    @field_validator("strategy")
    @classmethod
    def _no_spawn(cls, v: str) -> str:
        if v == "ddp_spawn":
            raise ValueError(
                "ddp_spawn is not supported (Fabric can spawn a function, not the ensemblekit command); use ddp, "
                "which starts one process per device"
            )
        return v

    @model_validator(mode="after")
    def _member_parallel(self) -> RuntimeConfig:
        """``parallel: members`` trains each member on its own process: no packed members, csv logs only."""
        if self.parallel == "members" and self.member_execution == "packed":
            raise ValueError(
                "parallel: members trains each member on its own process; it cannot pack members "
                "(set runtime.member_execution: loop or auto)"
            )
        if self.parallel == "members" and self.logger == "tensorboard":
            raise ValueError("parallel: members writes csv logs only (set runtime.logger: csv)")
        return self


class Config(_Section):
    """A whole run: ``data``, ``model``, ``method``, ``train``, ``runtime``."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    meta: dict[str, Any] | None = Field(default=None, description="written by ensemblekit into run configs")


def _key(part: object) -> str:
    """A config key as shown in an error: plain names as they are, anything else as a short ``repr``."""
    text = str(part)
    return text if text.isidentifier() or text.isdigit() else shorten(text, 30)


def validation_error(err: ValidationError, prefix: str = "") -> UserError:
    """One line for a pydantic error: ``config error: <prefix><field>: <what> (got <short value>)``.

    Only the first error is described (``(+n more)`` counts the others); echoed values are shortened. A
    model-level check (no field) names its field at the start of its message, ``"<field>: <what>"``.
    """
    first = err.errors(include_url=False)[0]
    loc = prefix + ".".join(_key(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if not first["loc"]:  # a model-level check names its field itself: "<field>: <what>"
        field, _, rest = msg.partition(": ")
        if not rest:  # a message that names no field: the section
            return config_error(prefix.rstrip(".") or "config", msg + more)
        return config_error(prefix + field, rest + more)
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "finite_number":
        msg = "must be a finite number"
    value = first.get("input")
    quiet = first["type"] in ("extra_forbidden", "missing") or isinstance(value, dict)
    shown = "" if quiet else f" (got {shorten(value)})"
    return config_error(loc, f"{msg}{shown}{more}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise UserError(f"bad --set {shorten(text)}: expected key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"bad --set {shorten(text)}: empty key")
    value = safe_yaml_load(raw, f"--set {key.strip()}", plain_on_error=True) if raw.strip() != "" else None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(f"bad --set {shorten(text)}: {shorten(part)} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every read or parse problem into one-line ``UserError``."""
    raw = read_yaml_file(path, "config")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config {shorten(str(path))} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of the config (of a resolved config: every method option with its value)."""
    return cfg.model_dump(mode="json", exclude={"meta"})
