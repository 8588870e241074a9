"""Hypothesis fuzzing of everything that parses or displays form data.

Three kinds of input:

* **valid data generated from the shipped schemas**: a small strategy
  compiler below turns each definition's schema (its ``urn:parley:form:common``
  refs inlined) into a strategy for data valid under it. It knows exactly the
  keywords the definitions may use (``test_form_definitions.KEYWORDS``) and
  fails loudly on any other, so a new keyword cannot make it generate invalid
  data unnoticed. (``hypothesis-jsonschema`` 0.23.1, the latest, cannot be
  used: it calls Hypothesis internals that no longer exist, ``many.more()``,
  and fails on every object schema with the Hypothesis this project uses.)
  Free text is drawn from all of Unicode but surrogates, with control
  characters, bidirectional overrides, Cyrillic names and strings of exactly
  the maximum length mixed in;
* **hostile data**: arbitrary JSON values (deep, wide, huge strings, lone
  surrogates, control characters, bidi overrides, big integers, floats, wrong
  types) as the whole form body, as its ``data`` and as its name, version and
  definition; and mutations of valid data (fields dropped, added or retyped,
  enum values swapped, coordinates out of range, impossible dates, offsets
  instead of ``Z``, strings one character too long, lists too long or short);
* **the protocol core**: two ``Party`` objects in memory; the sender has no
  registry and seals whatever it is given, the receiver checks it.

The properties:

* valid data passes ``FormRegistry.body``/``check``, renders in en, ru and uk,
  and every value is shown as the definition says: free text exactly as
  written (in ``render_text`` each of its lines, with control characters and
  bidi controls as ``<U+XXXX>``), enum values, dates, numbers, positions and
  personal names by their labels and formats, the sender's digits kept;
* ``FormRegistry.check`` returns or raises ``FormRejected``, never anything
  else; the code is the one an independent oracle (``jsonschema`` on the
  inlined schema, with date checks written here) predicts; the reason fits
  ``MAX_REASON`` and, for ``invalid_form``, names a JSON Pointer into the
  data; the body is not changed;
* through the protocol, receiving raises only ``RemoteError``; a refused form
  is logged, answered by a negative receipt with the same code as
  ``MessageReceived.rejection`` (also when it is delivered again), and the
  receiver's log grows by exactly the envelope and its receipt; a valid form
  is not refused.

The bugs this fuzzing found (a huge version or integer, deep nesting, long
reasons, a pattern's ``$`` before a final newline, line breaks other than a
line feed, a lone surrogate, broken definitions) are pinned down at the end,
one input each, as regression tests.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from parley.core.canonical import MAX_SAFE_INTEGER, canonical_bytes
from parley.core.forms import (
    COMMON_ID,
    MAX_REASON,
    REJECTION_CODES,
    FormRegistry,
    FormRejected,
    InvalidDefinition,
    NoticeTooShort,
)
from parley.core.party import DuplicateReceived, MessageReceived
from parley.core.receipts import MAX_REJECTION_REASON
from parley.core.transcript import EntryType, split_entry
from parley.errors import ParleyError, RemoteError
from parley.forms import default_registry, load_definitions
from parley.forms.render import (
    RenderedForm,
    format_date,
    format_datetime,
    format_number,
    format_personal_name,
    format_position,
    render_form,
    render_text,
)
from parley.testing import ManualClock, PartyPair
from tests.scale import scaled
from tests.unit.test_fuzz_parsers import _swap_type as swap_type

US = "US-EUCOM"
RU = "RU-GS"
LANGS = ("en", "ru", "uk")
EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "forms"
COMMON_PREFIX = COMMON_ID + "#/$defs/"
BODY_KEYS = frozenset({"name", "version", "definition", "data"})

# ``PARLEY_FUZZ_SCALE`` scales every count (tests/scale.py): 20 for a long fuzzing run.
PURE = settings(
    max_examples=scaled(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Pure checks: bounded so that the whole module runs in well under a minute."""
PER_FORM = settings(PURE, max_examples=scaled(30))
"""Tests run once per shipped form (13 of them)."""
PROTOCOL = settings(PURE, max_examples=scaled(50))
"""Seals, opens and receipts (ML-DSA, HPKE) once or twice per example."""

REGISTRY = default_registry()
DEFINITIONS, COMMON = load_definitions()
FORMS: tuple[tuple[str, int], ...] = tuple((d.name, d.version) for d in REGISTRY)


# The schemas, inlined ----------------------------------------------------------------------------


def inline(schema: Any) -> Any:
    """``schema`` with every ``urn:parley:form:common`` ref replaced by what it names.

    Next to a ``$ref`` the definitions put only annotations (labels, help),
    which win over the target's, as the renderer has it.
    """
    if isinstance(schema, list):
        return [inline(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        ref = schema["$ref"]
        assert isinstance(ref, str)
        assert ref.startswith(COMMON_PREFIX), f"unexpected $ref {ref}"
        siblings = {k for k in schema if k != "$ref"}
        assert all(k.startswith("x-") for k in siblings), f"{ref} has keywords beside it"
        target = inline(COMMON["$defs"][ref[len(COMMON_PREFIX) :]])
        return {**target, **{k: inline(v) for k, v in schema.items() if k != "$ref"}}
    return {k: inline(v) for k, v in schema.items()}


def without_annotations(schema: Any) -> Any:
    if isinstance(schema, list):
        return [without_annotations(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: without_annotations(v) for k, v in schema.items() if not k.startswith("x-")}


SCHEMAS: dict[tuple[str, int], dict[str, Any]] = {
    (raw["name"], raw["version"]): inline(raw["schema"]) for raw in DEFINITIONS
}
"""Each form's schema, self-contained, with its labels (what the renderer reads)."""

# The oracle: jsonschema on the inlined schema, with the date checks written here.
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_UTC_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,6})?Z"
)
ORACLE_FORMATS = FormatChecker(formats=())


def _real_date(year: str, month: str, day: str) -> bool:
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


@ORACLE_FORMATS.checks("date")
def _oracle_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _DATE.fullmatch(value)
    return match is not None and _real_date(*match.groups())


@ORACLE_FORMATS.checks("date-time")
def _oracle_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _UTC_TIME.fullmatch(value)
    if match is None or not _real_date(*match.groups()[:3]):
        return False
    hour, minute, second = (int(g) for g in match.groups()[3:6])
    return hour < 24 and minute < 60 and second < 60


def oracle(schema: Mapping[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(without_annotations(schema), format_checker=ORACLE_FORMATS)


ORACLES = {key: oracle(schema) for key, schema in SCHEMAS.items()}


def expected_code(body: Any) -> str | None:
    """What the registry must answer for ``body``, worked out independently."""
    if not isinstance(body, dict) or set(body) != BODY_KEYS:
        return "malformed_form"
    name, version, digest = body["name"], body["version"], body["definition"]
    if not isinstance(name, str) or type(version) is not int or not isinstance(digest, str):
        return "malformed_form"
    definition = REGISTRY.get(name, version)
    if definition is None:
        return "unknown_form"
    if digest != definition.digest:
        return "definition_mismatch"
    return None if ORACLES[(name, version)].is_valid(body["data"]) else "invalid_form"


# Valid data from a schema ------------------------------------------------------------------------

SUPPORTED = frozenset(
    {
        "$schema", "type", "enum", "properties", "required", "additionalProperties", "items",
        "minItems", "maxItems", "uniqueItems", "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "oneOf",
    }
)  # fmt: skip

BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Every character with the Unicode property Bidi_Control (UAX #9)."""
TRICKY_TEXT = [
    "\u202eevil\u202c",
    "\u2067RLI\u2069 and \u200fRLM",
    "a\x1b[31mred\x1b[0m",
    "tab\there",
    "line 1\nline 2",
    "cr\r\nlf",
    "  leading",
    "trailing  ",
    "\u2028",
    "\uff10\uff11\uff12",
    "\u0664\u0668",
    '{"json": [1, 2]}',
    "\u2014 dash \u2014",
    "e\u0301",
    "\U0001f469\u200d\U0001f680",
    "\u200b",
    "\x00",
    "\x7f",
    "<U+202E>",
    "2.",
    "N",
]
NAMES = [
    "Олексій Шевченко",
    "ШЕВЧЕНКО Олексій",
    "Пётр Ильич Чайковский",
    "Ї́жак-Ґедзь Євгенія",
    "Юрій О’Брайєн",
    "Щербаков Ярослав Эдуардович",
    "John O'Brien",
    "ИВАНОВ-ПЕТРОВ\u00a0Иван",
]
CYRILLIC = st.characters(min_codepoint=0x400, max_codepoint=0x52F) | st.sampled_from(" -’'")


def free_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Any text (no surrogates: canonical JSON cannot carry them) within the length bounds."""
    short = min(max_size, 40)
    pieces = st.lists(st.sampled_from(TRICKY_TEXT + NAMES), min_size=1, max_size=4).map("".join)
    return st.one_of(
        st.text(min_size=min_size, max_size=short),
        st.text(CYRILLIC, min_size=min_size, max_size=short),
        pieces.map(lambda s: s[:max_size]).filter(lambda s: len(s) >= min_size),
        st.characters(exclude_categories=["Cs"]).map(lambda c: c * max_size),
    )


@st.composite
def utc_times(draw: st.DrawFn) -> str:
    """An RFC 3339 time in UTC (``Z``), with 0 to 6 digits of fraction."""
    moment = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    digits = draw(st.integers(min_value=0, max_value=6))
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    return text + "Z"


def valid_values(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under an inlined schema, for the keywords the definitions use."""
    unknown = {k for k in schema if not k.startswith("x-")} - SUPPORTED
    assert not unknown, f"the strategy compiler does not know {sorted(unknown)}"
    if "oneOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "oneOf"}
        return st.one_of([valid_values({**rest, **branch}) for branch in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: valid_values(v) for k, v in properties.items() if k in required},
            optional={k: valid_values(v) for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(
            valid_values(schema.get("items", {})),
            min_size=low,
            max_size=min(schema.get("maxItems", low + 4), low + 4),
            unique_by=(lambda v: json.dumps(v, sort_keys=True))
            if schema.get("uniqueItems")
            else None,
        )
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 4000)
        if schema.get("format") == "date-time":
            return utc_times()
        if schema.get("format") == "date":
            return st.dates().map(date.isoformat)
        assert "format" not in schema, f"unknown format {schema['format']}"
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: low <= len(s) <= high
            )
        return free_text(low, high)
    if kind == "integer":
        low = schema.get("minimum", -MAX_SAFE_INTEGER)
        if "exclusiveMinimum" in schema:
            low = max(low, schema["exclusiveMinimum"] + 1)
        return st.integers(min_value=low, max_value=schema.get("maximum", MAX_SAFE_INTEGER))
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"the strategy compiler cannot generate {schema}")


VALID_DATA = {key: valid_values(schema) for key, schema in SCHEMAS.items()}


def examples(name: str) -> list[dict[str, Any]]:
    valid: list[dict[str, Any]] = json.loads((EXAMPLES / f"{name}.json").read_text("utf-8"))[
        "valid"
    ]
    return valid


def some_valid_data(key: tuple[str, int]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(examples(key[0])) | VALID_DATA[key]


def body_of(key: tuple[str, int], data: Any) -> dict[str, Any]:
    definition = REGISTRY.get(*key)
    assert definition is not None
    return {"name": key[0], "version": key[1], "definition": definition.digest, "data": data}


def test_the_strategies_and_the_oracle_agree_with_the_examples() -> None:
    """The control: the oracle accepts the valid examples and refuses the invalid ones."""
    assert sorted(FORMS) == sorted(SCHEMAS)
    for key in FORMS:
        test_data = json.loads((EXAMPLES / f"{key[0]}.json").read_text("utf-8"))
        for data in test_data["valid"]:
            assert ORACLES[key].is_valid(data)
            assert expected_code(body_of(key, data)) is None
        for case in test_data["invalid"]:
            assert not ORACLES[key].is_valid(case["data"]), case["why"]


# What a reader sees ------------------------------------------------------------------------------

YES_NO = {"en": ("Yes", "No"), "ru": ("Да", "Нет"), "uk": ("Так", "Ні")}
NONE = {"en": "none", "ru": "нет", "uk": "немає"}
DECIMAL_SIGN = {"en": ".", "ru": ",", "uk": ","}


def pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def resolve(data: Any, where: str) -> tuple[bool, Any]:
    """(found, value) at a JSON Pointer; ``/`` alone is the whole data, as the registry says."""
    if where in ("", "/"):
        return True, data
    current = data
    for token in where[1:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            return False, None
    return True, current


def shown_values(
    schema: Mapping[str, Any], value: Any, path: str
) -> Iterator[tuple[str, Any, Any]]:
    """(pointer, schema, value) of every value a reader sees on a line of its own."""
    if "oneOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "oneOf"}
        for branch in schema["oneOf"]:
            merged = {**rest, **branch}
            if oracle(merged).is_valid(value):
                yield from shown_values(merged, value, path)
                return
        raise AssertionError(f"{path}: valid data that matches no branch of its oneOf")
    if schema.get("x-render") in ("position", "personal_name") or value == []:
        yield path, schema, value
    elif isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                yield from shown_values(sub, value[key], pointer(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from shown_values(schema.get("items", {}), item, pointer(path, i))
    else:
        yield path, schema, value


def displayed(schema: Mapping[str, Any], value: Any, lang: str) -> str:
    """How a valid value must be shown in ``lang``, each part checked on its own as well."""
    render = schema.get("x-render")
    if render == "position":
        text = format_position(value["latitude"], value["longitude"], lang)
        for part in (value["latitude"], value["longitude"]):  # the sender's digits, no more
            assert part.lstrip("-").replace(".", DECIMAL_SIGN[lang]) + "°" in text
        return text
    if render == "personal_name":
        text = format_personal_name(value["full_name"], value["script"])
        assert text.startswith(value["full_name"])  # the original script first, as written
        return text
    if value == []:
        return NONE[lang]
    if "enum" in schema:
        label: str = schema["x-enum"][str(value)][lang]
        return label
    if isinstance(value, bool):
        return YES_NO[lang][0 if value else 1]
    if isinstance(value, int):
        text = format_number(value, lang)
        assert re.sub(r"[^0-9]", "", text) == str(abs(value))  # no digit lost or added
        return text
    assert isinstance(value, str)
    if schema.get("format") == "date-time":
        text = format_datetime(value, lang)
        assert text.endswith(" UTC")
        assert str(int(value[:4])) in text
        return text
    if schema.get("format") == "date":
        text = format_date(value, lang)
        assert str(int(value[:4])) in text
        return text
    return value  # free text: exactly as written


def visible(line: str) -> str:
    """A line of text as ``render_text`` documents it: controls and bidi controls escaped."""
    return "".join(
        f"<U+{ord(c):04X}>"
        if (unicodedata.category(c) == "Cc" and c != "\t") or c in BIDI_CONTROLS
        else c
        for c in line
    )


def check_rendering(key: tuple[str, int], data: dict[str, Any]) -> None:
    """Valid ``data`` renders in every language, each value shown as the definition says."""
    name, version = key
    definition = REGISTRY.get(name, version)
    assert definition is not None
    leaves = list(shown_values(SCHEMAS[key], data, ""))
    for lang in LANGS:
        form: RenderedForm = render_form(REGISTRY, name, version, data, lang)
        assert (form.name, form.version, form.lang) == (name, version, lang)
        assert form.title == definition.title[lang]
        fields = {f.path: f for f in form.fields}
        assert len(fields) == len(form.fields), "two lines for one value"
        for f in form.fields:
            assert resolve(data, f.path)[0], f"{f.path} is not in the data"
            assert f.label.strip()
        text = render_text(form)
        for path, schema, value in leaves:
            shown = displayed(schema, value, lang)
            assert path in fields, f"{path} is not shown in {lang}"
            assert fields[path].value == shown, f"{path} in {lang}"
            block = "\n".join(text_lines(fields[path].label, shown, fields[path].depth))
            assert f"\n{block}\n" in f"\n{text}", f"{path} in {lang}: {block!r} is not in the text"


def text_lines(label: str, value: str, depth: int) -> list[str]:
    """The lines of one value in ``render_text``, as its docstring describes them."""
    indent = "  " * depth
    # As render_text splits lines: at a line feed only.
    lines = value.replace("\r\n", "\n").split("\n")
    if len(lines) > 1:  # on the lines after its label, one level deeper
        return [f"{indent}{visible(label)}:"] + [
            f"{indent}  {visible(line)}".rstrip() for line in lines
        ]
    separator = " " if re.fullmatch(r"[0-9]+\.", label) else ": "  # "2. value" in a list
    return [f"{indent}{visible(label)}{separator}{visible(lines[0])}".rstrip()]


# Valid data --------------------------------------------------------------------------------------


@PER_FORM
@pytest.mark.parametrize("key", FORMS, ids=[f"{n}.v{v}" for n, v in FORMS])
@given(data=st.data())
def test_valid_data_passes_and_renders_as_written(
    key: tuple[str, int], data: st.DataObject
) -> None:
    value = data.draw(VALID_DATA[key], label="data")
    body = REGISTRY.body(key[0], value, key[1])
    assert body == body_of(key, value)
    assert REGISTRY.check(body) is REGISTRY.get(*key)
    assert expected_code(body) is None
    definition = REGISTRY.get(*key)
    assert definition is not None
    now = datetime(2026, 2, 5, 12, tzinfo=UTC)
    try:
        REGISTRY.check_rules(definition, value, now)
    except NoticeTooShort:
        event("notice too short")
    check_rendering(key, value)


# Hostile data: what the registry may answer ------------------------------------------------------


def assert_reason_fits(exc: FormRejected, body: Any) -> None:
    assert len(exc.reason) <= MAX_REASON, (exc.code, len(exc.reason))


def assert_names_a_pointer(exc: FormRejected, body: dict[str, Any]) -> None:
    prefix = f"{body['name']} v{body['version']}: "
    assert exc.reason.startswith(prefix)
    where = exc.reason[len(prefix) :].split(": ", 1)[0]
    assert where.startswith("/"), exc.reason
    if where == "/":  # the data as a whole
        return
    assert resolve(body["data"], where)[0], f"{where} is not in the data: {exc.reason}"


def checked(body: Any) -> str | None:
    """The registry's verdict on ``body`` (None or a code), checked against the oracle.

    Only ``FormRejected`` may escape ``check``: anything else fails the test.
    """
    expected = expected_code(body)
    before = repr(body)
    refusal: FormRejected | None = None
    try:
        REGISTRY.check(body)
    except FormRejected as exc:
        refusal = exc
    assert repr(body) == before, "check changed the body"
    if refusal is None:
        event("accepted")
        assert expected is None, f"accepted, but the oracle says {expected}"
        return None
    event(f"refused: {refusal.code}")
    assert refusal.code in REJECTION_CODES
    assert refusal.code == expected, f"{refusal.code}, not {expected}: {refusal.reason}"
    assert refusal.reason
    assert_reason_fits(refusal, body)
    if refusal.code == "invalid_form":
        assert_names_a_pointer(refusal, body)
    return refusal.code


def schema_nodes(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if not key.startswith("x-"):
                yield from schema_nodes(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from schema_nodes(item)


PROPERTY_NAMES = sorted(
    {
        name
        for schema in SCHEMAS.values()
        for node in schema_nodes(schema)
        for name in node.get("properties", {})
    }
)
"""Every property name of every form: hostile objects use them to get past the first check."""
ENUM_VALUES = sorted(
    {
        str(v)
        for schema in SCHEMAS.values()
        for node in schema_nodes(schema)
        for v in node.get("enum", [])
    }
)
HOSTILE_STRINGS = [
    *TRICKY_TEXT,
    "",
    " ",
    "\ud800",
    "\udfff",
    "a\udc80b",
    "\U000e0001" * 64,
    "\u202e" * 100,
    "x" * 5000,
    "0" * 64,
    "2026-02-30",
    "2026-02-04T09:15:00+00:00",
    "INCIDENT_REPORT",
    "incident_report",
    *ENUM_VALUES[:20],
]
HOSTILE_INTS = (
    st.integers()
    | st.integers(min_value=-(10**4299), max_value=10**4299)
    | st.sampled_from([0, 1, -1, 2**31, 2**53, 2**53 + 1, -(2**63), 2**64, 10**4299, -(10**4299)])
)
"""Integers as large as ``json.loads`` makes them (4300 digits): larger ones are pinned below."""
HOSTILE_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [1.0, -0.0, 1e308]
)


def nested(depth: int, inner: Any, as_object: bool) -> Any:
    for i in range(depth):
        inner = {PROPERTY_NAMES[i % len(PROPERTY_NAMES)]: inner} if as_object else [inner]
    return inner


def hostile_json(
    ints: st.SearchStrategy[int] = HOSTILE_INTS,
    floats: bool = True,
    surrogates: bool = True,
    max_depth: int = 150,
    huge: int = 200_000,
) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values, and some deep, wide and huge ones.

    The depth stays well below Python's recursion limit (a deeper one is pinned
    below); the defaults are what a ``json.loads`` caller can hand the registry.
    """
    text = st.text(max_size=30) | st.text(
        st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Mn"]), max_size=10
    )
    if surrogates:
        text |= st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
        strings = st.sampled_from(HOSTILE_STRINGS)
    else:
        strings = st.sampled_from(
            [s for s in HOSTILE_STRINGS if s == s.encode("utf-8", "replace").decode()]
        )
    keys = st.sampled_from(PROPERTY_NAMES) | st.text(max_size=8) | strings
    leaves: st.SearchStrategy[Any] = st.none() | st.booleans() | ints | text | strings
    if floats:
        leaves |= HOSTILE_FLOATS
    tree = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=12,
    )
    big = st.integers(min_value=1, max_value=huge)
    return st.one_of(
        tree,
        st.builds(nested, st.integers(min_value=1, max_value=max_depth), leaves, st.booleans()),
        st.builds(lambda n: [0] * n, st.integers(min_value=1000, max_value=20_000)),
        st.builds(
            lambda n: {f"k{i}": i for i in range(n)}, st.integers(min_value=100, max_value=5000)
        ),
        st.builds(lambda c, n: c * n, st.characters(exclude_categories=["Cs"]), big),
    )


def hostile_objects(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are mostly the forms' own property names."""
    keys = st.sampled_from(PROPERTY_NAMES) | st.text(max_size=8) | st.sampled_from(HOSTILE_STRINGS)
    return st.dictionaries(keys, values, max_size=8)


HOSTILE_BODY_FIELDS = st.fixed_dictionaries(
    {
        "name": st.sampled_from([n for n, _ in FORMS]) | hostile_json(max_depth=3, huge=100),
        "version": st.sampled_from([1, 2]) | hostile_json(max_depth=3, huge=100),
        "definition": st.sampled_from([d.digest for d in REGISTRY])
        | hostile_json(max_depth=3, huge=100),
        "data": hostile_objects(hostile_json()) | hostile_json(),
    }
)


@PURE
@given(data=st.data())
def test_arbitrary_json_as_the_form_body(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["any", "object", "the four fields"]), label="kind")
    if kind == "any":
        body = data.draw(hostile_json(), label="body")
    elif kind == "object":
        body = data.draw(hostile_objects(hostile_json()), label="body")
    else:
        body = data.draw(HOSTILE_BODY_FIELDS, label="body")
    checked(body)


@PURE
@given(key=st.sampled_from(FORMS), data=hostile_objects(hostile_json()) | hostile_json())
def test_arbitrary_json_as_the_data(key: tuple[str, int], data: Any) -> None:
    checked(body_of(key, data))


@PURE
@given(data=st.data())
def test_hostile_names_versions_and_definitions(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(FORMS), label="form")
    body = body_of(key, data.draw(some_valid_data(key), label="data"))
    other = REGISTRY.get(*data.draw(st.sampled_from(FORMS), label="other"))
    assert other is not None
    values: dict[str, st.SearchStrategy[Any]] = {
        "name": st.sampled_from([*(n for n, _ in FORMS), key[0].lower(), key[0] + " "])
        | st.text(max_size=70)
        | st.sampled_from(HOSTILE_STRINGS),
        "version": st.integers() | st.sampled_from([0, 2, -1, True, 1.0, "1", None, [1]]),
        "definition": st.sampled_from(
            [other.digest, body["definition"].upper(), body["definition"][:63], ""]
        )
        | st.text(max_size=70)
        | st.sampled_from(HOSTILE_STRINGS),
    }
    for field in data.draw(st.lists(st.sampled_from(sorted(values)), min_size=1, unique=True)):
        body[field] = data.draw(values[field], label=field)
    operation = data.draw(st.sampled_from(["keep", "drop", "add"]), label="keys")
    if operation == "drop":
        del body[data.draw(st.sampled_from(sorted(body)), label="dropped")]
    elif operation == "add":
        body[data.draw(st.text(max_size=10) | st.sampled_from(["form", "Name"]))] = 1
    checked(body)


# Mutations of valid data -------------------------------------------------------------------------

BAD_LATITUDES = [
    "90.00000001",
    "90.1",
    "-90.1",
    "91",
    "900",
    "48.12345678",
    "48.",
    ".5",
    "+48.5",
    "048.5",
    "48,5",
    " 48.5",
    "48.5 ",
    "1e1",
    "NaN",
    "Infinity",
    "-",
    "",
    "\uff14\uff18.5",
    "\u0664\u0668",
    "48.5\u200b",
    "48.5\x00",
    "-0.",
    "90.00000000",
]
BAD_LONGITUDES = [
    "180.0000001",
    "180.1",
    "-181",
    "200",
    "1800",
    "35.12345678",
    "035.5",
    "35,5",
    "180.00000000",
    "+35",
    "\u0663\u0665",
    "35\n.5",
]
BAD_DATES = [
    "2026-02-30",
    "2026-02-29",
    "2025-13-01",
    "2026-00-10",
    "2026-01-00",
    "0000-01-01",
    "2026-2-3",
    "26-02-03",
    "2026/02/03",
    "20260203",
    "2026-02-03T00:00:00Z",
    "2026-W06-2",
    "\uff12\uff10\uff12\uff16-02-03",
    " 2026-02-03",
    "2026-02-31",
    "10000-01-01",
]
BAD_TIMES = [
    "2026-02-30T12:00:00Z",
    "2026-02-04T09:15:00+00:00",
    "2026-02-04T09:15:00+01:00",
    "2026-02-04T09:15:00-00:00",
    "2026-02-04T09:15:00z",
    "2026-02-04t09:15:00Z",
    "2026-02-04 09:15:00Z",
    "2026-02-04T09:15:00",
    "2026-02-04T09:15Z",
    "2026-02-04T09:15:00.1234567Z",
    "2026-02-04T09:15:00.Z",
    "2026-02-04T24:00:00Z",
    "2026-02-04T09:60:00Z",
    "2026-02-04T09:15:60Z",
    "2026-02-04",
    "0000-01-01T00:00:00Z",
    "2026-02-04T09:15:00Z ",
    "2026-02-04T09:15:00ZZ",
    "2026-02-04T09:15:00.000+00:00",
]


def annotated_paths(
    schema: Mapping[str, Any], value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Mapping[str, Any]]]:
    """Every place in valid data, with the schema that governs it."""
    if "oneOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "oneOf"}
        for branch in schema["oneOf"]:
            if oracle({**rest, **branch}).is_valid(value):
                yield from annotated_paths({**rest, **branch}, value, path)
                return
        return
    yield path, schema
    if isinstance(value, dict):
        for key, item in value.items():
            yield from annotated_paths(
                schema.get("properties", {}).get(key, {}), item, (*path, key)
            )
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from annotated_paths(schema.get("items", {}), item, (*path, i))


def breakers(schema: Mapping[str, Any], value: Any) -> st.SearchStrategy[Any]:
    """Values that (mostly) break ``schema`` where ``value`` stood."""
    options: list[st.SearchStrategy[Any]] = [
        st.just(swap_type(value)),
        st.sampled_from([None, True, 0, -1, "", [], {}, 1.5, 2**53, "x" * 5000]),
    ]
    if "enum" in schema:
        options.append(st.sampled_from(ENUM_VALUES))
        options.append(st.sampled_from([str(v).upper() for v in schema["enum"]]))
        options.append(st.sampled_from([str(v) + " " for v in schema["enum"]]))
    if schema.get("format") == "date-time":
        options.append(st.sampled_from(BAD_TIMES))
    if schema.get("format") == "date":
        options.append(st.sampled_from(BAD_DATES))
    properties = schema.get("properties", {})
    if "latitude" in properties and isinstance(value, dict):
        options.append(
            st.builds(
                lambda lat, lon: {"latitude": lat, "longitude": lon},
                st.sampled_from(BAD_LATITUDES) | st.just(value.get("latitude")),
                st.sampled_from(BAD_LONGITUDES) | st.just(value.get("longitude")),
            )
        )
    if schema.get("pattern") and isinstance(value, str):
        options.append(st.sampled_from([value.lower(), value + "!", value[1:], "-" + value]))
        if schema["pattern"] == COMMON["$defs"]["position"]["properties"]["latitude"]["pattern"]:
            options.append(st.sampled_from(BAD_LATITUDES))
        if schema["pattern"] == COMMON["$defs"]["position"]["properties"]["longitude"]["pattern"]:
            options.append(st.sampled_from(BAD_LONGITUDES))
    if "maxLength" in schema:
        options.append(st.just("y" * (schema["maxLength"] + 1)))
    if schema.get("minLength", 0) > 0:
        options.append(st.just(""))
    if "maximum" in schema:
        options.append(st.sampled_from([schema["maximum"] + 1, schema["maximum"] * 1000 + 7]))
    if "minimum" in schema:
        options.append(st.sampled_from([schema["minimum"] - 1, -(2**53)]))
    if isinstance(value, list) and value:
        if schema.get("maxItems", 1000) <= 200:
            options.append(st.just(value * (schema["maxItems"] // len(value) + 1)))
        options.append(st.just(value[: schema.get("minItems", 1) - 1]))
        options.append(st.just([*value, value[0]]))  # a duplicate (uniqueItems)
    return st.one_of(options)


@st.composite
def mutated_data(draw: st.DrawFn, key: tuple[str, int], max_ops: int = 2) -> Any:
    """Valid data of form ``key`` with 1 to ``max_ops`` changes at any depth."""
    data = copy.deepcopy(draw(some_valid_data(key), label="valid"))
    for _ in range(draw(st.integers(min_value=1, max_value=max_ops))):
        operation = draw(st.sampled_from(["drop", "add", "break", "break", "retype"]), label="op")
        places = list(annotated_paths(SCHEMAS[key], data))
        if operation == "add":
            places = [(p, s) for p, s in places if isinstance(resolve_path(data, p), dict)]
        elif len(places) > 1:
            places = places[1:]  # the whole data replaced is a case of its own (see above)
        if not places:  # the data is no longer an object: change it as a whole
            places = [((), SCHEMAS[key])]
        path, schema = draw(st.sampled_from(places), label="path")
        target = resolve_path(data, path)
        if operation == "drop" and path:
            del resolve_path(data, path[:-1])[path[-1]]
        elif operation == "add" and isinstance(target, dict):
            name = draw(st.sampled_from(PROPERTY_NAMES) | st.text(max_size=8), label="new key")
            target[name] = draw(hostile_json(max_depth=5, huge=10), label="new value")
        else:
            new = swap_type(target) if operation == "retype" else draw(breakers(schema, target))
            if path:
                resolve_path(data, path[:-1])[path[-1]] = new
            else:
                data = new
    return data


def resolve_path(data: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


@PURE
@given(data=st.data())
def test_mutations_of_valid_data(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(FORMS), label="form")
    value = data.draw(mutated_data(key), label="mutated")
    if checked(body_of(key, value)) is None:
        # Still valid (an optional field dropped, a value that still fits): it renders.
        check_rendering(key, value)


# Through the protocol core -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> PartyPair:
    """US-EUCOM seals whatever it is given (no registry); RU-GS checks forms on arrival."""
    pair = PartyPair.create(ManualClock())
    pair.a.forms = None
    pair.b.forms = REGISTRY
    return pair


SAFE_INTS = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)


def signable(value: Any) -> bool:
    try:
        canonical_bytes(value)
    except (ParleyError, rfc8785.CanonicalizationError):
        return False
    return True


def canonical_json(max_depth: int = 25) -> st.SearchStrategy[Any]:
    """Hostile JSON that canonical JSON can sign: no floats, big integers or lone surrogates."""
    return hostile_json(SAFE_INTS, floats=False, surrogates=False, max_depth=max_depth, huge=20_000)


@st.composite
def form_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A form body (an object: anything else is refused before the registry sees it)."""
    key = draw(st.sampled_from(FORMS), label="form")
    choice = draw(st.sampled_from(["valid", "mutated", "data", "body", "fields"]), label="kind")
    if choice == "valid":
        return body_of(key, draw(some_valid_data(key)))
    if choice == "mutated":  # without what the sender cannot sign (a float, a lone surrogate)
        return body_of(key, draw(mutated_data(key).filter(signable)))
    if choice == "data":
        return body_of(key, draw(canonical_json()))
    if choice == "body":
        return draw(st.dictionaries(st.sampled_from(sorted(BODY_KEYS)) | st.text(max_size=5),
                                    canonical_json(max_depth=20), max_size=5))  # fmt: skip
    body = body_of(key, draw(some_valid_data(key)))
    field = draw(st.sampled_from(sorted(BODY_KEYS)))
    body[field] = draw(canonical_json(max_depth=3) | st.sampled_from([2, "X", "0" * 64]))
    return body


@PROTOCOL
@given(body=form_bodies())
def test_a_received_form_is_logged_and_refused_with_the_registrys_code(
    pair: PartyPair, body: dict[str, Any]
) -> None:
    sender, receiver = pair.a, pair.b
    expected = expected_code(body)
    sent_before = sender.transcript.size
    try:
        out = sender.send([RU], kind="form", body={"form": body}, operator="fuzz")
    except ParleyError as exc:  # e.g. nested deeper than an envelope allows
        event(f"the sender cannot seal it: {type(exc).__name__}")
        return
    size = receiver.transcript.size
    try:
        result = receiver.receive_envelope(out.raw)
    except RemoteError as exc:
        event(f"envelope refused: {exc.code}")
        assert receiver.transcript.size == size
        return
    received = result.events[0]
    assert isinstance(received, MessageReceived)
    assert received.envelope.content.body == {"form": body}  # shown as it came
    assert receiver.transcript.size == size + 2
    assert [split_entry(receiver.transcript.entry(i))[0] for i in (size, size + 1)] == [
        EntryType.ENVELOPE,
        EntryType.RECEIPT,
    ]
    receipt = sender.receive_receipt(result.receipt).receipt
    assert sender.transcript.size == sent_before + 2
    if expected is None:
        event("accepted")
        assert received.rejection is None
        assert receipt.rejection is None
    else:
        event(f"refused: {expected}")
        with pytest.raises(FormRejected) as caught:
            REGISTRY.check(body)
        assert received.rejection is not None
        assert (received.rejection.code, received.rejection.reason) == (
            expected,
            caught.value.reason,
        )
        assert receipt.rejection is not None
        assert receipt.rejection.code == expected
        # The receipt carries the reason made printable and cut to its limit.
        printable = "".join(c if c.isprintable() else "\ufffd" for c in caught.value.reason)
        assert receipt.rejection.reason == printable[:MAX_REJECTION_REASON]
    # Delivered again: the same answer, and nothing more in either log.
    again = receiver.receive_envelope(out.raw)
    assert isinstance(again.events[0], DuplicateReceived)
    assert receiver.transcript.size == size + 2
    repeated = sender.receive_receipt(again.receipt).receipt
    assert sender.transcript.size == sent_before + 2
    assert (repeated.rejection and repeated.rejection.code) == (
        receipt.rejection and receipt.rejection.code
    )


# The bugs this fuzzing found ---------------------------------------------------------------------

INCIDENT = ("INCIDENT_REPORT", 1)


def incident(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(examples("INCIDENT_REPORT")[0])
    data.update(changes)
    return data


def deep_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_huge_version_is_refused_not_a_value_error() -> None:
    body = body_of(INCIDENT, incident())
    body["version"] = 10**5000
    with pytest.raises(FormRejected):
        REGISTRY.check(body)


def test_a_huge_integer_in_the_data_is_refused_not_a_value_error() -> None:
    with pytest.raises(FormRejected):
        REGISTRY.check(body_of(INCIDENT, incident(narrative=10**5000)))


@pytest.mark.parametrize("field", ["narrative", "units"])
def test_deeply_nested_data_is_refused_not_a_recursion_error(field: str) -> None:
    with pytest.raises(FormRejected):
        REGISTRY.check(body_of(INCIDENT, incident(**{field: deep_list(10_000)})))


def _long_value() -> dict[str, Any]:
    return body_of(INCIDENT, incident(narrative="x" * 10_000))


def _escaped_name() -> dict[str, Any]:
    body = body_of(INCIDENT, incident())
    body["name"] = "\U000e0001" * 64
    return body


def _long_version() -> dict[str, Any]:
    body = body_of(INCIDENT, incident())
    body["version"] = 10**600
    return body


def _repr_digest() -> dict[str, Any]:
    body = body_of(INCIDENT, incident())
    body["definition"] = "\U000e0001" * 64
    return body


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_long_value, "invalid_form"),  # _errors cuts to 500, check then adds "NAME vN: "
        (_escaped_name, "unknown_form"),  # name[:64] unicode-escaped: up to 640 characters
        (_long_version, "unknown_form"),  # the version in full: up to 4300 digits from JSON
        (_repr_digest, "definition_mismatch"),  # repr(digest[:64]): up to 642 characters
    ],
    ids=["invalid_form", "unknown_form-name", "unknown_form-version", "definition_mismatch"],
)
def test_every_reason_fits_max_reason(make: Any, code: str) -> None:
    with pytest.raises(FormRejected) as caught:
        REGISTRY.check(make())
    assert caught.value.code == code
    assert len(caught.value.reason) <= MAX_REASON


def test_invalid_form_names_a_pointer_when_the_data_is_not_an_object() -> None:
    with pytest.raises(FormRejected) as caught:
        REGISTRY.check(body_of(INCIDENT, ["not", "an", "object"]))
    assert caught.value.code == "invalid_form"
    assert caught.value.reason.startswith("INCIDENT_REPORT v1: /: ")


TRAILING_NEWLINE: list[tuple[str, tuple[str | int, ...]]] = [
    ("INCIDENT_REPORT", ("position", "latitude")),  # "43.4512\n"
    ("INCIDENT_REPORT", ("position", "longitude")),
    ("EXCHANGE_STATUS", ("exchange_id",)),
    ("EXCHANGE_STATUS", ("manifest",)),  # a SHA-256 digest
    ("EXCHANGE_AGREEMENT", ("lists", 0, "envelope_id")),
    ("EXCHANGE_AGREEMENT", ("lists", 0, "party")),
]


@pytest.mark.parametrize(
    ("name", "path"), TRAILING_NEWLINE, ids=[f"{n}:{p[-1]}" for n, p in TRAILING_NEWLINE]
)
def test_a_pattern_does_not_accept_a_trailing_newline(
    name: str, path: tuple[str | int, ...]
) -> None:
    data = copy.deepcopy(examples(name)[0])
    parent: Any = data
    for step in path[:-1]:
        parent = parent[step]
    assert isinstance(parent[path[-1]], str)
    parent[path[-1]] += "\n"
    with pytest.raises(FormRejected) as caught:
        REGISTRY.check(body_of((name, 1), data))
    assert caught.value.code == "invalid_form"


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"])
def test_render_text_shows_every_control_character(control: str) -> None:
    data = incident(narrative=f"before{control}after")
    REGISTRY.check(body_of(INCIDENT, data))
    text = render_text(render_form(REGISTRY, *INCIDENT, data, "en"))
    assert f"before<U+{ord(control):04X}>after" in text


def _definitions_with(change: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    definitions, common = copy.deepcopy(DEFINITIONS), copy.deepcopy(COMMON)
    change(definitions[0]["schema"], common)
    return definitions, common


@pytest.mark.parametrize(
    "change",
    [
        lambda schema, common: schema["properties"].update(x={"enum": 5}),
        lambda schema, common: schema.update(oneOf=3),
        lambda schema, common: schema.update(properties=[1]),
        lambda schema, common: common.update({"$defs": [1]}),
    ],
    ids=["enum-not-a-list", "oneOf-not-a-list", "properties-a-list", "common-defs-a-list"],
)
def test_a_malformed_definition_is_an_invalid_definition(change: Any) -> None:
    definitions, common = _definitions_with(change)
    with pytest.raises(InvalidDefinition):
        FormRegistry(definitions, common)


def test_a_form_with_a_lone_surrogate_is_refused_with_a_parley_error() -> None:
    pair = PartyPair.create(ManualClock())
    pair.a.forms = REGISTRY
    data = json.loads(
        '{"domain": "sea", "time": "2026-02-04T09:15:00Z", "narrative": "\\ud800",'
        ' "position": {"latitude": "43.4512", "longitude": "34.1208"}}'
    )
    with pytest.raises(FormRejected) as caught:
        REGISTRY.body("INCIDENT_REPORT", data)
    assert caught.value.code == "invalid_form"
    assert "not valid Unicode" in caught.value.reason
    body = {"name": "INCIDENT_REPORT", "version": 1, "data": data}
    body["definition"] = REGISTRY.get("INCIDENT_REPORT", 1).digest  # type: ignore[union-attr]
    with pytest.raises(ParleyError):
        pair.a.send([RU], kind="form", body={"form": body}, operator="fuzz")
    assert pair.a.transcript.size == 0
