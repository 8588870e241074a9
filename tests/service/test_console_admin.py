"""The console pages for the rest of the watch, against real terminals in one process.

Two terminals (RU-GS and UA-GS) are made by ``make_network`` and opened here;
envelopes and receipts are carried between them by hand (``_pump``), so every
page reads what real traffic wrote. Each operator has a ``TestClient`` of its
own on ``https://testserver`` (the session cookie is ``Secure``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from babel.messages.pofile import read_po
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from jinja2.ext import babel_extract
from sqlalchemy import func, insert, select, update

from parley import merkle
from parley.console import i18n, pages_admin, texts
from parley.console.api import create_console_app
from parley.console.web import PERMISSIONS
from parley.core.canonical import canonical_bytes
from parley.core.checkpoint import verify_checkpoint
from parley.core.identity import IdentityCard
from parley.errors import SchemaViolation
from parley.forms import default_registry
from parley.service import users
from parley.service.evidence import evidence_bundle
from parley.service.exchanges import exchange_state
from parley.service.terminal import Terminal
from parley.service.users import add_user
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

PARTIES = [("RU-GS", "General Staff (RU)"), ("UA-GS", "General Staff (UA)")]
PASSWORD = "correct horse battery staple"
ROLES = {
    "duty1": "duty_officer",
    "duty2": "duty_officer",
    "sup": "supervisor",
    "aud": "auditor",
    "adm": "admin",
}
ROLE_USER = {"duty_officer": "duty1", "supervisor": "sup", "auditor": "aud", "admin": "adm"}
PAGES = ["/channels", "/links", "/links/state", "/transcript", "/exchanges", "/alarms", "/handover"]
TEMPLATES = Path(pages_admin.__file__).parent / "templates"
LOCALE = Path(pages_admin.__file__).parent / "locale"
MY_TEMPLATES = [
    "channels.html",
    "links.html",
    "transcript.html",
    "exchanges.html",
    "exchange.html",
    "alarms.html",
    "handover.html",
    *(f"fragments/{p.name}" for p in sorted((TEMPLATES / "fragments").glob("admin_*.html"))),
]


# Fixtures and helpers ------------------------------------------------------------


class Operator:
    """One logged-in operator's browser."""

    def __init__(self, app: FastAPI, name: str) -> None:
        self.name = name
        self.client = TestClient(app, base_url="https://testserver")
        login = self.client.post(
            "/login", data={"name": name, "password": PASSWORD}, follow_redirects=False
        )
        assert login.status_code == 303, login.text
        self.csrf = _csrf(self.get("/channels").text)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        response: Response = self.client.get(path, headers=headers, follow_redirects=False)
        return response

    def post(
        self, path: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        response: Response = self.client.post(
            path,
            data={"csrf_token": self.csrf, **(data or {})},
            headers=headers,
            follow_redirects=False,
        )
        return response


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found[1]


@dataclass
class World:
    ru: Terminal
    ua: Terminal
    app: FastAPI
    operators: dict[str, Operator] = field(default_factory=dict)

    def as_(self, name: str) -> Operator:
        if name not in self.operators:
            self.operators[name] = Operator(self.app, name)
        return self.operators[name]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # Argon2id with the least cost: these accounts guard nothing (as the test keys' scrypt).
    monkeypatch.setattr(
        users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    terminals = make_network(tmp_path, PARTIES)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    ua = Terminal.open(terminals["UA-GS"].data, PASSPHRASE)
    for name, role in ROLES.items():
        add_user(ru.engine, name, role, PASSWORD, now=ru.clock())
    app = create_console_app(ru, "console-token-" + "x" * 20, hosts={"testserver"})
    yield World(ru, ua, app)
    ru.engine.dispose()
    ua.engine.dispose()


def _pump(sender: Terminal, receiver: Terminal) -> int:
    """Carry every pending envelope from ``sender`` to ``receiver`` and the receipts back."""
    moved = 0
    for item in sender.due_deliveries(receiver.me, limit=1000):
        receipt = receiver.receive_envelope(item["raw"], tls_party=sender.me)
        sender.receive_receipt(receipt, peer=receiver.me)
        moved += 1
    return moved


def _witness(owner: Terminal, witness: Terminal) -> None:
    """``witness`` cosigns ``owner``'s log; the cosignature goes back to ``owner``."""
    offer = owner.offer_checkpoint(witness.checkpoint_request(owner.me))
    owner.accept_cosignature(
        witness.witness(owner.me, offer, owner.log_leaves), tls_party=witness.me
    )


def _actions(terminal: Terminal, action: str) -> list[Any]:
    with terminal.engine.connect() as conn:
        return list(
            conn.execute(
                select(m.operator_actions)
                .where(m.operator_actions.c.action == action)
                .order_by(m.operator_actions.c.id)
            ).all()
        )


def _rows(html: str, testid: str) -> list[str]:
    """The opening tags of the elements with ``data-testid=testid``."""
    return re.findall(rf'<[a-z]+[^>]*data-testid="{re.escape(testid)}"[^>]*>', html)


def _attr(tag: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', tag)
    assert found, f"{name} not in {tag}"
    return found[1]


def _element(html: str, testid: str) -> str:
    """The first element with ``data-testid=testid``, up to its closing tag (no nesting)."""
    found = re.search(
        rf'<([a-z0-9]+)[^>]*data-testid="{re.escape(testid)}"[^>]*>.*?</\1>', html, re.S
    )
    assert found, f"no element {testid}"
    return found[0]


def _send_text(sender: Terminal, to: str, text: str, precedence: str = "ROUTINE") -> str:
    result = sender.send(
        [to], kind="text", body={"text": text}, operator="o", precedence=precedence
    )
    return str(result["id"])


def _assert_csp_clean(html: str) -> None:
    """Nothing the Content-Security-Policy would block, and no event-handler attributes."""
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script>"
    assert not re.search(r"\sstyle\s*=", html), "style= attribute"
    assert not re.search(r"<style", html), "<style> element"
    assert not re.search(r"\son[a-z]+\s*=", html), "on…= handler"
    assert "hx-on" not in html


# Pages for every role -------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(ROLE_USER))
def test_every_page_renders_for_every_role(world: World, role: str) -> None:
    operator = world.as_(ROLE_USER[role])
    for path in PAGES:
        response = operator.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        _assert_csp_clean(response.text)
    channels = operator.get("/channels").text
    assert len(_rows(channels, "channel-row")) == 1  # the bilateral channel of the pinned peer
    assert ("propose-button" in channels) is (role == "supervisor")
    links = operator.get("/links").text
    assert len(_rows(links, "link-row")) == 1
    # No sample yet: the link's chart says so, and draws no empty axis.
    assert len(_rows(links, "rtt-figure")) == 1
    assert _rows(links, "rtt-chart") == []
    assert "no samples in the last 24 hours" in links
    assert ("test-links-button" in links) is (role in ("supervisor", "admin"))
    transcript = operator.get("/transcript").text
    assert "verify-button" in transcript  # every role may verify
    assert ("export-link" in transcript) is (role in ("supervisor", "auditor"))
    handover = operator.get("/handover").text
    assert "handover-open" in handover
    assert ("sign-off-button" in handover) is (role in ("duty_officer", "supervisor"))


def test_pages_need_a_session(world: World) -> None:
    anonymous = TestClient(world.app, base_url="https://testserver")
    for path in PAGES:
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
    polled = anonymous.get("/links/state", headers={"HX-Request": "true"}, follow_redirects=False)
    assert polled.status_code == 204
    assert polled.headers["hx-redirect"] == "/login"
    refused = anonymous.post("/handover/sign-off", data={"note": "x"}, follow_redirects=False)
    assert refused.status_code == 303
    assert _count(world.ru, m.handovers) == 0


def _count(terminal: Terminal, table: Any) -> int:
    with terminal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# CSRF and roles --------------------------------------------------------------------

POSTS: list[tuple[str, dict[str, Any]]] = [
    ("/channels", {"name": "TALKS", "members": "UA-GS"}),
    ("/channels/TALKS/agree", {}),
    ("/links/test", {}),
    ("/transcript/verify", {}),
    ("/alarms/1/clear", {}),
    ("/handover/sign-off", {"note": "quiet night"}),
    ("/handover/1/accept", {}),
]


@pytest.mark.parametrize(("path", "data"), POSTS)
def test_every_change_needs_the_csrf_token(world: World, path: str, data: dict[str, Any]) -> None:
    world.ru.raise_alarm("test", "warning", "S", "an alarm to clear")
    supervisor = world.as_("sup")
    before = _count(world.ru, m.operator_actions)
    missing = supervisor.client.post(path, data=data, follow_redirects=False)
    assert missing.status_code == 403
    wrong = supervisor.client.post(
        path, data={**data, "csrf_token": "not-the-token"}, follow_redirects=False
    )
    assert wrong.status_code == 403
    cross = supervisor.post(path, data, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert _count(world.ru, m.operator_actions) == before
    assert _count(world.ru, m.handovers) == 0
    assert [c["name"] for c in world.ru.channels()] == ["RU-GS.UA-GS"]
    assert world.ru.alarms()[0]["cleared_at"] is None
    # The token from the page, or htmx's header, is accepted.
    accepted = supervisor.client.post(
        path, data=data, headers={"X-CSRF-Token": supervisor.csrf}, follow_redirects=False
    )
    assert accepted.status_code != 403


REFUSALS = [
    ("duty1", "POST", "/channels", {"name": "TALKS", "members": "UA-GS"}, "channels"),
    ("aud", "POST", "/channels", {"name": "TALKS", "members": "UA-GS"}, "channels"),
    ("adm", "POST", "/channels/TALKS/agree", {}, "channels"),
    ("duty1", "POST", "/links/test", {}, "links"),
    ("aud", "POST", "/links/test", {}, "links"),
    ("duty1", "GET", "/transcript/export", {}, "export"),
    ("adm", "GET", "/transcript/export", {}, "export"),
    ("duty1", "POST", "/alarms/1/clear", {}, "clear_alarms"),
    ("aud", "POST", "/alarms/1/clear", {}, "clear_alarms"),
    ("adm", "POST", "/alarms/1/clear", {}, "clear_alarms"),
    ("aud", "POST", "/handover/sign-off", {"note": "x"}, "handover"),
    ("adm", "POST", "/handover/sign-off", {"note": "x"}, "handover"),
    ("aud", "POST", "/handover/1/accept", {}, "handover"),
]


@pytest.mark.parametrize(("user", "method", "path", "data", "permission"), REFUSALS)
def test_roles_are_refused_what_they_may_not_do(
    world: World, user: str, method: str, path: str, data: dict[str, Any], permission: str
) -> None:
    world.ru.raise_alarm("test", "warning", "S", "an alarm to clear")
    with world.ru.engine.begin() as conn:
        conn.execute(
            insert(m.handovers).values(
                signed_off_by="duty2",
                signed_off_at=world.ru.clock(),
                open_items="{}",
                note="",
            )
        )
    operator = world.as_(user)
    response = operator.get(path) if method == "GET" else operator.post(path, data)
    assert response.status_code == 403
    assert 'data-testid="forbidden"' in response.text
    # Said in words, naming what the role may not do (the policy's action).
    action = PERMISSIONS[permission]
    assert f'data-action="{action}"' in response.text
    assert f"Your role does not allow you to {texts.ACTION_TEXT[action]}." in response.text
    assert [c["name"] for c in world.ru.channels()] == ["RU-GS.UA-GS"]
    assert world.ru.alarms()[0]["cleared_at"] is None
    assert _count(world.ru, m.handovers) == 1
    assert world.ru.pending_count() == 0
    for action in ("export", "links_test", "alarm_clear", "handover_sign_off", "channel_propose"):
        assert _actions(world.ru, action) == []


# Channels --------------------------------------------------------------------------


def test_a_supervisor_proposes_a_channel_and_the_other_side_agrees(world: World) -> None:
    ru, ua = world.ru, world.ua
    supervisor = world.as_("sup")
    proposed = supervisor.post("/channels", {"name": "TALKS", "members": ["UA-GS"]})
    assert proposed.status_code == 303
    assert proposed.headers["location"] == "/channels"
    page = supervisor.get("/channels").text
    rows = {_attr(r, "data-channel"): _attr(r, "data-state") for r in _rows(page, "channel-row")}
    assert rows == {"RU-GS.UA-GS": "active", "TALKS": "proposed"}
    talks = _element(page, "channel-row")  # sorted by name: the bilateral one first
    assert "RU-GS.UA-GS" in talks
    assert 'data-testid="agree-button"' not in page  # this terminal has agreed already
    (action,) = _actions(ru, "channel_propose")
    assert (action.operator, action.subject) == ("sup", "TALKS")
    assert json.loads(action.detail)["members"] == ["RU-GS", "UA-GS"]

    # The proposal reaches UA-GS, whose supervisor agrees in its own console.
    assert _pump(ru, ua) == 1
    add_user(ua.engine, "ua-sup", "supervisor", PASSWORD, now=ua.clock())
    ua_app = create_console_app(ua, "ua-console-token-" + "y" * 20, hosts={"testserver"})
    ua_supervisor = Operator(ua_app, "ua-sup")
    ua_page = ua_supervisor.get("/channels").text
    assert 'data-testid="agree-button"' in ua_page
    assert "TALKS" in ua_page
    assert ua_supervisor.post("/channels/TALKS/agree").status_code == 303
    assert {c["name"]: c["state"] for c in ua.channels()}["TALKS"] == "active"
    assert len(_actions(ua, "channel_agree")) == 1
    assert _pump(ua, ru) == 1
    page = supervisor.get("/channels").text
    rows = {_attr(r, "data-channel"): _attr(r, "data-state") for r in _rows(page, "channel-row")}
    assert rows["TALKS"] == "active"

    # Refusals come back on the page, not as a crash; a second agreement is refused too.
    again = supervisor.post("/channels", {"name": "TALKS", "members": ["UA-GS"]})
    assert again.status_code == 400
    assert _element(again.text, "error").endswith(">The terminal refused this request.</p>")
    assert "already exists" in _element(again.text, "error-detail")
    nobody = supervisor.post("/channels", {"name": "OTHER"})
    assert nobody.status_code == 400
    assert "Choose at least one other member." in nobody.text
    bad_name = supervisor.post("/channels", {"name": "<b>x</b>", "members": ["UA-GS"]})
    assert bad_name.status_code == 400
    assert "<b>x</b>" not in bad_name.text
    assert "&lt;b&gt;x&lt;/b&gt;" in bad_name.text
    twice = ua_supervisor.post("/channels/TALKS/agree")
    assert twice.status_code == 400
    assert "already agreed" in twice.text


# Links -----------------------------------------------------------------------------


class FakeWorker:
    def __init__(self) -> None:
        self.calls = 0

    async def test_links(self) -> None:
        self.calls += 1


def test_the_links_page_shows_state_and_tests_links(world: World) -> None:
    ru = world.ru
    ru.record_link("UA-GS", "primary", ok=True, rtt_ms=42.5, test=True)
    ru.record_link("UA-GS", "primary", ok=False, error="connection <refused>", test=True)
    supervisor = world.as_("sup")
    page = supervisor.get("/links").text
    (row,) = _rows(page, "link-row")
    assert _attr(row, "data-state") == "degraded"
    state = _element(page, "link-row")
    assert "42.5" in state
    assert "connection &lt;refused&gt;" in state
    assert 'hx-get="/links/state"' in page
    assert 'hx-trigger="every 5s"' in page
    fragment = supervisor.get("/links/state", headers={"HX-Request": "true"}).text
    assert "<html" not in fragment
    assert len(_rows(fragment, "link-row")) == 1

    not_serving = supervisor.post("/links/test")
    assert not_serving.status_code == 409
    assert "not serving" in _element(not_serving.text, "error")
    assert _actions(ru, "links_test") == []

    worker = FakeWorker()
    world.app.state.worker = worker
    tested = supervisor.post("/links/test")
    assert tested.status_code == 303
    assert tested.headers["location"] == "/links?done=test"
    assert worker.calls == 1
    assert len(_actions(ru, "links_test")) == 1
    assert "test message is on its way" in supervisor.get("/links?done=test").text
    admin = world.as_("adm")
    assert admin.post("/links/test").status_code == 303
    assert worker.calls == 2


def test_the_rtt_chart_is_drawn_from_the_samples_of_the_last_day(world: World) -> None:
    ru = world.ru
    now = ru.clock()
    samples = [
        (timedelta(hours=30), True, 999.0),  # older than a day: not drawn
        (timedelta(hours=23), True, 40.0),
        (timedelta(hours=12), True, 80.0),
        (timedelta(hours=6), False, None),
        (timedelta(hours=1), True, 20.0),
        (timedelta(minutes=30), True, 30.0),
    ]
    with ru.engine.begin() as conn:
        conn.execute(
            insert(m.link_samples),
            [
                {"peer": "UA-GS", "link": "primary", "at": now - ago, "ok": ok, "rtt_ms": rtt}
                for ago, ok, rtt in samples
            ],
        )
    page = world.as_("duty1").get("/links").text
    chart = _element(page, "rtt-chart")
    assert chart.startswith("<svg")
    assert 'class="chart"' in chart
    assert 'data-peer="UA-GS"' in chart
    lines = re.findall(r'<polyline class="line" points="([^"]+)"', chart)
    assert len(lines) == 2  # the failure breaks the line
    first, second = ([tuple(map(float, p.split(","))) for p in line.split()] for line in lines)
    assert len(first) == 2
    assert len(second) == 2
    xs = [x for x, _ in first + second]
    assert xs == sorted(xs)
    # 80 ms is the slowest: the top of a 100 ms axis; 20 ms sits lower than 40 ms.
    assert first[1][1] < first[0][1] < second[0][1]
    assert "100 ms" in chart
    assert "999" not in chart
    fails = re.findall(r'<circle class="fail" cx="([^"]+)" cy="([^"]+)"', chart)
    assert len(fails) == 1
    assert first[1][0] < float(fails[0][0]) < second[0][0]
    # The axis runs from the oldest sample of the day (23 hours ago), a tick every 3 hours.
    hours = re.findall(r"<text[^>]*>(\d\d):00</text>", chart)
    assert len(hours) in (7, 8)
    assert all(int(h) % 3 == 0 for h in hours)
    assert 'class="axis"' in chart
    assert "samples: 5, failed: 1" in page

    # The last hour: the sample of that hour alone (the one an hour old is just past).
    hour = world.as_("duty1").get("/links?span=1h").text
    assert 'data-span="1h" aria-current="page"' in hour
    chart = _element(hour, "rtt-chart")
    assert "samples: 1, failed: 0" in hour
    assert len(re.findall(r'<polyline class="line"', chart)) == 1
    assert "40 ms" not in chart  # 30 ms is the slowest: a 50 ms axis
    assert "50 ms" in chart


def test_rtt_chart_geometry() -> None:
    end = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
    empty = pages_admin.rtt_chart("P", "L", [], end=end)
    assert empty.empty
    assert empty.lines == ()
    assert [label for _, label in empty.y_ticks] == ["0 ms", "0.5 ms", "1 ms"]
    one = pages_admin.rtt_chart("P", "L", [(end - timedelta(hours=2), True, 3.0)], end=end)
    (line,) = one.lines
    assert len(line.split()) == 2  # a lone sample is drawn as a short dash
    assert one.slowest == 3.0
    assert [label for _, label in one.y_ticks][-1] == "5 ms"
    # The axis covers the data there is: two hours, a tick every 15 minutes.
    assert one.start == end - timedelta(hours=2)
    assert [label for _, label in one.x_ticks][:3] == ["10:00", "10:15", "10:30"]
    assert [label for _, label in one.x_ticks][-1] == "12:00"
    # Many samples in one bucket are averaged into one point.
    busy = [
        (end - timedelta(minutes=2, milliseconds=2500 + s), True, float(10 + s % 3))
        for s in range(60)
    ]
    averaged = pages_admin.rtt_chart("P", "L", busy, end=end)
    assert averaged.samples == 60
    assert averaged.slowest == pytest.approx(11.0)
    for x, _ in averaged.x_ticks:
        assert averaged.left <= x <= averaged.right


def test_a_new_links_chart_fills_its_width_with_the_minutes_it_has() -> None:
    end = datetime(2026, 2, 5, 12, 0, 30, tzinfo=UTC)
    minutes = [(end - timedelta(seconds=20 * n), True, 50.0 + n) for n in range(9)]  # 3 minutes
    chart = pages_admin.rtt_chart("P", "L", minutes, end=end)
    # At least ten minutes, not the day: the line spans a good part of the width.
    assert chart.start == end - pages_admin.CHART_SHORTEST
    (line,) = chart.lines
    xs = [float(point.split(",")[0]) for point in line.split()]
    assert max(xs) - min(xs) > (chart.right - chart.left) / 4
    assert len(chart.x_ticks) >= 4
    assert all(chart.left <= x <= chart.right for x, _ in chart.x_ticks)
    # A 1-hour choice leaves out what is older, and the axis follows what is left.
    old = [(end - timedelta(hours=5), True, 900.0), *minutes]
    hour = pages_admin.rtt_chart("P", "L", old, end=end, span=pages_admin.CHART_SPANS["1h"])
    assert hour.samples == 9
    assert hour.start == end - pages_admin.CHART_SHORTEST
    day = pages_admin.rtt_chart("P", "L", old, end=end)
    assert day.start == end - timedelta(hours=5)
    assert day.slowest == 900.0


# Transcript ------------------------------------------------------------------------


def _traffic(world: World) -> None:
    for n in range(3):
        _send_text(world.ru, "UA-GS", f"from RU {n}")
        _send_text(world.ua, "RU-GS", f"from UA {n}")
    _pump(world.ru, world.ua)
    _pump(world.ua, world.ru)
    _witness(world.ru, world.ua)
    _witness(world.ua, world.ru)


def test_the_transcript_page_shows_log_checkpoints_and_cosignatures(world: World) -> None:
    _traffic(world)
    page = world.as_("aud").get("/transcript").text
    status = world.ru.status()
    assert (
        _element(page, "log-size")
        == f'<strong data-testid="log-size">{status["log_size"]}</strong>'
    )
    assert status["root"] in _element(page, "log-root")
    assert len(_rows(page, "checkpoint-row")) >= 1
    directions = {_attr(r, "data-direction") for r in _rows(page, "cosignature-row")}
    assert directions == {"of-us", "by-us"}
    peer = _element(page, "peer-cosignature")
    cosigned = world.ru.party.last_cosigned_by("UA-GS")
    assert cosigned is not None
    assert f"<td>{cosigned.size}</td>" in peer


def test_the_transcript_page_is_paged(world: World) -> None:
    for n in range(12):  # every round: a new checkpoint, cosigned each way
        _send_text(world.ru, "UA-GS", f"round {n}")
        _pump(world.ru, world.ua)
        _witness(world.ru, world.ua)
        _witness(world.ua, world.ru)
    total, _ = world.ru.cosignatures(limit=0)
    assert total > 2 * pages_admin.TRANSCRIPT_PAGE
    per_page = pages_admin.TRANSCRIPT_PAGE
    aud = world.as_("aud")
    first = aud.get("/transcript").text
    pager = _rows(first, "pager-cosignatures")[0]
    assert _attr(pager, "data-page") == "1"
    assert _attr(pager, "data-total") == str(total)
    pages = int(_attr(pager, "data-pages"))
    assert pages == -(-total // per_page)
    assert len(_rows(first, "cosignature-row")) == per_page
    assert 'href="/transcript?cp=1&amp;co=2#cosignatures"' in first
    assert 'data-testid="pager-newer"' not in _element(first, "pager-cosignatures")

    last = aud.get(f"/transcript?co={pages}").text
    assert len(_rows(last, "cosignature-row")) == total - per_page * (pages - 1)
    assert 'data-testid="pager-older"' not in _element(last, "pager-cosignatures")
    assert f'href="/transcript?cp=1&amp;co={pages - 1}#cosignatures"' in last
    # Each page holds the next rows, newest first, none twice.
    _, newest = world.ru.cosignatures(limit=total)
    shown = [
        [int(size) for size in re.findall(r"<td>(\d+)</td>\s*<td>[^<]*UTC</td>", page)]
        for page in (
            _element(aud.get(f"/transcript?co={n}").text, "cosignatures")
            for n in range(1, pages + 1)
        )
    ]
    assert [size for page in shown for size in page] == [c["size"] for c in newest]
    # A page past the end is the last one; the checkpoints are paged alike.
    beyond = _rows(aud.get("/transcript?co=999").text, "pager-cosignatures")[0]
    assert _attr(beyond, "data-page") == str(pages)
    checkpoints, _ = world.ru.checkpoints(limit=0)
    assert len(_rows(first, "checkpoint-row")) == min(checkpoints, per_page)
    assert _attr(_rows(first, "pager-checkpoints")[0], "data-total") == str(checkpoints)


def test_verify_now_shows_the_audit_and_records_it(world: World) -> None:
    _traffic(world)
    duty = world.as_("duty1")
    fragment = duty.post("/transcript/verify", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    (result,) = _rows(fragment.text, "verify-result")
    assert _attr(result, "data-ok") == "true"
    assert "The record verifies." in fragment.text
    (action,) = _actions(world.ru, "verify")
    detail = json.loads(action.detail)
    assert detail["ok"] is True
    assert detail["failures"] == 0
    assert detail["entries"] == world.ru.status()["log_size"]

    # A changed byte in the stored log is found and named; without htmx, the whole page.
    with world.ru.engine.begin() as conn:
        entry = conn.execute(
            select(m.log_entries.c.entry).where(m.log_entries.c.idx == 1)
        ).scalar_one()
        changed = bytes(entry[:-1]) + bytes([entry[-1] ^ 1])
        conn.execute(
            update(m.log_entries).where(m.log_entries.c.idx == 1).values(entry=changed, leaf=None)
        )
    page = world.as_("aud").post("/transcript/verify")
    assert page.status_code == 200
    assert "<html" in page.text
    (result,) = _rows(page.text, "verify-result")
    assert _attr(result, "data-ok") == "false"
    failures = _element(page.text, "verify-failures")
    assert "log entry 1" in failures
    assert json.loads(_actions(world.ru, "verify")[-1].detail)["ok"] is False


def test_the_evidence_bundle_is_enough_to_recheck_the_log_offline(world: World) -> None:
    _traffic(world)
    response = world.as_("aud").get("/transcript/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="parley-evidence-RU-GS-')
    bundle = json.loads(response.content)
    assert bundle["type"] == "parley.evidence-bundle/v1"
    assert bundle["party"] == "RU-GS"
    assert bundle["exported_by"] == "aud"
    own = IdentityCard.from_bytes(canonical_bytes(bundle["card"]))
    assert own.party == "RU-GS"
    assert own.fingerprint == world.ru.identity.card.fingerprint
    (peer,) = bundle["peers"]
    assert peer["party"] == "UA-GS"
    peer_card = IdentityCard.from_bytes(canonical_bytes(peer["card"])).pinned(peer["fingerprint"])
    assert peer["tls_certificate"].startswith("-----BEGIN CERTIFICATE-----")

    # Offline: the entries hash to the root every checkpoint signed.
    size = world.ru.status()["log_size"]
    assert bundle["log_size"] == size
    assert [e["index"] for e in bundle["entries"]] == list(range(size))
    log = merkle.MerkleLog()
    for item in bundle["entries"]:
        log.append(merkle.leaf_hash(base64.b64decode(item["entry"])))
    assert bundle["checkpoints"]
    for item in bundle["checkpoints"]:
        checkpoint = verify_checkpoint(item["note"], own)
        assert checkpoint.size == item["size"]
        assert log.root_at(checkpoint.size) == checkpoint.root
    directions = {(c["direction"], c["party"]) for c in bundle["cosignatures"]}
    assert directions == {("of-us", "UA-GS"), ("by-us", "UA-GS")}
    for c in bundle["cosignatures"]:
        owner = own if c["direction"] == "of-us" else peer_card
        assert verify_checkpoint(c["note"], owner).size == c["size"]
    with world.ru.engine.connect() as conn:
        stored = {r.idx: r.entry for r in conn.execute(select(m.log_entries))}
    assert all(base64.b64decode(e["entry"]) == bytes(stored[e["index"]]) for e in bundle["entries"])
    (action,) = _actions(world.ru, "export")
    assert (action.operator, json.loads(action.detail)) == ("aud", {"log_size": size})
    assert world.as_("sup").get("/transcript/export").status_code == 200


def test_the_evidence_bundle_is_written_as_it_is_read(world: World) -> None:
    _traffic(world)
    size, chunks = evidence_bundle(
        world.ru.engine,
        world.ru.identity.card.signed_bytes,
        party="RU-GS",
        operator="aud",
        now=world.ru.clock(),
        batch=2,
    )
    pieces = list(chunks)
    # Entries, checkpoints and cosignatures each come a batch of two at a time.
    assert len(pieces) >= size // 2 + 5
    assert max(len(p) for p in pieces) < 64 * 1024
    bundle = json.loads(b"".join(pieces))
    assert len(bundle["entries"]) == size


# Exchanges -------------------------------------------------------------------------

EXCHANGE = "PX-2026-01"
RU_PERSONS = [
    {
        "ref": "RU-1",
        "name": {"full_name": "Иванов Сергей Петрович", "script": "ru"},
        "date_of_birth": "1990-02-05",
        "rank": "сержант",
        "unit": "12-я бригада",
        "status": "prisoner_of_war",
    },
    {
        "ref": "RU-2",
        "name": {"full_name": "Кузнецов <b>Алексей</b>", "script": "ru"},
        "status": "wounded",
    },
]
UA_PERSONS = [
    {
        "ref": "UA-1",
        "name": {"full_name": "Шевченко Олексій Іванович", "script": "uk"},
        "date_of_birth": "1985-11-30",
        "rank": "солдат",
        "status": "prisoner_of_war",
    }
]


def _send_form(sender: Terminal, to: str, form: str, data: dict[str, Any]) -> None:
    body = {"form": default_registry().body(form, data)}
    sender.send([to], kind="form", body=body, operator="o")


def _send_list(sender: Terminal, to: str, persons: list[dict[str, Any]], revision: int) -> None:
    _send_form(
        sender,
        to,
        "PRISONER_EXCHANGE_LIST",
        {"exchange_id": EXCHANGE, "revision": revision, "persons": persons},
    )


def _agree(sender: Terminal, to: str) -> None:
    exchange, _ = exchange_state(sender, EXCHANGE)
    _send_form(sender, to, "EXCHANGE_AGREEMENT", exchange.agreement_data())


def _signatures(html: str) -> dict[str, str]:
    return {
        _attr(tag, "data-party"): _attr(tag, "data-state")
        for tag in _rows(html, "manifest-signature")
    }


def test_the_exchange_pages_show_both_lists_the_manifest_and_the_reconciliation(
    world: World,
) -> None:
    ru, ua = world.ru, world.ua
    duty = world.as_("duty1")
    assert _rows(duty.get("/exchanges").text, "exchange-row") == []
    _send_list(ru, "UA-GS", RU_PERSONS, 1)
    _send_list(ua, "RU-GS", UA_PERSONS, 1)
    _pump(ru, ua)
    _pump(ua, ru)

    listing = duty.get("/exchanges").text
    (row,) = _rows(listing, "exchange-row")
    assert _attr(row, "data-exchange") == EXCHANGE
    assert f'href="/exchanges/{EXCHANGE}"' in listing

    page = duty.get(f"/exchanges/{EXCHANGE}")
    assert page.status_code == 200
    html = page.text
    _assert_csp_clean(html)
    assert 'class="side-by-side"' in html
    ru_list = _element(html, "exchange-list-RU-GS")
    ua_list = _element(html, "exchange-list-UA-GS")
    assert "Иванов Сергей Петрович" in ru_list
    assert "[Ivanov Sergei Petrovich]" in ru_list
    assert "February 5, 1990" in ru_list
    assert "сержант" in ru_list
    assert "12-я бригада" in ru_list
    assert "Prisoner of war" in ru_list
    assert "Wounded" in ru_list
    assert "<b>Алексей</b>" not in html  # a name is text, never markup
    assert "&lt;b&gt;Алексей&lt;/b&gt;" in ru_list
    assert "Шевченко Олексій Іванович" in ua_list
    assert "[Shevchenko Oleksii Ivanovych]" in ua_list
    assert "November 30, 1985" in ua_list
    manifest = _element(html, "manifest")
    exchange, _ = exchange_state(ru, EXCHANGE)
    assert exchange.manifest_hash is not None
    assert exchange.manifest_hash in html
    assert 'data-agreed="false"' in manifest
    assert _signatures(html) == {"RU-GS": "none", "UA-GS": "none"}
    assert [_attr(t, "data-code") for t in _rows(html, "discrepancy")] == ["no_status"] * 3

    # RU-GS signs; UA-GS amends its list, which makes RU-GS's signature stale.
    _agree(ru, "UA-GS")
    _pump(ru, ua)
    assert _signatures(duty.get(f"/exchanges/{EXCHANGE}").text) == {
        "RU-GS": "current",
        "UA-GS": "none",
    }
    _send_list(ua, "RU-GS", [*UA_PERSONS, {**UA_PERSONS[0], "ref": "UA-2"}], 2)
    _pump(ua, ru)
    html = duty.get(f"/exchanges/{EXCHANGE}").text
    assert _signatures(html) == {"RU-GS": "stale", "UA-GS": "none"}
    assert "UA-2" in _element(html, "exchange-list-UA-GS")

    # Both sign the amended manifest: agreed; then statuses and a discrepancy.
    _agree(ru, "UA-GS")
    _pump(ru, ua)
    _agree(ua, "RU-GS")
    _pump(ua, ru)
    exchange, _ = exchange_state(ru, EXCHANGE)
    assert exchange.agreed
    _send_form(
        ru,
        "UA-GS",
        "EXCHANGE_STATUS",
        {
            "exchange_id": EXCHANGE,
            "manifest": exchange.manifest_hash,
            "updates": [
                {"party": "RU-GS", "ref": "RU-1", "status": "handed_over"},
                {"party": "UA-GS", "ref": "UA-1", "status": "received"},
            ],
        },
    )
    _pump(ru, ua)
    _send_form(
        ua,
        "RU-GS",
        "EXCHANGE_STATUS",
        {
            "exchange_id": EXCHANGE,
            "manifest": exchange.manifest_hash,
            "updates": [
                {"party": "RU-GS", "ref": "RU-1", "status": "received"},
                {"party": "UA-GS", "ref": "UA-1", "status": "handed_over"},
            ],
        },
    )
    _pump(ua, ru)
    html = duty.get(f"/exchanges/{EXCHANGE}").text
    assert 'data-agreed="true"' in _element(html, "manifest")
    assert _signatures(html) == {"RU-GS": "current", "UA-GS": "current"}
    outcomes = {
        (_attr(t, "data-party"), _attr(t, "data-ref")): _attr(t, "data-outcome")
        for t in _rows(html, "person-outcome")
    }
    assert outcomes == {
        ("RU-GS", "RU-1"): "received",
        ("RU-GS", "RU-2"): "unresolved",
        ("UA-GS", "UA-1"): "received",
        ("UA-GS", "UA-2"): "unresolved",
    }
    assert "RU-GS: Handed over; UA-GS: Received" in html
    counts = re.search(r'data-testid="side-counts" data-party="RU-GS">(.*?)</tr>', html, re.S)
    assert counts is not None
    assert re.sub(r"\s+", "", counts[1]) == (
        "<td>RU-GS</td><td>2</td><td>0</td><td>1</td><td>0</td><td>0</td><td>1</td>"
    )
    codes = [_attr(t, "data-code") for t in _rows(html, "discrepancy")]
    assert sorted(codes) == ["no_status", "no_status"]
    assert "No status reported" in html
    # The handover lists the exchange while discrepancies remain.
    assert f'data-exchange="{EXCHANGE}"' in _element(duty.get("/handover").text, "open-exchanges")

    missing = duty.get("/exchanges/PX-NOPE")
    assert missing.status_code == 404
    assert "There is no such exchange on this terminal." in _element(missing.text, "error")
    assert "no exchange PX-NOPE" in _element(missing.text, "error-detail")


def test_an_exchange_reads_in_russian(world: World) -> None:
    _send_list(world.ru, "UA-GS", RU_PERSONS, 1)
    _send_list(world.ua, "RU-GS", UA_PERSONS, 1)
    _pump(world.ru, world.ua)
    _pump(world.ua, world.ru)
    duty = world.as_("duty1")
    assert duty.post("/language", {"lang": "ru", "back": "/exchanges"}).status_code == 303
    html = duty.get(f"/exchanges/{EXCHANGE}").text
    ru_list = _element(html, "exchange-list-RU-GS")
    assert "5 февраля 1990\u202fг." in ru_list  # CLDR: a narrow no-break space
    assert "Военнопленный" in ru_list
    assert "Иванов Сергей Петрович" in ru_list
    assert "[Ivanov Sergei Petrovich]" in ru_list
    assert "Итоговый список" in html
    assert "не согласован" in html
    assert "Дата рождения" in html


# Alarms ----------------------------------------------------------------------------


def test_alarms_newest_first_and_a_supervisor_clears_one(world: World) -> None:
    ru = world.ru
    first = ru.raise_alarm("peer_unreachable", "critical", "UA-GS", "no healthy link to UA-GS")
    second = ru.raise_alarm("content_refused", "warning", "id-1", "refused <script>x</script>")
    assert first is not None
    assert second is not None
    ru.record_security_event(
        endpoint="/v1/envelopes",
        remote="192.0.2.7",
        tls_party=None,
        error=SchemaViolation("bad <envelope>"),
    )
    duty = world.as_("duty1")
    page = duty.get("/alarms").text
    rows = _rows(page, "alarm-row")
    assert [_attr(r, "data-alarm") for r in rows] == [str(second["id"]), str(first["id"])]
    assert "refused &lt;script&gt;x&lt;/script&gt;" in page
    assert "<script>x" not in page
    assert 'data-testid="clear-button"' not in page  # a duty officer reads, cannot clear
    assert "bad &lt;envelope&gt;" in _element(page, "security-event")

    supervisor = world.as_("sup")
    assert 'data-testid="clear-button"' in supervisor.get("/alarms").text
    cleared = supervisor.post(f"/alarms/{first['id']}/clear")
    assert cleared.status_code == 303
    assert cleared.headers["location"] == "/alarms"
    alarms = {a["id"]: a for a in ru.alarms()}
    assert alarms[first["id"]]["cleared_at"] is not None
    assert alarms[second["id"]]["cleared_at"] is None
    page = supervisor.get("/alarms").text
    states = {_attr(r, "data-alarm"): _attr(r, "data-cleared") for r in _rows(page, "alarm-row")}
    assert states == {str(first["id"]): "true", str(second["id"]): "false"}
    (action,) = _actions(ru, "alarm_clear")
    assert action.operator == "sup"
    assert json.loads(action.detail)["kind"] == "peer_unreachable"
    again = supervisor.post(f"/alarms/{first['id']}/clear")
    assert again.status_code == 404
    assert supervisor.post("/alarms/999/clear").status_code == 404
    assert len(_actions(ru, "alarm_clear")) == 1


# Handover --------------------------------------------------------------------------


def test_a_handover_is_signed_off_and_accepted_by_another_officer(world: World) -> None:
    ru, ua = world.ru, world.ua
    unacked = _send_text(ua, "RU-GS", "please confirm", precedence="IMMEDIATE")
    _pump(ua, ru)
    undelivered = _send_text(ru, "UA-GS", "still on its way")
    alarm = ru.raise_alarm("ack_overdue", "warning", "m-1", "not acknowledged in time")
    assert alarm is not None
    with ru.engine.begin() as conn:
        conn.execute(
            insert(m.held_messages).values(
                created_at=ru.clock(),
                operator="duty1",
                request=json.dumps({"to": ["UA-GS"], "precedence": "FLASH", "text": "x"}),
                state="held",
            )
        )

    outgoing = world.as_("duty1")
    page = outgoing.get("/handover").text
    open_now = page[page.index('data-testid="handover-open"') :]
    assert f'data-id="{unacked}"' in _element(open_now, "open-unacknowledged")
    assert "data-deadline=" in _element(open_now, "open-unacknowledged")
    assert f'data-alarm="{alarm["id"]}"' in _element(open_now, "open-alarms")
    assert 'data-held="1"' in _element(open_now, "open-held")
    assert f'data-id="{undelivered}"' in _element(open_now, "open-pending")
    # Each message row names its subject (the sender's words, cut short), linked to it.
    assert re.search(
        rf'data-testid="open-subject"><a href="/messages/{unacked}">please confirm</a>', open_now
    )
    assert re.search(
        rf'data-testid="open-subject"><a href="/messages/{undelivered}">still on its way</a>',
        open_now,
    )

    signed = outgoing.post("/handover/sign-off", {"note": "Watch <UA-GS> for the reply"})
    assert signed.status_code == 303
    with ru.engine.connect() as conn:
        (row,) = conn.execute(select(m.handovers)).all()
    assert row.signed_off_by == "duty1"
    assert row.note == "Watch <UA-GS> for the reply"
    assert row.accepted_by is None
    items = json.loads(row.open_items)
    assert "please confirm" not in row.open_items  # the record keeps ids, not the words
    assert [i["id"] for i in items["unacknowledged"]] == [unacked]
    assert [i["id"] for i in items["alarms"]] == [alarm["id"]]
    assert [i["id"] for i in items["pending_delivery"]] == [undelivered]
    assert [i["to"] for i in items["held_flash"]] == [["UA-GS"]]
    assert items["exchanges"] == []
    (action,) = _actions(ru, "handover_sign_off")
    assert action.operator == "duty1"

    # The outgoing officer cannot accept their own handover.
    page = outgoing.get("/handover").text
    assert 'data-testid="accept-button"' not in page
    assert "Watch &lt;UA-GS&gt; for the reply" in page
    own = outgoing.post(f"/handover/{row.id}/accept")
    assert own.status_code == 403
    assert "incoming officer must accept it" in _element(own.text, "error")

    incoming = world.as_("duty2")
    page = incoming.get("/handover").text
    assert 'data-testid="accept-button"' in _element(page, "pending-handover")
    accepted = incoming.post(f"/handover/{row.id}/accept")
    assert accepted.status_code == 303
    with ru.engine.connect() as conn:
        (row,) = conn.execute(select(m.handovers)).all()
    assert row.accepted_by == "duty2"
    assert row.accepted_at is not None
    history = incoming.get("/handover").text
    (entry,) = _rows(history, "handover-row")
    assert _attr(entry, "data-accepted") == "true"
    assert "pending-handover" not in history
    assert len(_actions(ru, "handover_accept")) == 1

    assert world.as_("sup").post(f"/handover/{row.id}/accept").status_code == 409
    assert incoming.post("/handover/999/accept").status_code == 404
    assert len(_actions(ru, "handover_accept")) == 1


# Languages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "titles"),
    [
        (
            "ru",
            ["Каналы", "Линии связи", "Журнал", "Обмены", "Тревоги", "Передача смены"],
        ),
        (
            "uk",
            ["Канали", "Лінії зв’язку", "Журнал", "Обміни", "Тривоги", "Передача зміни"],
        ),
    ],
)
def test_the_pages_read_in_russian_and_ukrainian(
    world: World, lang: str, titles: list[str]
) -> None:
    supervisor = world.as_("sup")
    assert supervisor.post("/language", {"lang": lang, "back": "/channels"}).status_code == 303
    paths = ["/channels", "/links", "/transcript", "/exchanges", "/alarms", "/handover"]
    for path, title in zip(paths, titles, strict=True):
        html = supervisor.get(path).text
        assert f'<html lang="{lang}">' in html
        assert f"<h1>{title}</h1>" in html or (path == "/handover" and title in html)
    links = supervisor.get("/links").text
    assert {"ru": "Проверить линии", "uk": "Перевірити лінії"}[lang] in links
    transcript = supervisor.get("/transcript").text
    assert {"ru": "Проверить сейчас", "uk": "Перевірити зараз"}[lang] in transcript


def _marked_strings() -> dict[str | tuple[str, str], str]:
    """Every string (or singular and plural) the admin templates mark -> where."""
    found: dict[str | tuple[str, str], str] = {}
    options = {"extensions": "jinja2.ext.i18n", "trim_blocks": "true", "lstrip_blocks": "true"}
    keywords = ("_", "gettext", "ngettext")
    for name in MY_TEMPLATES:
        with open(TEMPLATES / name, "rb") as handle:
            for lineno, _, message, _ in babel_extract(handle, keywords, [], options):
                if isinstance(message, tuple):
                    singular, plural = (text for text in message if text)
                    found.setdefault((singular, plural), f"{name}:{lineno}")
                elif message:
                    found.setdefault(message, f"{name}:{lineno}")
    return found


@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_the_catalogs_translate_every_marked_string(lang: str) -> None:
    with open(LOCALE / lang / "admin.po", "rb") as handle:
        catalog = read_po(handle, locale=lang)
    header = (LOCALE / lang / "admin.po").read_text("utf-8").split("\n\n", 1)[0]
    assert '"Content-Type: text/plain; charset=UTF-8\\n"' in header
    assert f'"Language: {lang}\\n"' in header
    assert '"Plural-Forms: nplurals=3; plural=' in header
    assert catalog.plural_forms.startswith("nplurals=3;")
    marked = _marked_strings()
    translated: dict[str | tuple[str, str], Any] = {
        ((str(msg.id[0]), str(msg.id[1])) if isinstance(msg.id, tuple | list) else msg.id): (
            msg.string
        )
        for msg in catalog
        if msg.id
    }
    missing = {key: where for key, where in marked.items() if not translated.get(key)}
    assert missing == {}
    assert set(translated) - set(marked) == set()  # nothing stale in the catalog
    for key in marked:
        if isinstance(key, tuple):  # every plural form, each with the count
            forms = translated[key]
            assert len(forms) == 3
            assert all(forms)
            assert all(("%(num)d" in form) is ("%(num)d" in key[0]) for form in forms)
        else:
            assert "%" not in key  # newstyle gettext formats with %


@pytest.mark.parametrize(
    ("lang", "one", "few", "many"),
    [
        ("en", "1 entry", "2 entries", "5 entries"),
        ("ru", "1 запись", "2 записи", "5 записей"),
        ("uk", "1 запис", "2 записи", "5 записів"),
    ],
)
def test_counts_of_entries_take_the_plural_of_the_language(
    world: World, lang: str, one: str, few: str, many: str
) -> None:
    five = [{**RU_PERSONS[0], "ref": f"RU-{n}"} for n in range(1, 6)]
    _send_list(world.ru, "UA-GS", five, 1)
    _send_list(world.ua, "RU-GS", UA_PERSONS, 1)
    _pump(world.ru, world.ua)
    _pump(world.ua, world.ru)
    duty = world.as_("duty1")
    duty.post("/language", {"lang": lang, "back": "/exchanges"})
    html = duty.get(f"/exchanges/{EXCHANGE}").text
    assert f"· {many}</p>" in _element(html, "exchange-list-RU-GS")
    assert f"· {one}</p>" in _element(html, "exchange-list-UA-GS")
    _send_list(world.ua, "RU-GS", [*UA_PERSONS, {**UA_PERSONS[0], "ref": "UA-2"}], 2)
    _pump(world.ua, world.ru)
    html = duty.get(f"/exchanges/{EXCHANGE}").text
    assert f"· {few}</p>" in _element(html, "exchange-list-UA-GS")
    size = world.ru.status()["log_size"]
    word = re.search(
        r'data-testid="log-size">(\d+)</strong> (\w+)</p>', duty.get("/transcript").text
    )
    assert word is not None
    assert int(word[1]) == size
    assert word[2] == i18n.translations(lang).ngettext("entry", "entries", size)
    assert (
        word[2]
        in {
            "en": ("entry", "entries"),
            "ru": ("запись", "записи", "записей"),
            "uk": ("запис", "записи", "записів"),
        }[lang]
    )


# The terminal itself --------------------------------------------------------------


def test_a_terminal_with_entries_stored_without_a_leaf_hash_opens(tmp_path: Path) -> None:
    terminals = make_network(tmp_path, PARTIES)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    _send_text(ru, "UA-GS", "before the leaf column")
    root, size = ru.party.transcript.root(), ru.party.transcript.size
    with ru.engine.begin() as conn:
        conn.execute(update(m.log_entries).values(leaf=None))
    ru.engine.dispose()
    again = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    try:
        assert (again.party.transcript.root(), again.party.transcript.size) == (root, size)
    finally:
        again.engine.dispose()
