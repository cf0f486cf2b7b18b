"""Progress output: a tqdm bar per stage on a terminal, plain lines otherwise, nothing when quiet.

Without a terminal (a log file, ``nohup``, CI), a line is printed at every epoch's end and, within an epoch,
every ``every_seconds`` seconds (and every ``every_steps`` optimiser steps when set), so a long epoch is never
silent. Every line names the stage as ``stage k/n`` and ends with the stage's ETA and the whole run's ETA.

The run's ETA is an estimate: the images still to train (the rest of this stage plus every later stage's
``epochs x images per epoch``) divided by this stage's measured throughput in images per second. Stages of a
different cost per image (a smaller MotherNet, a teacher's forward passes) make it approximate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ensemblekit.console import format_eta, is_sized_terminal


class Progress:
    """Reports a run's progress, stage by stage.

    Args:
        mode: ``"auto"`` (bar when ``stream`` is a terminal, else plain lines), ``"bar"``, ``"plain"`` or
            ``"quiet"``.
        stream: Where to write (default stdout).
        every_seconds: In plain mode, the longest silence within an epoch (``runtime.progress_every_seconds``).
        every_steps: In plain mode, also print every this many optimiser steps (``None``: by time only).
        clock: The time source (tests pass a fake one).
    """

    def __init__(
        self,
        mode: str = "auto",
        stream: TextIO | None = None,
        *,
        every_seconds: float = 30.0,
        every_steps: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if is_sized_terminal(self.stream) else "plain"
        self.mode = mode
        self.every_seconds = every_seconds
        self.every_steps = every_steps
        self.clock = clock
        self._bar: Any = None
        self._stage = ""
        self._label = ""
        self._epochs = 0
        self._steps = 1
        self._t0 = 0.0
        self._last_line = 0.0
        self._done_steps = 0
        self._remaining_steps = 0
        self._later_images = 0
        self._batch = 1
        self._plan: list[tuple[str, int, int]] = []

    # ------------------------------------------------------------------ the run
    def start_run(self, plan: list[tuple[str, int, int]]) -> None:
        """The run's stages as ``(name, epochs, images per epoch)``, in order (for ``stage k/n`` and the run ETA)."""
        self._plan = list(plan)

    def _later_stage_images(self, index: int) -> int:
        return sum(epochs * images for _, epochs, images in self._plan[index + 1 :])

    # ------------------------------------------------------------------ a stage
    def start_stage(
        self,
        name: str,
        epochs: int,
        steps_per_epoch: int,
        start_epoch: int = 0,
        *,
        index: int | None = None,
        batch_size: int = 1,
        start_step: int = 0,
    ) -> None:
        """Begin a stage of ``epochs`` epochs (resuming at ``start_epoch``, ``start_step``)."""
        total = len(self._plan)
        self._stage, self._epochs, self._steps = name, epochs, max(1, steps_per_epoch)
        self._label = f"stage {index + 1}/{total} {name}" if index is not None and total else name
        self._t0 = self._last_line = self.clock()
        self._done_steps = 0
        self._remaining_steps = (epochs - start_epoch) * self._steps - start_step
        self._later_images = self._later_stage_images(index) if index is not None else 0
        self._batch = max(1, batch_size)
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=epochs * self._steps,
                initial=start_epoch * self._steps + start_step,
                desc=self._label,
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )

    def _etas(self) -> tuple[float, float]:
        """Seconds left in this stage and in the whole run, from this stage's steps per second so far."""
        elapsed = max(1e-9, self.clock() - self._t0)
        if self._done_steps == 0:
            return float("nan"), float("nan")
        per_step = elapsed / self._done_steps
        stage_left = per_step * max(0, self._remaining_steps - self._done_steps)
        return stage_left, stage_left + per_step * self._later_images / self._batch

    def _eta_text(self) -> str:
        stage_left, run_left = self._etas()
        if stage_left != stage_left:  # nan: nothing measured yet
            return "eta ?"
        return f"eta {format_eta(stage_left)} (run {format_eta(run_left)})"

    def step(self, epoch: int, step: int, stats: Callable[[], dict[str, float]] | None = None) -> None:
        """One optimiser step (0-based ``step`` of ``epoch``) done; ``stats()`` gives loss, acc, lr and img/s.

        ``stats`` is only called when a line or the bar's text is due (it may synchronise the device).
        """
        self._done_steps += 1
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(1)
            if stats is not None and (step % 10 == 0 or step == self._steps - 1):
                s = stats()
                _, run_left = self._etas()
                run = f" run eta {format_eta(run_left)}" if run_left == run_left else ""
                self._bar.set_postfix_str(
                    f"ep {epoch + 1}/{self._epochs} loss {s['loss']:.3f} acc {s['acc']:.3f} "
                    f"lr {s['lr']:.3g} {s['img_s']:.0f} img/s{run}",
                    refresh=False,
                )
            return
        if self.mode != "plain" or stats is None or step == self._steps - 1:  # the epoch's end prints its own line
            return
        now = self.clock()
        by_steps = self.every_steps is not None and self._done_steps % self.every_steps == 0
        if not by_steps and now - self._last_line < self.every_seconds:
            return
        self._last_line = now
        s = stats()
        self._print(
            f"[{self._label}] epoch {epoch + 1}/{self._epochs} step {step + 1}/{self._steps} loss {s['loss']:.4f} "
            f"acc {s['acc']:.4f} lr {s['lr']:.4g} {s['img_s']:.0f} img/s {self._eta_text()}"
        )

    def end_epoch(self, epoch: int, stats: dict[str, float]) -> None:
        """An epoch finished: a plain line in plain mode."""
        if self.mode != "plain":
            return
        self._last_line = self.clock()
        extra = "".join(f" {k} {v:.4f}" for k, v in stats.items() if k.startswith("val_"))
        self._print(
            f"[{self._label}] epoch {epoch + 1}/{self._epochs} loss {stats['loss']:.4f} acc {stats['acc']:.4f}"
            f"{extra} lr {stats['lr']:.4g} {stats['img_s']:.0f} img/s {self._eta_text()}"
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
            self._print(text)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
