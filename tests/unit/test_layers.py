"""The import graph of ``parley`` follows its layers (read from the source, not imported).

From the bottom up:

0. the pure base: ``parley.core``, ``parley.merkle``, ``parley.errors`` (no I/O:
   ``test_core_is_pure`` checks that);
1. support: ``parley.config``, ``parley.keyfile``, ``parley.logs``, ``parley.forms``;
2. the store: ``parley.store``;
3. the application layer: ``parley.service``;
4. tools built on it: ``parley.testing``, ``parley.bench``, ``parley.demo``, ``parley.memory_demo``;
5. the front ends: ``parley.console``, ``parley.cli``.

A module imports only from its own layer or the layers below, the front ends
reach the store only through the application layer, and there is no import
cycle between packages. Every ``import`` counts: at module level, inside a
function or under ``TYPE_CHECKING``.

What does not hold yet is listed file by file in ``ALLOWED``; an entry that is
no longer needed fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import parley

SRC = Path(parley.__file__).resolve().parent

LAYERS: dict[str, int] = {
    "parley.core": 0,
    "parley.merkle": 0,
    "parley.errors": 0,
    "parley.config": 1,
    "parley.keyfile": 1,
    "parley.logs": 1,
    "parley.forms": 1,
    "parley.store": 2,
    "parley.service": 3,
    "parley.testing": 4,
    "parley.bench": 4,
    "parley.demo": 4,
    "parley.memory_demo": 4,
    "parley.console": 5,
    "parley.cli": 5,
    "parley.client": 5,
    "parley.server": 5,
}
PURE_BASE = {"parley.core", "parley.merkle", "parley.errors"}
FRONT_ENDS = {"parley.console", "parley.cli", "parley.client"}

#: (importing module, imported package) pairs that break a rule today.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, *, is_package: bool, known: Iterable[str]) -> set[str]:
    """Every ``parley`` module ``module`` imports (``from x import y``: x.y when y is a module)."""
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {name for name in found if name == "parley" or name.startswith("parley.")}


def package_of(module: str) -> str:
    """The layer package a module belongs to (``parley.service.kernel`` -> ``parley.service``)."""
    for package in sorted(LAYERS, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return module


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the parley modules it imports, from {module: (source, is_package)}."""
    return {
        module: imports_of(module, source, is_package=is_package, known=sources)
        for module, (source, is_package) in sources.items()
    }


def read_sources(root: Path) -> dict[str, tuple[str, bool]]:
    return {
        module_name(path, root): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in sorted(root.rglob("*.py"))
    }


def unplaced(graph: Mapping[str, set[str]]) -> list[str]:
    """Modules that belong to no layer."""
    return sorted(m for m in graph if m != "parley" and package_of(m) not in LAYERS)


def violations(graph: Mapping[str, set[str]]) -> set[tuple[str, str, str]]:
    """(module, imported package, rule broken) for every import against the layers."""
    found: set[tuple[str, str, str]] = set()
    for module, targets in graph.items():
        source = package_of(module)
        if source not in LAYERS:
            continue
        for target in {package_of(t) for t in targets} - {source, "parley"}:
            if target not in LAYERS:
                found.add((module, target, f"{target} has no layer"))
            elif source in PURE_BASE and target not in PURE_BASE:
                found.add((module, target, "the pure base imports only the pure base"))
            elif LAYERS[target] > LAYERS[source]:
                found.add((module, target, "a layer imports only the layers below it"))
            elif source in FRONT_ENDS and target == "parley.store":
                found.add((module, target, "a front end goes through the application layer"))
    return found


def package_cycles(graph: Mapping[str, set[str]], skip: Iterable[tuple[str, str]]) -> list[str]:
    """The import cycles between layer packages (edges in ``skip`` left out)."""
    skip = set(skip)
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        for target in targets:
            target = package_of(target)
            if target != source and target != "parley" and (module, target) not in skip:
                edges.setdefault(source, set()).add(target)
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(read_sources(SRC))


def test_every_package_has_a_layer(graph: dict[str, set[str]]) -> None:
    assert "parley.service.terminal" in graph  # the walk found the source
    assert "parley.core.party" in graph
    assert not unplaced(graph), f"put these in a layer of LAYERS: {unplaced(graph)}"


def test_the_pure_base_imports_nothing_above_it(graph: dict[str, set[str]]) -> None:
    broken = sorted(
        (module, target)
        for module, target, _ in violations(graph)
        if package_of(module) in PURE_BASE
    )
    assert not broken


def test_the_store_imports_no_application_layer_or_front_end(graph: dict[str, set[str]]) -> None:
    above = {"parley.service", "parley.console", "parley.cli"}
    broken = sorted(
        (module, target)
        for module, targets in graph.items()
        if package_of(module) == "parley.store"
        for target in targets
        if package_of(target) in above
    )
    assert not broken


def test_the_application_layer_imports_no_front_end(graph: dict[str, set[str]]) -> None:
    broken = sorted(
        (module, package_of(target))
        for module, targets in graph.items()
        if package_of(module) == "parley.service"
        for target in targets
        if package_of(target) in FRONT_ENDS
    )
    assert set(broken) <= ALLOWED, f"not allowed: {sorted(set(broken) - ALLOWED)}"


def test_front_ends_reach_the_store_only_through_the_application_layer(
    graph: dict[str, set[str]],
) -> None:
    broken = sorted(
        (module, "parley.store")
        for module, targets in graph.items()
        if package_of(module) in FRONT_ENDS
        and any(package_of(t) == "parley.store" for t in targets)
    )
    assert set(broken) <= ALLOWED, f"not allowed: {sorted(set(broken) - ALLOWED)}"


#: What only the application layer does: transactions, statements, the terminal's lock.
DATABASE_CALLS = frozenset({"begin", "connect", "execute", "commit"})


def database_work(source: str) -> list[str]:
    """Where ``source`` imports SQLAlchemy, calls a connection's methods or takes a lock."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any((n or "").split(".")[0] == "sqlalchemy" for n in names):
                found.append((node.lineno, "imports sqlalchemy"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in DATABASE_CALLS:
                found.append((node.lineno, f".{node.func.attr}()"))
        elif isinstance(node, ast.With):
            for item in node.items:
                expr = item.context_expr
                if isinstance(expr, ast.Attribute) and expr.attr == "lock":
                    found.append((node.lineno, "with ….lock"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_front_ends_open_no_transaction_and_take_no_lock() -> None:
    sources = read_sources(SRC)
    broken = {
        module: work
        for module, (source, _) in sources.items()
        if package_of(module) in FRONT_ENDS and (work := database_work(source))
    }
    assert not broken, broken


def test_database_work_is_found() -> None:
    source = (
        "import sqlalchemy\nfrom sqlalchemy.orm import Session\n"
        "def f(t):\n    with t.lock:\n        t.engine.begin()\n    conn.execute(q)\n"
    )
    assert database_work(source) == [
        "line 1: imports sqlalchemy",
        "line 2: imports sqlalchemy",
        "line 4: with ….lock",
        "line 5: .begin()",
        "line 6: .execute()",
    ]
    assert database_work("from parley.service import reads\nreads.messages(x)\n") == []


def test_each_layer_imports_only_the_layers_below(graph: dict[str, set[str]]) -> None:
    broken = {
        (module, target): rule
        for module, target, rule in violations(graph)
        if (module, target) not in ALLOWED
    }
    assert not broken, "\n".join(f"{m} imports {t}: {r}" for (m, t), r in sorted(broken.items()))


def test_no_import_cycle_between_packages(graph: dict[str, set[str]]) -> None:
    assert package_cycles(graph, skip=ALLOWED) == []


def test_every_allowed_exception_is_still_needed(graph: dict[str, set[str]]) -> None:
    current = {(module, target) for module, target, _ in violations(graph)}
    stale = sorted(ALLOWED - current)
    assert not stale, f"these imports are gone: remove them from ALLOWED: {stale}"


# The checks themselves find what they are for ---------------------------------


def _synthetic() -> dict[str, tuple[str, bool]]:
    return {
        "parley": ("", True),
        "parley.core": ("", True),
        "parley.core.envelope": ("from parley.errors import ParleyError\n", False),
        "parley.core.sneaky": ("def f():\n    from ..store import db\n", False),
        "parley.errors": ("", False),
        "parley.store": ("from parley.service import terminal\n", True),
        "parley.store.db": ("", False),
        "parley.service": ("", True),
        "parley.service.terminal": ("from . import kernel\nimport parley.store.db\n", False),
        "parley.service.kernel": ("from parley.console.web import App\n", False),
        "parley.console": ("", True),
        "parley.console.web": ("from parley import store\nfrom .. import service\n", False),
        "parley.shiny": ("", False),
    }


def test_the_import_reader_resolves_every_form_of_import() -> None:
    graph = import_graph(_synthetic())
    assert graph["parley.core.sneaky"] == {"parley.store.db"}
    assert graph["parley.service.terminal"] == {"parley.service.kernel", "parley.store.db"}
    assert graph["parley.console.web"] == {"parley.store", "parley.service"}
    assert graph["parley.core.envelope"] == {"parley.errors"}


def test_a_bad_import_is_found() -> None:
    found = {(module, target) for module, target, _ in violations(import_graph(_synthetic()))}
    assert found == {
        ("parley.core.sneaky", "parley.store"),  # the pure base, from inside a function
        ("parley.store", "parley.service"),  # a layer importing one above it
        ("parley.service.kernel", "parley.console"),  # the application layer, a front end
        ("parley.console.web", "parley.store"),  # a front end, the store
    }
    assert unplaced(import_graph(_synthetic())) == ["parley.shiny"]


def test_a_cycle_between_packages_is_found() -> None:
    graph = import_graph(_synthetic())
    cycles = package_cycles(graph, skip=())
    assert any("parley.service" in c and "parley.console" in c for c in cycles), cycles
    assert any("parley.store" in c and "parley.service" in c for c in cycles), cycles
    without = package_cycles(
        graph,
        skip={
            ("parley.store", "parley.service"),
            ("parley.service.kernel", "parley.console"),
        },
    )
    assert without == []
