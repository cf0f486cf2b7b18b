"""Bounded YAML reading: regular files only, a size limit, and no alias ("billion laughs") expansion bombs.

``yaml.safe_load`` never runs code, but a few hundred bytes of nested aliases expand to billions of nodes
once a consumer walks the result (validation, ``repr`` in an error message). Here the composed node graph
is measured first, counting every node as often as aliases repeat it, and refused past
:data:`MAX_EXPANDED_NODES` before any Python object is built.

Example:
    >>> safe_yaml_load("{a: &x [1, 2], b: *x}", "example")
    {'a': [1, 2], 'b': [1, 2]}
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ensemblekit.errors import UserError, shorten

MAX_YAML_BYTES = 4 * 1024 * 1024
"""Largest YAML file read (configs and suites are a few kB)."""

MAX_EXPANDED_NODES = 200_000
"""Most YAML nodes a document may hold once aliases are expanded."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(root: yaml.Node) -> int:
    """Number of nodes of ``root`` with every alias expanded, or -1 for a recursive alias.

    Memoised per node, so the cost is linear in the composed graph however large the expansion.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in sizes:
            stack.pop()
            continue
        pending = [c for c in _children(node) if id(c) not in sizes]
        if key in open_nodes:  # second visit: children are done, unless one of them is this node's ancestor
            if pending:
                return -1
            sizes[key] = min(1 + sum(sizes[id(c)] for c in _children(node)), MAX_EXPANDED_NODES + 1)
            open_nodes.discard(key)
            stack.pop()
            continue
        open_nodes.add(key)
        for child in pending:
            if id(child) in open_nodes:
                return -1
            stack.append(child)
    return sizes[id(root)]


def safe_yaml_load(text: str, what: str, *, plain_on_error: bool = False) -> Any:
    """Parse one YAML document with ``SafeLoader``, refusing alias bombs.

    Args:
        text: The YAML text.
        what: What the text is, for error messages (``"config cfg.yaml"``, ``"--set train.lr"``).
        plain_on_error: Return ``text`` itself instead of refusing text that is not valid YAML (``--set``
            values such as ``a:b`` are plain strings).

    Raises:
        UserError: invalid YAML (unless ``plain_on_error``), or a document that expands past
            :data:`MAX_EXPANDED_NODES` nodes.
    """
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader already refuses non-printable characters here
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size < 0:
            raise UserError(f"{what}: a YAML alias refers to itself (a recursive document)")
        if size > MAX_EXPANDED_NODES:
            raise UserError(
                f"{what}: YAML aliases expand to more than {MAX_EXPANDED_NODES:,} nodes; refusing to expand it"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        if plain_on_error:
            return text
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{what} is not valid YAML{at}") from None
    except RecursionError:
        raise UserError(f"{what}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | Path, what: str, max_bytes: int = MAX_YAML_BYTES) -> str:
    """Read a regular UTF-8 text file of at most ``max_bytes`` (never a FIFO, device or directory).

    Raises:
        UserError: a missing path, a directory, a special file, a file too large or not UTF-8.
    """
    p = Path(path)
    shown = shorten(str(p), 120)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {shown}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {what} {shown}: {exc.__class__.__name__}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} path is a directory, not a file: {shown}")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} path is not a regular file (a device, FIFO or socket): {shown}")
    if st.st_size > max_bytes:
        raise UserError(f"{what} {shown} is too large ({st.st_size:,} bytes; at most {max_bytes:,})")
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {shown}: {exc.strerror or exc.__class__.__name__}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} {shown} is too large (more than {max_bytes:,} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {shown} is not UTF-8 text (byte {exc.start})") from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse a YAML file with :func:`read_text_file` and :func:`safe_yaml_load`."""
    text = read_text_file(path, what)
    return safe_yaml_load(text, f"{what} {shorten(str(path), 120)}")
