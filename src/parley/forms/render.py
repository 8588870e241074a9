"""Form data rendered for a reader in English, Russian or Ukrainian.

Pure functions, no I/O. The renderer walks a form's schema in the order of
its ``properties`` alongside the data and produces a flat list of labelled
fields (a JSON Pointer, a label, a value and a depth), which ``render_text``
turns into plain text and a console can lay out as it likes.

What the reader sees comes from the definition, never from the sender:

* labels, help, enum values, the variant chosen in a ``oneOf``: the
  definition's ``x-label``/``x-help``/``x-enum`` in the reader's language;
* numbers, dates and times: Babel's CLDR data for the reader's locale; times
  always in UTC and labelled so;
* positions: degrees with the hemisphere in the reader's language;
* personal names: the original script followed by a transliteration in
  square brackets (an addition of the reader's terminal, not the sender's);
* free text: exactly as written. The renderer never alters or translates
  the sender's words.

A definition that lacks a label in the reader's language is a bug of this
terminal's definitions: the renderer raises ``MissingLabel`` instead of
showing an empty or wrong label (the registry refuses such definitions when
it loads, so this is a second line of defence). Data that does not follow
the schema (it is validated before it is rendered, so this should not
happen) never crashes the renderer: such a value is shown as compact JSON.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final

import translitua
from babel import Locale
from babel.dates import format_date as _babel_date
from babel.dates import format_time as _babel_time
from babel.numbers import format_decimal, get_decimal_symbol

from parley.core.forms import LANGS, FormRegistry
from parley.errors import LocalError, UsageError

__all__ = [
    "MissingLabel",
    "RenderedField",
    "RenderedForm",
    "format_date",
    "format_datetime",
    "format_number",
    "format_position",
    "render_form",
    "render_text",
    "transliterate_name",
]


class MissingLabel(LocalError):
    """A form definition on this terminal lacks a label in the reader's language."""


@dataclass(frozen=True)
class RenderedField:
    """One line of a rendered form.

    ``path`` is the JSON Pointer of the value in the form data; ``value`` is
    None for a group heading (an object, an array, an item of an array),
    whose fields follow at ``depth + 1``.
    """

    path: str
    label: str
    value: str | None
    depth: int
    help: str


@dataclass(frozen=True)
class RenderedForm:
    name: str
    version: int
    title: str
    lang: str
    fields: tuple[RenderedField, ...]


_YES_NO: Final[Mapping[str, tuple[str, str]]] = {
    "en": ("Yes", "No"),
    "ru": ("Да", "Нет"),
    "uk": ("Так", "Ні"),
}
_NONE: Final[Mapping[str, str]] = {"en": "none", "ru": "нет", "uk": "немає"}
_HEMISPHERES: Final[Mapping[str, tuple[str, str, str, str]]] = {
    # north, south, east, west
    "en": ("N", "S", "E", "W"),
    "ru": ("с. ш.", "ю. ш.", "в. д.", "з. д."),
    "uk": ("пн. ш.", "пд. ш.", "сх. д.", "зх. д."),
}
_MAX_REF_CHAIN: Final = 32
_RENDERED_KEYS: Final[Mapping[Any, frozenset[str]]] = {
    "position": frozenset({"latitude", "longitude"}),
    "personal_name": frozenset({"full_name", "script"}),
}

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_CYRILLIC = re.compile(r"[\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f]")
# Transliterate word by word (spaces and hyphens kept) so that a surname in
# capitals ("ШЕВЧЕНКО Олексій") comes out in capitals: translitua keeps the
# case of a whole string only when all of it is in capitals.
_NAME_SEPARATORS = re.compile(r"([\s\-\u2010\u2011]+)")
_TRANSLITERATIONS: Final[Mapping[str, type[Any]]] = {
    "uk": translitua.UkrainianKMU,  # national system, KMU resolution No. 55 (2010)
    "ru": translitua.RussianICAO,  # ICAO Doc 9303, as in Russian passports
}


def _check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise UsageError(f"forms are rendered in {', '.join(LANGS)}, not {lang!r}")
    return lang


# --------------------------------------------------------------------------
# Values


def compact_json(value: Any) -> str:
    """A value as compact JSON: how data that breaks its schema is shown."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _decimal(value: object) -> Decimal:
    """An exact decimal from an int, a float (its shortest repr) or a decimal string."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        result = Decimal(value)
    else:
        raise ValueError(f"{value!r} is not a number")
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


def _fraction_digits(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def format_number(value: int | float | Decimal | str, lang: str) -> str:
    """A number with the reader's grouping and decimal separator, no digit lost or added.

    ``1234567`` is ``1,234,567`` in English and ``1 234 567`` (no-break
    spaces) in Russian and Ukrainian; ``"2.50"`` keeps its two decimals.
    """
    number = _decimal(value)
    digits = _fraction_digits(number)
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return format_decimal(
        number, format=pattern, locale=_check_lang(lang), decimal_quantization=False
    )


def _degrees(number: Decimal, lang: str) -> str:
    text = format(abs(number), "f")  # every digit given, none added
    return text.replace(".", get_decimal_symbol(lang)) + "°"


def format_position(
    lat: float | int | Decimal | str, lon: float | int | Decimal | str, lang: str
) -> str:
    """WGS84 decimal degrees with hemispheres: ``48.5123° N, 35.0456° E``.

    Russian ``48,5123° с. ш., 35,0456° в. д.``; Ukrainian
    ``48,5123° пн. ш., 35,0456° сх. д.``. The digits are the sender's.
    """
    north, south, east, west = _HEMISPHERES[_check_lang(lang)]
    latitude, longitude = _decimal(lat), _decimal(lon)
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError(f"({lat}, {lon}) is not a position in degrees")
    return (
        f"{_degrees(latitude, lang)} {south if latitude < 0 else north}, "
        f"{_degrees(longitude, lang)} {west if longitude < 0 else east}"
    )


def format_date(value: str, lang: str) -> str:
    """A ``YYYY-MM-DD`` date in words: ``February 5, 2026``, ``5 февраля 2026 г.``."""
    if not _DATE.fullmatch(value):
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)")
    return _babel_date(date.fromisoformat(value), "long", locale=_check_lang(lang))


def format_datetime(value: str, lang: str) -> str:
    """An RFC 3339 time, shown in UTC with a 24-hour clock and the word UTC.

    ``2026-02-05T14:03:00Z`` is ``February 5, 2026, 14:03 UTC`` in English
    and ``5 февраля 2026 г., 14:03 UTC`` in Russian. Seconds and fractions
    are shown when they are not zero.
    """
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not an RFC 3339 date and time")
    day, clock, fraction, offset = match.groups()
    micro = (fraction or ".")[1:7].ljust(6, "0")
    zone = "+00:00" if offset in ("Z", "z") else offset
    moment = datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}").astimezone(UTC)
    if moment.microsecond:
        pattern = "HH:mm:ss.SSS" if moment.microsecond % 1000 == 0 else "HH:mm:ss.SSSSSS"
    elif moment.second:
        pattern = "HH:mm:ss"
    else:
        pattern = "HH:mm"
    locale = Locale.parse(_check_lang(lang))
    joined = str(locale.datetime_formats.get("medium", "{1}, {0}"))
    # CLDR quotes literal text in patterns ('at'); only {0} and {1} are fields here.
    joined = re.sub(r"'([^']*)'", lambda m: m[1] or "'", joined)
    return (
        joined.replace("{1}", _babel_date(moment.date(), "long", locale=locale)).replace(
            "{0}", _babel_time(moment, pattern, tzinfo=UTC, locale=locale)
        )
        + " UTC"
    )


def transliterate_name(full_name: str, script: str) -> str | None:
    """The Latin transliteration of a personal name, or None when none applies.

    ``uk``: the Ukrainian national system (KMU resolution No. 55 of 2010);
    ``ru``: ICAO Doc 9303 (Russian passports), both from ``translitua``.
    None for any other script and for a name with no Cyrillic letter.
    """
    table = _TRANSLITERATIONS.get(script)
    if table is None or not _CYRILLIC.search(full_name):
        return None
    parts = _NAME_SEPARATORS.split(full_name)
    return "".join(
        part if i % 2 else str(translitua.translit(part, table)) for i, part in enumerate(parts)
    )


def format_personal_name(full_name: str, script: str) -> str:
    """``Олексій Шевченко [Oleksii Shevchenko]``; the name alone when none applies."""
    latin = transliterate_name(full_name, script)
    return full_name if latin is None else f"{full_name} [{latin}]"


# --------------------------------------------------------------------------
# Walking the schema


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "object": (Mapping,),
    "array": (list, tuple),
    "string": (str,),
    "integer": (int,),
    "number": (int, float, Decimal),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(schema: Mapping[str, Any], value: Any) -> bool:
    declared = schema.get("type")
    if declared is None:
        return True
    names = [declared] if isinstance(declared, str) else list(declared)
    for name in names:
        kinds = _TYPES.get(name, ())
        if isinstance(value, bool) and name not in ("boolean",):
            continue
        if isinstance(value, kinds):
            return True
    return False


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1``, but ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


@dataclass(frozen=True)
class _Schema:
    """A schema with its ``$ref`` chain followed, and where to resolve its own ``#`` refs."""

    node: Mapping[str, Any]
    base: str  # "" for the form's own schema, else the URI of a shared resource


class _Renderer:
    def __init__(self, registry: FormRegistry, name: str, version: int, lang: str) -> None:
        definition = registry.get(name, version)
        if definition is None:
            raise UsageError(f"no form {name} version {version} is known on this terminal")
        self.registry = registry
        self.definition = definition
        self.lang = lang

    # Labels --------------------------------------------------------------

    def where(self, path: str) -> str:
        return f"form {self.definition.name} v{self.definition.version} at {path or '/'}"

    def text(self, annotation: Any, what: str, path: str) -> str:
        found = annotation.get(self.lang) if isinstance(annotation, Mapping) else None
        if not isinstance(found, str) or not found.strip():
            raise MissingLabel(
                f"{self.where(path)} has no {what} in {self.lang}: "
                "this terminal's form definitions are incomplete"
            )
        return found

    def label(self, schema: Mapping[str, Any], path: str) -> str:
        return self.text(schema.get("x-label"), "label (x-label)", path)

    def help(self, schema: Mapping[str, Any], path: str) -> str:
        if "x-help" not in schema:
            return ""
        return self.text(schema["x-help"], "help (x-help)", path)

    # References ----------------------------------------------------------

    def lookup(self, ref: str, base: str) -> _Schema:
        if ref.startswith("#"):
            if not base:
                return _Schema(self._local(ref), "")
            ref = base + ref
        target = self.registry.resolve(ref)
        return _Schema(target, ref.split("#", 1)[0])

    def _local(self, ref: str) -> Mapping[str, Any]:
        node: Any = self.definition.schema
        try:
            for token in ref[1:].lstrip("/").split("/") if ref != "#" else []:
                key = token.replace("~1", "/").replace("~0", "~")
                node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, TypeError, ValueError):
            raise UsageError(f"{self.where('')}: cannot resolve {ref}") from None
        if not isinstance(node, Mapping):
            raise UsageError(f"{self.where('')}: {ref} is not a schema")
        return node

    def effective(self, schema: Mapping[str, Any], base: str) -> _Schema:
        """Follow ``$ref``; the referring schema's own keywords (labels) win."""
        current = _Schema(schema, base)
        for _ in range(_MAX_REF_CHAIN):
            ref = current.node.get("$ref")
            if not isinstance(ref, str):
                return current
            target = self.lookup(ref, current.base)
            own = {k: v for k, v in current.node.items() if k != "$ref"}
            # The target's keywords are read against the target's base; the
            # referring schema's structural keywords (rare) are kept as written.
            current = _Schema({**target.node, **own}, target.base)
        raise UsageError(f"{self.where('')}: $ref chain longer than {_MAX_REF_CHAIN}")

    def matches(self, schema: _Schema, value: Any) -> bool:
        node = dict(schema.node)
        # Relative refs in the fragment ("#/$defs/...") resolve against the
        # fragment itself: give it the $defs of the document it came from.
        root = (
            self.definition.schema if not schema.base else self.registry.resolve(schema.base + "#")
        )
        if "$defs" not in node and isinstance(root.get("$defs"), Mapping):
            node["$defs"] = root["$defs"]
        return self.registry.matches(node, value)

    # Fields --------------------------------------------------------------

    def field(
        self, path: str, label: str, value: str | None, depth: int, help: str
    ) -> RenderedField:
        return RenderedField(path=path, label=label, value=value, depth=depth, help=help)

    def object_fields(
        self, schema: _Schema, data: Mapping[str, Any], path: str, depth: int
    ) -> list[RenderedField]:
        fields: list[RenderedField] = []
        properties = schema.node.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        for key, sub in properties.items():
            if key not in data or not isinstance(sub, Mapping):
                continue  # an absent optional field is not shown
            where = _pointer(path, key)
            eff = self.effective(sub, schema.base)
            fields += self.value(
                eff,
                data[key],
                where,
                depth,
                self.label(eff.node, where),
                self.help(eff.node, where),
            )
        # Keys the schema does not name (it forbids them; the data was checked)
        # are still shown, under their own names: the reader sees all that was sent.
        extra = schema.node.get("additionalProperties")
        for key in data:
            if key in properties:
                continue
            where = _pointer(path, key)
            if isinstance(extra, Mapping):
                eff = self.effective(extra, schema.base)
                fields += self.value(eff, data[key], where, depth, str(key), "")
            else:
                fields.append(self.field(where, str(key), compact_json(data[key]), depth, ""))
        return fields

    def value(
        self, schema: _Schema, value: Any, path: str, depth: int, label: str, help: str
    ) -> list[RenderedField]:
        """The field for ``value`` (and, for a group, the fields under it)."""
        node = schema.node
        try:
            if not _type_ok(node, value):
                raise ValueError("not of the schema's type")
            for key in ("oneOf", "anyOf"):
                if isinstance(node.get(key), list):
                    return self.variant(schema, key, value, path, depth, label, help)
            shown = self.scalar(node, value, path)
        except (ValueError, TypeError, ArithmeticError):
            return [self.field(path, label, compact_json(value), depth, help)]
        if shown is not None:
            field = self.field(path, label, shown, depth, help)
            rest = _RENDERED_KEYS.get(node.get("x-render"))
            if rest is None or not isinstance(value, Mapping):
                return [field]
            # Optional parts of a position or a name (an altitude, say) follow it.
            others = {k: v for k, v in value.items() if k not in rest}
            return [field, *self.object_fields(schema, others, path, depth + 1)]
        if isinstance(value, Mapping):
            heading = self.field(path, label, None, depth, help)
            return [heading, *self.object_fields(schema, value, path, depth + 1)]
        if isinstance(value, (list, tuple)):
            if not value:
                return [self.field(path, label, _NONE[self.lang], depth, help)]
            items = node.get("items")
            item_schema = self.effective(items if isinstance(items, Mapping) else {}, schema.base)
            fields = [self.field(path, label, None, depth, help)]
            for i, item in enumerate(value):
                fields += self.value(
                    item_schema, item, _pointer(path, i), depth + 1, f"{i + 1}.", ""
                )
            return fields
        return [self.field(path, label, compact_json(value), depth, help)]

    def scalar(self, node: Mapping[str, Any], value: Any, path: str) -> str | None:
        """The text of a value shown on one line, or None for a group."""
        render = node.get("x-render")
        if render == "position":
            if not isinstance(value, Mapping) or not _RENDERED_KEYS["position"] <= value.keys():
                raise ValueError("not a position")
            return format_position(value["latitude"], value["longitude"], self.lang)
        if render == "personal_name":
            if (
                not isinstance(value, Mapping)
                or not _RENDERED_KEYS["personal_name"] <= value.keys()
            ):
                raise ValueError("not a personal name")
            full_name, script = value["full_name"], value["script"]
            if not isinstance(full_name, str) or not isinstance(script, str):
                raise ValueError("not a personal name")
            return format_personal_name(full_name, script)
        if isinstance(node.get("enum"), list):
            if not any(_same(value, allowed) for allowed in node["enum"]):
                raise ValueError("not one of the enum's values")
            labels = node.get("x-enum")
            key = value if isinstance(value, str) else str(value)
            entry = labels.get(key) if isinstance(labels, Mapping) else None
            return self.text(entry, f"label (x-enum) for the value {key!r}", path)
        if "const" in node and not _same(value, node["const"]):
            raise ValueError("not the schema's constant")
        if value is None:
            return "—"
        if isinstance(value, bool):
            yes, no = _YES_NO[self.lang]
            return yes if value else no
        if isinstance(value, (int, float, Decimal)):
            return format_number(value, self.lang)
        if isinstance(value, str):
            fmt = node.get("format")
            if fmt == "date-time":
                return format_datetime(value, self.lang)
            if fmt == "date":
                return format_date(value, self.lang)
            return value  # the sender's words, exactly
        if isinstance(value, (Mapping, list, tuple)):
            return None
        raise TypeError(f"{type(value).__name__} is not JSON")

    def variant(
        self,
        schema: _Schema,
        key: str,
        value: Any,
        path: str,
        depth: int,
        label: str,
        help: str,
    ) -> list[RenderedField]:
        """A ``oneOf``/``anyOf``: the branch the value matches, named by its label."""
        rest = {k: v for k, v in schema.node.items() if k not in (key, "x-label", "x-help")}
        for i, branch in enumerate(schema.node[key]):
            if not isinstance(branch, Mapping):
                continue
            eff = self.effective(branch, schema.base)
            if not self.matches(_Schema(branch, schema.base), value):
                continue
            where = f"{path or '/'} ({key} branch {i})"
            labelled = key == "oneOf" or "x-label" in eff.node
            name = self.label(eff.node, where) if labelled else None
            merged = _Schema({**rest, **eff.node}, eff.base)
            fields = self.value(merged, value, path, depth, label, help)
            if name is None:
                return fields
            first = fields[0]
            if first.value is None or "const" in eff.node:
                # A group ("Area: Circle", its fields below) or a fixed value.
                fields[0] = replace(first, value=name)
            else:
                fields[0] = replace(first, label=f"{first.label} ({name})")
            return fields
        raise ValueError(f"matches no branch of its {key}")


def render_form(
    registry: FormRegistry, name: str, version: int, data: Mapping[str, Any], lang: str
) -> RenderedForm:
    """Render validated form data for a reader of ``lang`` (``en``, ``ru`` or ``uk``)."""
    renderer = _Renderer(registry, name, version, _check_lang(lang))
    definition = renderer.definition
    title = renderer.text(definition.title, "title", "")
    root = _Schema(definition.schema, "")
    if isinstance(data, Mapping):
        fields = renderer.object_fields(root, data, "", 0)
    else:
        fields = [RenderedField("", title, compact_json(data), 0, "")]
    return RenderedForm(
        name=definition.name,
        version=definition.version,
        title=title,
        lang=lang,
        fields=tuple(fields),
    )


# --------------------------------------------------------------------------
# Plain text

_INDENT: Final = "  "
_ITEM_LABEL = re.compile(r"[0-9]+\.")
# Shown as <U+XXXX> in plain text: control characters (a terminal would obey
# an escape sequence) and the bidirectional controls that can make text
# display in an order other than the one it was written in.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _visible(text: str) -> str:
    return "".join(
        f"<U+{ord(c):04X}>"
        if (unicodedata.category(c) == "Cc" and c != "\t") or c in _BIDI_CONTROLS
        else c
        for c in text
    )


def render_text(form: RenderedForm) -> str:
    """Plain text: ``Label: value`` lines indented two spaces per level.

    The title is not repeated (the caller shows it as it likes). A group
    heading is its label alone; a value of several lines starts on the line
    after its label, indented one level deeper. Control characters and
    bidirectional controls (which could drive a terminal or reorder the text
    shown) appear as ``<U+XXXX>``; everything else is as written.
    """
    lines: list[str] = []
    for f in form.fields:
        indent = _INDENT * f.depth
        label = _visible(f.label)
        if f.value is None:
            lines.append(f"{indent}{label}")
            continue
        # Only a line feed breaks a line; any other separator is shown as <U+XXXX>.
        value_lines = f.value.replace("\r\n", "\n").split("\n")
        if len(value_lines) == 1:
            separator = " " if _ITEM_LABEL.fullmatch(f.label) else ": "  # "2. value"
            lines.append(f"{indent}{label}{separator}{_visible(value_lines[0])}".rstrip())
        else:
            lines.append(f"{indent}{label}:")
            lines += [f"{indent}{_INDENT}{_visible(line)}".rstrip() for line in value_lines]
    return "\n".join(lines) + "\n"
