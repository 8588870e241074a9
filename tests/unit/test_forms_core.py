"""The form registry's checks and the negative receipt, on definitions written here.

The shipped definitions are tested in ``test_form_definitions.py``; these
tests build small registries of their own so each rule is seen to bite.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from parley.core.envelope import Limits
from parley.core.forms import (
    COMMON_ID,
    FormRegistry,
    FormRejected,
    InvalidDefinition,
    InvalidFormData,
    NoticeTooShort,
    lint_definition,
)
from parley.core.party import MessageReceived
from parley.core.transcript import EntryType, split_entry
from parley.errors import UsageError
from parley.forms import default_registry
from parley.testing import ManualClock, PartyPair


def _l(en: str, ru: str, uk: str) -> dict[str, str]:
    return {"en": en, "ru": ru, "uk": uk}


LATITUDE = r"^-?(90(\.0{1,7})?|[1-8]?[0-9](\.[0-9]{1,7})?)$"
LONGITUDE = r"^-?(180(\.0{1,7})?|(1[0-7][0-9]|[1-9]?[0-9])(\.[0-9]{1,7})?)$"

COMMON: dict[str, Any] = {
    "$id": COMMON_ID,
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "position": {
            "type": "object",
            "x-render": "position",
            "additionalProperties": False,
            "required": ["latitude", "longitude"],
            "properties": {
                "latitude": {
                    "type": "string",
                    "pattern": LATITUDE,
                    "x-label": _l("Latitude", "Широта", "Широта"),
                    "x-help": _l("WGS84 degrees.", "Градусы WGS84.", "Градуси WGS84."),
                },
                "longitude": {
                    "type": "string",
                    "pattern": LONGITUDE,
                    "x-label": _l("Longitude", "Долгота", "Довгота"),
                    "x-help": _l("WGS84 degrees.", "Градусы WGS84.", "Градуси WGS84."),
                },
            },
        },
        "unused": {"type": "string"},
    },
}


def _notice() -> dict[str, Any]:
    return {
        "name": "TEST_NOTICE",
        "version": 1,
        "title": _l("Test notice", "Тестовое уведомление", "Тестове повідомлення"),
        "help": _l("For tests.", "Для проверок.", "Для перевірок."),
        "rules": [{"rule": "min_notice", "time": "/start", "hours": 24, "unless": "/late_notice"}],
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": False,
            "required": ["start", "kind", "where"],
            "properties": {
                "start": {
                    "type": "string",
                    "format": "date-time",
                    "x-label": _l("Start", "Начало", "Початок"),
                    "x-help": _l("UTC.", "Всемирное время.", "Всесвітній час."),
                },
                "kind": {
                    "type": "string",
                    "enum": ["a", "b"],
                    "x-label": _l("Kind", "Вид", "Вид"),
                    "x-help": _l("Which.", "Какой.", "Який."),
                    "x-enum": {"a": _l("A", "А", "А"), "b": _l("B", "Б", "Б")},
                },
                "where": {
                    "$ref": f"{COMMON_ID}#/$defs/position",
                    "x-label": _l("Position", "Координаты", "Координати"),
                    "x-help": _l("Where.", "Где.", "Де."),
                },
                "late_notice": {
                    "type": "object",
                    "required": ["reason"],
                    "additionalProperties": False,
                    "x-label": _l("Late notice", "Позднее уведомление", "Пізнє повідомлення"),
                    "x-help": _l("Why late.", "Почему поздно.", "Чому пізно."),
                    "properties": {
                        "reason": {
                            "type": "string",
                            "minLength": 1,
                            "x-label": _l("Reason", "Причина", "Причина"),
                            "x-help": _l("Why.", "Почему.", "Чому."),
                        }
                    },
                },
            },
        },
    }


def _data(start: str = "2026-02-10T12:00:00Z") -> dict[str, Any]:
    return {"start": start, "kind": "a", "where": {"latitude": "48.5", "longitude": "35.0"}}


@pytest.fixture
def registry() -> FormRegistry:
    return FormRegistry([_notice()], COMMON)


def test_a_valid_form_round_trips(registry: FormRegistry) -> None:
    body = registry.body("TEST_NOTICE", _data())
    assert body["version"] == 1
    assert body["definition"] == registry.check(body).digest
    assert registry.check(body).name == "TEST_NOTICE"


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (lambda b: b.update(version=2), "unknown_form", "version 2 is not known"),
        (lambda b: b.update(name="NO_SUCH"), "unknown_form", "NO_SUCH"),
        (lambda b: b.update(definition="0" * 64), "definition_mismatch", "differ"),
        (lambda b: b["data"]["where"].update(latitude="91"), "invalid_form", "/where/latitude"),
        (lambda b: b["data"].update(kind="c"), "invalid_form", "/kind"),
        (lambda b: b["data"].update(extra=1), "invalid_form", "extra"),
        (lambda b: b["data"].update(start="2026-02-30T12:00:00Z"), "invalid_form", "/start"),
        (lambda b: b["data"].update(start="2026-02-10T12:00:00+01:00"), "invalid_form", "/start"),
        (lambda b: b["data"].pop("where"), "invalid_form", "'where' is a required"),
        (lambda b: b.pop("definition"), "malformed_form", "exactly name"),
        (lambda b: b.update(version="1"), "malformed_form", "integer"),
    ],
)
def test_each_rule_is_refused_with_its_code_and_place(
    registry: FormRegistry, change: Any, code: str, says: str
) -> None:
    body = registry.body("TEST_NOTICE", _data())
    bad = copy.deepcopy(body)
    change(bad)
    with pytest.raises(FormRejected) as caught:
        registry.check(bad)
    assert caught.value.code == code
    assert says in caught.value.reason


def test_labels_do_not_change_the_digest_but_meaning_does() -> None:
    base = FormRegistry([_notice()], COMMON).get("TEST_NOTICE", 1)
    relabelled = _notice()
    relabelled["schema"]["properties"]["kind"]["x-label"]["uk"] = "Різновид"
    relabelled["title"]["en"] = "Another title"
    assert FormRegistry([relabelled], COMMON).get("TEST_NOTICE", 1).digest == base.digest  # type: ignore[union-attr]
    stricter = _notice()
    stricter["schema"]["properties"]["kind"]["enum"] = ["a"]
    stricter["schema"]["properties"]["kind"]["x-enum"].pop("b")
    assert FormRegistry([stricter], COMMON).get("TEST_NOTICE", 1).digest != base.digest  # type: ignore[union-attr]
    common = copy.deepcopy(COMMON)
    common["$defs"]["position"]["properties"]["latitude"]["pattern"] = "^[0-9]$"
    assert FormRegistry([_notice()], common).get("TEST_NOTICE", 1).digest != base.digest  # type: ignore[union-attr]
    unrelated = copy.deepcopy(COMMON)
    unrelated["$defs"]["unused"]["maxLength"] = 3  # a shared definition the form does not use
    assert FormRegistry([_notice()], unrelated).get("TEST_NOTICE", 1).digest == base.digest  # type: ignore[union-attr]


def test_a_definition_without_every_label_is_refused_at_load() -> None:
    broken = _notice()
    del broken["schema"]["properties"]["kind"]["x-enum"]["b"]["uk"]
    del broken["schema"]["properties"]["start"]["x-help"]
    problems = lint_definition(broken, COMMON)
    assert any("'b'" in p and "uk" in p for p in problems)
    assert any("/start" in p and "x-help" in p for p in problems)
    with pytest.raises(InvalidDefinition, match="TEST_NOTICE v1"):
        FormRegistry([broken], COMMON)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d.update(rules=[{"rule": "sometime"}]), "not one of"),
        (
            lambda d: d["schema"]["properties"]["where"].update({"$ref": "urn:x#/a"}),
            "names no shared",
        ),
        (lambda d: d["schema"].update(type="array"), "object"),
        (lambda d: d["schema"]["properties"]["kind"].update(type=5), "valid JSON Schema"),
        (lambda d: d.update(name="lower"), "upper-case"),
        (lambda d: d["rules"][0].update(time="/nowhere"), "names no date-time field"),
        (lambda d: d["rules"][0].update(time="/kind"), "names no date-time field"),
        (lambda d: d["rules"][0].update(unless="/late"), "'unless' '/late' names no field"),
        (
            lambda d: d["schema"]["properties"]["kind"]["x-enum"].update(c=_l("C", "В", "В")),
            "match no enum value",
        ),
        (lambda d: d["schema"]["properties"]["kind"].update(maxLength=2.0), "float"),
        (lambda d: d["schema"]["properties"]["kind"].update(type="number"), "no floats"),
    ],
)
def test_broken_definitions_are_named(change: Any, says: str) -> None:
    broken = _notice()
    change(broken)
    with pytest.raises(InvalidDefinition, match=says):
        FormRegistry([broken], COMMON)


def test_two_definitions_of_one_version_are_refused() -> None:
    with pytest.raises(InvalidDefinition, match="defined twice"):
        FormRegistry([_notice(), _notice()], COMMON)


def test_min_notice_refuses_a_late_notice_unless_marked_late(registry: FormRegistry) -> None:
    definition = registry.get("TEST_NOTICE", 1)
    assert definition is not None
    now = ManualClock()()
    soon = (now + timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (now + timedelta(hours=25)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(NoticeTooShort, match="24 hours' notice"):
        registry.check_rules(definition, _data(soon), now)
    registry.check_rules(definition, _data(later), now)
    registry.check_rules(definition, {**_data(soon), "late_notice": {"reason": "weather"}}, now)


# The negative receipt, between two parties in memory ------------------------


def _pair(registry: FormRegistry, receiver: FormRegistry | None = None) -> PartyPair:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    pair.a.forms = registry
    pair.b.forms = registry if receiver is None else receiver
    return pair


def test_the_sender_refuses_invalid_form_data_and_a_short_notice(registry: FormRegistry) -> None:
    pair = _pair(registry)
    bad = registry.body("TEST_NOTICE", _data())
    bad["data"]["kind"] = "z"
    with pytest.raises(InvalidFormData, match=r"will not send it.*/kind"):
        pair.a.send(["RU-GS"], kind="form", body={"form": bad}, operator="maj.smith")
    soon = (pair.a.clock() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(NoticeTooShort):
        pair.a.send(
            ["RU-GS"],
            kind="form",
            body={"form": registry.body("TEST_NOTICE", _data(soon))},
            operator="maj.smith",
        )
    assert pair.a.transcript.size == 0  # nothing sealed, nothing logged


def test_an_unknown_form_is_logged_and_answered_by_a_negative_receipt(
    registry: FormRegistry,
) -> None:
    older = _notice()
    newer = copy.deepcopy(older)
    newer["version"] = 2
    sender = FormRegistry([older, newer], COMMON)
    pair = _pair(sender, receiver=registry)
    out = pair.a.send(
        ["RU-GS"],
        kind="form",
        body={"form": sender.body("TEST_NOTICE", _data(), version=2)},
        operator="maj.smith",
    )
    events, accepted = pair.deliver(out, pair.a)
    received = events[0]
    assert isinstance(received, MessageReceived)
    assert received.rejection is not None
    assert received.rejection.code == "unknown_form"
    receipt = accepted.receipt
    assert receipt.rejection is not None
    assert receipt.rejection.code == "unknown_form"
    assert "TEST_NOTICE version 2 is not known" in receipt.rejection.reason
    # Logged on both sides: the envelope is part of the record, and so is the refusal.
    assert [split_entry(pair.b.transcript.entry(i))[0] for i in range(2)] == [
        EntryType.ENVELOPE,
        EntryType.RECEIPT,
    ]
    assert pair.a.receipts_for(out.envelope_id) == {"RU-GS": receipt.through_seq}
    # The sequence moved on: the next (valid) message is not held behind a gap.
    good = pair.a.send(
        ["RU-GS"],
        kind="form",
        body={"form": sender.body("TEST_NOTICE", _data(), version=1)},
        operator="maj.smith",
    )
    events, accepted = pair.deliver(good, pair.a)
    assert accepted.receipt.rejection is None
    assert accepted.receipt.through_seq == 2


def test_a_replayed_refused_envelope_is_refused_again(registry: FormRegistry) -> None:
    pair = _pair(registry, receiver=FormRegistry([], COMMON))
    out = pair.a.send(
        ["RU-GS"],
        kind="form",
        body={"form": registry.body("TEST_NOTICE", _data())},
        operator="maj.smith",
    )
    pair.deliver(out, pair.a)
    again = pair.b.receive_envelope(out.raw)
    receipt = pair.a.receive_receipt(again.receipt).receipt
    assert receipt.rejection is not None
    assert receipt.rejection.code == "unknown_form"


def test_a_definition_mismatch_is_refused_by_the_receiver(registry: FormRegistry) -> None:
    differs = _notice()
    differs["schema"]["properties"]["kind"]["enum"] = ["a", "b", "c"]
    differs["schema"]["properties"]["kind"]["x-enum"]["c"] = _l("C", "В", "В")
    sender = FormRegistry([differs], COMMON)
    pair = _pair(sender, receiver=registry)
    out = pair.a.send(
        ["RU-GS"],
        kind="form",
        body={"form": sender.body("TEST_NOTICE", {**_data(), "kind": "c"})},
        operator="maj.smith",
    )
    _, accepted = pair.deliver(out, pair.a)
    assert accepted.receipt.rejection is not None
    assert accepted.receipt.rejection.code == "definition_mismatch"


def test_the_sender_refuses_a_message_over_the_size_limit_and_logs_nothing() -> None:
    pair = PartyPair.create(ManualClock())
    pair.a.limits = Limits(max_body_bytes=64 * 1024)
    with pytest.raises(UsageError, match=r"over the 65,536-byte limit a terminal accepts"):
        pair.a.send_text(["RU-GS"], "x" * (64 * 1024), operator="maj.smith")
    assert pair.a.transcript.size == 0
    out = pair.a.send_text(["RU-GS"], "short", operator="maj.smith")
    assert out.seq == 1  # the refused message took no sequence number


def test_a_list_of_a_thousand_persons_fits_the_default_limit() -> None:
    registry = default_registry()
    pair = _pair(registry)
    persons = [
        {
            "ref": f"UA-{n:04d}",
            "name": {"full_name": "Шевченко Олексій Іванович", "script": "uk"},
            "date_of_birth": "1990-01-15",
            "rank": "молодший сержант",
            "unit": "в/ч А0000",
            "document": {"type": "military_id", "number": f"АА {n:06d}"},
            "status": "prisoner_of_war",
        }
        for n in range(1, 1001)
    ]
    body = registry.body(
        "PRISONER_EXCHANGE_LIST", {"exchange_id": "PX-1000", "revision": 1, "persons": persons}
    )
    out = pair.a.send(["RU-GS"], kind="form", body={"form": body}, operator="maj.smith")
    assert len(out.raw) < Limits().max_body_bytes
    events, accepted = pair.deliver(out, pair.a)
    assert accepted.receipt.rejection is None
    received = events[0]
    assert isinstance(received, MessageReceived)
    assert len(received.envelope.content.body["form"]["data"]["persons"]) == 1000
