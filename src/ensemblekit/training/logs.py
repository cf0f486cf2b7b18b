"""Run logs: per-epoch ``log.csv`` and a JSON-lines event log ``events.jsonl``."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from ensemblekit.training.checkpoint import atomic_write_bytes

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


class RunLogger:
    """Appends epoch rows to ``log.csv`` and events to ``events.jsonl`` in a run directory.

    A ``None`` directory (non-zero DDP ranks, library use without a run directory) logs nothing.
    """

    def __init__(self, run_dir: str | Path | None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch row to ``log.csv`` (header written once)."""
        if self.run_dir is None:
            return
        path = self.run_dir / "log.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in LOG_FIELDS})

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
            body = io.StringIO()
            writer = csv.DictWriter(body, fieldnames=LOG_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)
            atomic_write_bytes(path, lambda f: f.write(body.getvalue().encode()))
        return len(rows) - len(keep)

    def event(self, kind: str, **fields: Any) -> None:
        """Append ``{"time", "event", ...}`` to ``events.jsonl``."""
        if self.run_dir is None:
            return
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        with (self.run_dir / "events.jsonl").open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _complete(row: dict[str | None, Any]) -> bool:
    """Whether a parsed ``log.csv`` row is whole: every field present, no extra cells, an integer epoch."""
    if None in row or any(row.get(k) is None for k in LOG_FIELDS):
        return False
    return str(row["epoch"]).isdigit()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v
