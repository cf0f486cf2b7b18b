"""The corruption registry: ``name -> fn(images uint8 [B, 3, H, W], severity 1..5, generator) -> uint8``."""

from __future__ import annotations

from ensemblekit.registry import Registry

CORRUPTIONS = Registry("corruption")

SEVERITIES = (1, 2, 3, 4, 5)


def param(table: tuple, severity: int):
    """The entry of a 5-entry severity table for ``severity`` in 1..5."""
    return table[severity - 1]
