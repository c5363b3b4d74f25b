"""The layout's rules, read from the source (ast), so a change that breaks them fails here:
mixquant_core's stages import only earlier stages, no package imports UI code it must not know,
and no module graph has a circle (imports inside functions count too, and so do modules loaded by
name with ``importlib.import_module``)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mixquant_core", "mixquant_cli", "mixquant_viz", "studio_ui")
# The data's path through the core (README, "Architecture"); equal numbers may import each other.
STAGES = {"errors": 0, "files": 0, "numbers": 0, "lazy": 0, "models": 1, "data": 1, "quant": 2, "plans": 3, "evaluation": 4, "recon": 5,
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


def resolve(relative: str, package: str) -> str:
    """``relative`` (``..x.y``, or an absolute name) as an absolute module name, seen from ``package``."""
    level = len(relative) - len(relative.lstrip("."))
    if not level:
        return relative
    base = package.split(".")
    base = base[: len(base) - level + 1]
    rest = relative[level:]
    return ".".join(base + ([rest] if rest else []))


def string_collections(tree: ast.Module) -> Dict[str, List[str]]:
    """Module-level names bound to string literals: a string, a tuple/list/set of them, or a dict's
    string keys (what a loop over it, or its ``.items()``/``.keys()``, yields first)."""
    found: Dict[str, List[str]] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if isinstance(value, ast.Dict):
            items = value.keys
        elif isinstance(value, (ast.Tuple, ast.List, ast.Set)):
            items = value.elts
        else:
            items = [value]
        strings = [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
        if strings and len(strings) == len(items):
            for t in targets:
                if isinstance(t, ast.Name):
                    found[t.id] = strings
    return found


def loop_bindings(tree: ast.Module, collections: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Loop variables (``for m in NAMES``, ``for m, _ in TABLE.items()``, comprehensions too) that
    take the strings of a module-level collection, and the module-level string constants themselves."""
    bound = dict(collections)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.For, ast.comprehension)):
            continue
        source = node.iter
        if isinstance(source, ast.Call) and isinstance(source.func, ast.Attribute) and source.func.attr in ("items", "keys"):
            source = source.func.value
        if not (isinstance(source, ast.Name) and source.id in collections):
            continue
        target = node.target.elts[0] if isinstance(node.target, ast.Tuple) and node.target.elts else node.target
        if isinstance(target, ast.Name):
            bound[target.id] = collections[source.id]
    return bound


def dynamic_imports(name: str, package: str, tree: ast.Module) -> Iterator[str]:
    """Absolute names loaded with ``importlib.import_module(X[, package])``, X a string literal, a
    module-level string constant, or a loop variable over a module-level collection of strings."""
    bound = loop_bindings(tree, string_collections(tree))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if called == "lazy_exports" and len(node.args) > 1 and isinstance(node.args[1], ast.Name):
            # mixquant_core.lazy: the table's modules are imported on first use, relative to the package
            for module in bound.get(node.args[1].id, []):
                yield resolve(module, name)
            continue
        if called != "import_module":
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names = [first.value]
        elif isinstance(first, ast.Name):
            names = bound.get(first.id, [])
        else:
            names = []
        anchor = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "package"), None)
        if isinstance(anchor, ast.Name):
            anchor_name = {"__name__": name, "__package__": package}.get(anchor.id, package)
        elif isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
            anchor_name = anchor.value
        else:
            anchor_name = package
        for module in names:
            yield resolve(module, anchor_name)


def imports_of(name: str, path: Path, source: str, known: Set[str]) -> Iterator[str]:
    """Absolute names of what ``name`` imports: the most specific known module where one exists,
    modules loaded by name with ``importlib.import_module`` included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(source)
    yield from dynamic_imports(name, package, tree)
    for node in ast.walk(tree):
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


def test_the_checks_follow_dynamic_imports_into_a_circle():
    # A module that loads others by name (a literal, or each name of a module-level tuple) while
    # they import helpers back from it is a circle, though no import statement shows it.
    known = {"mixquant_cli.main", "mixquant_cli.ext", "mixquant_cli.other"}
    main_src = ("import importlib\nEXTENSIONS = ('mixquant_cli.ext',)\n\n"
                "def build():\n    for module in EXTENSIONS:\n        importlib.import_module(module).register()\n"
                "    importlib.import_module('.other', __package__)\n")
    ext_src = "def register():\n    from .main import helper\n"
    edges = {"mixquant_cli.main": set(imports_of("mixquant_cli.main", REPO / "mixquant_cli/main.py", main_src, known)),
             "mixquant_cli.ext": set(imports_of("mixquant_cli.ext", REPO / "mixquant_cli/ext.py", ext_src, known))}
    assert edges["mixquant_cli.main"] == {"importlib", "mixquant_cli.ext", "mixquant_cli.other"}
    assert cycles({k: v & known for k, v in edges.items()}) == [["mixquant_cli.ext", "mixquant_cli.main"]]


def test_lazy_exports_are_followed():
    # mixquant_core/__init__.py imports its exports on first use (lazy_exports over a
    # table's keys): those edges still count.
    edges = graph()
    assert {"mixquant_core.workspace", "mixquant_core.evaluation.evaluate", "mixquant_core.errors"} <= edges["mixquant_core"]
    assert edges["mixquant_core.evaluation"] == {"mixquant_core.evaluation.evaluate", "mixquant_core.evaluation.evaluator",
                                                 "mixquant_core.lazy"}


def test_cli_commands_do_not_import_the_entry_point():
    # main.py builds the parser and dispatches; the commands share options/output/progress/inputs,
    # never main (which imports them all).
    importers = sorted(src for src, targets in graph().items() if "mixquant_cli.main" in targets)
    assert importers == ["mixquant_cli.__main__"]
