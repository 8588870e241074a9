"""The hotline's own figures for Prometheus, computed from the terminal's records at scrape time.

``TerminalCollector`` is a ``prometheus_client`` collector: each scrape reads
the links, the outbox, the messages awaiting acknowledgement, the alarms, the
security events, the cards and keys and the transcript, and reports them
(``metric_families``). Nothing is counted in memory between scrapes, so a
restarted terminal reports the same figures as before, and what Prometheus
sees is what the records say. Every read is a database call: collect in a
worker thread (``run_in_threadpool(exposition, …)``), never on the event loop.

Who may read them: the local administrator (the console token) and the
holder of a **scrape token** (``parley metrics token``), which is good for
``/metrics`` only. The scrape token is kept as its SHA-256 in
``DIR/metrics.token.sha256`` (it is 256 random bits: a slow hash adds
nothing); the token itself is printed once, or written to a file for
Prometheus's ``credentials_file``.

Names follow the OpenMetrics conventions: a unit suffix (``_seconds``,
``_entries``, ``_messages``), ``_total`` on counters, ``_info`` on the build
information, ``_timestamp_seconds`` on points in time. The list is
``METRICS``; README.md (Monitoring) explains each one.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import platform
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

import parley
from parley.config import DataDir, write_private
from parley.core.identity import IdentityCard
from parley.service.policy import LOCAL_ADMIN, PRECEDENCES, SCRAPER, Actor, require
from parley.store import models as m
from parley.store.db import reading

if TYPE_CHECKING:
    from parley.service.terminal import Terminal

__all__ = [
    "LINK_STATES",
    "METRICS",
    "TerminalCollector",
    "exposition",
    "metrics_actor",
    "new_scrape_token",
    "registry_for",
    "scrape_token_file",
]

#: The states a link can be in (``parley.service.links``).
LINK_STATES = ("unknown", "up", "degraded", "down")

#: Every metric a terminal exposes (the names as scraped), and what it means.
METRICS: Mapping[str, str] = {
    "parley_build_info": "the Parley version, the Python version and the party of this terminal",
    "parley_link_up": "1 while a link to a peer is up (its last use or test succeeded), else 0",
    "parley_link_state": "the state of each link: 1 for its current state, 0 for the others",
    "parley_link_rtt_seconds": "the round-trip time of a link's last successful test or use",
    "parley_link_last_success_age_seconds": (
        "seconds since a link's last successful test or use (+Inf if it never succeeded)"
    ),
    "parley_link_failures": "consecutive failures of a link since its last success",
    "parley_link_last_test_age_seconds": (
        "seconds since a link's last scheduled test, passed or failed (+Inf if never tested)"
    ),
    "parley_link_test_interval_seconds": "how often each link is tested (links.test_interval)",
    "parley_peer_oldest_undelivered_age_seconds": (
        "age of the oldest message not yet delivered to a peer (0 when none waits)"
    ),
    "parley_outbox_messages": "messages waiting in the outbox for a peer, by precedence",
    "parley_outbox_oldest_age_seconds": (
        "age of the oldest message of each precedence waiting for a peer (0 when none waits)"
    ),
    "parley_witness_lag_entries": (
        "entries of this terminal's log not yet covered by a peer's cosignature"
    ),
    "parley_transcript_entries": "the size of this terminal's Merkle log",
    "parley_frozen": "1 while the terminal is frozen (it signs nothing), else 0",
    "parley_unacknowledged_messages": (
        "messages awaiting a human acknowledgement, by direction and precedence"
    ),
    "parley_overdue_messages": (
        "messages awaiting a human acknowledgement past their deadline, by direction and precedence"
    ),
    "parley_card_expiry_timestamp_seconds": "when a card ends (this terminal's and each peer's)",
    "parley_encryption_key_rotation_due_timestamp_seconds": (
        "when this terminal's current medium-term encryption key is due to be replaced"
    ),
    "parley_encryption_keys": "this terminal's encryption keys by state (current, grace)",
    "parley_alarms_open": "alarms not yet cleared, by kind and severity",
    "parley_security_events_total": "refused requests and other security events, by code",
}

DIRECTIONS = ("in", "out")


def scrape_token_file(data: DataDir) -> Path:
    """Where the scrape token's hash is kept."""
    return data.path / "metrics.token.sha256"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_scrape_token(data: DataDir) -> str:
    """Make a new scrape token (the previous one stops working); return it."""
    token = "pmt_" + secrets.token_urlsafe(32)
    write_private(scrape_token_file(data), (_digest(token) + "\n").encode())
    return token


def _scrape_token_matches(data: DataDir, supplied: str) -> bool:
    try:
        stored = scrape_token_file(data).read_text("ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    return bool(stored) and hmac.compare_digest(stored, _digest(supplied))


def metrics_actor(data: DataDir, console_token: str, authorization: str | None) -> Actor | None:
    """Who presents ``authorization`` (``Bearer TOKEN``) to ``/metrics``, or None.

    The console token is the local administrator; the scrape token acts as
    ``SCRAPER``, whom the policy lets read the metrics and nothing else. An
    operator account's password is not accepted here.
    """
    scheme, _, credentials = (authorization or "").partition(" ")
    supplied = credentials.strip()
    if scheme.lower() != "bearer" or not supplied:
        return None
    if hmac.compare_digest(supplied.encode(), console_token.encode()):
        return Actor("console-token", LOCAL_ADMIN, "metrics")
    if _scrape_token_matches(data, supplied):
        return Actor("scrape-token", SCRAPER, "metrics")
    return None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _age(now: datetime, then: datetime | None) -> float:
    then = _utc(then)
    return math.inf if then is None else max(0.0, (now - then).total_seconds())


class TerminalCollector(Collector):
    """Reads the terminal's records at each scrape (every call touches the database)."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.terminal)


def registry_for(terminal: Terminal) -> CollectorRegistry:
    """A registry holding only this terminal's collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TerminalCollector(terminal))
    return registry


def exposition(registry: CollectorRegistry, actor: Actor, accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type, for ``actor`` (checked by the policy).

    Reads the database: call it in a worker thread.
    """
    require(actor, "read_metrics")
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metric_families(terminal: Terminal) -> list[Metric]:
    """Every figure of ``METRICS``, read now from ``terminal``'s records."""
    now = terminal.clock()
    me = terminal.me
    families: list[Metric] = []

    build = InfoMetricFamily("parley_build", METRICS["parley_build_info"])
    build.add_metric(
        [],
        {"version": parley.__version__, "python": platform.python_version(), "party": me},
    )
    families.append(build)

    with reading(terminal.engine) as conn:
        links = conn.execute(select(m.links).order_by(m.links.c.peer, m.links.c.name)).all()
        outbox = conn.execute(
            select(
                m.outbox.c.peer,
                m.outbox.c.precedence,
                func.count(),
                func.min(m.messages.c.created_at),
            )
            .select_from(
                m.outbox.join(m.messages, m.messages.c.envelope_id == m.outbox.c.envelope_id)
            )
            .where(m.outbox.c.state == "pending")
            .group_by(m.outbox.c.peer, m.outbox.c.precedence)
        ).all()
        waiting_in = conn.execute(
            select(m.messages.c.precedence, m.messages.c.ack_due).where(
                m.messages.c.direction == "in",
                m.messages.c.ack_due.is_not(None),
                m.messages.c.acked_at.is_(None),
            )
        ).all()
        out_rows = conn.execute(
            select(
                m.messages.c.envelope_id,
                m.messages.c.precedence,
                m.messages.c.recipients,
                m.messages.c.ack_due,
            ).where(m.messages.c.direction == "out", m.messages.c.ack_due.is_not(None))
        ).all()
        acked = Counter(
            row.envelope_id
            for row in conn.execute(
                select(m.acks.c.envelope_id)
                .select_from(
                    m.acks.join(
                        m.messages,
                        (m.messages.c.envelope_id == m.acks.c.envelope_id)
                        & (m.messages.c.direction == "out"),
                    )
                )
                .distinct()
                .add_columns(m.acks.c.party)
            )
        )
        alarms = conn.execute(
            select(m.alarms.c.kind, m.alarms.c.severity, func.count())
            .where(m.alarms.c.cleared_at.is_(None))
            .group_by(m.alarms.c.kind, m.alarms.c.severity)
        ).all()
        events = conn.execute(
            select(m.security_events.c.code, func.count()).group_by(m.security_events.c.code)
        ).all()
        peer_cards = [
            IdentityCard.from_bytes(bytes(row.card))
            for row in conn.execute(select(m.peers.c.card)).all()
        ]
        keys = conn.execute(
            select(m.encryption_keys.c.serial, m.encryption_keys.c.created_at).where(
                m.encryption_keys.c.retired_at.is_(None), m.encryption_keys.c.destroyed_at.is_(None)
            )
        ).all()
        grace_keys = conn.execute(
            select(func.count()).where(
                m.encryption_keys.c.retired_at.is_not(None),
                m.encryption_keys.c.destroyed_at.is_(None),
            )
        ).scalar_one()

    families.extend(_link_families(links, now, terminal.config.link_test_interval))
    families.extend(_outbox_families(outbox, [c.party for c in peer_cards], now))
    families.extend(_transcript_families(terminal, [c.party for c in peer_cards]))
    families.extend(_ack_families(waiting_in, out_rows, acked, now))

    cards = GaugeMetricFamily(
        "parley_card_expiry_timestamp_seconds",
        METRICS["parley_card_expiry_timestamp_seconds"],
        labels=["party", "own"],
    )
    own_card = terminal.identity.card
    cards.add_metric([me, "true"], own_card.valid_until.timestamp())
    for card in sorted(peer_cards, key=lambda c: c.party):
        cards.add_metric([card.party, "false"], card.valid_until.timestamp())
    families.append(cards)

    rotation = GaugeMetricFamily(
        "parley_encryption_key_rotation_due_timestamp_seconds",
        METRICS["parley_encryption_key_rotation_due_timestamp_seconds"],
    )
    if keys:
        newest = max(keys, key=lambda r: int(r.serial))
        created = _utc(newest.created_at)
        assert created is not None
        rotation.add_metric([], (created + terminal.config.rotation_interval).timestamp())
    families.append(rotation)
    key_count = GaugeMetricFamily(
        "parley_encryption_keys", METRICS["parley_encryption_keys"], labels=["state"]
    )
    key_count.add_metric(["current"], len(keys))
    key_count.add_metric(["grace"], int(grace_keys))
    families.append(key_count)

    open_alarms = GaugeMetricFamily(
        "parley_alarms_open", METRICS["parley_alarms_open"], labels=["kind", "severity"]
    )
    for kind, severity, count in sorted(alarms):
        open_alarms.add_metric([kind, severity], count)
    families.append(open_alarms)

    security = CounterMetricFamily(
        "parley_security_events", METRICS["parley_security_events_total"], labels=["code"]
    )
    for code, count in sorted(events):
        security.add_metric([code], count)
    families.append(security)
    return families


def _link_families(links: Iterable[Any], now: datetime, test_interval: float) -> list[Metric]:
    up = GaugeMetricFamily("parley_link_up", METRICS["parley_link_up"], labels=["peer", "link"])
    state = GaugeMetricFamily(
        "parley_link_state", METRICS["parley_link_state"], labels=["peer", "link", "state"]
    )
    rtt = GaugeMetricFamily(
        "parley_link_rtt_seconds", METRICS["parley_link_rtt_seconds"], labels=["peer", "link"]
    )
    age = GaugeMetricFamily(
        "parley_link_last_success_age_seconds",
        METRICS["parley_link_last_success_age_seconds"],
        labels=["peer", "link"],
    )
    failures = GaugeMetricFamily(
        "parley_link_failures", METRICS["parley_link_failures"], labels=["peer", "link"]
    )
    tested = GaugeMetricFamily(
        "parley_link_last_test_age_seconds",
        METRICS["parley_link_last_test_age_seconds"],
        labels=["peer", "link"],
    )
    # As the worker schedules them: never more often than once a second.
    interval = GaugeMetricFamily(
        "parley_link_test_interval_seconds", METRICS["parley_link_test_interval_seconds"]
    )
    interval.add_metric([], max(1.0, test_interval))
    for link in links:
        labels = [link.peer, link.name]
        up.add_metric(labels, 1.0 if link.state == "up" else 0.0)
        for name in LINK_STATES:
            state.add_metric([*labels, name], 1.0 if link.state == name else 0.0)
        if link.rtt_ms is not None:
            rtt.add_metric(labels, float(link.rtt_ms) / 1000.0)
        age.add_metric(labels, _age(now, link.last_success))
        failures.add_metric(labels, float(link.failures or 0))
        tested.add_metric(labels, _age(now, link.last_test))
    return [up, state, rtt, age, failures, tested, interval]


def _outbox_families(rows: Iterable[Any], peers: Iterable[str], now: datetime) -> list[Metric]:
    depth = GaugeMetricFamily(
        "parley_outbox_messages",
        METRICS["parley_outbox_messages"],
        labels=["peer", "precedence"],
    )
    oldest = GaugeMetricFamily(
        "parley_peer_oldest_undelivered_age_seconds",
        METRICS["parley_peer_oldest_undelivered_age_seconds"],
        labels=["peer"],
    )
    oldest_by_precedence = GaugeMetricFamily(
        "parley_outbox_oldest_age_seconds",
        METRICS["parley_outbox_oldest_age_seconds"],
        labels=["peer", "precedence"],
    )
    counts: dict[tuple[str, str], int] = {}
    first: dict[tuple[str, str], datetime] = {}
    for peer, precedence, count, created in rows:
        key = (peer, precedence)
        counts[key] = counts.get(key, 0) + int(count)
        created = _utc(created)
        if created is not None and (key not in first or created < first[key]):
            first[key] = created
    every_peer = sorted({*peers, *(peer for peer, _ in counts)})
    for peer in every_peer:
        for precedence in PRECEDENCES:
            key = (peer, precedence)
            depth.add_metric([peer, precedence], counts.get(key, 0))
            oldest_by_precedence.add_metric(
                [peer, precedence], _age(now, first[key]) if key in first else 0.0
            )
        waiting = [first[key] for key in first if key[0] == peer]
        oldest.add_metric([peer], _age(now, min(waiting)) if waiting else 0.0)
    return [depth, oldest, oldest_by_precedence]


def _transcript_families(terminal: Terminal, peers: Iterable[str]) -> list[Metric]:
    with terminal.lock:
        party = terminal.party
        size = party.transcript.tree.size
        cosigned = {p: c.size if (c := party.last_cosigned_by(p)) else 0 for p in peers}
    entries = GaugeMetricFamily("parley_transcript_entries", METRICS["parley_transcript_entries"])
    entries.add_metric([], size)
    lag = GaugeMetricFamily(
        "parley_witness_lag_entries", METRICS["parley_witness_lag_entries"], labels=["peer"]
    )
    for peer, covered in sorted(cosigned.items()):
        lag.add_metric([peer], max(0, size - covered))
    frozen = GaugeMetricFamily("parley_frozen", METRICS["parley_frozen"])
    frozen.add_metric([], 1.0 if terminal.frozen else 0.0)
    return [entries, lag, frozen]


def _ack_families(
    waiting_in: Iterable[Any],
    out_rows: Iterable[Any],
    acked: Counter[str],
    now: datetime,
) -> list[Metric]:
    waiting: Counter[tuple[str, str]] = Counter()
    overdue: Counter[tuple[str, str]] = Counter()

    def count(direction: str, precedence: str, due: datetime | None) -> None:
        waiting[(direction, precedence)] += 1
        due = _utc(due)
        if due is not None and due <= now:
            overdue[(direction, precedence)] += 1

    for row in waiting_in:
        count("in", row.precedence, row.ack_due)
    for row in out_rows:
        # Awaiting while any recipient has not acknowledged it.
        if acked[row.envelope_id] < len(row.recipients.split(",")):
            count("out", row.precedence, row.ack_due)
    unacked_family = GaugeMetricFamily(
        "parley_unacknowledged_messages",
        METRICS["parley_unacknowledged_messages"],
        labels=["direction", "precedence"],
    )
    overdue_family = GaugeMetricFamily(
        "parley_overdue_messages",
        METRICS["parley_overdue_messages"],
        labels=["direction", "precedence"],
    )
    for direction in DIRECTIONS:
        for precedence in PRECEDENCES:
            unacked_family.add_metric([direction, precedence], waiting[(direction, precedence)])
            overdue_family.add_metric([direction, precedence], overdue[(direction, precedence)])
    return [unacked_family, overdue_family]
