"""The console words the terminal's codes in the operator's language: every alarm the
terminal raises, the refusals an operator meets, the negative receipts' codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import parley
from parley.console import i18n, texts
from parley.core.forms import REJECTION_CODES
from parley.errors import (
    AlreadyAcknowledged,
    ChannelNotAgreed,
    InvalidSignature,
    UsageError,
    error_body,
)
from parley.service import keys, rotation

SRC = Path(parley.__file__).parent
_RAISED = re.compile(r"raise_alarm\(\s*(?:\"([a-z_]+)\"|([A-Z_]+)\b)")
_CONSTANTS = {
    "CARD_EXPIRY": keys.CARD_EXPIRY,
    "CARD_ROTATED": rotation.CARD_ROTATED,
    "KEY_REVOKED": rotation.KEY_REVOKED,
    "SUPERSEDED_KEY": rotation.SUPERSEDED_KEY,
}


def _raised_kinds() -> set[str]:
    kinds = {"equivocation", "rollback"}  # service/alarms.py: record_equivocation's kinds
    for path in SRC.rglob("*.py"):
        for literal, constant in _RAISED.findall(path.read_text("utf-8")):
            kinds.add(literal or _CONSTANTS[constant])
    return kinds


def test_the_scan_finds_the_alarms_raised() -> None:
    assert {"link_test_failed", "ack_overdue", "card_rotated", "card_expiry"} <= _raised_kinds()


def test_every_alarm_the_terminal_raises_has_words() -> None:
    assert _raised_kinds() - set(texts.ALARM_TEXT) == set()


@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_alarms_are_worded_in_the_operators_language(lang: str) -> None:
    for kind in _raised_kinds():
        worded = texts.alarm_words(kind, "RU-GS/backup", lang)
        english = texts.alarm_words(kind, "RU-GS/backup", "en")
        assert worded != english, kind
        if kind != "card_expiry" and "%(subject)s" in texts.ALARM_TEXT[kind]:
            assert "RU-GS/backup" in worded, kind
    assert texts.alarm_words("card_expiry", "RU-GS v2 30d", "en") == (
        "The identity card of RU-GS (version 2) expires within 30 days: arrange a new card "
        "with the peers."
    )
    assert "истёк" in texts.alarm_words("card_expiry", "RU-GS v2 0d", "ru")
    # A kind the console does not know still names its subject, in the language.
    assert "X-1" in texts.alarm_words("new_kind", "X-1", lang)


def test_every_negative_receipt_code_has_words() -> None:
    assert set(REJECTION_CODES) <= set(texts.REJECTION_TEXT)
    assert texts.rejection_words("unknown_form", "uk") == (
        "Форма або її версія невідома терміналу-одержувачу."
    )


def test_a_refusal_is_worded_with_its_values_and_a_general_one_by_its_culprit() -> None:
    taken = AlreadyAcknowledged("message X was already acknowledged by maj.p", operator="maj.p")
    assert texts.error_words(taken, "ru") == "Получение этого сообщения уже подтвердил maj.p."
    waiting = ChannelNotAgreed("…", channel="TALKS", waiting="UA-GS")
    assert (
        texts.error_words(waiting, "uk") == "Канал TALKS ще не погоджено: очікується згода UA-GS."
    )
    assert texts.error_words(UsageError("channel TALKS already exists"), "ru") == (
        "Терминал отклонил этот запрос."
    )
    assert (
        texts.error_words(InvalidSignature("bad"), "en") == "The other party's input was refused."
    )
    # The API and the CLI get the same values, to word them as they will.
    assert error_body(taken)["params"] == {"operator": "maj.p"}
    assert "params" not in error_body(UsageError("x"))


def test_every_action_a_console_page_requires_has_words() -> None:
    from parley.console.web import PERMISSIONS

    for action in PERMISSIONS.values():
        assert texts.action_words(action, "uk") not in (None, texts.ACTION_TEXT[action]), action
    assert i18n.translations("ru").gettext("Your role does not allow you to %(action)s.") != (
        "Your role does not allow you to %(action)s."
    )
