"""The shipped form definitions: valid schemas, labelled in three languages,
and checked against a valid and an invalid example of each form.

The definitions are checked twice: with ``jsonschema`` directly (so the
files are right whatever the registry does) and through the registry
(``parley.core.forms``), the way a terminal checks a form it sends or
receives. The examples live in ``tests/data/forms/<NAME>.json``:
``{"valid": [data, ...], "invalid": [{"data", "path", "why"}, ...]}``,
where ``path`` is the JSON Pointer of the offending value (the containing
object for a missing or an extra property).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import referencing
import referencing.jsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from parley.core.canonical import canonical_bytes
from parley.core.forms import (
    LANGS,
    FormRegistry,
    FormRejected,
    InvalidDefinition,
    NoticeTooShort,
    lint_definition,
)
from parley.forms import default_registry, load_definitions

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "src" / "parley" / "forms" / "definitions"
EXAMPLES = ROOT / "tests" / "data" / "forms"
COMMON_ID = "urn:parley:form:common"
COMMON_PREFIX = COMMON_ID + "#/$defs/"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

FORMS = (
    "LINK_TEST",
    "SERVICE",
    "MEETING_REQUEST",
    "INCIDENT_REPORT",
    "DECONFLICTION_REQUEST",
    "MISSILE_LAUNCH_NOTIFICATION",
    "EXERCISE_NOTIFICATION",
    "CEASEFIRE_VIOLATION_REPORT",
    "STRATEGIC_FORCES_DATA",
    "PRISONER_EXCHANGE_LIST",
    "REMAINS_REPATRIATION",
    "EXCHANGE_AGREEMENT",
    "EXCHANGE_STATUS",
)

# Every keyword a definition may use. The label walk below follows
# properties, oneOf, items and $ref; any other applicator (anyOf, if, not,
# prefixItems, ...) could hide unlabelled properties, so none is allowed.
KEYWORDS = frozenset(
    {
        "$schema", "$id", "$defs", "$ref", "type", "enum", "properties", "required",
        "additionalProperties", "items", "minItems", "maxItems", "uniqueItems", "minLength",
        "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "oneOf",
        "x-label", "x-help", "x-enum", "x-render",
    }
)  # fmt: skip
RENDERS = frozenset({"position", "personal_name", "multiline"})
FILE_NAME = re.compile(r"^([A-Z][A-Z0-9_]*)\.v([1-9][0-9]*)\.json$")
CYRILLIC = re.compile(r"[А-Яа-яЁёІіЇїЄєҐґ]")
RUSSIAN_ONLY = re.compile(r"[ЫыЭэЪъЁё]")
UKRAINIAN_ONLY = re.compile(r"[ІіЇїЄєҐґ’]")
# Russian words that are easy to leave in Ukrainian text by mistake.
RUSSIAN_WORDS_IN_UK = re.compile(r"(?<![\w’])(и|не\s+более|или|это|что|если|когда|где)(?![\w’])")
UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")

Schema = Mapping[str, Any]


# --------------------------------------------------------------------------- loading


def _read(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text("utf-8"))
    assert isinstance(value, dict), f"{path.name} does not hold a JSON object"
    return value


COMMON = _read(DEFINITIONS / "common.json")
DEFINITION_FILES = sorted(p for p in DEFINITIONS.glob("*.json") if p.name != "common.json")
RAW = {p.name: _read(p) for p in DEFINITION_FILES}
BY_NAME = {raw["name"]: raw for raw in RAW.values()}


def _examples(name: str) -> dict[str, Any]:
    return _read(EXAMPLES / f"{name}.json")


def _valid_cases_iter() -> Iterator[Any]:
    for name in FORMS:
        for i, data in enumerate(_examples(name)["valid"]):
            yield pytest.param(name, data, id=f"{name}-valid{i}")


def _invalid_cases_iter() -> Iterator[Any]:
    for name in FORMS:
        for i, case in enumerate(_examples(name)["invalid"]):
            yield pytest.param(name, case, id=f"{name}-invalid{i}")


VALID_CASES = list(_valid_cases_iter())
INVALID_CASES = list(_invalid_cases_iter())


FORMAT_CHECKER = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _utc_date_time(value: object) -> bool:
    """RFC 3339 in UTC with ``Z`` (jsonschema checks date-time only with an extra package)."""
    if not isinstance(value, str):
        return True
    if not UTC_TIME.fullmatch(value):
        return False
    datetime.fromisoformat(value[:-1])  # a real calendar date and time, or ValueError
    return True


REFS: referencing.Registry[Any] = referencing.Registry().with_resource(
    COMMON_ID,
    referencing.Resource.from_contents(
        COMMON, default_specification=referencing.jsonschema.DRAFT202012
    ),
)


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        BY_NAME[name]["schema"], registry=REFS, format_checker=FORMAT_CHECKER
    )


def _pointer(path: Iterator[Any] | Any) -> str:
    return "/" + "/".join(map(str, path))


def _common(ref: str) -> Schema:
    assert ref.startswith(COMMON_PREFIX), f"$ref {ref} is not to a shared definition"
    target = COMMON["$defs"].get(ref[len(COMMON_PREFIX) :])
    assert isinstance(target, dict), f"$ref {ref} names no shared definition"
    return target


def _walk(schema: Schema, where: str, labelled: bool) -> Iterator[tuple[str, Schema, bool]]:
    """Every schema reachable from ``schema``, following ``$ref`` into common.json.

    ``labelled`` says whether the schema needs ``x-label`` and ``x-help``: every
    schema under ``properties`` and every ``oneOf`` branch does.
    """
    yield where, schema, labelled
    ref = schema.get("$ref")
    if isinstance(ref, str):
        yield from _walk(_common(ref), f"{where}->{ref.rsplit('/', 1)[-1]}", False)
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{where}/{name}", True)
    for i, branch in enumerate(schema.get("oneOf") or []):
        yield from _walk(branch, f"{where}/oneOf/{i}", True)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{where}/items", False)


def _every_schema() -> Iterator[tuple[str, Schema, bool]]:
    """Every form's schema, then every shared definition (each labelled)."""
    for file_name, raw in RAW.items():
        yield from _walk(raw["schema"], file_name, False)
    for name, sub in COMMON["$defs"].items():
        yield from _walk(sub, f"common/{name}", True)


def _texts() -> Iterator[tuple[str, str, str]]:
    """(where, language, text) of every title, help, label and enum label."""
    for file_name, raw in RAW.items():
        for key in ("title", "help"):
            for lang, text in raw[key].items():
                yield f"{file_name} {key}", lang, text
    for where, schema, _ in _every_schema():
        for key in ("x-label", "x-help"):
            for lang, text in (schema.get(key) or {}).items():
                yield f"{where} {key}", lang, text
        for value, labels in (schema.get("x-enum") or {}).items():
            for lang, text in labels.items():
                yield f"{where} value {value}", lang, text


def _check_langs(value: Any, where: str) -> None:
    assert isinstance(value, dict), f"{where}: not an object of {LANGS}"
    assert set(value) == set(LANGS), f"{where}: languages {sorted(value)}, not {LANGS}"
    for lang in LANGS:
        text = value[lang]
        assert isinstance(text, str), f"{where} ({lang}) is not a string"
        assert text.strip(), f"{where} ({lang}) is empty"
        assert text == text.strip(), f"{where} ({lang}) has surrounding spaces"


def _keys(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from _keys(value)
    elif isinstance(data, list):
        for item in data:
            yield from _keys(item)


def _schema_at(schema: Schema, pointer: str) -> Schema | None:
    """The schema of the property a data JSON Pointer names (through properties)."""
    for token in pointer.lstrip("/").split("/"):
        while "$ref" in schema:
            schema = _common(schema["$ref"])
        sub = (schema.get("properties") or {}).get(token)
        if not isinstance(sub, dict):
            return None
        schema = sub
    while "$ref" in schema:
        schema = _common(schema["$ref"])
    return schema


# --------------------------------------------------------------------------- files


def test_every_form_has_a_definition_and_examples() -> None:
    names = {(raw["name"], raw["version"]) for raw in RAW.values()}
    assert names == {(name, 1) for name in FORMS}
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(FORMS)


@pytest.mark.parametrize("path", DEFINITION_FILES, ids=lambda p: p.name)
def test_file_name_matches_name_and_version(path: Path) -> None:
    match = FILE_NAME.match(path.name)
    assert match is not None, f"{path.name} is not named NAME.vN.json"
    raw = RAW[path.name]
    assert (raw["name"], raw["version"]) == (match[1], int(match[2]))
    assert set(raw) == {"name", "version", "title", "help", "rules", "schema"}


def test_common_is_a_valid_schema_with_its_id() -> None:
    assert COMMON["$id"] == COMMON_ID
    assert COMMON["$schema"] == DRAFT
    assert set(COMMON) == {"$schema", "$id", "$defs"}
    Draft202012Validator.check_schema(COMMON)


@pytest.mark.parametrize("name", FORMS)
def test_definition_is_a_valid_schema(name: str) -> None:
    schema = BY_NAME[name]["schema"]
    assert schema["$schema"] == DRAFT
    assert schema["type"] == "object"
    Draft202012Validator.check_schema(schema)


# --------------------------------------------------------------------------- shape


def test_only_known_keywords_are_used() -> None:
    for where, schema, _ in _every_schema():
        assert set(schema) <= KEYWORDS, f"{where}: unexpected {sorted(set(schema) - KEYWORDS)}"


def test_objects_are_closed_and_strings_and_arrays_bounded() -> None:
    for where, schema, _ in _every_schema():
        kind = schema.get("type")
        assert kind != "number", f"{where}: no floats in signed data; use integer or a string"
        if kind == "object" or "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{where} is not closed"
            assert set(schema.get("required", [])) <= set(schema["properties"]), where
        if kind == "string" and not {"enum", "pattern", "format"} & set(schema):
            assert isinstance(schema.get("maxLength"), int), f"{where} has no maxLength"
            assert schema.get("minLength") == 1, f"{where} allows an empty string"
        if kind == "array":
            assert isinstance(schema.get("maxItems"), int), f"{where} has no maxItems"
        if "x-render" in schema:
            assert schema["x-render"] in RENDERS, f"{where}: x-render {schema['x-render']}"


def test_refs_point_to_shared_definitions() -> None:
    for where, schema, _ in _every_schema():
        if "$ref" in schema:
            _common(schema["$ref"])  # asserts the definition exists
            assert schema["$ref"].startswith(COMMON_PREFIX), where


def test_position_and_personal_name_are_rendered() -> None:
    defs = COMMON["$defs"]
    assert defs["position"]["x-render"] == "position"
    assert defs["position"]["required"] == ["latitude", "longitude"]
    assert defs["personal_name"]["x-render"] == "personal_name"
    assert defs["personal_name"]["properties"]["script"]["enum"] == ["uk", "ru", "en", "other"]
    branches = [b["$ref"] for b in defs["area"]["oneOf"]]
    assert branches == [COMMON_PREFIX + "polygon", COMMON_PREFIX + "circle"]


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", FORMS)
def test_form_has_title_and_help(name: str) -> None:
    raw = BY_NAME[name]
    _check_langs(raw["title"], f"{name} title")
    _check_langs(raw["help"], f"{name} help")


def test_every_property_branch_and_enum_value_is_labelled() -> None:
    for where, schema, labelled in _every_schema():
        if labelled:
            _check_langs(schema.get("x-label"), f"{where} x-label")
            _check_langs(schema.get("x-help"), f"{where} x-help")
        if "enum" in schema:
            labels = schema.get("x-enum")
            assert isinstance(labels, dict), f"{where}: enum without x-enum"
            assert set(labels) == {str(v) for v in schema["enum"]}, f"{where}: x-enum keys"
            for value, label in labels.items():
                _check_langs(label, f"{where} value {value}")
        else:
            assert "x-enum" not in schema, f"{where}: x-enum without an enum"


def test_labels_are_short_and_help_is_one_sentence() -> None:
    for where, schema, _ in _every_schema():
        for text in (schema.get("x-label") or {}).values():
            assert len(text) <= 60, f"{where}: label too long: {text!r}"
            assert not text.endswith("."), f"{where}: a label is not a sentence: {text!r}"
        for text in (schema.get("x-help") or {}).values():
            assert len(text) <= 200, f"{where}: help too long: {text!r}"
            assert text.endswith("."), f"{where}: help is a sentence: {text!r}"


def test_each_language_is_written_in_its_own_alphabet() -> None:
    for where, lang, text in _texts():
        if lang == "en":
            assert not CYRILLIC.search(text), f"{where}: Cyrillic in English: {text!r}"
            continue
        assert CYRILLIC.search(text), f"{where} ({lang}) is not translated: {text!r}"
        if lang == "ru":
            assert not UKRAINIAN_ONLY.search(text), f"{where}: Ukrainian in Russian: {text!r}"
        else:
            assert not RUSSIAN_ONLY.search(text), f"{where}: Russian letters in Ukrainian: {text!r}"
            found = RUSSIAN_WORDS_IN_UK.search(text)
            assert found is None, f"{where}: Russian word {found and found[0]!r} in {text!r}"


def test_translations_are_not_copies_of_each_other() -> None:
    """Russian and Ukrainian differ somewhere in every long enough text."""
    for file_name, raw in RAW.items():
        assert raw["help"]["ru"] != raw["help"]["uk"], file_name
    for where, schema, _ in _every_schema():
        help_ = schema.get("x-help")
        if help_ and len(help_["ru"]) > 25:
            assert help_["ru"] != help_["uk"], f"{where}: identical Russian and Ukrainian help"


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("name", FORMS)
def test_examples_cover_the_form(name: str) -> None:
    examples = _examples(name)
    assert set(examples) == {"valid", "invalid"}
    assert len(examples["valid"]) >= 2
    assert len(examples["invalid"]) >= 3
    schema = BY_NAME[name]["schema"]
    required = set(schema["required"])
    assert any(set(d) == required for d in examples["valid"]), "no minimal valid example"
    assert any(set(d) == set(schema["properties"]) for d in examples["valid"]), "no full example"
    declared = {key for _, s, _ in _walk(schema, name, False) for key in s.get("properties", {})}
    used = {key for data in examples["valid"] for key in _keys(data)}
    assert declared <= used, f"never used in a valid example: {sorted(declared - used)}"
    for case in examples["invalid"]:
        assert set(case) == {"data", "path", "why"}
        assert case["path"].startswith("/")
        assert case["why"].strip()


@pytest.mark.parametrize(("name", "data"), VALID_CASES)
def test_valid_example_validates(name: str, data: Any) -> None:
    errors = [
        f"{_pointer(e.absolute_path)}: {e.message}" for e in _validator(name).iter_errors(data)
    ]
    assert errors == []
    canonical_bytes(data)  # signable: no floats, no unsafe integers


@pytest.mark.parametrize(("name", "case"), INVALID_CASES)
def test_invalid_example_breaks_one_rule_at_its_path(name: str, case: dict[str, Any]) -> None:
    errors = list(_validator(name).iter_errors(case["data"]))
    assert len(errors) == 1, [e.message for e in errors]
    error = best_match(errors)
    assert error is not None
    assert _pointer(error.absolute_path) == case["path"], error.message


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("name", FORMS)
def test_rule_pointers_name_real_fields(name: str) -> None:
    raw = BY_NAME[name]
    for rule in raw["rules"]:
        assert rule["rule"] == "min_notice"
        assert isinstance(rule["hours"], int)
        assert rule["hours"] > 0
        time = _schema_at(raw["schema"], rule["time"])
        assert time is not None, rule["time"]
        assert time.get("format") == "date-time", rule["time"]
        if "unless" in rule:
            late = _schema_at(raw["schema"], rule["unless"])
            assert late is not None, rule["unless"]
            assert late.get("required"), rule["unless"]


def test_missile_launch_notice_needs_24_hours() -> None:
    rules = BY_NAME["MISSILE_LAUNCH_NOTIFICATION"]["rules"]
    assert rules == [
        {
            "rule": "min_notice",
            "time": "/launch_window/start",
            "hours": 24,
            "unless": "/late_notice",
        }
    ]


def test_missile_launch_notice_rule_as_the_sender_checks_it(now: datetime) -> None:
    reg = default_registry()
    definition = reg.get("MISSILE_LAUNCH_NOTIFICATION", 1)
    assert definition is not None
    early, late = _examples("MISSILE_LAUNCH_NOTIFICATION")["valid"][:2]
    reg.check_rules(definition, early, now)  # weeks ahead
    reg.check_rules(definition, late, now)  # less than a day ahead, marked late with a reason
    unmarked = {k: v for k, v in late.items() if k != "late_notice"}
    reg.body("MISSILE_LAUNCH_NOTIFICATION", unmarked)  # the schema itself is satisfied
    with pytest.raises(NoticeTooShort):
        reg.check_rules(definition, unmarked, now)


# --------------------------------------------------------------------------- registry


def test_default_registry_loads_every_definition() -> None:
    reg = default_registry()
    assert sorted((d.name, d.version) for d in reg) == sorted((name, 1) for name in FORMS)
    assert len(reg) == len(FORMS)
    for name in FORMS:
        definition = reg.get(name, 1)
        latest = reg.latest(name)
        assert definition is not None
        assert latest is not None
        assert latest.version == 1
        assert reg.get(name, 2) is None
        raw = BY_NAME[name]
        assert dict(definition.title) == raw["title"]
        assert dict(definition.help) == raw["help"]
        assert list(definition.rules) == raw["rules"]
        assert re.fullmatch("[0-9a-f]{64}", definition.digest)


@pytest.mark.parametrize("name", FORMS)
def test_definition_lints_clean(name: str) -> None:
    assert lint_definition(BY_NAME[name], COMMON) == []


def test_digests_ignore_labels_but_not_meaning() -> None:
    definitions, common = load_definitions()
    relabelled = copy.deepcopy(definitions)
    changed = copy.deepcopy(definitions)
    for raw in relabelled:
        raw["title"]["en"] += " (corrected)"
        for prop in raw["schema"]["properties"].values():
            prop["x-label"]["uk"] += "!"
    for raw in changed:
        raw["schema"]["maxProperties"] = 100
    base = {d.name: d.digest for d in FormRegistry(definitions, common)}
    assert {d.name: d.digest for d in FormRegistry(relabelled, common)} == base
    moved = {d.name: d.digest for d in FormRegistry(changed, common)}
    assert all(moved[name] != base[name] for name in FORMS)


@pytest.mark.parametrize(("name", "data"), VALID_CASES)
def test_registry_round_trips_valid_example(name: str, data: Any) -> None:
    reg = default_registry()
    body = reg.body(name, data)
    assert body == {"name": name, "version": 1, "definition": body["definition"], "data": data}
    definition = reg.check(json.loads(canonical_bytes(body)))
    assert (definition.name, definition.version) == (name, 1)
    assert body["definition"] == definition.digest


@pytest.mark.parametrize(("name", "case"), INVALID_CASES)
def test_registry_rejects_invalid_example(name: str, case: dict[str, Any]) -> None:
    reg = default_registry()
    with pytest.raises(FormRejected) as raised:
        reg.body(name, case["data"])
    assert raised.value.code == "invalid_form"
    assert f"{case['path']}: " in raised.value.reason


def test_digest_covers_shared_definitions_reached_by_local_refs() -> None:
    """A ``#/$defs/...`` ref inside common.json is part of the digest too."""
    definitions, common = load_definitions()
    local = copy.deepcopy(common)
    for branch in local["$defs"]["area"]["oneOf"]:
        branch["$ref"] = "#/$defs/" + branch["$ref"].rsplit("/", 1)[-1]
    stricter = copy.deepcopy(local)
    stricter["$defs"]["circle"]["properties"]["radius_m"]["minimum"] = 1000
    one = FormRegistry(definitions, local).get("DECONFLICTION_REQUEST", 1)
    two = FormRegistry(definitions, stricter).get("DECONFLICTION_REQUEST", 1)
    assert one is not None
    assert two is not None
    assert one.digest != two.digest  # else two terminals could disagree on what a circle is


# --------------------------------------------------------------------------- bugs once found


def test_float_in_a_definition_is_an_invalid_definition() -> None:
    definitions, common = load_definitions()
    broken = copy.deepcopy(common)
    broken["$defs"]["circle"]["properties"]["radius_m"]["maximum"] = 2e7
    with pytest.raises(InvalidDefinition):
        FormRegistry(definitions, broken)


def test_min_notice_pointer_to_nowhere_is_refused() -> None:
    raw = copy.deepcopy(BY_NAME["MISSILE_LAUNCH_NOTIFICATION"])
    raw["rules"][0]["time"] = "/launch/window_start"
    assert lint_definition(raw, COMMON) != []
