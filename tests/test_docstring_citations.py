"""Docstrings and method summaries cite papers or docs/ pages, never a design document the repo does not ship.

The implementation notes the methods were written from (``methods.md``, and the paper texts they call
"seed 003" etc.) are not part of the repository; a reader of the code or of ``ensemblekit list methods`` must be
pointed at a paper or at ``docs/methods/*.md`` instead (issue 14 item 5).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import ensemblekit
from ensemblekit.cli import main
from ensemblekit.methods import METHODS

SRC = Path(ensemblekit.__file__).resolve().parent
DOCS = SRC.parents[1] / "docs"
UNSHIPPED = re.compile(r"(?<!\w)methods\.md|seed 0\d\d", re.IGNORECASE)


def _docstrings(path: Path) -> list[tuple[str, str]]:
    """(where, text) of the module's docstring and of every class and function docstring in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = [(f"{path.name} (module)", ast.get_docstring(tree) or "")]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            out.append((f"{path.name}:{node.lineno} {node.name}", ast.get_docstring(node) or ""))
    return out


def test_the_pattern_catches_what_it_is_for():
    assert UNSHIPPED.search("specification in methods.md section 3")
    assert UNSHIPPED.search("(MixtureEnsembles, seed 003)")
    assert not UNSHIPPED.search("docs/methods/mothernets.md, seed 0 of 3")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_docstring_cites_an_unshipped_document(path):
    bad = [where for where, text in _docstrings(path) if UNSHIPPED.search(text)]
    assert not bad, f"docstrings citing methods.md / seed NNN: {bad}"


def test_no_comment_or_string_in_the_source_cites_an_unshipped_document():
    bad = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if UNSHIPPED.search(p.read_text(encoding="utf-8"))]
    assert not bad


def test_method_summaries_and_list_methods_cite_no_unshipped_document(capsys):
    for name in METHODS.names():
        assert not UNSHIPPED.search(METHODS.get(name).summary), name
    assert main(["list", "methods"]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in METHODS.names())
    assert not UNSHIPPED.search(shown)


def test_docs_readme_configs_and_examples_cite_no_unshipped_document():
    repo = DOCS.parent
    shipped = [
        repo / "README.md",
        *DOCS.rglob("*.md"),
        *(repo / "configs").rglob("*.yaml"),
        *(repo / "examples").rglob("*"),
    ]
    files = [p for p in shipped if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) > 20, f"shipped files not found under {repo}"
    bad = [str(p.relative_to(repo)) for p in files if UNSHIPPED.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert not bad


TIMING = re.compile(
    r"\d+(\.\d+)? ?ms\b|\d\.\d+x (faster|slower)|\d\.\d+-\d\.\d+x|\d+ (CPU )?cores\b|\d+ ?% (faster|slower)",
    re.IGNORECASE,
)


def test_the_timing_pattern_catches_measured_figures():
    for note in ("8 ms vs 21 ms", "measured 1.3x slower", "1.43-1.44x the loop", "on 2 cores", "~12 % faster"):
        assert TIMING.search(note), note
    assert not TIMING.search("M = 4 members, 10 % warm-up, 0.5x width")


@pytest.mark.parametrize("package", ["methods", "layers", "training"])
def test_cpu_timing_notes_live_in_docs_or_benchmarks_not_in_the_code(package):
    """Measured figures go stale with every torch release; the code points to docs/methods/*.md instead."""
    bad = [
        f"{p.relative_to(SRC)}:{n}"
        for p in sorted((SRC / package).rglob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if TIMING.search(line)
    ]
    assert not bad
