"""The form definitions shipped with Parley, loaded from the package's data.

``default_registry()`` reads ``definitions/common.json`` and every
``definitions/<NAME>.v<N>.json``; a broken definition stops the terminal with
a message naming it (``InvalidDefinition``), never a form silently missing.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from parley.core.forms import FormRegistry, InvalidDefinition

__all__ = ["default_registry", "load_definitions"]

_FILE = re.compile(r"^([A-Z][A-Z0-9_]*)\.v([1-9][0-9]*)\.json$")


def load_definitions() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(definitions, common) as parsed from the package's data files."""
    folder = resources.files(__package__).joinpath("definitions")
    common: dict[str, Any] | None = None
    definitions: list[dict[str, Any]] = []
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if not item.name.endswith(".json"):
            continue
        try:
            raw = json.loads(item.read_text("utf-8"))
        except ValueError as exc:
            raise InvalidDefinition(f"form definition {item.name} is not JSON: {exc}") from None
        if item.name == "common.json":
            common = raw
            continue
        match = _FILE.match(item.name)
        if match is None:
            raise InvalidDefinition(f"{item.name}: a definition file is named NAME.vN.json")
        if not isinstance(raw, dict) or (raw.get("name"), raw.get("version")) != (
            match[1],
            int(match[2]),
        ):
            raise InvalidDefinition(f"{item.name} does not hold {match[1]} version {match[2]}")
        definitions.append(raw)
    if common is None:
        raise InvalidDefinition("the shared form definitions (common.json) are missing")
    return definitions, common


@cache
def default_registry() -> FormRegistry:
    definitions, common = load_definitions()
    return FormRegistry(definitions, common)
