"""Faults between real terminals: cut, blackholed, delayed and reset links, and SIGKILLs.

Each test runs real ``parley serve`` processes on loopback (on SQLite and on
PostgreSQL, through the ``network`` fixture). Links run through ``FaultProxy``
instances, one per (owner, peer, link), created while ``make_network`` pins the
links, so a test can break exactly one path and watch the terminals cope.

What must hold whatever the network does: every message accepted by the
operator API is receipted by its recipient in the end, the recipient holds it
exactly once (once in its transcript, once in its message index), and
``parley verify`` passes on both sides after a clean stop.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text, update
from sqlalchemy.pool import NullPool

from parley.config import DataDir
from parley.service.terminal import Terminal
from parley.store import models
from parley.store.db import normalize_url
from parley.testing.faultproxy import FaultProxy
from parley.testing.network import PASSPHRASE, TerminalProcess, wait_until
from tests.service.conftest import RU, US, NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = pytest.mark.subprocess

US_ID, RU_ID = US[0], RU[0]

Links = Callable[[str, str, TerminalProcess], list[tuple[str, str]]]


class Proxies:
    """One ``FaultProxy`` per (owner, peer, link name), made as the links are pinned."""

    def __init__(self) -> None:
        self.by_link: dict[tuple[str, str, str], FaultProxy] = {}

    def links(self, *names: str) -> Links:
        """A ``links`` callable for ``make_network``: each link through its own proxy."""

        def make(owner: str, peer: str, peer_terminal: TerminalProcess) -> list[tuple[str, str]]:
            made = []
            for name in names:
                proxy = FaultProxy(("127.0.0.1", peer_terminal.peer_port))
                proxy.start()
                self.by_link[(owner, peer, name)] = proxy
                made.append((name, proxy.url()))
            return made

        return make

    def __getitem__(self, key: tuple[str, str, str]) -> FaultProxy:
        return self.by_link[key]

    def all(self) -> list[FaultProxy]:
        return list(self.by_link.values())

    def close(self) -> None:
        for proxy in self.by_link.values():
            proxy.close()


@pytest.fixture
def proxies() -> Iterator[Proxies]:
    made = Proxies()
    try:
        yield made
    finally:
        made.close()


# Helpers -----------------------------------------------------------------------


def start(*terminals: TerminalProcess) -> None:
    for terminal in terminals:
        terminal.start(wait=False)
    for terminal in terminals:
        terminal.wait_ready()


def send(terminal: TerminalProcess, body: str, precedence: str = "ROUTINE") -> str:
    sent = terminal.api(
        "POST", "/messages", {"to": [RU_ID], "precedence": precedence, "text": body}
    )
    return str(sent["id"])


def receipted(terminal: TerminalProcess, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` RU has receipted, by the sender's outbox (its newest 200 messages)."""
    held = {m["id"] for m in terminal.api("GET", "/outbox") if RU_ID in m["receipts"]}
    return held & set(ids)


def wait_receipted(terminal: TerminalProcess, ids: Sequence[str], *, timeout: float) -> None:
    missing: set[str] = set(ids)

    def done() -> bool:
        missing.difference_update(receipted(terminal, missing))
        return not missing

    began = time.monotonic()
    try:
        wait_until(done, timeout=timeout, interval=0.25, what="the receipts")
        print(f"{len(ids)} receipts in {time.monotonic() - began:.1f} s", flush=True)
    except TimeoutError:
        raise AssertionError(
            f"{len(missing)} of {len(ids)} messages not receipted after {timeout} s: "
            f"{[terminal.api('GET', f'/messages/{i}')['delivery'] for i in sorted(missing)[:3]]}"
        ) from None


def assert_received_once(ru: TerminalProcess, ids: Sequence[str]) -> None:
    """RU's inbox holds each message of ``ids`` exactly once, and nothing else from US."""
    inbox = [m["id"] for m in ru.api("GET", "/inbox") if m["sender"] == US_ID]
    assert len(inbox) == len(set(inbox)), "a message is in the inbox twice"
    assert sorted(inbox) == sorted(ids)


def open_alarms(terminal: TerminalProcess, kind: str, subject: str) -> list[dict[str, Any]]:
    return [
        a
        for a in terminal.api("GET", "/alarms")
        if a["kind"] == kind and a["subject"] == subject and a["cleared_at"] is None
    ]


def wait_alarm(
    terminal: TerminalProcess, kind: str, subject: str, *, timeout: float
) -> dict[str, Any]:
    found: list[dict[str, Any]] = wait_until(
        lambda: open_alarms(terminal, kind, subject),
        timeout=timeout,
        what=f"a {kind} alarm on {subject}",
    )
    return found[0]


def link_states(terminal: TerminalProcess) -> dict[str, str]:
    return {li["name"]: li["state"] for li in terminal.api("GET", "/links") if li["peer"] == RU_ID}


def stop_and_verify(*terminals: TerminalProcess) -> dict[str, dict[str, Any]]:
    """Stop cleanly, then ``parley verify`` each: it passes, and no envelope is logged twice."""
    reports = {}
    for terminal in terminals:
        began, running = time.monotonic(), terminal.running
        assert terminal.stop() == 0, terminal.output()[-3000:]
        if running:
            print(f"{terminal.party} stopped in {time.monotonic() - began:.1f} s", flush=True)
    for terminal in terminals:
        began = time.monotonic()
        result = terminal.cli("verify", "--json", check=False)
        print(f"{terminal.party} verified in {time.monotonic() - began:.1f} s", flush=True)
        report = json.loads(result.stdout)
        assert result.returncode == 0, report["failures"]
        assert report["ok"], report["failures"]
        # Every envelope in the transcript has exactly one row in the message
        # index (and the audit checked that each row names its entry), so no
        # envelope was logged twice.
        assert report["envelopes"] == report["messages"], report
        reports[terminal.party] = report
    return reports


def database(terminal: TerminalProcess) -> Engine:
    """A plain engine on the terminal's own database (read by the test only)."""
    url = DataDir(terminal.data).load_config().database
    return create_engine(normalize_url(url), poolclass=NullPool)


def set_link_timeout(terminal: TerminalProcess, seconds: float) -> None:
    data = DataDir(terminal.data)
    config = data.load_config()
    config.link_timeout = seconds
    data.save_config(config)


# 1. A link cut and restored ----------------------------------------------------


def test_link_cut_and_restored_during_traffic(network: NetworkFactory, proxies: Proxies) -> None:
    terminals = network(links=proxies.links("primary"))
    us, ru = terminals[US_ID], terminals[RU_ID]
    ids = [send(us, f"before the cut {i}") for i in range(20)]

    # Cut the path both ways: connections refused, open ones closed.
    for proxy in proxies.all():
        proxy.cut()
    cut_at = time.monotonic()
    during = [send(us, f"during the cut {i}") for i in range(20, 35)]
    ids += during
    time.sleep(max(0.0, 4.0 - (time.monotonic() - cut_at)))
    assert not receipted(us, during), "a message crossed a cut link"
    for proxy in proxies.all():
        proxy.restore()
    ids += [send(us, f"after the cut {i}") for i in range(35, 50)]

    wait_receipted(us, ids, timeout=90)
    failed = [m for m in us.api("GET", "/outbox") if m["delivery"][RU_ID]["attempts"] > 0]
    assert failed, "no delivery attempt failed: the cut was not felt"
    assert_received_once(ru, ids)
    stop_and_verify(us, ru)


def test_retries_waiting_on_backoff_go_as_soon_as_the_peer_answers_again(
    network: NetworkFactory, proxies: Proxies
) -> None:
    """A long outage leaves retries scheduled far ahead (backoff up to 60 s for
    ROUTINE); once the peer answers a health probe again they all go at once."""
    terminals = network(links=proxies.links("primary"))
    us, ru = terminals[US_ID], terminals[RU_ID]
    for proxy in proxies.all():
        proxy.cut()
    ids = [send(us, f"queued during the outage {i}") for i in range(30)]

    def all_failed_once() -> bool:
        outbox = {m["id"]: m for m in us.api("GET", "/outbox")}
        return all(outbox[i]["delivery"][RU_ID]["attempts"] >= 1 for i in ids)

    wait_until(all_failed_once, timeout=30, what="a failed attempt for each message")
    # Where a long backoff would put their next attempts: an hour away.
    engine = database(us)
    with engine.begin() as conn:
        conn.execute(
            update(models.outbox)
            .where(models.outbox.c.state == "pending")
            .values(next_attempt=datetime.now(UTC) + timedelta(hours=1))
        )
    engine.dispose()
    for proxy in proxies.all():
        proxy.restore()
    wait_receipted(us, ids, timeout=60)
    assert_received_once(ru, ids)
    stop_and_verify(us, ru)


# 2. One link of two down ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_one_link_down_traffic_goes_over_the_backup(
    network: NetworkFactory, proxies: Proxies, fault: str
) -> None:
    terminals = network(start=False, links=proxies.links("primary", "backup"))
    us, ru = terminals[US_ID], terminals[RU_ID]
    for terminal in (us, ru):
        set_link_timeout(terminal, 2.0)  # a blackholed request fails after 2 s, not 10
    start(us, ru)
    first = send(us, "both links up")
    wait_receipted(us, [first], timeout=30)

    primary = proxies[(US_ID, RU_ID, "primary")]
    getattr(primary, fault)()
    faulted_at = time.monotonic()
    routine = [send(us, f"over the backup {i}") for i in range(5)]
    flash = send(us, "FLASH over the backup", "FLASH")
    wait_receipted(us, [flash], timeout=15)
    flash_took = time.monotonic() - faulted_at
    wait_receipted(us, routine, timeout=60)
    for message_id in [*routine, flash]:
        delivery = us.api("GET", f"/messages/{message_id}")["delivery"][RU_ID]
        assert delivery["state"] == "delivered"
        assert delivery["link"] == "backup", delivery

    # A FLASH message goes over every link at once: the broken one costs nothing.
    assert flash_took < 15

    queued = us.api("POST", "/links/test")
    assert queued["queued"] == 2
    alarm = wait_alarm(us, "link_test_failed", f"{RU_ID}/primary", timeout=30)
    assert alarm["severity"] == "warning"
    wait_until(
        lambda: (s := link_states(us))["primary"] in ("degraded", "down") and s["backup"] == "up",
        timeout=30,
        what="primary degraded or down, backup up",
    )
    assert not open_alarms(us, "link_test_failed", f"{RU_ID}/backup")
    assert not open_alarms(us, "peer_unreachable", RU_ID)

    # Mended, the primary passes its next test.
    primary.restore()
    us.api("POST", "/links/test")
    wait_until(
        lambda: link_states(us) == {"primary": "up", "backup": "up"},
        timeout=60,
        what="both links up again",
    )
    assert_received_once(ru, [first, *routine, flash])
    stop_and_verify(us, ru)


# 3. Every link down ----------------------------------------------------------------


def test_every_link_down_raises_peer_unreachable_then_recovers(
    network: NetworkFactory, proxies: Proxies
) -> None:
    terminals = network(links=proxies.links("primary", "backup"), link_test_interval=1.0)
    us, ru = terminals[US_ID], terminals[RU_ID]
    first = send(us, "before the outage")
    wait_receipted(us, [first], timeout=30)

    for proxy in proxies.all():
        proxy.cut()
    cut_at = time.monotonic()
    during = [
        send(us, f"during the outage {i}", precedence)
        for i, precedence in enumerate(["ROUTINE", "FLASH", "IMMEDIATE", "PRIORITY"])
    ]
    flash = during[1]
    alarm = wait_alarm(us, "peer_unreachable", RU_ID, timeout=45)
    assert alarm["severity"] == "critical"
    assert link_states(us) == {"primary": "down", "backup": "down"}
    for subject in (f"{RU_ID}/primary", f"{RU_ID}/backup"):
        wait_alarm(us, "link_test_failed", subject, timeout=30)
    assert not receipted(us, during)

    time.sleep(max(0.0, 8.0 - (time.monotonic() - cut_at)))  # let the backoffs grow
    for proxy in proxies.all():
        proxy.restore()
    restored_at = time.monotonic()
    after = send(us, "after the outage")
    # FLASH retries within 2 s, however long the outage was.
    wait_receipted(us, [flash], timeout=30)
    flash_took = time.monotonic() - restored_at
    print(f"FLASH receipted {flash_took:.1f} s after the links came back", flush=True)
    assert flash_took < 6.0
    wait_receipted(us, [*during, after], timeout=90)
    wait_until(
        lambda: not open_alarms(us, "peer_unreachable", RU_ID),
        timeout=30,
        what="the peer_unreachable alarm to clear",
    )
    alarms = us.api("GET", "/alarms")
    cleared = [a for a in alarms if a["id"] == alarm["id"]]
    assert cleared[0]["cleared_at"] is not None
    failed_tests = [a for a in alarms if a["kind"] == "link_test_failed"]
    print(
        f"{len(failed_tests)} link_test_failed alarms on US, "
        f"{sum(a['cleared_at'] is None for a in failed_tests)} still open after recovery",
        flush=True,
    )
    assert_received_once(ru, [first, *during, after])
    stop_and_verify(us, ru)


# 4. Delays and resets --------------------------------------------------------------


def test_delay_and_resets_during_traffic(network: NetworkFactory, proxies: Proxies) -> None:
    terminals = network(links=proxies.links("primary"))
    us, ru = terminals[US_ID], terminals[RU_ID]
    link = proxies[(US_ID, RU_ID, "primary")]
    link.delay(0.2)
    mix = ["ROUTINE"] * 6 + ["PRIORITY", "IMMEDIATE", "FLASH"]
    ids: list[str] = []
    # Three bursts of resets, each while a batch is on the slow link (a round
    # trip takes at least 0.4 s): every open connection is reset, and every new
    # one for half a second.
    for burst in range(3):
        ids += [send(us, f"over a slow link {burst}.{i}", mix[i % len(mix)]) for i in range(10)]
        time.sleep(0.15)
        link.reset()
        time.sleep(0.5)
        link.restore()
        link.delay(0.2)
    ids += [send(us, f"over a slow link 3.{i}", mix[i % len(mix)]) for i in range(10)]

    wait_receipted(us, ids, timeout=120)
    attempts = sum(m["delivery"][RU_ID]["attempts"] for m in us.api("GET", "/outbox"))
    assert attempts > 0, "no delivery attempt failed: the resets were not felt"
    link.restore()
    assert_received_once(ru, ids)
    stop_and_verify(us, ru)


# 5. SIGKILL chaos ----------------------------------------------------------------------

CHAOS_MESSAGES = 1000
CHAOS_SENDERS = 4
CHAOS_SEED = 20261127
CHAOS_PRECEDENCES = {"ROUTINE": 85, "PRIORITY": 8, "IMMEDIATE": 5, "FLASH": 2}


class ChaosSenders:
    """Operator API clients sending messages 0..count-1 to RU, retrying while US is down.

    A message counts as accepted once the API returned its id (it is durable
    then). A request cut short by a kill is sent again: if the first one was
    stored after all, US holds one more message, which must be delivered too.
    """

    def __init__(self, us: TerminalProcess, precedences: Sequence[str], deadline: float) -> None:
        self.url = us.console_url + "/api/v1"
        self.token = DataDir(us.data).read_token()
        self.precedences = precedences
        self.deadline = deadline
        self.accepted: list[str] = []
        self.refused = 0  # connection refused: US was down, nothing sent
        self.cut_short = 0  # US died during the request
        self.errors: list[BaseException] = []
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self.precedences) or self.errors:
                return None
            self._next += 1
            return self._next - 1

    def _count(self, *, refused: int = 0, cut_short: int = 0) -> None:
        with self._lock:
            self.refused += refused
            self.cut_short += cut_short

    def _run(self) -> None:
        try:
            with httpx.Client(
                base_url=self.url,
                headers={"authorization": f"Bearer {self.token}", "x-parley-operator": "chaos"},
                timeout=30,
            ) as client:
                while (index := self._take()) is not None:
                    self._send(client, index)
        except BaseException as exc:
            with self._lock:
                self.errors.append(exc)

    def _send(self, client: httpx.Client, index: int) -> None:
        body = {"to": [RU_ID], "precedence": self.precedences[index], "text": f"chaos {index}"}
        while True:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"message {index} not accepted in time")
            try:
                response = client.post("/messages", json=body)
            except httpx.ConnectError:
                self._count(refused=1)
            except httpx.TransportError:
                self._count(cut_short=1)
            else:
                if response.status_code != 200:
                    raise AssertionError(f"send {index}: {response.status_code} {response.text}")
                self.accepted.append(str(response.json()["id"]))
                return
            time.sleep(0.05)

    def run(self, senders: int) -> None:
        threads = [
            threading.Thread(target=self._run, name=f"sender-{n}", daemon=True)
            for n in range(senders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(1.0, self.deadline - time.monotonic() + 30))
        assert not any(thread.is_alive() for thread in threads), "a sender is stuck"
        assert not self.errors, self.errors


def test_sigkill_chaos(network: NetworkFactory) -> None:
    terminals = network()
    us, ru = terminals[US_ID], terminals[RU_ID]
    rng = random.Random(CHAOS_SEED)
    began = time.monotonic()

    def say(text_: str) -> None:
        print(f"[chaos {time.monotonic() - began:6.1f} s] {text_}", flush=True)

    precedences = rng.choices(
        list(CHAOS_PRECEDENCES), weights=list(CHAOS_PRECEDENCES.values()), k=CHAOS_MESSAGES
    )
    # Kill points, by the number of messages accepted so far: three of US and
    # three of RU while sending, and one more of RU right after the last send
    # (while the outbox drains). Each kill comes up to 0.4 s after its point
    # (or after the previous restart, if that came later), so it lands
    # anywhere in a request; each restart follows after 0.3-2 s.
    points = sorted(rng.sample(range(50, CHAOS_MESSAGES - 50), 6))
    victims = [US_ID] * 3 + [RU_ID] * 3
    rng.shuffle(victims)
    plan = [
        (point, victim, rng.uniform(0.0, 0.4), rng.uniform(0.3, 2.0))
        for point, victim in [*zip(points, victims, strict=True), (CHAOS_MESSAGES, RU_ID)]
    ]
    say("plan: " + ", ".join(f"{v} at #{p} (+{j:.2f} s, down {d:.1f} s)" for p, v, j, d in plan))

    senders = ChaosSenders(us, precedences, deadline=time.monotonic() + 240)
    sending_done = threading.Event()
    chaos_errors: list[BaseException] = []
    kills = {US_ID: 0, RU_ID: 0}

    def chaos() -> None:
        try:
            for point, victim, jitter, down in plan:
                while len(senders.accepted) < point and not sending_done.is_set():
                    time.sleep(0.005)
                time.sleep(jitter)
                terminal = terminals[victim]
                terminal.kill()
                kills[victim] += 1
                say(f"SIGKILL {victim} after {len(senders.accepted)} accepted")
                time.sleep(down)
                restarting = time.monotonic()
                terminal.start()
                say(f"restarted {victim} (ready in {time.monotonic() - restarting:.1f} s)")
        except BaseException as exc:
            chaos_errors.append(exc)
            raise

    chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    chaos_thread.start()
    try:
        senders.run(CHAOS_SENDERS)
    finally:
        sending_done.set()
    accepted = senders.accepted
    sent_in = time.monotonic() - began
    say(
        f"{len(accepted)} messages accepted in {sent_in:.1f} s ({len(accepted) / sent_in:.1f}/s, "
        f"{CHAOS_SENDERS} senders); {senders.refused} sends refused while US was down, "
        f"{senders.cut_short} cut short by a kill"
    )
    chaos_thread.join(timeout=120)
    assert not chaos_thread.is_alive(), "the chaos thread is stuck"
    assert not chaos_errors, chaos_errors
    say(f"kills: {kills}")
    assert kills == {US_ID: 3, RU_ID: 4}
    assert len(accepted) == len(set(accepted)) == CHAOS_MESSAGES

    us_db, ru_db = database(us), database(ru)
    try:
        # Every text message US holds (accepted, or stored just before a kill)
        # must be receipted by RU.
        unreceipted = text(
            "SELECT count(*) FROM messages m WHERE m.direction = 'out' AND m.kind = 'text' "
            "AND NOT EXISTS (SELECT 1 FROM receipts r "
            "WHERE r.envelope_id = m.envelope_id AND r.receiver = :peer)"
        )
        last_report = [0.0]

        def all_receipted() -> bool:
            with us_db.connect() as conn:
                left = int(conn.execute(unreceipted, {"peer": RU_ID}).scalar_one())
            if time.monotonic() - last_report[0] > 10:
                last_report[0] = time.monotonic()
                say(f"{left} messages not receipted yet")
            return left == 0

        wait_until(all_receipted, timeout=180, interval=0.5, what="every receipt")
        say(f"every message receipted, {time.monotonic() - began:.1f} s after the start")
        for terminal in (us, ru):
            assert terminal.stop() == 0, terminal.output()[-3000:]

        with us_db.connect() as conn:
            sent: dict[str, str] = dict(
                conn.execute(
                    text(
                        "SELECT envelope_id, body FROM messages "
                        "WHERE direction = 'out' AND kind = 'text'"
                    )
                ).all()
            )
            held_receipts = [
                row[0]
                for row in conn.execute(
                    text("SELECT envelope_id FROM receipts WHERE receiver = :peer"),
                    {"peer": RU_ID},
                )
            ]
            undelivered = conn.execute(
                text(
                    "SELECT count(*) FROM outbox o JOIN messages m "
                    "ON m.envelope_id = o.envelope_id "
                    "WHERE m.kind = 'text' AND o.state <> 'delivered'"
                )
            ).scalar_one()
        with ru_db.connect() as conn:
            received_rows = conn.execute(
                text(
                    "SELECT envelope_id, body, sender FROM messages "
                    "WHERE direction = 'in' AND kind = 'text'"
                )
            ).all()
    finally:
        us_db.dispose()
        ru_db.dispose()

    received = [row[0] for row in received_rows]
    say(
        f"US holds {len(sent)} text messages ({len(sent) - len(accepted)} stored just before a "
        f"kill, their id never returned), RU holds {len(received)}"
    )
    assert set(accepted) <= set(sent)
    # RU holds each message exactly once, and nothing US did not send.
    assert len(received) == len(set(received))
    assert set(received) == set(sent)
    assert {row[0]: row[1] for row in received_rows} == sent
    assert {row[2] for row in received_rows} == {US_ID}
    # One receipt per message on US, and every outbox row delivered.
    wanted = set(accepted)
    accepted_receipts = [r for r in held_receipts if r in wanted]
    assert len(accepted_receipts) == len(set(accepted_receipts)) == CHAOS_MESSAGES
    assert undelivered == 0

    reports = stop_and_verify(us, ru)
    say(f"verify: {reports}")
    say(f"done in {time.monotonic() - began:.1f} s")


# Found by these tests, now guarded ------------------------------------------------


def test_flash_is_not_held_behind_a_link_test_on_a_blackholed_link(
    network: NetworkFactory, proxies: Proxies
) -> None:
    terminals = network(links=proxies.links("primary", "backup"))
    us = terminals[US_ID]
    first = send(us, "both links up")
    wait_receipted(us, [first], timeout=30)
    proxies[(US_ID, RU_ID, "primary")].blackhole()
    us.api("POST", "/links/test")  # one test message pinned to each link
    time.sleep(1.0)  # the worker is now waiting on the blackholed primary
    sent_at = time.monotonic()
    flash = send(us, "FLASH with a healthy backup link", "FLASH")
    wait_receipted(us, [flash], timeout=30)
    took = time.monotonic() - sent_at
    print(f"FLASH receipted {took:.1f} s after it was sent", flush=True)
    # FLASH goes over every link at once and retries within 2 s; the backup is healthy.
    assert took < 3.0


def test_a_once_alarm_is_raised_once_under_concurrent_failures(
    network: NetworkFactory,
) -> None:
    """``peer_unreachable`` is raised with ``once=True`` by whichever link failure finds
    every link down; the worker records failures of parallel FLASH posts in parallel
    threads. Seen over the wire in the all-links-down test on PostgreSQL (two open
    ``peer_unreachable`` alarms 3 ms apart, in some runs); here the same calls are made
    at once from threads, many times over, so the race is not left to chance.
    """
    terminals = network(start=False)
    terminal = Terminal.open(terminals[US_ID].data, PASSPHRASE)
    rounds, threads = 10, 8
    try:
        for round_ in range(rounds):
            barrier = threading.Barrier(threads)

            def raise_it(
                subject: str = f"PEER-{round_}", barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                terminal.raise_alarm(
                    "peer_unreachable", "critical", subject, "every link is down", once=True
                )

            workers = [threading.Thread(target=raise_it) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
        raised = Counter(a["subject"] for a in terminal.alarms() if a["kind"] == "peer_unreachable")
    finally:
        terminal.engine.dispose()
    print(f"peer_unreachable alarms per subject: {dict(raised)}", flush=True)
    assert raised == {f"PEER-{n}": 1 for n in range(rounds)}


def test_clean_stop_is_prompt_with_idle_peer_connections(network: NetworkFactory) -> None:
    terminals = network()
    us, ru = terminals[US_ID], terminals[RU_ID]
    # RU tests its link to US 2 s after it starts, and keeps the connection.
    wait_until(
        lambda: all(li["last_test"] for li in ru.api("GET", "/links")),
        timeout=30,
        what="RU's link test",
    )
    time.sleep(2.0)  # RU's witness round after the test is over: RU is idle now
    stopping = time.monotonic()
    assert us.stop() == 0
    took = time.monotonic() - stopping
    print(f"US stopped in {took:.1f} s", flush=True)
    assert took < 5.0
