"""A form's fields with their labels and help in one language (``parley form show``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parley.core.forms import FormRegistry
from parley.errors import UsageError

__all__ = ["FieldDescription", "describe_form"]


@dataclass(frozen=True, slots=True)
class FieldDescription:
    path: str
    label: str
    help: str
    type: str
    required: bool
    depth: int
    values: tuple[tuple[str, str], ...]  # (value, label) of an enumeration


def _resolved(registry: FormRegistry, schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """A schema with its ``$ref`` followed; the referring schema's keywords win."""
    seen = 0
    merged = dict(schema)
    while "$ref" in merged and seen < 16:
        target = registry.resolve(merged.pop("$ref"))
        merged = {**target, **merged}
        seen += 1
    return merged


def _type_of(schema: Mapping[str, Any], lang: str) -> str:
    if "enum" in schema:
        return "one of"
    if "oneOf" in schema:
        return " | ".join(str(b.get("x-label", {}).get(lang, "?")) for b in schema["oneOf"])
    kind = schema.get("type", "")
    if kind == "string" and "format" in schema:
        return str(schema["format"])
    if kind == "array":
        return "list"
    return str(kind)


def describe_form(
    registry: FormRegistry, name: str, version: int, lang: str
) -> list[FieldDescription]:
    definition = registry.get(name, version)
    if definition is None:
        raise UsageError(f"no form {name} version {version}")
    fields: list[FieldDescription] = []

    def walk(schema: Mapping[str, Any], path: str, depth: int) -> None:
        schema = _resolved(registry, schema)
        if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
            walk(schema["items"], path + "/[]", depth)
            return
        required = set(schema.get("required", ()))
        for key, sub in (schema.get("properties") or {}).items():
            full = _resolved(registry, sub)
            labels = full.get("x-enum", {})
            fields.append(
                FieldDescription(
                    path=f"{path}/{key}",
                    label=str(full.get("x-label", {}).get(lang, key)),
                    help=str(full.get("x-help", {}).get(lang, "")),
                    type=_type_of(full, lang),
                    required=key in required,
                    depth=depth,
                    values=tuple(
                        (str(v), str(labels.get(str(v), {}).get(lang, v)))
                        for v in full.get("enum", ())
                    ),
                )
            )
            walk(full, f"{path}/{key}", depth + 1)

    walk(definition.schema, "", 0)
    return fields
