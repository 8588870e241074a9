"""Cards seen ending: the card_expiry alarms on a manual clock, and ``parley keys status``.

Two terminals made with ``make_network``; US-EUCOM's is opened in this
process on a ``ManualClock`` and driven to 90, 30 and 7 days before the
cards end, and past it, through the call ``parley serve``'s deadlines loop
makes every few seconds (``Terminal.check_deadlines``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from parley.console.api import create_console_app
from parley.service.keys import CARD_EXPIRY, CHECK_EVERY
from parley.service.terminal import Terminal, utc_now
from parley.testing import ManualClock
from parley.testing.network import PASSPHRASE, TerminalProcess, make_network

US, RU = "US-EUCOM", "RU-GS"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Terminal, ManualClock, list[dict[str, Any]]]]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    clock = ManualClock(utc_now())
    terminal = Terminal.open(made[US].data, PASSPHRASE, clock=clock)
    hooked: list[dict[str, Any]] = []
    terminal.on_alarm = hooked.append
    yield terminal, clock, hooked
    terminal.engine.dispose()


def _open(terminal: Terminal) -> dict[str, str]:
    """Open card_expiry alarms: subject -> severity."""
    return {
        a["subject"]: a["severity"]
        for a in terminal.alarms(include_cleared=False)
        if a["kind"] == CARD_EXPIRY
    }


def test_card_expiry_alarms_are_raised_once_per_threshold_and_cleared_when_superseded(
    world: tuple[Terminal, ManualClock, list[dict[str, Any]]],
) -> None:
    terminal, clock, hooked = world
    end = min(terminal.identity.card.valid_until, terminal.party.peers[RU].valid_until)
    assert terminal.check_deadlines() == 0  # two years ahead: nothing to say
    assert _open(terminal) == {}

    clock.now = end - timedelta(days=89)
    assert terminal.check_deadlines() == 2
    assert _open(terminal) == {"US-EUCOM v1 90d": "warning", "RU-GS v1 90d": "warning"}
    own = next(a for a in hooked if a["subject"] == "US-EUCOM v1 90d")
    assert own["message"].startswith("this terminal's card (US-EUCOM, version 1) expires at ")
    assert "in 89 days (the 90-day alarm)" in own["message"]
    assert terminal.check_deadlines() == 0  # once: neither repeated nor counted
    assert terminal.check_card_expiry(force=True) == 0
    assert [a["count"] for a in terminal.alarms() if a["kind"] == CARD_EXPIRY] == [1, 1]

    # An operator clears RU-GS's alarm: it is not raised again for the same threshold.
    ru_alarm = next(a for a in terminal.alarms() if a["subject"] == "RU-GS v1 90d")
    terminal.clear_alarms(CARD_EXPIRY, "RU-GS v1 90d")
    clock.advance(CHECK_EVERY)
    assert terminal.check_deadlines() == 0
    assert _open(terminal) == {"US-EUCOM v1 90d": "warning"}
    assert ru_alarm["id"] not in {a["id"] for a in terminal.alarms(include_cleared=False)}

    # 30 days: a new warning for each card; the 90-day one no longer applies.
    clock.now = end - timedelta(days=29)
    assert terminal.check_deadlines() == 2
    assert _open(terminal) == {"US-EUCOM v1 30d": "warning", "RU-GS v1 30d": "warning"}

    # At most hourly.
    clock.now = end - timedelta(days=7, minutes=30)
    assert terminal.check_deadlines() == 0  # a look, 30 minutes before 7 days
    clock.advance(timedelta(minutes=45))
    assert terminal.check_deadlines() == 0  # crossed, but looked 45 minutes ago
    clock.advance(CHECK_EVERY)
    assert terminal.check_deadlines() == 2
    assert _open(terminal) == {"US-EUCOM v1 7d": "critical", "RU-GS v1 7d": "critical"}

    clock.now = end + timedelta(days=1)
    assert terminal.check_deadlines() == 2
    assert _open(terminal) == {"US-EUCOM v1 0d": "critical", "RU-GS v1 0d": "critical"}
    expired = next(a for a in hooked if a["subject"] == "RU-GS v1 0d")
    assert "the card of RU-GS (version 1) expired at " in expired["message"]
    assert [a["subject"] for a in hooked].count("US-EUCOM v1 90d") == 1


def test_keys_status_shows_the_cards_and_the_encryption_key(
    world: tuple[Terminal, ManualClock, list[dict[str, Any]]],
) -> None:
    terminal, clock, _ = world
    client = TestClient(
        create_console_app(terminal, "t" * 32, hosts={"testserver"}),
        headers={"authorization": "Bearer " + "t" * 32},
    )
    card = terminal.identity.card
    clock.now = card.valid_until - timedelta(days=10, hours=1)
    body = client.get("/api/v1/keys").json()
    assert body["card"]["party"] == US
    assert body["card"]["card_version"] == 1
    assert body["card"]["fingerprint"] == card.fingerprint
    assert (body["card"]["state"], body["card"]["days_left"]) == ("expiring", 10)
    assert body["card"]["alarm"] == {"days": 30, "severity": "warning"}
    [key] = body["encryption_keys"]
    assert (key["algorithm"], key["state"], key["card_version"]) == (
        "MLKEM768_X25519",
        "current",
        1,
    )
    assert key["valid_until"] == body["card"]["valid_until"]
    assert [(p["party"], p["card_version"]) for p in body["peers"]] == [(RU, 1)]
    assert body["alarm_days"] == [90, 30, 7]
    clock.now = card.valid_until + timedelta(seconds=1)
    assert client.get("/api/v1/keys").json()["encryption_keys"][0]["state"] == "expired"
    assert [(p["party"], p["card_version"]) for p in client.get("/api/v1/peers").json()] == [
        (RU, 1)
    ]
    refused = client.get("/api/v1/keys", headers={"authorization": "Bearer wrong"})
    assert refused.status_code == 401


@pytest.fixture(scope="module")
def terminals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TerminalProcess]]:
    made = make_network(tmp_path_factory.mktemp("keys"), [(US, "US"), (RU, "RU")])
    yield made
    for terminal in made.values():
        terminal.kill()


@pytest.mark.subprocess
@pytest.mark.parametrize("running", [False, True])
def test_the_cli_shows_keys_status_and_card_versions_running_or_not(
    terminals: dict[str, TerminalProcess], running: bool
) -> None:
    ru = terminals[RU]
    if running:
        ru.start()
    else:
        ru.stop()
    status = json.loads(ru.cli("keys", "status", "--json").stdout)
    assert status["card"]["party"] == RU
    assert status["card"]["state"] == "valid"
    assert status["encryption_keys"][0]["state"] == "current"
    assert [(p["party"], p["card_version"]) for p in status["peers"]] == [(US, 1)]
    peers = json.loads(ru.cli("peer", "list", "--json").stdout)
    assert [(p["party"], p["card_version"]) for p in peers] == [(US, 1)]
    shown = ru.cli("keys", "status").stdout
    assert "card version 1" in shown
    assert "MLKEM768_X25519" in shown
