"""The console's message pages over real terminals: inbox, outbox, message, compose, FLASH.

Two terminals (US-EUCOM and RU-GS, SQLite) are made with ``make_network`` and
opened in this process; envelopes, receipts and witness rounds are carried
between them by hand, so each test decides exactly what each side holds. The
console is driven with FastAPI's TestClient on ``https://testserver`` (the
session cookie is ``Secure``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from parley.console import i18n, pages_messages
from parley.console.api import create_console_app
from parley.console.pages_messages import (
    collect_form_data,
    error_id,
    form_nodes,
    validate_form_data,
)
from parley.core.forms import FormRegistry
from parley.errors import UsageError
from parley.forms import default_registry, load_definitions
from parley.service import users
from parley.service.evidence import message_evidence
from parley.service.terminal import Terminal, utc_now
from parley.service.users import add_user
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

US, RU = "US-EUCOM", "RU-GS"
PASSWORD = "console-messages-test"
#: Accounts made on both terminals: name -> role.
ACCOUNTS = {
    "duty": "duty_officer",
    "duty2": "duty_officer",
    "sup": "supervisor",
    "aud": "auditor",
    "adm": "admin",
    "ivan": "duty_officer",  # reads Russian
}
ROLES = ("duty", "sup", "aud", "adm")


class Console:
    """One operator's browser: a TestClient logged in, with the session's CSRF token."""

    def __init__(self, app: FastAPI, name: str) -> None:
        self.http = TestClient(app, base_url="https://testserver")
        response = self.http.post(
            "/login", data={"name": name, "password": PASSWORD}, follow_redirects=False
        )
        assert response.status_code == 303, response.text
        (form,) = re.findall(
            r'<input type="hidden" name="csrf_token"[^>]*>', self.get("/inbox").text
        )[:1]
        self.csrf = attribute(form, "value")

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.http.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("follow_redirects", False)
        return self.http.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)

    def htmx(self, path: str, data: dict[str, Any]) -> Any:
        """A request as htmx sends it: the token in the header, not in the form."""
        headers = {"X-CSRF-Token": self.csrf, "HX-Request": "true"}
        return self.http.post(path, data=data, headers=headers)


@dataclass
class Pair:
    us: Terminal
    ru: Terminal
    us_app: FastAPI
    ru_app: FastAPI

    def console(self, terminal: Terminal, name: str) -> Console:
        return Console(self.us_app if terminal is self.us else self.ru_app, name)


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id with the least cost: these accounts guard nothing (as the test keys' scrypt)."""
    monkeypatch.setattr(
        users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    us = Terminal.open(made[US].data, PASSPHRASE)
    ru = Terminal.open(made[RU].data, PASSPHRASE)
    for terminal in (us, ru):
        for name, role in ACCOUNTS.items():
            add_user(terminal.engine, name, role, PASSWORD, now=utc_now())
        with terminal.engine.begin() as conn:
            conn.execute(update(m.users).where(m.users.c.name == "ivan").values(lang="ru"))
    testserver = {"testserver"}  # TestClient's Host
    yield Pair(
        us,
        ru,
        create_console_app(us, "token", hosts=testserver),
        create_console_app(ru, "token", hosts=testserver),
    )
    us.engine.dispose()
    ru.engine.dispose()


# Carrying traffic by hand -------------------------------------------------------------


def deliver(src: Terminal, dst: Terminal, envelope_id: str) -> None:
    """``src``'s envelope to ``dst``, and ``dst``'s receipt back."""
    raw = src.party.transcript.entry(src.show(envelope_id)["log_index"])[1:]
    receipt = dst.receive_envelope(raw, tls_party=src.me)
    src.receive_receipt(receipt, peer=dst.me)


def witness(owner: Terminal, by: Terminal) -> None:
    """One witness round: ``by`` cosigns ``owner``'s latest checkpoint."""
    offer = owner.offer_checkpoint(by.checkpoint_request(owner.me))
    owner.accept_cosignature(by.witness(owner.me, offer, owner.log_leaves), tls_party=by.me)


def text_to_ru(pair: Pair, text: str, precedence: str = "ROUTINE", **kw: Any) -> str:
    sent = pair.us.send(
        [RU], kind="text", body={"text": text}, operator="us.op", precedence=precedence, **kw
    )
    deliver(pair.us, pair.ru, sent["id"])
    return str(sent["id"])


def report_body(**data: Any) -> dict[str, Any]:
    base = {
        "time": "2026-02-05T14:03:00Z",
        "position": {"latitude": "48.5", "longitude": "35.1"},
        "weapons": ["mortar"],
        "narrative": "Three rounds\nfrom the north-east.",
    }
    return {"form": default_registry().body("CEASEFIRE_VIOLATION_REPORT", {**base, **data})}


def find_testid(html: str, testid: str) -> list[str]:
    """The opening tags of the elements with ``data-testid=testid``."""
    return re.findall(rf'<[a-z]+[^>]*data-testid="{re.escape(testid)}"[^>]*>', html)


def attribute(tag: str, name: str) -> str:
    found = re.search(rf' {name}="([^"]*)"', tag)
    assert found is not None, (tag, name)
    return found[1]


def actions(terminal: Terminal, action: str) -> list[Any]:
    with terminal.engine.connect() as conn:
        return list(
            conn.execute(
                select(m.operator_actions)
                .where(m.operator_actions.c.action == action)
                .order_by(m.operator_actions.c.id)
            )
        )


def held(terminal: Terminal) -> list[Any]:
    with terminal.engine.connect() as conn:
        return list(conn.execute(select(m.held_messages).order_by(m.held_messages.c.id)))


def sent_messages(terminal: Terminal) -> list[dict[str, Any]]:
    return terminal.messages("out")


# Access ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/inbox", "/outbox", "/compose", "/messages/x", "/fragments/flash", "/fragments/inbox"],
)
def test_a_visitor_who_is_not_logged_in_is_sent_to_the_login_page(pair: Pair, path: str) -> None:
    client = TestClient(pair.ru_app, base_url="https://testserver")
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    polled = client.get(path, headers={"HX-Request": "true"}, follow_redirects=False)
    assert polled.status_code == 204
    assert polled.headers["HX-Redirect"] == "/login"


@pytest.mark.parametrize("name", ROLES)
def test_every_page_renders_for_every_role(pair: Pair, name: str) -> None:
    flash = text_to_ru(pair, "Shots fired at grid 4417", "FLASH")
    form = pair.us.send([RU], kind="form", body=report_body(), operator="us.op")["id"]
    deliver(pair.us, pair.ru, form)
    out = pair.ru.send([US], kind="text", body={"text": "Received"}, operator="sup")["id"]
    console = pair.console(pair.ru, name)
    for path in (
        "/inbox",
        "/outbox",
        "/fragments/inbox",
        "/fragments/outbox",
        "/fragments/flash",
        f"/messages/{flash}",
        f"/messages/{form}",
        f"/messages/{out}",
    ):
        response = console.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    assert len(find_testid(console.get("/inbox").text, "inbox-row")) == 2
    assert len(find_testid(console.get("/fragments/flash").text, "flash-banner")) == 1
    assert len(find_testid(console.get("/outbox").text, "outbox-row")) == 1
    may_compose = name in ("duty", "sup")
    assert console.get("/compose").status_code == (200 if may_compose else 403)
    assert ('href="/compose"' in console.get("/inbox").text) == may_compose
    ack_buttons = find_testid(console.get(f"/messages/{flash}").text, "ack-button")
    assert len(ack_buttons) == (1 if may_compose else 0)


def test_every_state_changing_request_needs_the_sessions_csrf_token(pair: Pair) -> None:
    flash = text_to_ru(pair, "Contact", "FLASH")
    duty = pair.console(pair.ru, "duty")
    other = pair.console(pair.ru, "sup")
    without = duty.http.post(f"/messages/{flash}/ack", follow_redirects=False)
    assert without.status_code == 403
    wrong = duty.http.post(
        f"/messages/{flash}/ack", data={"csrf_token": other.csrf}, follow_redirects=False
    )
    assert wrong.status_code == 403
    compose = duty.http.post(
        "/compose", data={"text": "x", "to": US, "precedence": "ROUTINE"}, follow_redirects=False
    )
    assert compose.status_code == 403
    validate = duty.http.post("/compose/validate", data={"text": "x"})
    assert validate.status_code == 403
    assert pair.ru.show(flash)["acknowledged_at"] is None
    assert sent_messages(pair.ru) == []
    assert duty.post(f"/messages/{flash}/ack").status_code == 303  # with the token: done


@pytest.mark.parametrize("name", ["aud", "adm"])
def test_an_auditor_or_administrator_can_neither_compose_nor_acknowledge(
    pair: Pair, name: str
) -> None:
    flash = text_to_ru(pair, "Contact", "FLASH")
    console = pair.console(pair.ru, name)
    page = console.get("/compose")
    assert page.status_code == 403
    assert find_testid(page.text, "forbidden")
    sent = console.post("/compose", {"text": "x", "to": US, "precedence": "ROUTINE"})
    assert sent.status_code == 403
    assert console.htmx("/compose/validate", {"text": "x"}).status_code == 403
    assert console.get("/compose/form-fields?name=LINK_TEST").status_code == 403
    assert console.post(f"/messages/{flash}/ack").status_code == 403
    assert pair.ru.show(flash)["acknowledged_at"] is None
    assert sent_messages(pair.ru) == []
    assert actions(pair.ru, "ack") == []


# Inbox, outbox, FLASH -----------------------------------------------------------------


def test_the_inbox_puts_flash_first_then_the_newest_and_highlights_what_awaits_an_ack(
    pair: Pair,
) -> None:
    first = text_to_ru(pair, "first routine")
    flash = text_to_ru(pair, "the flash", "FLASH")
    second = text_to_ru(pair, "second routine")
    immediate = text_to_ru(pair, "the immediate", "IMMEDIATE")
    console = pair.console(pair.ru, "duty")
    page = console.get("/inbox").text
    assert 'hx-get="/fragments/inbox" hx-trigger="every 1s"' in page
    rows = find_testid(page, "inbox-row")
    ids = [attribute(row, "data-id") for row in rows]
    assert ids == [flash, immediate, second, first]
    precedences = [attribute(row, "data-precedence") for row in rows]
    assert precedences == ["FLASH", "IMMEDIATE", "ROUTINE", "ROUTINE"]
    assert all('class="unacked"' in row for row in rows)
    fragment = console.get("/fragments/inbox").text
    assert "<html" not in fragment
    assert find_testid(fragment, "inbox-row") == rows
    due = pair.ru.show(flash)["ack_due"]
    assert f'data-deadline="{due}"' in fragment

    console.post(f"/messages/{flash}/ack")
    rows = find_testid(console.get("/fragments/inbox").text, "inbox-row")
    assert attribute(rows[-1], "data-id") == flash  # acknowledged: below what still waits
    assert 'class="unacked"' not in rows[-1]
    assert "Acknowledged by duty" in console.get("/fragments/inbox").text


def acknowledge_back(pair: Pair, envelope_id: str, operator: str = "ivan") -> None:
    """RU-GS acknowledges a message from US-EUCOM, and the acknowledgement reaches US-EUCOM."""
    ack = pair.ru.acknowledge(envelope_id, operator=operator)
    deliver(pair.ru, pair.us, ack["id"])


def test_what_awaits_an_acknowledgement_comes_first_then_the_precedence(pair: Pair) -> None:
    flash = text_to_ru(pair, "the flash, acknowledged", "FLASH")
    acknowledge_back(pair, flash)
    routine = text_to_ru(pair, "a routine, waiting")
    immediate = text_to_ru(pair, "an immediate, waiting", "IMMEDIATE")
    priority = text_to_ru(pair, "a priority, acknowledged", "PRIORITY")
    acknowledge_back(pair, priority)

    inbox = find_testid(pair.console(pair.ru, "duty").get("/inbox").text, "inbox-row")
    assert [attribute(row, "data-id") for row in inbox] == [immediate, routine, flash, priority]
    assert ['class="unacked"' in row for row in inbox] == [True, True, False, False]
    # The sender's outbox: what the other side has not acknowledged yet, first.
    outbox = find_testid(pair.console(pair.us, "duty").get("/fragments/outbox").text, "outbox-row")
    assert [attribute(row, "data-id") for row in outbox] == [immediate, routine, flash, priority]
    # The same order for every front end: it is the read model's.
    assert [i["id"] for i in pair.ru.messages("in")] == [immediate, routine, flash, priority]
    assert [i["awaiting_ack"] for i in pair.us.messages("out")] == [True, True, False, False]


def test_a_message_awaiting_its_acknowledgement_is_listed_however_old(pair: Pair) -> None:
    waiting = text_to_ru(pair, "old, still waiting")
    for n in range(3):
        acknowledge_back(pair, text_to_ru(pair, f"newer, acknowledged {n}"))
    listed = pair.ru.messages("in", limit=3)
    assert len(listed) == 4
    assert listed[0]["id"] == waiting
    assert listed[0]["awaiting_ack"]


def test_the_flash_banner_shows_each_unacknowledged_flash_until_it_is_acknowledged(
    pair: Pair,
) -> None:
    text_to_ru(pair, "routine, no banner")
    flash = text_to_ru(pair, "Launch detected <b>now</b>", "FLASH")
    console = pair.console(pair.ru, "aud")  # every role sees it
    banner = console.get("/fragments/flash").text
    assert find_testid(banner, "flash-banner") == [
        f'<div class="flash-banner" data-flash-id="{flash}" data-testid="flash-banner" '
        'role="alert">'
    ]
    assert f"FLASH from {US}" in banner
    assert f'<a href="/messages/{flash}">Open</a>' in banner
    assert "&lt;b&gt;now&lt;/b&gt;" in banner
    assert "<b>now" not in banner
    pair.console(pair.ru, "duty").post(f"/messages/{flash}/ack")
    assert console.get("/fragments/flash").text.strip() == ""


def test_the_outbox_shows_each_recipients_state_and_a_refusal(pair: Pair) -> None:
    # RU-GS does not know LINK_TEST: it answers with a negative receipt.
    definitions, common = load_definitions()
    pair.ru.party.forms = FormRegistry([d for d in definitions if d["name"] != "LINK_TEST"], common)
    refused = pair.us.send(
        [RU],
        kind="form",
        body={"form": default_registry().body("LINK_TEST", {"serial": 1, "text": "ping"})},
        operator="duty",
    )["id"]
    deliver(pair.us, pair.ru, refused)
    pending = pair.us.send([RU], kind="text", body={"text": "pending"}, operator="duty")["id"]
    receipted = pair.us.send([RU], kind="text", body={"text": "receipted"}, operator="duty")
    deliver(pair.us, pair.ru, receipted["id"])
    acked = pair.us.send([RU], kind="text", body={"text": "acked"}, operator="duty")["id"]
    deliver(pair.us, pair.ru, acked)
    pair.ru.acknowledge(acked, operator="ivan")
    ack = next(x for x in pair.ru.messages("out", all_kinds=True) if x["kind"] == "ack")
    deliver(pair.ru, pair.us, ack["id"])

    console = pair.console(pair.us, "duty")
    page = console.get("/outbox").text
    assert 'hx-get="/fragments/outbox" hx-trigger="every 1s"' in page
    states = dict(
        re.findall(
            r'data-party="RU-GS" data-state="([a-z]+)"[^<]*'
            r"<strong>[^<]*</strong>:\s*<span[^>]*>([^<]*)",
            page,
        )
    )
    assert set(states) == {"pending", "receipted", "acknowledged", "refused"}
    assert "Acknowledged by ivan" in states["acknowledged"]
    rows = {attribute(row, "data-id"): row for row in find_testid(page, "outbox-row")}
    assert set(rows) == {refused, pending, receipted["id"], acked}
    assert "REFUSED" in page
    assert "unknown_form" in page
    assert len(find_testid(page, "acknowledged-by")) == 1

    # The receiver's inbox marks it too.
    inbox = pair.console(pair.ru, "duty").get("/inbox").text
    row = next(r for r in find_testid(inbox, "inbox-row") if refused in r)
    assert 'data-precedence="ROUTINE"' in row
    assert find_testid(inbox, "refused")
    message = pair.console(pair.ru, "duty").get(f"/messages/{refused}").text
    assert "negative receipt" in message
    assert "unknown_form" in message


def test_a_service_message_reads_as_words_and_never_awaits_an_acknowledgement(
    pair: Pair,
) -> None:
    proposal = pair.us.create_channel("TALKS", [RU], operator="sup")["proposal"]
    deliver(pair.us, pair.ru, proposal)
    agreement = pair.ru.agree_channel("TALKS", operator="sup")["agreement"]
    deliver(pair.ru, pair.us, agreement)

    for lang, words in (
        ("en", "Channel TALKS proposed, with RU-GS, US-EUCOM"),
        ("ru", "Предложен канал TALKS, участники: RU-GS, US-EUCOM"),
        ("uk", "Запропоновано канал TALKS, учасники: RU-GS, US-EUCOM"),
    ):
        console = pair.console(pair.us, "sup")
        console.post("/language", {"lang": lang})
        outbox = console.get("/outbox").text
        row = re.search(rf'data-id="{proposal}".*?</tr>', outbox, re.S)
        assert row is not None
        assert words in row[0]
        assert "channel_proposal" not in row[0]
        # Receipted, and nothing more is expected of the other side.
        assert 'data-party="RU-GS" data-state="delivered"' in row[0]
        assert "data-deadline" not in row[0]
        message = console.get(f"/messages/{proposal}").text
        assert words in message
        assert find_testid(message, "service-notices")
    console.post("/language", {"lang": "en"})
    assert pair.us.show(proposal)["awaiting_ack"] is False
    assert [i["awaiting_ack"] for i in pair.ru.messages("in") if i["id"] == proposal] == [False]

    inbox = pair.console(pair.us, "ivan").get("/inbox").text  # ivan reads Russian
    row = re.search(rf'data-id="{agreement}".*?</tr>', inbox, re.S)
    assert row is not None
    assert "Канал TALKS согласован" in row[0]
    assert 'class="unacked"' not in row[0]
    assert "channel_agreement" not in row[0]


def test_every_kind_of_service_notice_has_words_in_every_language() -> None:
    from parley.console.pages_messages import NOTICE_TEXT
    from parley.service.notices import NOTICE_KINDS, service_notices

    assert set(NOTICE_TEXT) == set(NOTICE_KINDS)
    body = {
        "service": {
            "card_rotation": {"card": {"version": 2}, "tls_certificate": "…"},
            "revocation": {"revocation": {"party": RU, "version": 1}},
            "something_new": {},
        }
    }
    assert [(n.kind, dict(n.params)) for n in service_notices(body)] == [
        ("card_rotation", {"version": "2"}),
        ("revocation", {"party": RU, "version": "1"}),
        ("unknown", {"what": "something_new"}),
    ]
    assert pages_messages.service_words(body, "uk") == [
        "Оголошено нову ідентифікаційну картку (версія 2)",
        "Відкликано ідентифікаційну картку RU-GS (версія 1)",
        "Службове повідомлення невідомого цьому терміналу виду: something_new",
    ]


# Acknowledging ------------------------------------------------------------------------


def test_an_acknowledgement_is_sent_shown_and_recorded(pair: Pair) -> None:
    flash = text_to_ru(pair, "Contact at 0300", "FLASH")
    console = pair.console(pair.ru, "duty")
    page = console.get(f"/messages/{flash}").text
    assert len(find_testid(page, "ack-button")) == 1
    assert f'action="/messages/{flash}/ack"' in page
    response = console.post(f"/messages/{flash}/ack")
    assert response.status_code == 303
    assert response.headers["location"] == f"/messages/{flash}"
    page = console.get(f"/messages/{flash}").text
    assert find_testid(page, "ack-button") == []
    assert "Acknowledged by duty at" in page
    assert pair.ru.show(flash)["acknowledged_by"] == "duty"
    recorded = actions(pair.ru, "ack")
    assert [(a.operator, a.subject) for a in recorded] == [("duty", flash)]
    ack = next(x for x in pair.ru.messages("out", all_kinds=True) if x["kind"] == "ack")
    assert json.loads(recorded[0].detail) == {"ack": ack["id"]}
    # Twice is refused, and not recorded twice.
    again = console.post(f"/messages/{flash}/ack")
    assert again.status_code == 400
    assert len(actions(pair.ru, "ack")) == 1

    # The sender sees who acknowledged it.
    deliver(pair.ru, pair.us, ack["id"])
    outbox = pair.console(pair.us, "sup").get("/outbox").text
    assert re.search(r'data-testid="acknowledged-by">Acknowledged by duty at ', outbox)


# The message page ---------------------------------------------------------------------


def test_the_message_page_follows_its_receipts_and_acknowledgements(pair: Pair) -> None:
    sent = pair.us.send([RU], kind="text", body={"text": "Confirm"}, operator="sup")["id"]
    sender = pair.console(pair.us, "sup")
    page = sender.get(f"/messages/{sent}").text
    (status,) = find_testid(page, "message-status")
    seen = attribute(status, "data-seen")
    assert f'hx-get="/fragments/messages/{sent}/status?seen={seen}"' in status
    assert 'hx-trigger="every 1s"' in status
    poll = f"/fragments/messages/{sent}/status?seen={seen}"
    assert sender.get(poll).status_code == 204  # nothing new: nothing to swap

    deliver(pair.us, pair.ru, sent)
    receipted = sender.get(poll)
    assert receipted.status_code == 200
    assert 'data-party="RU-GS" data-state="receipted"' in receipted.text
    assert '<div id="evidence-receipts-list" hx-swap-oob="true">' in receipted.text
    (status,) = find_testid(receipted.text, "message-status")
    seen = attribute(status, "data-seen")
    assert sender.get(f"/fragments/messages/{sent}/status?seen={seen}").status_code == 204

    acknowledge_back(pair, sent)
    acked = sender.get(f"/fragments/messages/{sent}/status?seen={seen}")
    assert 'data-state="acknowledged"' in acked.text
    assert "Acknowledged by ivan at" in acked.text

    # The receiver's page: the button goes when another officer acknowledges.
    received = text_to_ru(pair, "Contact")
    duty = pair.console(pair.ru, "duty")
    (status,) = find_testid(duty.get(f"/messages/{received}").text, "message-status")
    assert find_testid(duty.get(f"/messages/{received}").text, "ack-button")
    pair.console(pair.ru, "sup").post(f"/messages/{received}/ack")
    polled = duty.get(
        f"/fragments/messages/{received}/status?seen={attribute(status, 'data-seen')}"
    )
    assert "Acknowledged by sup at" in polled.text
    assert find_testid(polled.text, "ack-button") == []
    assert duty.get("/fragments/messages/nothing/status").status_code == 204


def test_the_message_page_shows_the_original_exactly_and_escaped(pair: Pair) -> None:
    text = '  <script>alert("x")</script>\nSecond line & "quotes"  '
    mid = text_to_ru(pair, text, "IMMEDIATE")
    page = pair.console(pair.ru, "duty").get(f"/messages/{mid}").text
    assert "<script>alert" not in page
    original = re.search(
        r'<div class="original" lang="en" data-testid="original-text">(.*?)</div>', page, re.S
    )
    assert original is not None
    assert original[1] == (
        "  &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;\nSecond line &amp; &#34;quotes&#34;  "
    )


def test_a_form_is_rendered_in_the_readers_language_with_the_signed_data(pair: Pair) -> None:
    mid = pair.us.send([RU], kind="form", body=report_body(), operator="us.op")["id"]
    deliver(pair.us, pair.ru, mid)
    english = pair.console(pair.ru, "duty").get(f"/messages/{mid}").text
    assert '<dl class="form-render" data-testid="form-render">' in english
    assert "Ceasefire violation report" in english
    assert "Time of violation" in english
    assert "February 5, 2026, 14:03 UTC" in english
    assert "48.5° N, 35.1° E" in english
    signed = re.search(r'data-testid="signed-data">(.*?)</pre>', english, re.S)
    assert signed is not None
    assert json.loads(signed[1].replace("&#34;", '"')) == pair.ru.show(mid)["body"]
    russian = pair.console(pair.ru, "ivan").get(f"/messages/{mid}").text
    assert "Время нарушения" in russian
    assert "48,5° с. ш., 35,1° в. д." in russian


class FakeTranslator:
    name = "fake-engine"

    def translate(self, text: str, source: str, target: str) -> str:
        return f"[{source}->{target}] {text}"


def test_a_machine_translation_is_shown_apart_and_labelled(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid = text_to_ru(pair, "Cease fire at <0400>")
    monkeypatch.setattr(pages_messages, "translator_factory", lambda config: FakeTranslator())
    page = pair.console(pair.ru, "ivan").get(f"/messages/{mid}").text
    block = re.search(r'data-testid="machine-translation">(.*?)</div>\s*</div>', page, re.S)
    assert block is not None
    assert "Машинный перевод — не слова отправителя" in block[1]
    assert (
        '<div class="original machine" lang="ru">[en-&gt;ru] Cease fire at &lt;0400&gt;' in block[1]
    )
    # The original stays as written, apart from the translation.
    assert 'data-testid="original-text">Cease fire at &lt;0400&gt;</div>' in page
    # No translation for a reader of the sender's language.
    assert "machine-translation" not in pair.console(pair.ru, "duty").get(f"/messages/{mid}").text


def _signed_record(terminal: Terminal) -> tuple[Any, ...]:
    """Everything signed or logged: the transcript, its entries, the stored rows."""
    transcript = terminal.party.transcript
    with terminal.engine.connect() as conn:
        rows = [
            conn.execute(select(table)).all()
            for table in (m.log_entries, m.messages, m.translations, m.checkpoints, m.receipts)
        ]
    entries = [transcript.entry(i) for i in range(transcript.size)]
    return transcript.size, transcript.root(), entries, rows


@pytest.mark.subprocess  # Apertium's programs
def test_russian_free_text_reads_in_ukrainian_as_a_labelled_machine_translation(
    pair: Pair,
) -> None:
    """Apertium for real, through the console page and the API; nothing signed changes."""
    mid = text_to_ru(pair, "Сегодня хорошая погода. Спасибо за помощь.", lang="ru")
    add_user(pair.ru.engine, "olena", "duty_officer", PASSWORD, now=utc_now())
    with pair.ru.engine.begin() as conn:
        conn.execute(update(m.users).where(m.users.c.name == "olena").values(lang="uk"))
    before = _signed_record(pair.ru)

    page = pair.console(pair.ru, "olena").get(f"/messages/{mid}").text
    block = re.search(r'data-testid="machine-translation">(.*?)</div>\s*</div>', page, re.S)
    assert block is not None, "no machine translation on the page (is apertium-rus-ukr installed?)"
    assert "Машинний переклад — не слова відправника" in block[1]
    assert "(ru→uk, apertium)" in block[1]
    assert (
        '<div class="original machine" lang="uk">Сьогодні хороша погода. Спасибі за допомогу.'
        in block[1]
    )
    assert 'data-testid="original-text">Сегодня хорошая погода. Спасибо за помощь.</div>' in page

    api = TestClient(
        pair.ru_app, base_url="https://testserver", headers={"authorization": "Bearer token"}
    )
    answer = api.get(f"/api/v1/messages/{mid}/machine-translation", params={"lang": "uk"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["machine_translation"] == {
        "label": "Machine translation ru→uk (apertium)",
        "text": "Сьогодні хороша погода. Спасибі за допомогу.",
        "source": "ru",
        "target": "uk",
        "engine": "apertium",
        "senders_words": False,
        "signed": False,
    }
    same = api.get(f"/api/v1/messages/{mid}/machine-translation", params={"lang": "ru"}).json()
    assert (same["machine_translation"], same["untranslated"]) == (None, None)
    refused = api.get(f"/api/v1/messages/{mid}/machine-translation", params={"lang": "de"})
    assert refused.status_code == 400
    # The sender's words, as signed and stored, and the transcript: untouched.
    assert api.get(f"/api/v1/messages/{mid}").json()["body"] == {
        "text": "Сегодня хорошая погода. Спасибо за помощь."
    }
    assert _signed_record(pair.ru) == before


def test_certified_translations_are_shown_with_their_countersignatures(pair: Pair) -> None:
    mid = text_to_ru(pair, "Hold fire until 0400.")
    done = pair.ru.certify_translation(
        mid, target_lang="ru", text="Не открывать огонь до 04:00.", operator="ivan"
    )
    page = pair.console(pair.ru, "duty").get(f"/messages/{mid}").text
    assert len(find_testid(page, "certified-translation")) == 1
    assert "Не открывать огонь до 04:00." in page
    assert "Not countersigned yet" in page
    pair.ru.countersign_translation(done["digest"], operator="sup")
    page = pair.console(pair.ru, "duty").get(f"/messages/{mid}").text
    assert "Countersigned by sup at" in page
    assert "Certified translation into ru by ivan at" in page


def test_the_evidence_is_recomputed_and_shown(pair: Pair) -> None:
    mid = text_to_ru(pair, "evidence please", "PRIORITY")
    evidence = message_evidence(pair.ru, mid)
    assert evidence.signature.state == "ok"
    assert evidence.signature.party == US
    assert evidence.inclusion.state == "ok"  # the receipt carried a checkpoint over it
    assert [(c.party, c.state) for c in evidence.cosigned] == [(US, "pending")]
    assert len(evidence.digest) == 64

    witness(pair.ru, by=pair.us)
    evidence = message_evidence(pair.ru, mid)
    assert [(c.party, c.state) for c in evidence.cosigned] == [(US, "ok")]
    assert evidence.cosigned[0].size is not None
    assert evidence.cosigned[0].size > evidence.log_index
    page = pair.console(pair.ru, "aud").get(f"/messages/{mid}").text
    for testid in ("evidence-signature", "evidence-inclusion", "evidence-cosigned"):
        (tag,) = find_testid(page, testid)
        assert 'data-state="ok"' in tag, testid

    # Sent, not yet under any checkpoint of the sender's: pending, not assumed.
    out = pair.us.send([RU], kind="text", body={"text": "fresh"}, operator="duty")["id"]
    fresh = message_evidence(pair.us, out)
    assert fresh.signature.state == "ok"
    assert fresh.signature.party == US
    assert fresh.inclusion.state == "pending"
    assert [c.state for c in fresh.cosigned] == ["pending"]


def test_a_changed_byte_in_the_log_entry_breaks_the_evidence(pair: Pair) -> None:
    mid = text_to_ru(pair, "do not tamper", "PRIORITY")
    witness(pair.ru, by=pair.us)
    index = pair.ru.show(mid)["log_index"]
    with pair.ru.engine.begin() as conn:
        entry = bytearray(
            conn.execute(
                select(m.log_entries.c.entry).where(m.log_entries.c.idx == index)
            ).scalar_one()
        )
        at = entry.index(b'"sig":"') + len(b'"sig":"') + 5
        entry[at] = ord("A") if entry[at] != ord("A") else ord("B")
        conn.execute(
            update(m.log_entries).where(m.log_entries.c.idx == index).values(entry=bytes(entry))
        )
    evidence = message_evidence(pair.ru, mid)
    assert evidence.signature.state == "bad"
    assert evidence.inclusion.state == "bad"
    assert [c.state for c in evidence.cosigned] == ["bad"]
    # The page shows no part of a message whose entry no longer hashes to the verified log.
    page = pair.console(pair.ru, "duty").get(f"/messages/{mid}").text
    (tag,) = find_testid(page, "message")
    assert 'data-verified="false"' in tag
    assert f"log entry {index} does not hash to the verified log" in page
    assert "do not tamper" not in page


def test_the_evidence_says_what_it_proves_about_the_text_shown(pair: Pair) -> None:
    mid = text_to_ru(pair, "the bridge is open", "PRIORITY")
    witness(pair.ru, by=pair.us)
    page = pair.console(pair.ru, "aud").get(f"/messages/{mid}").text
    (statement,) = re.findall(r'data-testid="evidence-statement">(.*?)</p>', page, re.S)
    statement = " ".join(statement.split())
    fingerprint = pair.us.identity.card.fingerprint
    index = pair.ru.show(mid)["log_index"]
    assert f"The text above is the content of envelope {mid}" in statement
    assert f"{US} signed with the key of its pinned card (fingerprint {fingerprint})" in statement
    assert f"checked against it. It is entry {index} of this terminal" in statement
    assert f"entries this terminal signed. {US} cosigned that log" in statement


@pytest.mark.parametrize(
    ("column", "value"),
    [("body", '{"text":"the bridge is closed"}'), ("precedence", "FLASH"), ("operator", "x")],
)
def test_a_changed_row_is_shown_as_not_verifying_never_with_the_changed_value(
    pair: Pair, column: str, value: str
) -> None:
    mid = text_to_ru(pair, "the bridge is open", "PRIORITY")
    with pair.ru.engine.begin() as conn:
        conn.execute(
            update(m.messages).where(m.messages.c.envelope_id == mid).values({column: value})
        )
    client = pair.console(pair.ru, "duty")
    page = client.get(f"/messages/{mid}").text
    assert f"Does not verify: {column} differs from the signed" in page
    assert "the bridge is" not in page
    rows = client.get("/fragments/inbox").text
    (tag,) = [t for t in find_testid(rows, "inbox-row") if mid in t]
    assert 'data-verified="false"' in tag
    assert f"Does not verify: {column} differs" in rows
    assert "the bridge is" not in rows
    assert mid not in client.get("/fragments/flash").text


# Composing ----------------------------------------------------------------------------


def test_free_text_is_sent_and_recorded(pair: Pair) -> None:
    duty = pair.console(pair.us, "duty")
    page = duty.get("/compose").text
    for testid in (
        "compose-text",
        "compose-form-select",
        "compose-precedence",
        f"compose-recipient-{RU}",
        "compose-send",
    ):
        assert find_testid(page, testid), testid
    response = duty.post(
        "/compose",
        {"text": "Line one\r\nLine two", "to": RU, "precedence": "IMMEDIATE", "exercise": "1"},
    )
    assert response.status_code == 303
    (message,) = sent_messages(pair.us)
    assert response.headers["location"] == f"/messages/{message['id']}"
    assert message["body"] == {"text": "Line one\nLine two"}
    assert message["precedence"] == "IMMEDIATE"
    assert message["exercise"] is True
    assert message["operator"] == "duty"
    assert message["recipients"] == [RU]
    (recorded,) = actions(pair.us, "send")
    assert (recorded.operator, recorded.subject) == ("duty", message["id"])
    # It reaches the other side as written.
    deliver(pair.us, pair.ru, message["id"])
    assert pair.ru.show(message["id"])["body"] == {"text": "Line one\nLine two"}


def test_a_form_is_composed_from_inputs_named_by_json_pointer(pair: Pair) -> None:
    duty = pair.console(pair.us, "duty")
    select_html = find_testid(duty.get("/compose").text, "compose-form-select")[0]
    assert 'hx-get="/compose/form-fields"' in select_html
    fields = duty.get("/compose/form-fields?name=CEASEFIRE_VIOLATION_REPORT").text
    for name in ("/time", "/position/latitude", "/weapons", "/effects/killed", "/evidence/0/kind"):
        assert f'name="{name}"' in fields, name
    grown = duty.htmx(
        "/compose/form-fields",
        {
            "form": "CEASEFIRE_VIOLATION_REPORT",
            "add_item": "/evidence",
            "/evidence/0/kind": "photo",
        },
    ).text
    assert 'name="/evidence/1/kind"' in grown
    assert '<option value="photo" selected>' in grown
    response = duty.post(
        "/compose",
        {
            "form": "CEASEFIRE_VIOLATION_REPORT",
            "to": RU,
            "precedence": "PRIORITY",
            "/time": "2026-02-05T14:03",
            "/position/latitude": "48.5",
            "/position/longitude": "35.1",
            "/weapons": ["mortar", "drone"],
            "/effects/killed": "2",
            "/evidence/0/kind": "photo",
            "/evidence/0/reference": "IMG-1",
            "/evidence/1/kind": "",
            "/evidence/1/reference": "",
        },
    )
    assert response.status_code == 303, response.text
    (message,) = sent_messages(pair.us)
    assert message["body"]["form"]["data"] == {
        "time": "2026-02-05T14:03:00Z",
        "position": {"latitude": "48.5", "longitude": "35.1"},
        "weapons": ["mortar", "drone"],
        "effects": {"killed": 2},
        "evidence": [{"kind": "photo", "reference": "IMG-1"}],
    }
    deliver(pair.us, pair.ru, message["id"])
    assert pair.ru.show(message["id"])["rejection"] is None


def test_compose_shows_each_error_next_to_its_field_as_typed_and_on_sending(pair: Pair) -> None:
    duty = pair.console(pair.us, "duty")
    typed = {
        "form": "CEASEFIRE_VIOLATION_REPORT",
        "precedence": "ROUTINE",
        "/time": "yesterday",
        "/position/latitude": "48.5",
        "/position/longitude": "far east",
        "/effects/killed": "two",
        "/evidence/0/kind": "",
        "/evidence/0/reference": "",
        "/evidence/1/kind": "",
        "/evidence/1/reference": "IMG-7",
    }
    shown = [
        "to",
        "/time",
        "/position/longitude",
        "/weapons",
        "/effects/killed",
        "/evidence/1/kind",
    ]

    def field_errors(html: str) -> dict[str, str]:
        return dict(re.findall(r'data-testid="field-error" data-field="([^"]+)">([^<]+)<', html))

    errors = {
        "to": "Choose at least one recipient or a channel.",
        "/time": "Enter a time in UTC as YYYY-MM-DDTHH:MM:SSZ.",
        "/position/longitude": "Not in the expected form. Expected: Decimal degrees, "
        "east positive, west negative, from −180 to 180.",
        "/weapons": "Required.",
        "/effects/killed": "Enter a whole number.",
        "/evidence/1/kind": "Required.",  # the empty item 0 is left out, item 1 keeps its place
    }
    # While typing, only the inputs the operator changed show their errors: nothing
    # before anything is touched, then the time and the longitude once typed in.
    untouched = duty.htmx("/compose/validate", {**typed, "_shown": shown})
    assert untouched.status_code == 200
    assert field_errors(untouched.text) == {}
    # Every error place the page has is refreshed (cleared or filled), out of band.
    assert untouched.text.count('hx-swap-oob="true"') == len(shown)
    answer = duty.htmx(
        "/compose/validate",
        {**typed, "_shown": shown, "_touched": ["/time", "/position/longitude", "lang"]},
    )
    assert field_errors(answer.text) == {k: errors[k] for k in ("/time", "/position/longitude")}
    # The recipients count as touched when the channel was chosen; an item's error
    # when that item's input was.
    answer = duty.htmx(
        "/compose/validate",
        {**typed, "_shown": shown, "_touched": ["channel", "/evidence/1/kind"]},
    )
    assert field_errors(answer.text) == {k: errors[k] for k in ("to", "/evidence/1/kind")}
    # The form data typed as JSON stands for every input of the form.
    as_json = duty.htmx(
        "/compose/validate",
        {
            "form": "CEASEFIRE_VIOLATION_REPORT",
            "json_data": '{"time": "yesterday"}',
            "_shown": shown,
            "_touched": ["json_data"],
        },
    )
    assert set(field_errors(as_json.text)) == {"/time", "/weapons"}
    # Once a send was refused the page marks everything touched ("*").
    answer = duty.htmx("/compose/validate", {**typed, "_shown": shown, "_touched": "*"})
    assert field_errors(answer.text) == errors

    page = duty.post("/compose", typed)
    assert page.status_code == 200
    assert field_errors(page.text) == errors  # sending shows every error, touched or not
    # with a summary naming each field, linked to its error, and the page marked
    # so that typing on keeps them all in view
    summary = re.search(r'data-testid="error-summary">(.*?)</div>', page.text, re.S)
    assert summary is not None
    assert "Not sent: 6 fields need correcting." in summary[1]
    assert re.findall(r'<li><a href="#(fe-[0-9a-f]+)">', summary[1]) == [
        error_id(key) for key in errors
    ]
    assert ">Longitude</a>: Not in the expected form." in summary[1]
    assert '<input type="hidden" name="_touched" value="*">' in page.text
    assert 'name="/position/latitude" value="48.5"' in page.text  # what was typed is kept
    assert 'name="/position/longitude" value="far east"' in page.text
    assert '<option value="CEASEFIRE_VIOLATION_REPORT" selected>' in page.text
    assert sent_messages(pair.us) == []
    assert actions(pair.us, "send") == []

    text_errors = duty.post("/compose", {"text": "   ", "to": RU, "precedence": "ROUTINE"}).text
    assert re.findall(r'data-field="([^"]+)"', text_errors) == ["text"]


def test_validation_errors_are_in_the_operators_language(pair: Pair) -> None:
    ivan = pair.console(pair.us, "ivan")
    answer = ivan.htmx(
        "/compose/validate",
        {
            "form": "LINK_TEST",
            "to": RU,
            "/serial": "один",
            "_shown": ["/serial", "/text"],
            "_touched": ["/serial", "/text"],
        },
    ).text
    errors = dict(re.findall(r'data-field="([^"]+)">([^<]+)<', answer))
    assert errors == {"/serial": "Введите целое число.", "/text": "Обязательное поле."}


def test_a_duty_officers_flash_is_held_until_a_supervisor_releases_it(pair: Pair) -> None:
    duty = pair.console(pair.us, "duty")
    response = duty.post("/compose", {"text": "Missile launch", "to": RU, "precedence": "FLASH"})
    assert response.status_code == 303
    assert response.headers["location"] == "/outbox"
    assert sent_messages(pair.us) == []  # nothing sealed, nothing queued
    (row,) = held(pair.us)
    assert (row.state, row.operator, row.envelope_id) == ("held", "duty", None)
    assert json.loads(row.request)["body"] == {"text": "Missile launch"}
    assert [a.operator for a in actions(pair.us, "hold")] == ["duty"]

    page = duty.get("/outbox").text
    (held_row,) = find_testid(page, "held-row")
    assert f'data-held-id="{row.id}"' in held_row
    assert "awaiting release" in page
    assert find_testid(page, "release-button") == []  # not for the author
    assert find_testid(page, "cancel-button")
    assert duty.post(f"/outbox/held/{row.id}/release").status_code == 403
    assert pair.console(pair.us, "duty2").post(f"/outbox/held/{row.id}/cancel").status_code == 403

    sup = pair.console(pair.us, "sup")
    assert len(find_testid(sup.get("/fragments/outbox").text, "release-button")) == 1
    released = sup.post(f"/outbox/held/{row.id}/release")
    assert released.status_code == 303
    (message,) = sent_messages(pair.us)
    assert message["precedence"] == "FLASH"
    assert message["operator"] == "duty"
    (row,) = held(pair.us)
    assert (row.state, row.decided_by, row.envelope_id) == ("released", "sup", message["id"])
    (recorded,) = actions(pair.us, "release")
    assert (recorded.operator, recorded.subject) == ("sup", message["id"])
    page = sup.get("/outbox").text
    assert find_testid(page, "held-row") == []
    assert len(find_testid(page, "outbox-row")) == 1
    # Released once only.
    assert sup.post(f"/outbox/held/{row.id}/release").status_code == 400
    assert len(sent_messages(pair.us)) == 1
    # It reaches the other side as a FLASH, with its banner.
    deliver(pair.us, pair.ru, message["id"])
    assert find_testid(pair.console(pair.ru, "aud").get("/fragments/flash").text, "flash-banner")


def test_a_held_flash_can_be_cancelled_by_its_author_or_a_supervisor(pair: Pair) -> None:
    duty = pair.console(pair.us, "duty")
    for text in ("first", "second"):
        duty.post("/compose", {"text": text, "to": RU, "precedence": "FLASH"})
    first, second = held(pair.us)
    assert duty.post(f"/outbox/held/{first.id}/cancel").status_code == 303
    assert pair.console(pair.us, "sup").post(f"/outbox/held/{second.id}/cancel").status_code == 303
    assert [(r.state, r.decided_by) for r in held(pair.us)] == [
        ("cancelled", "duty"),
        ("cancelled", "sup"),
    ]
    assert [a.operator for a in actions(pair.us, "cancel")] == ["duty", "sup"]
    assert pair.console(pair.us, "sup").post(f"/outbox/held/{first.id}/release").status_code == 400
    assert sent_messages(pair.us) == []


def test_a_supervisors_flash_is_sent_at_once(pair: Pair) -> None:
    sup = pair.console(pair.us, "sup")
    response = sup.post("/compose", {"text": "Stand down", "to": RU, "precedence": "FLASH"})
    assert response.status_code == 303
    (message,) = sent_messages(pair.us)
    assert response.headers["location"] == f"/messages/{message['id']}"
    assert message["precedence"] == "FLASH"
    assert held(pair.us) == []


# Languages ----------------------------------------------------------------------------


def test_the_pages_are_in_russian_for_an_operator_who_reads_russian(pair: Pair) -> None:
    flash = text_to_ru(pair, "Contact", "FLASH")
    ivan = pair.console(pair.ru, "ivan")
    inbox = ivan.get("/inbox").text
    assert '<html lang="ru">' in inbox
    assert "Входящие" in inbox
    assert "Срочность" in inbox
    assert "Подтвердить в течение" in inbox
    assert ">FLASH<" in inbox  # the precedence codes are not translated
    assert "FLASH от US-EUCOM" in ivan.get("/fragments/flash").text
    message = ivan.get(f"/messages/{flash}").text
    assert "Подтвердить получение" in message
    assert "Доказательства" in message
    assert "Угроза жизни или риск вооружённого конфликта" in message
    compose = ivan.get("/compose").text
    assert "Новое сообщение" in compose
    assert "Свободный текст" in compose
    definition = default_registry().latest("CEASEFIRE_VIOLATION_REPORT")
    assert definition is not None
    title = definition.title["ru"]
    assert f'<option value="CEASEFIRE_VIOLATION_REPORT">{title}</option>' in compose
    assert "Исходящие" in ivan.get("/outbox").text


# The form inputs, without the web -----------------------------------------------------


def test_form_inputs_cover_the_shapes_of_the_shipped_forms() -> None:
    registry = default_registry()
    for definition in registry:
        nodes = form_nodes(registry, definition.name, definition.version, "ru")
        widgets = {n.widget for node in nodes for n in node.walk()}
        assert widgets, definition.name
        # Nothing typed yet: the data is empty, and the schema names what is required.
        collected = collect_form_data(nodes)
        assert collected.errors == {}
        errors = validate_form_data(
            registry, definition.name, definition.version, collected.data, collected.kept
        )
        required = [n.pointer for n in nodes if n.required]
        assert sorted(p for p in errors if p.count("/") == 1) == sorted(required), definition.name


def test_each_error_says_what_is_expected_in_the_operators_language() -> None:
    registry = default_registry()
    values = {
        "/position/latitude": ["91"],
        "/effects/killed": ["-3"],
    }
    for lang, latitude, killed in [
        ("en", "Expected: Decimal degrees, north positive", "A number from 0 to 100,000."),
        ("ru", "Ожидается: Десятичные градусы, северная", "Число от 0 до 100\u00a0000."),
        ("uk", "Очікується: Десяткові градуси, північна", "Число від 0 до 100\u00a0000."),
    ]:
        restore = i18n.use(lang)
        try:
            nodes = form_nodes(registry, "CEASEFIRE_VIOLATION_REPORT", 1, lang, values)
            collected = collect_form_data(nodes)
            errors = validate_form_data(
                registry, "CEASEFIRE_VIOLATION_REPORT", 1, collected.data, collected.kept
            )
        finally:
            restore()
        assert latitude in errors["/position/latitude"], (lang, errors)
        assert errors["/effects/killed"] == killed, lang


def _patterned(schema: object, path: str = "") -> Iterator[tuple[str, dict[str, object]]]:
    if isinstance(schema, dict):
        if "pattern" in schema:
            yield path, schema
        for key, value in schema.items():
            yield from _patterned(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _patterned(value, f"{path}/{index}")


def test_every_patterned_field_says_in_words_what_it_takes() -> None:
    """A pattern error quotes the field's help: every patterned field has one in each language."""
    definitions, common = load_definitions()
    found = [
        (f"{d['name']}{path}", schema)
        for d in [*definitions, {"name": "common", "schema": common}]
        for path, schema in _patterned(d["schema"])
    ]
    assert len(found) >= 8
    for where, schema in found:
        help_text = schema.get("x-help")
        assert isinstance(help_text, dict), where
        assert all(help_text.get(lang) for lang in ("en", "ru", "uk")), where


def test_a_list_of_items_keeps_the_place_of_each_item_in_its_errors() -> None:
    registry = default_registry()
    values = {
        "/exchange_id": ["EX-1"],
        "/revision": ["1"],
        "/persons/0/ref": [""],
        "/persons/1/ref": ["P-2"],
        "/persons/1/name/full_name": ["Олексій Шевченко"],
        "/persons/2/ref": ["P-3"],
    }
    nodes = form_nodes(registry, "PRISONER_EXCHANGE_LIST", 1, "en", values)
    collected = collect_form_data(nodes)
    assert collected.kept == {"/persons": [1, 2]}
    assert [p["ref"] for p in collected.data["persons"]] == ["P-2", "P-3"]
    errors = validate_form_data(
        registry, "PRISONER_EXCHANGE_LIST", 1, collected.data, collected.kept
    )
    assert "/persons/1/name/script" in errors
    assert "/persons/2/name" in errors
    assert not any(p.startswith("/persons/0") for p in errors)


# Two operators at once (a race once found in Terminal.acknowledge) ---------------------


class StagedLock:
    """The terminal's lock, with two threads' turns forced into one interleaving.

    ``Terminal.acknowledge`` once checked "not yet acknowledged" under the
    lock, released it, and took it again to seal the ack. Here thread
    ``second`` takes the lock as soon as ``first`` first lets it go: with the
    check and the sealing under one hold, it must find the message
    acknowledged.
    """

    def __init__(self) -> None:
        self.inner = threading.RLock()
        self.taken: dict[str, int] = {}
        self.first_checked = threading.Event()
        self.second_checked = threading.Event()

    def __enter__(self) -> None:
        me = threading.current_thread().name
        self.taken[me] = self.taken.get(me, 0) + 1
        if me == "second" and self.taken[me] == 1:
            self.first_checked.wait(10)
        if me == "first" and self.taken[me] == 2:
            self.second_checked.wait(10)
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()
        me = threading.current_thread().name
        if self.taken.get(me) == 1:
            (self.first_checked if me == "first" else self.second_checked).set()


def test_error_pages_and_refusals_are_in_the_operators_language(pair: Pair) -> None:
    ivan = pair.console(pair.ru, "ivan")  # reads Russian
    flash = text_to_ru(pair, "Contact", "FLASH")
    pair.console(pair.ru, "duty").post(f"/messages/{flash}/ack")
    # Acknowledged by another officer a moment before: said in Russian, with who did.
    late = ivan.post(f"/messages/{flash}/ack")
    assert late.status_code == 400
    (error,) = re.findall(r'data-testid="error" data-code="([a-z_]+)">([^<]*)<', late.text)
    assert error == ("already_acknowledged", "Получение этого сообщения уже подтвердил duty.")
    assert "<h1>Отказано</h1>" in late.text
    # The English record stays, marked as such, behind a summary in Russian.
    assert re.search(r'<p lang="en"><code>already_acknowledged</code>: message ', late.text)
    for path, text in (
        ("/messages/nothing-here", "Такого сообщения на этом терминале нет."),
        ("/no/such/page", "Такой страницы на этом терминале нет."),
        ("/transcript?cp=many", "Запрос не распознан: обновите страницу и повторите попытку."),
    ):
        response = ivan.get(path)
        assert response.status_code in (400, 404), path
        assert f">{text}</p>" in response.text, path
        assert '<html lang="ru">' in response.text
    # A form from elsewhere (no CSRF token): refused in Russian too.
    forged = ivan.http.post("/language", data={"lang": "en"}, follow_redirects=False)
    assert forged.status_code == 403
    assert "Запрос отклонён: он отправлен не со страницы этой консоли." in forged.text
    # The operator API keeps answering JSON, with the values to word it.
    api = TestClient(pair.ru_app, base_url="https://testserver")
    answer = api.post(
        f"/api/v1/messages/{flash}/ack",
        headers={"Authorization": "Bearer token", "X-Parley-Operator": "col.x"},
    )
    assert answer.status_code == 400
    assert answer.json()["params"] == {"operator": "duty"}
    assert api.get("/api/v1/nothing").json() == {"detail": "Not Found"}


def test_refusal_reasons_and_alarms_are_in_the_operators_language(pair: Pair) -> None:
    definitions, common = load_definitions()
    pair.ru.party.forms = FormRegistry([d for d in definitions if d["name"] != "LINK_TEST"], common)
    refused = pair.us.send(
        [RU],
        kind="form",
        body={"form": default_registry().body("LINK_TEST", {"serial": 1, "text": "ping"})},
        operator="duty",
    )["id"]
    deliver(pair.us, pair.ru, refused)
    words = "Форма или её версия неизвестна принимающему терминалу."
    outbox = pair.console(pair.us, "ivan").get("/outbox").text
    row = re.search(rf'data-id="{refused}".*?</tr>', outbox, re.S)
    assert row is not None
    assert words in row[0]
    inbox = pair.console(pair.ru, "ivan").get("/inbox").text
    assert words in inbox
    message = pair.console(pair.ru, "ivan").get(f"/messages/{refused}").text
    assert words in message
    # The alarms the refusal raised, on both sides, in Russian.
    alarms = pair.console(pair.us, "ivan").get("/alarms").text
    said = re.findall(r'data-testid="alarm-text">([^<]*)<', alarms)
    assert f"Другая сторона отклонила сообщение {refused} и ответила отрицательной квитанцией." in [
        text.strip() for text in said
    ]
    handover = pair.console(pair.ru, "ivan").get("/handover").text
    assert f"Этот терминал отклонил содержание сообщения {refused}" in handover


def test_a_compose_refused_by_the_terminal_says_why_in_the_operators_language(
    pair: Pair,
) -> None:
    pair.us.freeze("this terminal's log holds 3 entries but RU-GS saw checkpoint 9")
    ivan = pair.console(pair.us, "ivan")
    refused = ivan.post("/compose", {"to": RU, "precedence": "ROUTINE", "text": "Agenda"})
    assert refused.status_code == 200
    (problem,) = re.findall(r'data-testid="compose-error">([^<]+)<', refused.text)
    assert problem == (
        "Этот терминал заморожен: его журнал отстаёт от того, что видели другие стороны, "
        "и до восстановления он ничего не подписывает."
    )
    assert "Технические подробности в записи терминала (на английском)" in refused.text
    pair.us.thaw()


def test_two_operators_acknowledging_at_once_send_one_ack(pair: Pair) -> None:
    flash = text_to_ru(pair, "Contact", "FLASH")
    pair.ru.lock = StagedLock()  # type: ignore[assignment]
    outcomes: dict[str, object] = {}

    def ack(name: str) -> None:
        try:
            outcomes[name] = pair.ru.acknowledge(flash, operator=name)
        except UsageError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=ack, args=(n,), name=n) for n in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    acks = [x for x in pair.ru.messages("out", all_kinds=True) if x["kind"] == "ack"]
    assert len(acks) == 1, f"{len(acks)} acks sent; acknowledged_by {pair.ru.show(flash)}"
    assert sum(isinstance(o, UsageError) for o in outcomes.values()) == 1


def test_a_frozen_terminal_says_so_on_every_page_and_refuses_to_send(pair: Pair) -> None:
    """Its log is behind what its peers saw: the officer is told in plain words, in
    their language, and a send is refused with the reason, not lost."""
    duty = pair.console(pair.us, "duty")
    assert 'data-testid="frozen"' not in duty.get("/inbox").text
    pair.us.freeze("this terminal's log holds 3 entries but RU-GS saw checkpoint 9")
    page = duty.get("/inbox").text
    assert "This terminal is frozen" in page
    assert "RU-GS saw checkpoint 9" in page
    ivan = pair.console(pair.us, "ivan")
    assert "Этот терминал заморожен" in ivan.get("/outbox").text
    refused = duty.post("/compose", {"to": RU, "precedence": "ROUTINE", "text": "hello"})
    assert refused.status_code == 200  # the form again, with the reason; nothing sealed
    (problem,) = re.findall(r'data-testid="compose-error">([^<]+)<', refused.text)
    assert problem.startswith("This terminal is frozen")
    detail = re.search(r'data-testid="error-detail">.*?</details>', refused.text, re.S)
    assert detail is not None
    assert "RU-GS saw checkpoint 9" in detail[0]
    assert pair.us.messages("out") == []
    pair.us.thaw()
    assert 'data-testid="frozen"' not in duty.get("/inbox").text
