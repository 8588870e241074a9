"""Rendering form data in English, Russian and Ukrainian.

The registry here is built from dict literals (a test form and a small
``common.json``) so these tests do not depend on the shipped definitions.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
import translitua

from parley.core.forms import LANGS, FormRegistry, InvalidDefinition, definition_digest
from parley.errors import UsageError
from parley.forms.render import (
    MissingLabel,
    RenderedField,
    RenderedForm,
    format_date,
    format_datetime,
    format_number,
    format_position,
    render_form,
    render_text,
    transliterate_name,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
COMMON_REF = "urn:parley:form:common#/$defs/"
NBSP = "\xa0"  # CLDR's group separator in ru and uk
NNBSP = "\u202f"  # and its narrow space before "г." / "р."


def tr(en: str, ru: str, uk: str) -> dict[str, str]:
    return {"en": en, "ru": ru, "uk": uk}


def labelled(schema: dict[str, Any], en: str, ru: str, uk: str) -> dict[str, Any]:
    """A schema with a label and (the same, as help) help in the three languages."""
    return {**schema, "x-label": tr(en, ru, uk), "x-help": tr(f"{en}.", f"{ru}.", f"{uk}.")}


LATITUDE = r"^-?(90(\.0{1,7})?|[1-8]?[0-9](\.[0-9]{1,7})?)$"
LONGITUDE = r"^-?(180(\.0{1,7})?|(1[0-7][0-9]|[1-9]?[0-9])(\.[0-9]{1,7})?)$"


def common_defs() -> dict[str, Any]:
    return {
        "$id": "urn:parley:form:common",
        "$schema": DRAFT,
        "$defs": {
            "position": {
                "type": "object",
                "additionalProperties": False,
                "required": ["latitude", "longitude"],
                "x-render": "position",
                "properties": {
                    "latitude": labelled(
                        {"type": "string", "pattern": LATITUDE}, "Latitude", "Широта", "Широта"
                    ),
                    "longitude": labelled(
                        {"type": "string", "pattern": LONGITUDE},
                        "Longitude",
                        "Долгота",
                        "Довгота",
                    ),
                    "altitude_m": labelled(
                        {"type": "integer"}, "Altitude (m)", "Высота (м)", "Висота (м)"
                    ),
                },
            },
            "polygon": {
                "type": "object",
                "additionalProperties": False,
                "required": ["vertices"],
                "properties": {
                    "vertices": labelled(
                        {"type": "array", "minItems": 3, "items": {"$ref": "#/$defs/position"}},
                        "Vertices",
                        "Вершины",
                        "Вершини",
                    )
                },
            },
            "circle": {
                "type": "object",
                "additionalProperties": False,
                "required": ["centre", "radius_m"],
                "properties": {
                    "centre": labelled({"$ref": "#/$defs/position"}, "Centre", "Центр", "Центр"),
                    "radius_m": labelled(
                        {"type": "integer", "minimum": 1}, "Radius (m)", "Радиус (м)", "Радіус (м)"
                    ),
                },
            },
            "area": {
                "oneOf": [
                    labelled(
                        {"$ref": "#/$defs/polygon"}, "Polygon", "Многоугольник", "Багатокутник"
                    ),
                    labelled({"$ref": "#/$defs/circle"}, "Circle", "Круг", "Коло"),
                ]
            },
            "personal_name": {
                "type": "object",
                "additionalProperties": False,
                "required": ["full_name", "script"],
                "x-render": "personal_name",
                "properties": {
                    "full_name": labelled(
                        {"type": "string", "minLength": 1}, "Full name", "Полное имя", "Повне ім'я"
                    ),
                    "script": labelled(
                        {
                            "type": "string",
                            "enum": ["uk", "ru", "en", "other"],
                            "x-enum": {
                                "uk": tr("Ukrainian", "украинский", "українська"),
                                "ru": tr("Russian", "русский", "російська"),
                                "en": tr("English", "английский", "англійська"),
                                "other": tr("Other", "другой", "інша"),
                            },
                        },
                        "Script",
                        "Письменность",
                        "Писемність",
                    ),
                },
            },
        },
    }


def make_form() -> dict[str, Any]:
    vessel = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": labelled({"type": "string"}, "Name", "Название", "Назва"),
            "tonnage": labelled({"type": "integer"}, "Tonnage", "Водоизмещение", "Водотоннажність"),
            "master": labelled(
                {"$ref": COMMON_REF + "personal_name"}, "Master", "Капитан", "Капітан"
            ),
        },
    }
    return {
        "name": "TEST_REPORT",
        "version": 1,
        "title": tr("Test report", "Тестовое донесение", "Тестове донесення"),
        "help": tr("For tests.", "Для тестов.", "Для тестів."),
        "rules": [],
        "schema": {
            "$schema": DRAFT,
            "type": "object",
            "additionalProperties": False,
            "required": ["domain", "observed_at", "position", "narrative"],
            "properties": {
                "domain": labelled(
                    {
                        "type": "string",
                        "enum": ["air", "sea", "land"],
                        "x-enum": {
                            "air": tr("Air", "Воздушная", "Повітряне"),
                            "sea": tr("Sea", "Морская", "Морське"),
                            "land": tr("Land", "Сухопутная", "Суходіл"),
                        },
                    },
                    "Domain",
                    "Среда",
                    "Середовище",
                ),
                "observed_at": labelled(
                    {"type": "string", "format": "date-time"},
                    "Observed at",
                    "Время наблюдения",
                    "Час спостереження",
                ),
                "report_date": labelled(
                    {"type": "string", "format": "date"}, "Report date", "Дата", "Дата"
                ),
                "position": labelled(
                    {"$ref": COMMON_REF + "position"}, "Position", "Координаты", "Координати"
                ),
                "area": labelled({"$ref": COMMON_REF + "area"}, "Area", "Район", "Район"),
                "commander": labelled(
                    {"$ref": COMMON_REF + "personal_name"}, "Commander", "Командир", "Командир"
                ),
                "aircraft_count": labelled(
                    {"type": "integer", "minimum": 0},
                    "Aircraft",
                    "Воздушные суда",
                    "Повітряні судна",
                ),
                "armed": labelled({"type": "boolean"}, "Armed", "Вооружены", "Озброєні"),
                "vessels": labelled({"type": "array", "items": vessel}, "Vessels", "Суда", "Судна"),
                "contact": labelled(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "callsign": labelled(
                                {"type": "string"}, "Call sign", "Позывной", "Позивний"
                            ),
                            "frequency_khz": labelled(
                                {"type": "integer"},
                                "Frequency (kHz)",
                                "Частота (кГц)",
                                "Частота (кГц)",
                            ),
                        },
                    },
                    "Contact",
                    "Связь",
                    "Зв'язок",
                ),
                "narrative": labelled(
                    {"type": "string", "maxLength": 20000, "x-render": "multiline"},
                    "Narrative",
                    "Описание",
                    "Опис",
                ),
            },
        },
    }


DATA: dict[str, Any] = {
    "domain": "sea",
    "observed_at": "2026-02-05T14:03:00Z",
    "report_date": "2026-02-05",
    "position": {"latitude": "48.5123", "longitude": "35.0456"},
    "area": {"centre": {"latitude": "44.5", "longitude": "33.25"}, "radius_m": 12500},
    "commander": {"full_name": "Олексій Шевченко", "script": "uk"},
    "aircraft_count": 1234567,
    "armed": False,
    "vessels": [
        {
            "name": "Адмирал Макаров",
            "tonnage": 3620,
            "master": {"full_name": "Сергей Щербаков", "script": "ru"},
        },
        {"name": "Hetman"},
    ],
    "contact": {"callsign": "ВОЛНА-3", "frequency_khz": 8364},
    "narrative": "Два судна   без огней.\nКурс 270.\n\nПодробности позже — «как есть».",
}


def make_registry(
    form: Mapping[str, Any] | None = None, common: Mapping[str, Any] | None = None
) -> FormRegistry:
    return FormRegistry([form or make_form()], common or common_defs())


@pytest.fixture(scope="module")
def registry() -> FormRegistry:
    return make_registry()


def by_path(form: RenderedForm) -> dict[str, RenderedField]:
    return {f.path: f for f in form.fields}


def test_the_test_data_is_valid(registry: FormRegistry) -> None:
    # Everything below renders data the registry itself accepts.
    registry.body("TEST_REPORT", DATA, 1)


# --------------------------------------------------------------------------
# The whole form


def test_the_form_renders_in_english(registry: FormRegistry) -> None:
    form = render_form(registry, "TEST_REPORT", 1, DATA, "en")
    assert (form.name, form.version, form.title, form.lang) == (
        "TEST_REPORT",
        1,
        "Test report",
        "en",
    )
    assert render_text(form) == (
        "Domain: Sea\n"
        "Observed at: February 5, 2026, 14:03 UTC\n"
        "Report date: February 5, 2026\n"
        "Position: 48.5123° N, 35.0456° E\n"
        "Area: Circle\n"
        "  Centre: 44.5° N, 33.25° E\n"
        "  Radius (m): 12,500\n"
        "Commander: Олексій Шевченко [Oleksii Shevchenko]\n"
        "Aircraft: 1,234,567\n"
        "Armed: No\n"
        "Vessels\n"
        "  1.\n"
        "    Name: Адмирал Макаров\n"
        "    Tonnage: 3,620\n"
        "    Master: Сергей Щербаков [Sergei Shcherbakov]\n"
        "  2.\n"
        "    Name: Hetman\n"
        "Contact\n"
        "  Call sign: ВОЛНА-3\n"
        "  Frequency (kHz): 8,364\n"
        "Narrative:\n"
        "  Два судна   без огней.\n"
        "  Курс 270.\n"
        "\n"
        "  Подробности позже — «как есть».\n"
    )


def test_the_form_renders_in_russian(registry: FormRegistry) -> None:
    text = render_text(render_form(registry, "TEST_REPORT", 1, DATA, "ru"))
    assert text.splitlines()[:11] == [
        "Среда: Морская",
        f"Время наблюдения: 5 февраля 2026{NNBSP}г., 14:03 UTC",
        f"Дата: 5 февраля 2026{NNBSP}г.",
        "Координаты: 48,5123° с. ш., 35,0456° в. д.",
        "Район: Круг",
        "  Центр: 44,5° с. ш., 33,25° в. д.",
        f"  Радиус (м): 12{NBSP}500",
        "Командир: Олексій Шевченко [Oleksii Shevchenko]",
        f"Воздушные суда: 1{NBSP}234{NBSP}567",
        "Вооружены: Нет",
        "Суда",
    ]


def test_the_form_renders_in_ukrainian(registry: FormRegistry) -> None:
    fields = by_path(render_form(registry, "TEST_REPORT", 1, DATA, "uk"))
    assert fields["/domain"].value == "Морське"
    assert fields["/observed_at"].value == f"5 лютого 2026{NNBSP}р., 14:03 UTC"
    assert fields["/report_date"].value == f"5 лютого 2026{NNBSP}р."
    assert fields["/position"].value == "48,5123° пн. ш., 35,0456° сх. д."
    assert (fields["/area"].label, fields["/area"].value) == ("Район", "Коло")
    assert fields["/aircraft_count"].value == f"1{NBSP}234{NBSP}567"
    assert fields["/armed"].value == "Ні"
    assert fields["/contact"].label == "Зв'язок"


@pytest.mark.parametrize("lang", LANGS)
def test_every_language_renders_the_same_fields(registry: FormRegistry, lang: str) -> None:
    form = render_form(registry, "TEST_REPORT", 1, DATA, lang)
    english = render_form(registry, "TEST_REPORT", 1, DATA, "en")
    assert [(f.path, f.depth, f.value is None) for f in form.fields] == [
        (f.path, f.depth, f.value is None) for f in english.fields
    ]
    for field in form.fields:
        assert field.label.strip(), field
        if not field.label.endswith("."):  # numbered items have no help
            assert field.help.strip(), field
    # Free text is the sender's, whatever the reader's language.
    fields = by_path(form)
    assert fields["/narrative"].value == DATA["narrative"]
    assert fields["/vessels/0/name"].value == "Адмирал Макаров"
    assert fields["/contact/callsign"].value == "ВОЛНА-3"


def test_fields_carry_pointers_depths_and_help(registry: FormRegistry) -> None:
    fields = render_form(registry, "TEST_REPORT", 1, DATA, "en").fields
    vessel = [f for f in fields if f.path.startswith("/vessels")]
    assert [(f.path, f.label, f.value, f.depth) for f in vessel] == [
        ("/vessels", "Vessels", None, 0),
        ("/vessels/0", "1.", None, 1),
        ("/vessels/0/name", "Name", "Адмирал Макаров", 2),
        ("/vessels/0/tonnage", "Tonnage", "3,620", 2),
        ("/vessels/0/master", "Master", "Сергей Щербаков [Sergei Shcherbakov]", 2),
        ("/vessels/1", "2.", None, 1),
        ("/vessels/1/name", "Name", "Hetman", 2),
    ]
    assert vessel[0].help == "Vessels."
    assert vessel[1].help == ""


def test_absent_optional_fields_are_omitted(registry: FormRegistry) -> None:
    minimal = {k: DATA[k] for k in ("domain", "observed_at", "position", "narrative")}
    registry.body("TEST_REPORT", minimal, 1)
    form = render_form(registry, "TEST_REPORT", 1, minimal, "en")
    assert [f.path for f in form.fields] == ["/domain", "/observed_at", "/position", "/narrative"]


def test_a_polygon_lists_its_vertices(registry: FormRegistry) -> None:
    vertices = [
        {"latitude": "45", "longitude": "30"},
        {"latitude": "-45.5", "longitude": "-30.25"},
        {"latitude": "0.0", "longitude": "0"},
    ]
    data = {**DATA, "area": {"vertices": vertices}}
    registry.body("TEST_REPORT", data, 1)
    area = [
        f
        for f in render_form(registry, "TEST_REPORT", 1, data, "ru").fields
        if f.path.startswith("/area")
    ]
    assert [(f.path, f.label, f.value, f.depth) for f in area] == [
        ("/area", "Район", "Многоугольник", 0),
        ("/area/vertices", "Вершины", None, 1),
        ("/area/vertices/0", "1.", "45° с. ш., 30° в. д.", 2),
        ("/area/vertices/1", "2.", "45,5° ю. ш., 30,25° з. д.", 2),
        ("/area/vertices/2", "3.", "0,0° с. ш., 0° в. д.", 2),
    ]


def test_an_optional_part_of_a_position_follows_it(registry: FormRegistry) -> None:
    data = {**DATA, "position": {"latitude": "48.5", "longitude": "35", "altitude_m": 1500}}
    registry.body("TEST_REPORT", data, 1)
    fields = by_path(render_form(registry, "TEST_REPORT", 1, data, "en"))
    assert fields["/position"].value == "48.5° N, 35° E"
    assert (fields["/position/altitude_m"].label, fields["/position/altitude_m"].value) == (
        "Altitude (m)",
        "1,500",
    )
    assert fields["/position/altitude_m"].depth == 1


def test_a_boolean_is_yes_or_no_in_each_language(registry: FormRegistry) -> None:
    data = {**DATA, "armed": True}
    answers = [
        by_path(render_form(registry, "TEST_REPORT", 1, data, lang))["/armed"].value
        for lang in LANGS
    ]
    assert answers == ["Yes", "Да", "Так"]


def test_an_empty_list_says_so(registry: FormRegistry) -> None:
    data = {**DATA, "vessels": []}
    answers = [
        by_path(render_form(registry, "TEST_REPORT", 1, data, lang))["/vessels"].value
        for lang in LANGS
    ]
    assert answers == ["none", "нет", "немає"]


# --------------------------------------------------------------------------
# Missing labels fail loudly


def _registry_skipping_lint(form: Mapping[str, Any]) -> FormRegistry:
    """A registry holding a definition its lint would refuse (as if the lint had a gap)."""
    registry = make_registry()
    good = registry.get("TEST_REPORT", 1)
    assert good is not None
    broken = dataclasses.replace(
        good, title=dict(form["title"]), help=dict(form["help"]), schema=form["schema"]
    )
    registry._forms[("TEST_REPORT", 1)] = broken
    return registry


def test_a_missing_label_fails_loudly() -> None:
    form = make_form()
    del form["schema"]["properties"]["armed"]["x-label"]["uk"]
    registry = _registry_skipping_lint(form)
    with pytest.raises(MissingLabel, match=r"TEST_REPORT v1 at /armed has no label .* in uk"):
        render_form(registry, "TEST_REPORT", 1, DATA, "uk")
    # Other languages are complete.
    assert by_path(render_form(registry, "TEST_REPORT", 1, DATA, "ru"))["/armed"].value == "Нет"


def test_a_missing_enum_label_fails_loudly() -> None:
    form = make_form()
    del form["schema"]["properties"]["domain"]["x-enum"]["sea"]
    registry = _registry_skipping_lint(form)
    with pytest.raises(
        MissingLabel, match=r"at /domain has no label \(x-enum\) for the value 'sea'"
    ):
        render_form(registry, "TEST_REPORT", 1, DATA, "en")


def test_a_missing_branch_label_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    common = common_defs()
    del common["$defs"]["area"]["oneOf"][1]["x-label"]["ru"]
    # The registry refuses such shared definitions when it loads ...
    with pytest.raises(InvalidDefinition, match=r"oneOf/1 lacks a label \(x-label\) in ru"):
        make_registry(common=common)
    # ... and the renderer, should one get through, refuses to guess.
    registry = make_registry()
    resolve = registry.resolve
    monkeypatch.setattr(
        registry,
        "resolve",
        lambda ref: common["$defs"]["area"] if ref.endswith("/area") else resolve(ref),
    )
    with pytest.raises(MissingLabel, match=r"at /area \(oneOf branch 1\) has no label"):
        render_form(registry, "TEST_REPORT", 1, DATA, "ru")
    assert by_path(render_form(registry, "TEST_REPORT", 1, DATA, "en"))["/area"].value == "Circle"


def test_a_missing_title_fails_loudly() -> None:
    form = make_form()
    form["title"]["ru"] = ""
    registry = _registry_skipping_lint(form)
    with pytest.raises(MissingLabel, match="has no title in ru"):
        render_form(registry, "TEST_REPORT", 1, DATA, "ru")


# --------------------------------------------------------------------------
# Values that break the schema are shown, not crashed on


@pytest.mark.parametrize(
    ("path", "bad", "shown"),
    [
        ("domain", "submarine", '"submarine"'),
        ("domain", 3, "3"),
        ("observed_at", "yesterday", '"yesterday"'),
        ("observed_at", 1770300000, "1770300000"),
        ("report_date", "2026-02-30", '"2026-02-30"'),
        (
            "position",
            {"latitude": "north", "longitude": "3"},
            '{"latitude":"north","longitude":"3"}',
        ),
        ("position", {"latitude": "91", "longitude": "3"}, '{"latitude":"91","longitude":"3"}'),
        ("position", {"latitude": "1e3", "longitude": "3"}, '{"latitude":"1e3","longitude":"3"}'),
        ("position", [48, 35], "[48,35]"),
        ("area", {"radius_m": 5}, '{"radius_m":5}'),
        ("commander", "Шевченко", '"Шевченко"'),
        ("aircraft_count", "many", '"many"'),
        ("aircraft_count", True, "true"),
        ("armed", "нет", '"нет"'),
        ("narrative", None, "null"),
        ("narrative", {"text": "x"}, '{"text":"x"}'),
        ("vessels", "Адмирал", '"Адмирал"'),
    ],
)
def test_a_value_that_breaks_the_schema_is_shown_as_json(
    registry: FormRegistry, path: str, bad: Any, shown: str
) -> None:
    data = {**DATA, path: bad}
    for lang in LANGS:
        field = by_path(render_form(registry, "TEST_REPORT", 1, data, lang))["/" + path]
        assert field.value == shown


def test_keys_the_schema_does_not_name_are_still_shown(registry: FormRegistry) -> None:
    data = {**DATA, "contact": {"callsign": "A", "extra": [1, "два"]}, "zz": {"a": None}}
    fields = by_path(render_form(registry, "TEST_REPORT", 1, data, "en"))
    assert (fields["/contact/extra"].label, fields["/contact/extra"].value) == (
        "extra",
        '[1,"два"]',
    )
    assert (fields["/zz"].label, fields["/zz"].value, fields["/zz"].depth) == (
        "zz",
        '{"a":null}',
        0,
    )


def test_a_bad_item_in_a_list_is_shown_among_the_good_ones(registry: FormRegistry) -> None:
    data = {**DATA, "vessels": [{"name": "A"}, 7, {"name": "B", "tonnage": "heavy"}]}
    fields = by_path(render_form(registry, "TEST_REPORT", 1, data, "en"))
    assert fields["/vessels/0/name"].value == "A"
    assert fields["/vessels/1"].value == "7"
    assert fields["/vessels/2/tonnage"].value == '"heavy"'


def test_unknown_form_or_language_is_a_usage_error(registry: FormRegistry) -> None:
    with pytest.raises(UsageError, match="no form TEST_REPORT version 2"):
        render_form(registry, "TEST_REPORT", 2, DATA, "en")
    with pytest.raises(UsageError, match="not 'de'"):
        render_form(registry, "TEST_REPORT", 1, DATA, "de")


# --------------------------------------------------------------------------
# Plain text


def test_text_shows_control_characters_instead_of_obeying_them(registry: FormRegistry) -> None:
    narrative = "red\x1b[2J alert\u202eelbat\r\nline two\ttabbed"
    data = {**DATA, "narrative": narrative}
    form = render_form(registry, "TEST_REPORT", 1, data, "en")
    assert by_path(form)["/narrative"].value == narrative  # the field is exact
    assert render_text(form).endswith(
        "Narrative:\n  red<U+001B>[2J alert<U+202E>elbat\n  line two\ttabbed\n"
    )


def test_text_numbers_the_items_of_a_list(registry: FormRegistry) -> None:
    vertices = [{"latitude": "45", "longitude": "30"}] * 3
    data = {**DATA, "area": {"vertices": vertices}}
    text = render_text(render_form(registry, "TEST_REPORT", 1, data, "en"))
    assert "Area: Polygon\n  Vertices\n    1. 45° N, 30° E\n    2. 45° N, 30° E\n" in text


def test_text_of_a_hand_made_form() -> None:
    form = RenderedForm(
        name="X",
        version=2,
        title="T",
        lang="en",
        fields=(
            RenderedField("/a", "A", None, 0, ""),
            RenderedField("/a/b", "B", "one", 1, ""),
            RenderedField("/a/c", "C", "", 1, ""),
        ),
    )
    assert render_text(form) == "A\n  B: one\n  C:\n"


# --------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize(
    ("lat", "lon", "en", "ru", "uk"),
    [
        (
            48.5123,
            35.0456,
            "48.5123° N, 35.0456° E",
            "48,5123° с. ш., 35,0456° в. д.",
            "48,5123° пн. ш., 35,0456° сх. д.",
        ),
        (
            -33.8688,
            -151.2093,
            "33.8688° S, 151.2093° W",
            "33,8688° ю. ш., 151,2093° з. д.",
            "33,8688° пд. ш., 151,2093° зх. д.",
        ),
        (
            "44.50000",
            "-0.10",
            "44.50000° N, 0.10° W",
            "44,50000° с. ш., 0,10° з. д.",
            "44,50000° пн. ш., 0,10° зх. д.",
        ),
        (90, 180, "90° N, 180° E", "90° с. ш., 180° в. д.", "90° пн. ш., 180° сх. д."),
    ],
)
def test_format_position(lat: Any, lon: Any, en: str, ru: str, uk: str) -> None:
    assert [format_position(lat, lon, lang) for lang in LANGS] == [en, ru, uk]


@pytest.mark.parametrize(("lat", "lon"), [(90.5, 0), (0, -180.01), ("1e3", 0), (True, 0)])
def test_format_position_refuses_what_is_not_a_position(lat: Any, lon: Any) -> None:
    with pytest.raises(ValueError, match=r"not a (position|number)|boolean"):
        format_position(lat, lon, "en")


@pytest.mark.parametrize(
    ("value", "en", "ru"),
    [
        (0, "0", "0"),
        (-5000, "-5,000", f"-5{NBSP}000"),
        (1234567, "1,234,567", f"1{NBSP}234{NBSP}567"),
        (2**53 - 1, "9,007,199,254,740,991", f"9{NBSP}007{NBSP}199{NBSP}254{NBSP}740{NBSP}991"),
        (1234.5, "1,234.5", f"1{NBSP}234,5"),
        ("2.50", "2.50", "2,50"),
        (0.1, "0.1", "0,1"),
    ],
)
def test_format_number(value: Any, en: str, ru: str) -> None:
    assert format_number(value, "en") == en
    assert format_number(value, "ru") == ru
    assert format_number(value, "uk") == ru


def test_format_date_and_time() -> None:
    assert format_date("2026-12-31", "en") == "December 31, 2026"
    assert format_date("2026-12-31", "ru") == f"31 декабря 2026{NNBSP}г."
    assert format_date("2026-12-31", "uk") == f"31 грудня 2026{NNBSP}р."
    assert format_datetime("2026-02-05T00:00:00Z", "en") == "February 5, 2026, 00:00 UTC"
    assert format_datetime("2026-02-05T23:59:07Z", "ru") == f"5 февраля 2026{NNBSP}г., 23:59:07 UTC"
    assert (
        format_datetime("2026-02-05T23:59:07.25Z", "uk")
        == f"5 лютого 2026{NNBSP}р., 23:59:07.250 UTC"
    )
    assert format_datetime("2026-02-05T23:59:07.123456Z", "en") == (
        "February 5, 2026, 23:59:07.123456 UTC"
    )


def test_a_time_with_an_offset_is_shown_in_utc() -> None:
    # The validator accepts only Z; a time with an offset is still shown right.
    assert format_datetime("2026-02-06T01:30:00+03:00", "en") == "February 5, 2026, 22:30 UTC"


@pytest.mark.parametrize(
    "bad",
    [
        "2026-02-05",
        "2026-02-05T14:03Z",
        "2026-02-05T14:03:00",
        "2026-02-05T25:00:00Z",
        "२०२६-02-05T14:03:00Z",
    ],
)
def test_format_datetime_refuses_what_is_not_a_utc_time(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message is Python's or ours)
        format_datetime(bad, "en")


@pytest.mark.parametrize("bad", ["20260205", "2026-W06-4", "2026-02-30", "5.2.2026"])
def test_format_date_refuses_what_is_not_a_date(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        format_date(bad, "en")


# --------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("name", "script", "latin"),
    [
        ("Олексій Шевченко", "uk", "Oleksii Shevchenko"),
        ("Юрій Згурський", "uk", "Yurii Zghurskyi"),
        ("Ярослава Єрмоленко-Щербак", "uk", "Yaroslava Yermolenko-Shcherbak"),
        ("ШЕВЧЕНКО Олексій", "uk", "SHEVCHENKO Oleksii"),
        ("Сергей Щербаков", "ru", "Sergei Shcherbakov"),
        ("Андрей Юрьевич Ёлкин", "ru", "Andrei Iurevich Elkin"),
        ("Олексій Шевченко", "en", None),
        ("Олексій Шевченко", "other", None),
        ("John Smith", "uk", None),
        ("John Smith", "ru", None),
    ],
)
def test_transliterate_name(name: str, script: str, latin: str | None) -> None:
    assert transliterate_name(name, script) == latin


@pytest.mark.parametrize(
    ("name", "script", "table"),
    [
        ("Олексій Шевченко", "uk", translitua.UkrainianKMU),
        ("Знам'янка Ґалаґан", "uk", translitua.UkrainianKMU),
        ("Наталья Подъячева", "ru", translitua.RussianICAO),
    ],
)
def test_transliteration_is_the_librarys(name: str, script: str, table: Any) -> None:
    assert transliterate_name(name, script) == translitua.translit(name, table)


# --------------------------------------------------------------------------
# The registry, as the renderer relies on it


def test_the_digest_covers_shared_definitions_reached_by_relative_refs() -> None:
    common = common_defs()
    changed = copy.deepcopy(common)
    # The circle is reached only through the area's "#/$defs/circle".
    changed["$defs"]["circle"]["properties"]["radius_m"]["minimum"] = 100_000
    form = make_form()
    assert definition_digest(form, common) != definition_digest(form, changed)


def test_a_form_may_use_its_own_defs() -> None:
    form = make_form()
    schema = form["schema"]
    schema["$defs"] = {
        "callsign": {"type": "string", "pattern": "^[A-Z0-9-]+$"},
        "link": {
            "oneOf": [
                labelled({"$ref": "#/$defs/callsign"}, "Call sign", "Позывной", "Позивний"),
                labelled({"type": "integer"}, "Channel", "Канал", "Канал"),
            ]
        },
    }
    schema["properties"]["link"] = labelled({"$ref": "#/$defs/link"}, "Link", "Связь", "Зв'язок")
    registry = make_registry(form)
    for link, en in (("KALYNA", ("Link (Call sign)", "KALYNA")), (16, ("Link (Channel)", "16"))):
        data = {**DATA, "link": link}
        registry.body("TEST_REPORT", data, 1)
        field = by_path(render_form(registry, "TEST_REPORT", 1, data, "en"))["/link"]
        assert (field.label, field.value) == en
    field = by_path(render_form(registry, "TEST_REPORT", 1, {**DATA, "link": "x y"}, "uk"))["/link"]
    assert (field.label, field.value) == ("Зв'язок", '"x y"')
