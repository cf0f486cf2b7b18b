"""Progress output: a tqdm bar per stage on a terminal, one line per epoch otherwise, nothing when quiet."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def _is_sized_terminal(stream: TextIO) -> bool:
    """A terminal with a known width (a pseudo-terminal of width 0 would hide a bar entirely)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """Reports a stage's progress.

    Args:
        mode: ``"auto"`` (bar when ``stream`` is a terminal, else plain lines), ``"bar"``, ``"plain"`` or
            ``"quiet"``.
        stream: Where to write (default stdout).
    """

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if _is_sized_terminal(self.stream) else "plain"
        self.mode = mode
        self._bar: Any = None
        self._stage = ""
        self._epochs = 0
        self._t0 = 0.0
        self._epochs_done = 0

    def start_stage(self, name: str, epochs: int, steps_per_epoch: int, start_epoch: int = 0) -> None:
        """Begin a stage of ``epochs`` epochs (resuming at ``start_epoch``)."""
        self._stage, self._epochs, self._t0 = name, epochs, time.perf_counter()
        self._epochs_done = 0
        self._remaining = epochs - start_epoch
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=epochs * steps_per_epoch,
                initial=start_epoch * steps_per_epoch,
                desc=name,
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )

    def step(self, epoch: int, stats: dict[str, float] | None = None, n: int = 1) -> None:
        """``n`` optimiser steps done; ``stats`` (loss, acc, lr, img/s) refresh the bar when given."""
        if self._bar is None:
            return
        self._bar.update(n)
        if stats:
            self._bar.set_postfix_str(
                f"ep {epoch + 1}/{self._epochs} loss {stats['loss']:.3f} acc {stats['acc']:.3f} "
                f"lr {stats['lr']:.3g} {stats['img_s']:.0f} img/s",
                refresh=False,
            )

    def end_epoch(self, epoch: int, stats: dict[str, float]) -> None:
        """An epoch finished: a plain line in plain mode."""
        self._epochs_done += 1
        if self.mode != "plain":
            return
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / self._epochs_done * max(0, self._remaining - self._epochs_done)
        extra = "".join(f" {k} {v:.4f}" for k, v in stats.items() if k.startswith("val_"))
        print(
            f"[{self._stage}] epoch {epoch + 1}/{self._epochs} loss {stats['loss']:.4f} acc {stats['acc']:.4f}"
            f"{extra} lr {stats['lr']:.4g} {stats['img_s']:.0f} img/s eta {_fmt_eta(eta)}",
            file=self.stream,
            flush=True,
        )

    def end_stage(self) -> None:
        """Close the stage's bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def message(self, text: str) -> None:
        """A free-form line (not in quiet mode)."""
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
