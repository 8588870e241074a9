"""The protocol core does no I/O and reads no clock: checked two ways.

1. Importing every module of ``parley.core`` and ``parley.merkle`` in a fresh
   interpreter pulls in no networking, database, subprocess or async module.
2. An AST scan of their source finds no call that opens a file, touches the
   file system through ``os`` or reads the clock.

Each check is first run on a deliberately impure example, so a check that
silently finds nothing would fail here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import parley.core
import parley.merkle

FORBIDDEN_MODULES = (
    "socket",
    "sqlite3",
    "ssl",
    "http",
    "urllib.request",
    "asyncio",
    "subprocess",
    "sqlalchemy",
    "httpx",
)

_IMPORT_SCRIPT = """
import importlib, json, pkgutil, sys
import parley.core
names = sorted(
    info.name for info in pkgutil.walk_packages(parley.core.__path__, "parley.core.")
) + ["parley.merkle"] + sys.argv[1:]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def _import_in_fresh_interpreter(*extra: str) -> tuple[list[str], set[str]]:
    result = subprocess.run(
        [sys.executable, "-I", "-c", _IMPORT_SCRIPT, *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    return report["imported"], set(report["modules"])


def _forbidden(modules: set[str]) -> list[str]:
    return sorted(
        name
        for name in modules
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_MODULES)
    )


@pytest.mark.subprocess  # a fresh interpreter
def test_importing_the_core_loads_no_io_module() -> None:
    imported, modules = _import_in_fresh_interpreter()
    # Every core module was really imported (the walk found them all).
    for expected in (
        "parley.core.canonical",
        "parley.core.checkpoint",
        "parley.core.dsse",
        "parley.core.encoding",
        "parley.core.envelope",
        "parley.core.identity",
        "parley.core.party",
        "parley.core.receipts",
        "parley.core.transcript",
        "parley.merkle",
    ):
        assert expected in imported
        assert expected in modules
    assert _forbidden(modules) == []


@pytest.mark.subprocess  # a fresh interpreter
def test_the_import_check_would_see_an_io_module() -> None:
    # The control: the same check, with one impure import added.
    _, modules = _import_in_fresh_interpreter("socket", "urllib.request")
    assert "socket" in _forbidden(modules)
    assert "urllib.request" in _forbidden(modules)


# --------------------------------------------------------------------------
# AST scan

_FILE_CALL_NAMES = frozenset({"open", "read_text", "read_bytes", "write_text", "write_bytes"})
_CLOCK_ATTRIBUTES = frozenset({"now", "utcnow", "today"})
_TIME_FUNCTIONS = frozenset(
    {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "localtime", "gmtime"}
)
_FORBIDDEN_IMPORTS = frozenset({"os", "pathlib", "shutil", "tempfile", "io", "time"})


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _scan(source: str, path: str) -> list[Violation]:
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _FORBIDDEN_IMPORTS:
                    found.append(Violation(path, node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in _FORBIDDEN_IMPORTS:
                found.append(Violation(path, node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            func = node.func
            name = _dotted(func)
            last = func.attr if isinstance(func, ast.Attribute) else _dotted(func)
            if last in _FILE_CALL_NAMES:
                found.append(Violation(path, node.lineno, f"call {name or last}()"))
            elif name is not None and name.split(".")[0] == "os":
                found.append(Violation(path, node.lineno, f"call {name}()"))
            elif isinstance(func, ast.Attribute) and func.attr in _CLOCK_ATTRIBUTES:
                found.append(Violation(path, node.lineno, f"clock read {name or func.attr}()"))
            elif name is not None and name.startswith("time.") and last in _TIME_FUNCTIONS:
                found.append(Violation(path, node.lineno, f"clock read {name}()"))
    return found


def _core_sources() -> list[Path]:
    core = Path(parley.core.__file__).parent
    files = [*sorted(core.rglob("*.py")), Path(parley.merkle.__file__)]
    assert len(files) >= 10
    return files


@pytest.mark.parametrize("path", _core_sources(), ids=lambda p: p.name)
def test_core_source_has_no_file_or_clock_access(path: Path) -> None:
    assert _scan(path.read_text(encoding="utf-8"), path.name) == []


_IMPURE_EXAMPLE = """
import os
import time
from pathlib import Path
from datetime import datetime, date

def bad(p):
    open(p)
    os.remove(p)
    os.path.exists(p)
    Path(p).read_bytes()
    time.time()
    datetime.now()
    datetime.utcnow()
    date.today()
    return io.open(p)
"""


def test_the_ast_scan_would_see_file_and_clock_access() -> None:
    found = {v.what for v in _scan(_IMPURE_EXAMPLE, "example.py")}
    assert found == {
        "import os",
        "import time",
        "from pathlib import ...",
        "call open()",
        "call os.remove()",
        "call os.path.exists()",
        "call read_bytes()",
        "clock read time.time()",
        "clock read datetime.now()",
        "clock read datetime.utcnow()",
        "clock read date.today()",
        "call io.open()",
    }
