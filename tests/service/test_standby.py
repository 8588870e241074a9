"""A standby ``parley serve`` on the same PostgreSQL database takes over from the active one.

US-EUCOM keeps its records in PostgreSQL and runs two processes on the same
data directory: the active one and a standby (``parley serve --standby``)
waiting on the party's advisory lock. RU-GS (SQLite) exchanges messages with
it all along, both ways, through the operator APIs. Mid-traffic:

1. the active process is SIGKILLed: the standby takes over (its listeners
   bound, ``serve.json`` written) within 10 s, measured and printed;
2. a new standby is started, and the session holding the lock is ended from
   the database side (``pg_terminate_backend``), as a lost database
   connection would end it: the active process stops at once (exit status
   3) and the standby takes over.

Then: every message either side accepted is delivered exactly once (once in
the receiver's index and once in its transcript), receipted, nothing is left
pending, and ``parley verify`` passes on both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import and_, func, select

from parley.config import DataDir
from parley.errors import UsageError
from parley.server import EXIT_LOCK_LOST, run
from parley.service.lock import DatabaseLock
from parley.service.setup import init_terminal
from parley.store import models as m
from parley.testing.network import (
    PASSPHRASE,
    TerminalProcess,
    make_network,
    postgres_database,
    wait_until,
)
from tests.service.conftest import POSTGRES_ADMIN, RU, US
from tests.service.test_chaos import converged, transcript_envelope_ids, unreceipted
from tests.service.test_faults import database, stop_and_verify

US_ID, RU_ID = US[0], RU[0]
TAKEOVER_LIMIT = 10.0
PRECEDENCES = ("FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE")


@dataclass
class Direction:
    sender: TerminalProcess
    recipient: str
    accepted: list[str] = field(default_factory=list)
    refused: int = 0


def sender_loop(direction: Direction, stop: threading.Event, errors: list[BaseException]) -> None:
    """Send until ``stop``; a send that failed (the sender down or dying) is sent again."""
    terminal = direction.sender
    token = DataDir(terminal.data).read_token()
    deadline = time.monotonic() + 180
    try:
        with httpx.Client(
            base_url=terminal.console_url + "/api/v1",
            headers={"authorization": f"Bearer {token}", "x-parley-operator": "standby-test"},
            timeout=10,
        ) as client:
            number = 0
            while not stop.is_set():
                body = {
                    "to": [direction.recipient],
                    "precedence": PRECEDENCES[number % len(PRECEDENCES)],
                    "text": f"{terminal.party}->{direction.recipient} {number}",
                }
                while True:
                    assert time.monotonic() < deadline, f"{body['text']} never accepted"
                    try:
                        response = client.post("/messages", json=body)
                    except httpx.TransportError:
                        direction.refused += 1
                        time.sleep(0.05)
                        continue
                    assert response.status_code == 200, response.text[:500]
                    direction.accepted.append(str(response.json()["id"]))
                    break
                number += 1
                stop.wait(0.05)
    except BaseException as exc:
        errors.append(exc)


def standby_of(active: TerminalProcess, label: str) -> TerminalProcess:
    """A second process for the same terminal: same data directory, waiting as a standby."""
    return TerminalProcess(
        active.party,
        active.data,
        active.peer_port,
        active.console_port,
        serve_args=("--standby",),
        label=label,
    )


def waiting(standby: TerminalProcess) -> bool:
    assert standby.running, standby.output()[-2000:]
    return "standby_waiting" in standby.output()


def take_over(standby: TerminalProcess) -> float:
    """Seconds from now until ``standby`` serves (``serve.json`` names it)."""
    began = time.monotonic()
    standby.wait_ready(timeout=30)
    return time.monotonic() - began


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, TerminalProcess]]:
    with postgres_database(POSTGRES_ADMIN) as url:
        terminals = make_network(tmp_path, (US, RU), databases={US_ID: url})
        try:
            yield terminals
        finally:
            for terminal in terminals.values():
                terminal.kill()


@pytest.mark.subprocess
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_standby_takes_over_mid_traffic(pair: dict[str, TerminalProcess]) -> None:
    us, ru = pair[US_ID], pair[RU_ID]
    standbys: list[TerminalProcess] = []
    engines = {US_ID: database(us), RU_ID: database(ru)}
    try:
        us.start(wait=False)
        ru.start(wait=False)
        us.wait_ready()
        ru.wait_ready()
        first = standby_of(us, "standby-a")
        standbys.append(first)
        first.start(wait=False)
        wait_until(lambda: waiting(first), timeout=30, what="the standby to wait")

        # A second active process is refused, naming the one that serves.
        refused = us.cli("serve", check=False, timeout=60)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "already running" in refused.stderr
        assert "served from its database by parley serve US-EUCOM" in refused.stderr

        stop = threading.Event()
        errors: list[BaseException] = []
        directions = [Direction(us, RU_ID), Direction(ru, US_ID)]
        threads = [
            threading.Thread(target=sender_loop, args=(d, stop, errors), daemon=True)
            for d in directions
        ]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(directions[0].accepted) >= 30, timeout=60, what="traffic")

            # 1. The active process dies.
            us.kill()
            took = take_over(first)
            print(f"standby took over {took:.2f} s after the active process was SIGKILLed")
            assert took < TAKEOVER_LIMIT, first.output()[-3000:]
            sent_before = len(directions[0].accepted)
            wait_until(
                lambda: len(directions[0].accepted) >= sent_before + 30,
                timeout=60,
                what="traffic through the new active process",
            )

            # 2. The active process loses its lock's session: it stops at once.
            second = standby_of(us, "standby-b")
            standbys.append(second)
            second.start(wait=False)
            wait_until(lambda: waiting(second), timeout=30, what="the second standby to wait")
            assert first.proc is not None
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                ended = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE %s",
                    (f"parley serve {US_ID} pid {first.proc.pid} on %",),
                ).fetchall()
            assert ended == [(True,)], ended
            began = time.monotonic()
            code = first.proc.wait(timeout=10)
            stopped = time.monotonic() - began
            assert code == EXIT_LOCK_LOST, first.output()[-3000:]
            assert "database_lock_lost" in first.output()
            took = take_over(second) + stopped
            print(
                f"active process stopped {stopped:.2f} s after its lock's session ended; "
                f"standby serving {took:.2f} s after it ended"
            )
            assert took < TAKEOVER_LIMIT, second.output()[-3000:]
            sent_before = len(directions[0].accepted)
            wait_until(
                lambda: len(directions[0].accepted) >= sent_before + 30,
                timeout=60,
                what="traffic through the second standby",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not errors, errors

        def drained() -> bool:
            done = all(unreceipted(engine) == 0 for engine in engines.values())
            for terminal in (second, ru):
                ok, _ = converged(terminal)
                done = done and ok
            return done

        wait_until(drained, timeout=120, interval=0.5, what="both terminals to drain")
        reports = stop_and_verify(second, ru)
        print("verify: " + "; ".join(f"{p} ok, {r['entries']} entries" for p, r in reports.items()))
        check_exactly_once(directions, engines, {US_ID: us, RU_ID: ru})
    finally:
        for standby in standbys:
            standby.kill()
        for engine in engines.values():
            engine.dispose()


def check_exactly_once(
    directions: list[Direction], engines: dict[str, Any], terminals: dict[str, TerminalProcess]
) -> None:
    for d in directions:
        sender, recipient = d.sender.party, d.recipient
        with engines[sender].connect() as conn:
            held = set(
                conn.execute(
                    select(m.messages.c.envelope_id).where(
                        and_(m.messages.c.direction == "out", m.messages.c.kind == "text")
                    )
                ).scalars()
            )
            pending = conn.execute(
                select(func.count()).select_from(m.outbox).where(m.outbox.c.state != "delivered")
            ).scalar_one()
        with engines[recipient].connect() as conn:
            got = list(
                conn.execute(
                    select(m.messages.c.envelope_id).where(
                        and_(m.messages.c.direction == "in", m.messages.c.kind == "text")
                    )
                ).scalars()
            )
        print(
            f"{sender} -> {recipient}: {len(d.accepted)} accepted, {len(held)} held "
            f"(a send cut short by the failover may be held and sent again), "
            f"{len(got)} received, {d.refused} sends retried"
        )
        assert len(set(d.accepted)) == len(d.accepted)
        assert set(d.accepted) <= held, "an accepted message is gone"
        assert len(got) == len(set(got)), "a message was received twice"
        assert set(got) == held, f"lost {len(held - set(got))}, invented {len(set(got) - held)}"
        assert pending == 0
    for party, terminal in terminals.items():
        counted = transcript_envelope_ids(terminal, engines[party])
        doubled = {i: n for i, n in counted.items() if n > 1}
        assert not doubled, f"{party}: envelopes logged more than once: {doubled}"


@pytest.mark.postgres
def test_database_lock_one_holder_at_a_time() -> None:
    with postgres_database(POSTGRES_ADMIN) as url:
        first, second = DatabaseLock(url, US_ID), DatabaseLock(url, US_ID)
        other_party = DatabaseLock(url, RU_ID)
        try:
            assert first.try_acquire()
            assert first.check()
            assert not second.try_acquire()
            assert first.name in str(second.holder())
            assert other_party.try_acquire(), "each party has a lock of its own"
            first.release()
            assert not first.check()
            assert second.try_acquire()
        finally:
            for lock in (first, second, other_party):
                lock.release()


def test_standby_needs_postgres(tmp_path: Path) -> None:
    init_terminal(
        tmp_path / "us",
        party=US_ID,
        name=US[1],
        passphrase=PASSPHRASE,
        peer_listen="127.0.0.1:0",
        console_listen="127.0.0.1:0",
        database=None,
        scrypt_n=2**10,
    )
    with pytest.raises(UsageError, match="--standby needs a PostgreSQL database"):
        run(tmp_path / "us", PASSPHRASE, standby=True)
