"""/metrics: the hotline's figures, read from the terminal's records, for the tokens made for them.

Two terminals run in process on a ``ManualClock``; messages go from one to the
other by hand (no worker), and the exposition is read back with
``prometheus_client``'s own parsers (Prometheus text and OpenMetrics).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from parley.console.api import create_console_app
from parley.errors import InvalidSignature
from parley.service import users
from parley.service.kernel import utc_now
from parley.service.metrics import METRICS, new_scrape_token, scrape_token_file
from parley.service.policy import LOCAL_ADMIN, SCRAPER, Actor, decide
from parley.service.terminal import Terminal
from parley.service.users import add_user
from parley.testing import ManualClock
from parley.testing.network import PASSPHRASE, make_network

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

US, RU = "US-EUCOM", "RU-GS"
TOKEN = "metrics-console-token-" + "q" * 20
PASSWORD = "metrics-test-password"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@dataclass
class World:
    us: Terminal
    ru: Terminal
    clock: ManualClock
    client: TestClient

    def scrape(self, token: str = TOKEN) -> Samples:
        response = self.client.get("/metrics", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    def deliver(self) -> int:
        """Carry every due envelope from US to RU and RU's receipts back."""
        carried = 0
        for item in self.us.due_deliveries(RU):
            receipt = self.ru.receive_envelope(item["raw"], tls_party=US)
            self.us.receive_receipt(receipt, peer=RU, link="primary")
            carried += 1
        return carried


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    clock = ManualClock(utc_now())
    us = Terminal.open(made[US].data, PASSPHRASE, clock=clock)
    ru = Terminal.open(made[RU].data, PASSPHRASE, clock=clock)
    add_user(us.engine, "sup", "supervisor", PASSWORD, now=clock())
    app = create_console_app(us, TOKEN)
    client = TestClient(app, base_url=f"https://127.0.0.1:{made[US].console_port}")
    yield World(us, ru, clock, client)
    us.engine.dispose()
    ru.engine.dispose()


def test_the_figures_follow_the_records(world: World) -> None:
    us, clock = world.us, world.clock
    before = world.scrape()
    assert value(before, "parley_outbox_messages", peer=RU, precedence="FLASH") == 0
    assert value(before, "parley_peer_oldest_undelivered_age_seconds", peer=RU) == 0
    assert value(before, "parley_frozen") == 0
    build = [k for k in before if k[0] == "parley_build_info"]
    assert build
    assert ("party", US) in build[0][1]

    # Queued, not delivered: outbox depth by precedence, age of the oldest.
    us.send([RU], kind="text", body={"text": "flash"}, operator="sup", precedence="FLASH")
    clock.advance(timedelta(minutes=1))
    us.send([RU], kind="text", body={"text": "routine"}, operator="sup")
    clock.advance(timedelta(minutes=10))  # past a FLASH's 10 minutes to acknowledge
    queued = world.scrape()
    assert value(queued, "parley_outbox_messages", peer=RU, precedence="FLASH") == 1
    assert value(queued, "parley_outbox_messages", peer=RU, precedence="ROUTINE") == 1
    assert value(queued, "parley_outbox_messages", peer=RU, precedence="PRIORITY") == 0
    assert value(queued, "parley_peer_oldest_undelivered_age_seconds", peer=RU) == 660
    oldest = "parley_outbox_oldest_age_seconds"
    assert value(queued, oldest, peer=RU, precedence="FLASH") == 660
    assert value(queued, oldest, peer=RU, precedence="ROUTINE") == 600
    assert value(queued, oldest, peer=RU, precedence="PRIORITY") == 0
    unacked = "parley_unacknowledged_messages"
    assert value(queued, unacked, direction="out", precedence="FLASH") == 1
    assert value(queued, unacked, direction="out", precedence="ROUTINE") == 1
    assert value(queued, "parley_overdue_messages", direction="out", precedence="FLASH") == 1
    assert value(queued, "parley_overdue_messages", direction="out", precedence="ROUTINE") == 0
    log_size = value(queued, "parley_transcript_entries")
    assert log_size >= 2
    assert value(queued, "parley_witness_lag_entries", peer=RU) == log_size

    # Delivered: the outbox empties; the other side now awaits its own acknowledgement.
    assert world.deliver() == 2
    delivered = world.scrape()
    assert value(delivered, "parley_outbox_messages", peer=RU, precedence="FLASH") == 0
    assert value(delivered, "parley_peer_oldest_undelivered_age_seconds", peer=RU) == 0
    assert value(delivered, oldest, peer=RU, precedence="FLASH") == 0
    assert value(delivered, unacked, direction="out", precedence="FLASH") == 1
    on_ru = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(
            TestClient(
                create_console_app(world.ru, TOKEN),
                base_url=f"https://{world.ru.config.console_listen}",
            )
            .get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
            .text
        )
        for s in family.samples
    }
    assert value(on_ru, unacked, direction="in", precedence="FLASH") == 1
    assert value(on_ru, unacked, direction="in", precedence="ROUTINE") == 1
    assert value(on_ru, "parley_overdue_messages", direction="in", precedence="FLASH") == 0

    # Links: state, round trip, age of the last success and of the last test.
    never = world.scrape()
    assert value(never, "parley_link_last_test_age_seconds", peer=RU, link="primary") == float(
        "inf"
    )
    assert value(never, "parley_link_test_interval_seconds") == us.config.link_test_interval
    us.record_link(RU, "primary", ok=True, rtt_ms=42.0, test=True)
    clock.advance(timedelta(seconds=90))
    up = world.scrape()
    assert value(up, "parley_link_up", peer=RU, link="primary") == 1
    assert value(up, "parley_link_state", peer=RU, link="primary", state="up") == 1
    assert value(up, "parley_link_state", peer=RU, link="primary", state="down") == 0
    assert value(up, "parley_link_rtt_seconds", peer=RU, link="primary") == pytest.approx(0.042)
    assert value(up, "parley_link_last_success_age_seconds", peer=RU, link="primary") == 90
    assert value(up, "parley_link_last_test_age_seconds", peer=RU, link="primary") == 90
    for _ in range(3):
        us.record_link(RU, "primary", ok=False, error="connection refused", test=True)
    down = world.scrape()
    assert value(down, "parley_link_up", peer=RU, link="primary") == 0
    assert value(down, "parley_link_state", peer=RU, link="primary", state="down") == 1
    assert value(down, "parley_link_failures", peer=RU, link="primary") == 3
    # A failed test is a test: its age restarts; the last success's does not.
    assert value(down, "parley_link_last_test_age_seconds", peer=RU, link="primary") == 0
    assert value(down, "parley_link_last_success_age_seconds", peer=RU, link="primary") == 90
    assert value(down, "parley_alarms_open", kind="link_test_failed", severity="warning") >= 1

    # Alarms by kind, security events by code, cards.
    us.raise_alarm("equivocation", "critical", RU, "two checkpoints of one size")
    us.record_security_event(
        endpoint="/v1/envelopes", remote="192.0.2.7", tls_party=RU, error=InvalidSignature("bad")
    )
    us.record_security_event(
        endpoint="/v1/envelopes", remote="192.0.2.7", tls_party=RU, error=InvalidSignature("bad")
    )
    later = world.scrape()
    assert value(later, "parley_alarms_open", kind="equivocation", severity="critical") == 1
    assert value(later, "parley_security_events_total", code="invalid_signature") == 2
    assert value(
        later, "parley_card_expiry_timestamp_seconds", party=US, own="true"
    ) == pytest.approx(us.identity.card.valid_until.timestamp())
    assert value(
        later, "parley_card_expiry_timestamp_seconds", party=RU, own="false"
    ) == pytest.approx(world.ru.identity.card.valid_until.timestamp())
    assert {name for name, _ in later} >= {
        name for name in METRICS if name != "parley_encryption_key_rotation_due_timestamp_seconds"
    }


def test_openmetrics_is_served_to_prometheus(world: World) -> None:
    response = world.client.get(
        "/metrics",
        headers={
            "authorization": f"Bearer {TOKEN}",
            "accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in om_families(response.text)}  # type: ignore[no-untyped-call]
    assert families["parley_security_events"].type == "counter"
    assert families["parley_build"].type == "info"
    assert families["parley_link_rtt_seconds"].type == "gauge"


def test_only_the_console_token_and_the_scrape_token_read_the_metrics(world: World) -> None:
    client = world.client
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    basic = base64.b64encode(f"sup:{PASSWORD}".encode()).decode()
    # An operator account, even a supervisor's, is not accepted here...
    assert client.get("/metrics", headers={"authorization": f"Basic {basic}"}).status_code == 401
    # ...though it reads the operator API.
    assert (
        client.get("/api/v1/status", headers={"authorization": f"Basic {basic}"}).status_code == 200
    )

    first = new_scrape_token(world.us.data)
    assert first not in scrape_token_file(world.us.data).read_text()  # kept hashed
    world.scrape(first)
    # The scrape token reads the metrics and nothing else.
    assert (
        client.get("/api/v1/status", headers={"authorization": f"Bearer {first}"}).status_code
        == 401
    )
    second = new_scrape_token(world.us.data)
    world.scrape(second)
    refused = client.get("/metrics", headers={"authorization": f"Bearer {first}"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")


def test_the_policy_lets_a_scraper_read_the_metrics_only() -> None:
    scraper = Actor("scrape-token", SCRAPER, "metrics")
    assert decide(scraper, "read_metrics").allowed
    assert decide(Actor("root", LOCAL_ADMIN), "read_metrics").allowed
    for action in ("read", "send", "verify", "export_evidence"):
        assert decide(scraper, action).refused, action
    for role in ("duty_officer", "supervisor", "auditor", "admin"):
        assert decide(Actor("x", role), "read_metrics").refused, role
