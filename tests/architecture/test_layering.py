"""The package imports downward only: a module never imports (even lazily) from a layer above its own.

Layers, bottom to top (docs/design.md "Layers"); modules of one layer may import one another, and a package's
``__init__`` belongs to its package's layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ensemblekit

PACKAGE = Path(ensemblekit.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("registry", "errors", "safe_yaml", "config", "atomic", "console"),
    ("metrics", "pruning"),
    ("models", "data"),
    ("layers", "ensemble"),
    ("training", "analysis"),
    ("methods",),
    ("resolve",),
    ("runs",),
    ("evaluation", "bench", "predictor", "export", "user_data"),
    ("cli", "__init__", "__main__"),
]


def _layer_of(module: str) -> int:
    """The layer of ``ensemblekit.<top>...`` (its first component after ``ensemblekit``)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS and to docs/design.md")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1 and parts[-2] != "ensemblekit":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _import_nodes(path: Path) -> list[ast.ImportFrom | ast.Import]:
    """The import statements of ``path``, at the top or inside functions (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    return [n for n in ast.walk(tree) if isinstance(n, (ast.ImportFrom, ast.Import)) and id(n) not in typing_only]


def _imports(path: Path) -> set[str]:
    """Every ``ensemblekit`` module ``path`` imports (the ``X`` of ``from X import y``)."""
    found = set()
    for node in _import_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("ensemblekit"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ensemblekit"))
    return found


def _module_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``).

    A module importing its own package's ``__init__`` (the re-export pattern) is not an edge.
    """
    modules = _modules()

    def known(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in _import_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ensemblekit"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in modules else known(node.module))
            elif isinstance(node, ast.Import):
                edges.update(known(a.name) for a in node.names if a.name.startswith("ensemblekit"))
        graph[module] = {e for e in edges if e != module and not module.startswith(e + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_every_module_is_in_a_layer():
    for module in _modules():
        _layer_of(module)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module, path in sorted(_modules().items()):
        own = _layer_of(module)
        for imported in sorted(_imports(path)):
            if imported == "ensemblekit":
                continue  # the package itself (its version): fine from anywhere
            if _layer_of(imported) > own:
                upward.append(f"{module} -> {imported}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_layer_table_checks_something():
    """The checker sees a real upward import: cli imports runs (allowed), and runs -> cli would be flagged."""
    assert _layer_of("ensemblekit.runs.train") > _layer_of("ensemblekit.methods.base")
    assert _layer_of("ensemblekit.cli") > _layer_of("ensemblekit.runs")
    assert "ensemblekit.runs" in _imports(PACKAGE / "cli" / "commands.py") or any(
        m.startswith("ensemblekit.runs") for m in _imports(PACKAGE / "cli" / "commands.py")
    )


def test_no_import_cycles():
    """No two modules import each other, directly or through others (lazy imports included)."""
    assert _cycles(_module_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
