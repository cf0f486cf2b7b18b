"""Run logs: per-epoch ``log.csv``, per-step ``steps.csv`` and a JSON-lines event log ``events.jsonl``.

With ``runtime.logger: tensorboard`` the same scalars also go to TensorBoard event files under ``tensorboard/``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from ensemblekit.atomic import atomic_write_bytes

LOG_FIELDS = [
    "stage",
    "epoch",
    "loss",
    "acc",
    "lr",
    "img_s",
    "seconds",
    "val_accuracy",
    "val_nll",
]

STEP_FIELDS = ["stage", "epoch", "step", "global_step", "loss", "lr"]

TENSORBOARD_DIR = "tensorboard"

TENSORBOARD_MISSING = (
    "runtime.logger: tensorboard needs the tensorboard package: pip install 'ensemblekit[tensorboard]' "
    "(or use runtime.logger: csv)"
)


def check_logger_available(name: str) -> None:
    """Refuse ``runtime.logger: tensorboard`` in one line when the ``tensorboard`` package is missing."""
    if name != "tensorboard":
        return
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from ensemblekit.errors import UserError

        raise UserError(TENSORBOARD_MISSING) from None


class RunLogger:
    """Appends epoch rows to ``log.csv`` and events to ``events.jsonl`` in a run directory.

    A ``None`` directory (non-zero DDP ranks, library use without a run directory) logs nothing.
    """

    def __init__(self, run_dir: str | Path | None, logger: str = "csv") -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.logger = logger
        self._writer: Any = None

    def open_tensorboard(self, purge_step: int | None = None) -> None:
        """Start writing TensorBoard events to ``tensorboard/``.

        ``purge_step``: a resumed run's global step, so TensorBoard drops the steps logged after its checkpoint.
        """
        if self.run_dir is None or self.logger != "tensorboard" or self._writer is not None:
            return
        check_logger_available(self.logger)
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (if any)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def scalars(self, stage: str, global_step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars ``<stage>/<name>`` at ``global_step`` (nothing without a TensorBoard writer)."""
        if self._writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self._writer.add_scalar(f"{stage}/{name}", value, global_step)

    def step(self, row: dict[str, Any]) -> None:
        """Append one optimiser step's scalars to ``steps.csv`` (and TensorBoard): ``STEP_FIELDS``."""
        if self.run_dir is None:
            return
        _append_csv(self.run_dir / "steps.csv", STEP_FIELDS, row)
        self.scalars(row["stage"], row["global_step"], {"loss": row["loss"], "lr": row["lr"]})

    def truncate_steps_after(self, global_step: int) -> int:
        """Drop ``steps.csv`` rows past ``global_step`` (a resumed run logs those steps again); returns how many."""
        if self.run_dir is None or not (self.run_dir / "steps.csv").exists():
            return 0
        path = self.run_dir / "steps.csv"
        raw = path.read_bytes()
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"), newline="")))
        keep = [
            r
            for r in rows
            if None not in r and str(r.get("global_step") or "").isdigit() and int(r["global_step"]) <= global_step
        ]
        if len(keep) != len(rows) or not raw.endswith(b"\n"):
            _rewrite_csv(path, STEP_FIELDS, keep)
        return len(rows) - len(keep)

    def keep_steps_of(self, stages: list[str]) -> int:
        """Keep only the ``steps.csv`` rows of ``stages`` (a resumed member-parallel run); returns how many went."""
        if self.run_dir is None or not (self.run_dir / "steps.csv").exists():
            return 0
        path = self.run_dir / "steps.csv"
        rows = list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8", errors="replace"), newline="")))
        keep = [r for r in rows if None not in r and r.get("stage") in set(stages)]
        if len(keep) != len(rows):
            _rewrite_csv(path, STEP_FIELDS, keep)
        return len(rows) - len(keep)

    def epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch row to ``log.csv`` (header written once)."""
        if self.run_dir is None:
            return
        _append_csv(self.run_dir / "log.csv", LOG_FIELDS, row)

    def truncate_after(self, stage_names: list[str | tuple[str, ...]], stage_index: int, epoch: int) -> int:
        """Drop ``log.csv`` rows past (stage ``stage_index``, ``epoch``): a resumed run re-runs those epochs.

        A tuple in ``stage_names`` names the member stages of one packed stage (rows logged per member).

        Returns:
            The number of rows dropped.
        """
        if self.run_dir is None or not (self.run_dir / "log.csv").exists():
            return 0
        path = self.run_dir / "log.csv"
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")  # a kill mid-write can leave a partial, undecodable row
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        order = {n: i for i, name in enumerate(stage_names) for n in ((name,) if isinstance(name, str) else name)}
        keep = [
            r
            for r in rows
            if _complete(r) and (order.get(r["stage"], len(order)), int(r["epoch"])) <= (stage_index, epoch)
        ]
        if len(keep) != len(rows) or not raw.endswith(b"\n") or not text.startswith(",".join(LOG_FIELDS)):
            _rewrite_csv(path, LOG_FIELDS, keep)
        return len(rows) - len(keep)

    def event(self, kind: str, **fields: Any) -> None:
        """Append ``{"time", "event", ...}`` to ``events.jsonl``."""
        if self.run_dir is None:
            return
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        with (self.run_dir / "events.jsonl").open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _append_csv(path: Path, fields: list[str], row: dict[str, Any]) -> None:
    """Append a row to a CSV file, writing the header when the file is new (``open``: mode 0o666 & ~umask)."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in fields})


def _rewrite_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically by ``fields``' header and ``rows`` (a resumed run's log, cut back)."""
    body = io.StringIO()
    writer = csv.DictWriter(body, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, lambda f: f.write(body.getvalue().encode()))


def _complete(row: dict[str | None, Any]) -> bool:
    """Whether a parsed ``log.csv`` row is whole: every field present, no extra cells, an integer epoch."""
    if None in row or any(row.get(k) is None for k in LOG_FIELDS):
        return False
    return str(row["epoch"]).isdigit()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v
