"""Terminal helpers shared by every progress display (training, downloads): durations and terminal width."""

from __future__ import annotations

import os
from typing import TextIO


def format_eta(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on (negative counts as 0)."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def is_sized_terminal(stream: TextIO) -> bool:
    """A terminal with a known width (a pseudo-terminal of width 0 would hide a bar entirely)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False
