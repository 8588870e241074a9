"""Every form between two running terminals, read in English, Russian and Ukrainian.

US-EUCOM sends the full valid example of each shipped form; RU-GS validates
it on arrival, stores it as a valid form, and ``parley show ID --lang …``
renders it in each language: the form's title in that language, its labels,
and personal names with their transliteration. A notice given too late is
refused by the sender's own terminal; a certified translation is attached,
refused to its own author as a countersigner, and countersigned by another
operator. Russian free text reads in Ukrainian through ``parley show``, machine
translated by Apertium and labelled as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parley.forms import default_registry
from parley.forms.render import transliterate_name
from parley.testing.network import wait_until
from tests.service.conftest import RU, UA, NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(600)]

EXAMPLES = Path(__file__).parent.parent / "data" / "forms"


def _example(name: str, which: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text("utf-8"))["valid"][
        which
    ]
    return data


def _names(value: Any) -> list[tuple[str, str]]:
    """(full_name, script) of every personal name in a form's data."""
    found = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if set(item) >= {"full_name", "script"}:
                found.append((item["full_name"], item["script"]))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_every_form_round_trips_and_reads_in_three_languages(network: NetworkFactory) -> None:
    terminals = network()
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    registry = default_registry()
    sent: dict[str, str] = {}
    for definition in registry:
        result = us.api(
            "POST",
            "/messages",
            {
                "to": ["RU-GS"],
                "precedence": "PRIORITY",
                "form": definition.name,
                "data": _example(definition.name),
            },
        )
        sent[definition.name] = result["id"]
    assert len(sent) == 13

    def all_receipted() -> bool:
        return all("RU-GS" in us.api("GET", f"/messages/{i}")["receipts"] for i in sent.values())

    wait_until(all_receipted, timeout=60, what="receipts for every form")
    for name, envelope_id in sent.items():
        mine = us.api("GET", f"/messages/{envelope_id}")
        assert mine["rejections"] == {}, (name, mine["rejections"])
        theirs = ru.api("GET", f"/messages/{envelope_id}")
        assert theirs["rejection"] is None, (name, theirs["rejection"])
        assert theirs["body"]["form"]["data"] == _example(name)
        shipped = registry.latest(name)
        assert shipped is not None
        assert theirs["body"]["form"]["definition"] == shipped.digest
        for lang in ("en", "ru", "uk"):
            shown = ru.cli("show", envelope_id, "--lang", lang).stdout
            assert shipped.title[lang] in shown, (name, lang, shown)
            first_label = next(
                s["x-label"][lang]
                for key, s in shipped.schema["properties"].items()
                if key in _example(name) and "x-label" in s
            )
            assert first_label in shown, (name, lang, first_label)
            for full_name, script in _names(_example(name)):
                assert full_name in shown
                latin = transliterate_name(full_name, script)
                if latin:
                    assert latin in shown, (name, full_name, latin)


def test_the_sender_refuses_a_late_launch_notice_unless_marked_late(
    network: NetworkFactory, tmp_path: Path
) -> None:
    terminals = network()
    us = terminals["US-EUCOM"]
    late = _example("MISSILE_LAUNCH_NOTIFICATION", 0)  # a launch window in the past, unmarked
    path = tmp_path / "launch.json"
    path.write_text(json.dumps(late), "utf-8")
    refused = us.cli(
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "IMMEDIATE",
        "--form",
        "MISSILE_LAUNCH_NOTIFICATION",
        "--file",
        str(path),
        check=False,
    )
    assert refused.returncode != 0
    assert "24 hours' notice" in refused.stderr
    assert "late notice" in refused.stderr
    late["late_notice"] = {"reason": "Moved forward after a technical inspection."}
    path.write_text(json.dumps(late), "utf-8")
    us.cli(
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "IMMEDIATE",
        "--form",
        "MISSILE_LAUNCH_NOTIFICATION",
        "--file",
        str(path),
    )
    invalid = us.cli(
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "ROUTINE",
        "--form",
        "INCIDENT_REPORT",
        "--file",
        str(path),
        check=False,
    )
    assert invalid.returncode != 0
    assert "not valid" in invalid.stderr


def test_a_certified_translation_is_signed_and_countersigned_by_another_operator(
    network: NetworkFactory,
) -> None:
    terminals = network()
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    envelope_id = us.cli(
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "IMMEDIATE",
        "--lang",
        "en",
        "--text",
        "Request a call at 14:00 UTC on the incident of this morning.",
    ).stdout.strip()
    wait_until(
        lambda: "RU-GS" in us.api("GET", f"/messages/{envelope_id}")["receipts"],
        timeout=30,
        what="the receipt",
    )
    plain = ru.cli("show", envelope_id, "--lang", "ru").stdout
    assert "Request a call at 14:00 UTC" in plain
    assert "Untranslated" in plain  # no engine for English→Russian here: said, not hidden
    translation = "Просим о разговоре в 14:00 UTC по инциденту сегодняшнего утра."
    digest = ru.cli(
        "--operator",
        "lt.orlova",
        "translation",
        "add",
        envelope_id,
        "--lang",
        "ru",
        "--text",
        translation,
    ).stdout.strip()
    assert len(digest) == 64
    own = ru.cli("--operator", "lt.orlova", "translation", "countersign", digest, check=False)
    assert own.returncode != 0  # the two-person check: not by its own author
    ru.cli("--operator", "maj.sokolov", "translation", "countersign", digest)
    shown = ru.cli("show", envelope_id, "--lang", "ru").stdout
    assert "Request a call at 14:00 UTC" in shown  # the original stays beside it
    assert translation in shown
    assert "lt.orlova" in shown
    assert "maj.sokolov" in shown
    record = ru.api("GET", f"/messages/{envelope_id}")
    assert record["translations"][0]["countersignatures"][0]["operator"] == "maj.sokolov"
    assert record["body"]["text"].startswith("Request a call")  # the sender's words, unchanged


def test_russian_free_text_reads_in_ukrainian_through_the_cli(network: NetworkFactory) -> None:
    """Apertium for real: the running terminal translates (API), then the CLI alone."""
    terminals = network((RU, UA))
    ru, ua = terminals["RU-GS"], terminals["UA-GS"]
    original = "Уровень радиации в норме. Спасибо за помощь."
    envelope_id = ru.cli(
        "send", "--to", "UA-GS", "--precedence", "ROUTINE", "--lang", "ru", "--text", original
    ).stdout.strip()
    wait_until(
        lambda: "UA-GS" in ru.api("GET", f"/messages/{envelope_id}")["receipts"],
        timeout=30,
        what="the receipt",
    )
    label = "Machine translation ru→uk (apertium); not the sender's words:"
    translated = "Рівень радіації у нормі. Спасибі за допомогу."
    shown = ua.cli("show", envelope_id, "--lang", "uk").stdout
    assert label in shown, shown
    assert translated in shown
    assert original in shown  # the sender's words beside it
    record = json.loads(ua.cli("show", envelope_id, "--lang", "uk", "--json").stdout)
    assert record["machine_translation"]["text"] == translated
    assert record["machine_translation"]["signed"] is False
    assert record["body"] == {"text": original}
    assert record["translations"] == []  # nothing certified, nothing stored
    ua.stop()
    alone = ua.cli("show", envelope_id, "--lang", "uk").stdout  # no terminal running: local
    assert label in alone, alone
    assert translated in alone
