"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_MESSAGE = 1000
"""Longest error message the CLI prints; longer ones are cut in the middle (a safety net: messages that echo
user input shorten it with :func:`shorten`, so they stay far below this)."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlong = 40
for _attr in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _attr, 4)


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths), not a bug.

    The message must be one clear line that says what is wrong and, where possible, how to fix it; whatever
    it echoes, it is kept to one line of at most :data:`MAX_MESSAGE` characters.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


class DataNotFoundError(UserError):
    """A data set could not be found in any of the places looked at."""


class ChecksumError(UserError):
    """A data file's MD5 sum does not match the official one."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupt or incompatible."""


def config_error(field: str, message: str) -> UserError:
    """The one-line error of a bad config value: ``config error: <field>: <message>``.

    Every config check (schema, names, a method's options) words its error with it, so the CLI prints one format.

    Example:
        >>> str(config_error("method.cycles", "must be >= members (4)"))
        'config error: method.cycles: must be >= members (4)'
    """
    return UserError(f"config error: {field}: {message}")


def shorten(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of ``value`` for error messages: nested and long values are elided with ``...``.

    ``reprlib`` never builds the full ``repr``, so echoing a huge value (a YAML alias bomb) stays cheap.

    Example:
        >>> shorten("x" * 100, limit=12)
        "'xxx...xxx'"
    """
    text = _REPR.repr(value)
    if len(text) > limit:
        half = (limit - 3) // 2
        text = text[:half] + "..." + text[-half:]
    return text


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its class name when empty), cut to ``limit`` characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:limit]


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one line of at most ``limit`` characters (newlines become spaces; the middle is elided)."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        half = (limit - 5) // 2
        text = text[:half] + " ... " + text[-half:]
    return text
