"""Progress of a download on stderr: a tqdm bar on a terminal, a few plain lines otherwise, nothing when quiet.

Both forms show the size, the bytes received, the speed and the time left (ETA), so a first run that fetches
a data set never looks stuck. Progress goes to stderr so that a command's own output on stdout stays clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ensemblekit.console import format_eta, is_sized_terminal

MODES = ("auto", "bar", "plain", "quiet")
_MIB = float(1 << 20)


def format_size(n: float) -> str:
    """``n`` bytes in MiB with one decimal (``"162.6 MiB"``)."""
    return f"{n / _MIB:.1f} MiB"


class DownloadProgress:
    """Reports the bytes received so far of one download.

    Args:
        mode: ``"auto"`` (bar when ``stream`` is a terminal, else plain lines), ``"bar"``, ``"plain"`` or
            ``"quiet"``.
        label: What is downloaded (a file name), shown on every line.
        total: Expected size in bytes (the ``Content-Length``), or ``None`` when the server does not say.
        stream: Where to write (default stderr).
        clock: Seconds since some origin (for tests; default ``time.perf_counter``).
        every: In plain mode, a line at most every ``every`` seconds (and at the end).
    """

    def __init__(
        self,
        mode: str,
        label: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
        every: float = 5.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if is_sized_terminal(self.stream) else "plain"
        self.mode, self.label, self.total = mode, label, total
        self.clock, self.every = clock, every
        self.done = 0
        self._t0 = self._last = clock()
        self._bar: Any = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=self.stream, leave=True
            )
        elif mode == "plain":
            size = format_size(total) if total is not None else "size unknown"
            self._print(f"downloading {label} ({size})")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _line(self, now: float) -> str:
        elapsed = max(now - self._t0, 1e-9)
        speed = self.done / elapsed
        if self.total:
            eta = (self.total - self.done) / speed if speed > 0 else float("inf")
            eta_text = format_eta(eta) if eta != float("inf") else "?"
            return (
                f"{self.label}: {100 * self.done / self.total:3.0f}% {format_size(self.done)} of "
                f"{format_size(self.total)}, {format_size(speed)}/s, eta {eta_text}"
            )
        return f"{self.label}: {format_size(self.done)}, {format_size(speed)}/s"

    def update(self, n: int) -> None:
        """``n`` more bytes received."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "plain":
            now = self.clock()
            if now - self._last >= self.every:
                self._last = now
                self._print(self._line(now))

    def close(self, ok: bool = True) -> None:
        """End of the download: close the bar, or (plain mode, success) print a last line with size and speed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "plain" and ok:
            now = self.clock()
            elapsed = max(now - self._t0, 1e-9)
            rate = format_size(self.done / elapsed)
            self._print(f"{self.label}: {format_size(self.done)} in {format_eta(elapsed)} ({rate}/s)")
