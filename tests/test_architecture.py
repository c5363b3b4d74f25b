"""The layout's rules, read from the source (ast), so a change that breaks them fails here:
mixquant_core's stages import only earlier stages, no package imports UI code it must not know,
and no module graph has a circle (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mixquant_core", "mixquant_cli", "mixquant_viz", "studio_ui")
# The data's path through the core (README, "Architecture"); equal numbers may import each other.
STAGES = {"errors": 0, "files": 0, "models": 1, "data": 1, "quant": 2, "plans": 3, "evaluation": 4, "recon": 5,
          "export": 6, "workspace": 7, "evaluations": 7, "studies": 8}
# What each package must never import (top-level names).
FORBIDDEN = {
    "mixquant_core": {"streamlit", "plotly", "mixquant_cli", "mixquant_viz", "studio_ui", "app_pages"},
    "mixquant_viz": {"streamlit", "mixquant_cli", "studio_ui", "app_pages"},
    "mixquant_cli": {"streamlit", "studio_ui", "app_pages"},
    "studio_ui": {"app_pages"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> Dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, source: str, known: Set[str]) -> Iterator[str]:
    """Absolute names of what ``name`` imports: the most specific known module where one exists."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # "from pkg import module" imports the module itself
                full = f"{target}.{alias.name}"
                yield full if full in known else target


def stage(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:  # mixquant_core/__init__.py: the public API re-exports every stage
        return max(STAGES.values()) + 1
    return STAGES[parts[1]]


def graph() -> Dict[str, Set[str]]:
    mods = all_modules()
    known = set(mods)
    return {name: {t for t in imports_of(name, path, path.read_text(), known) if t in known and t != name}
            for name, path in mods.items()}


def stage_violations(edges: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    bad = []
    for src, targets in edges.items():
        if not src.startswith("mixquant_core.") or src == "mixquant_core.__main__":
            continue
        for t in targets:
            if t.startswith("mixquant_core") and stage(t) > stage(src):
                bad.append((src, t))
    return sorted(bad)


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_core_module_belongs_to_a_stage():
    for name in all_modules():
        if name.startswith("mixquant_core.") and name != "mixquant_core.__main__":
            assert name.split(".")[1] in STAGES, f"{name} lies outside the stages (add it to one, and to the README)"


def test_core_stages_import_only_earlier_stages():
    assert stage_violations(graph()) == []


def test_no_import_circle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_no_ui_they_must_not_know(package):
    mods = all_modules()
    known = set(mods)
    for name, path in mods.items():
        if name.split(".")[0] != package:
            continue
        tops = {t.split(".")[0] for t in imports_of(name, path, path.read_text(), known)}
        assert not tops & FORBIDDEN[package], f"{name} imports {sorted(tops & FORBIDDEN[package])}"


def test_every_subpackage_says_what_it_holds_and_may_import():
    for name, path in all_modules().items():
        if path.name == "__init__.py" and name.startswith("mixquant_"):
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and "import" in doc.lower(), f"{name}: the docstring says what it holds and what it may import"


def test_the_checks_catch_a_backward_import_and_a_circle():
    # The rules above must be able to fail: an evaluation module imported by a plans module is a
    # stage violation, and two modules importing each other are a circle.
    known = {"mixquant_core.plans.plan", "mixquant_core.evaluation.evaluate"}
    src = "from ..evaluation.evaluate import evaluate\n"
    targets = set(imports_of("mixquant_core.plans.plan", REPO / "mixquant_core/plans/plan.py", src, known))
    edges = {"mixquant_core.plans.plan": targets & known, "mixquant_core.evaluation.evaluate": {"mixquant_core.plans.plan"}}
    assert stage_violations(edges) == [("mixquant_core.plans.plan", "mixquant_core.evaluation.evaluate")]
    assert cycles(edges) == [sorted(known)]
