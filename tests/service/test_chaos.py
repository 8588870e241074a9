"""Chaos over three terminals: SIGKILLs, cut, delayed and reset links, and a skewed clock.

US-EUCOM and RU-GS keep SQLite files and UA-GS a PostgreSQL database, so one run
covers both backends. Every terminal pins the other two, and reaches each of them
over two links (``primary`` and ``backup``), each through its own ``FaultProxy``,
so failover is exercised. RU-GS runs three minutes ahead of the others: its
``parley serve`` runs under libfaketime (Debian's ``faketime`` package, installed
by ``.ci/run``).

While every terminal sends to each of the other two (mixed precedences, through
the operator API), a seeded schedule SIGKILLs and restarts terminals, and cuts,
partitions (both links, both ways), delays and resets links. The seed is random
and printed; ``PARLEY_CHAOS_SEED`` replays a schedule (the timing of the
processes is not replayed). Then every fault is lifted and the network drains;
what must hold:

* no message lost and none duplicated: each receiver holds every text message
  its sender holds for it exactly once (once in its transcript, once in its
  message index, with the same body), and nothing else;
* every sender holds a receipt from the receiver for each, and no outbox row
  is left pending;
* every terminal's latest checkpoint, at its final log size, is cosigned by
  both peers (the owner holds the cosignatures, each witness its own record);
* ``parley verify`` passes on all three after a clean stop.

Keys change under the chaos too: every terminal makes a new encryption key
every ``KEY_ROTATION`` and destroys a replaced one ``KEY_GRACE`` later (so
keys are destroyed while messages sealed to later ones are still under way),
and halfway through, ``ROTATED`` rotates its identity (``POST
/api/v1/keys/rotate``): its peers must hold its new card, and nothing may be
lost across either change.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, and_, func, select, text

from parley.config import DataDir
from parley.core.envelope import read_envelope
from parley.core.transcript import EntryType, split_entry
from parley.service.cardchain import load_chain, load_peer_chains
from parley.service.terminal import CardBundle
from parley.store import models as m
from parley.testing.network import TerminalProcess, make_network, postgres_database, wait_until
from tests.service.conftest import POSTGRES_ADMIN, RU, UA, US
from tests.service.test_faults import Proxies, database, stop_and_verify

# Three `parley serve` processes, one on PostgreSQL, for minutes.
pytestmark = [pytest.mark.subprocess, pytest.mark.postgres, pytest.mark.slow]

US_ID, RU_ID, UA_ID = US[0], RU[0], UA[0]
PARTIES = (US, RU, UA)
POSTGRES_PARTY = UA_ID
SKEWED = RU_ID
SKEW_SECONDS = 180  # well inside protocol.max_clock_skew (600 s)

CHAOS_SECONDS = 90.0
SEND_PAUSE = (0.1, 0.5)  # seconds between two sends in one direction
PRECEDENCES = {"ROUTINE": 55, "PRIORITY": 20, "IMMEDIATE": 15, "FLASH": 10}
KILL_GAP = (1.0, 7.0)  # seconds from a restart to the next SIGKILL
DOWN_FOR = (0.3, 3.0)  # seconds a killed terminal stays down
DOUBLE_KILL = 0.25  # how often a second terminal is killed along with the first
FAULT_GAP = (0.4, 2.0)  # seconds between two link faults
FAULTS = {"cut": 30, "partition": 10, "delay": 35, "reset": 25}
DRAIN_TIMEOUT = 150.0
KEY_ROTATION = "15s"  # a new encryption key this often on every terminal
KEY_GRACE = "60s"  # a replaced key is destroyed this long after
ROTATED = US_ID  # rotates its identity halfway through the chaos


def libfaketime() -> str | None:
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def faketime_env(library: str, seconds: int) -> dict[str, str]:
    """Run a process ``seconds`` ahead on the wall clock (CLOCK_REALTIME) only.

    With libfaketime 0.9.10 (Debian 12) and Python 3.11:

    * the monotonic clock must stay real: faked, every timed wait hangs
      (``sem_clockwait`` reaches the kernel with a faked deadline, so
      ``threading.Event().wait(0.3)`` never returns). Left real, only
      ``time.sleep`` breaks (``clock_nanosleep`` with ``TIMER_ABSTIME`` gets a
      negative time: EINVAL, libfaketime issue 426), and ``parley serve`` never
      calls it;
    * its "monotonic fix", switched on by itself for this glibc, turns the
      GIL's timed condition wait into an untimed one: a thread waiting for the
      GIL then waits until the holder lets go of it by itself (about 400 ms
      behind a busy thread instead of 5 ms), which made the skewed terminal
      answer its operator API five times slower. ``FAKETIME_FORCE_MONOTONIC_FIX=0``
      keeps it off.
    """
    return {
        "LD_PRELOAD": library,
        "FAKETIME": f"+{seconds}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
    }


def exited(terminal: TerminalProcess) -> int | None:
    """The exit status of a serve process that ended by itself (not killed by the test)."""
    return terminal.proc.poll() if terminal.proc is not None else None


def utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes: every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def three_terminals(tmp_path: Path) -> Iterator[tuple[dict[str, TerminalProcess], Proxies]]:
    library = libfaketime()
    if library is None:
        pytest.fail(
            "libfaketime is not installed: apt-get install faketime (.ci/run does it), "
            "the chaos test runs one terminal's clock ahead with it"
        )
    proxies = Proxies()
    with contextlib.ExitStack() as stack:
        stack.callback(proxies.close)
        postgres = stack.enter_context(postgres_database(POSTGRES_ADMIN))
        terminals = make_network(
            tmp_path,
            PARTIES,
            databases={POSTGRES_PARTY: postgres},
            links=proxies.links("primary", "backup"),
            serve_env={SKEWED: faketime_env(library, SKEW_SECONDS)},
        )
        for terminal in terminals.values():
            data = DataDir(terminal.data)
            config = data.load_config()
            config.encryption_key_rotation, config.encryption_key_grace = KEY_ROTATION, KEY_GRACE
            data.save_config(config)
        try:
            yield terminals, proxies
        finally:
            for terminal in terminals.values():
                terminal.kill()


class Clock:
    """Elapsed time since the test began, for the log lines it prints."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            print(f"[chaos {time.monotonic() - self.began:6.1f} s] {line}", flush=True)


# Traffic ------------------------------------------------------------------------------


@dataclass
class Direction:
    sender: str
    recipient: str
    accepted: list[str] = field(default_factory=list)
    precedences: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # connection refused: the sender was down, nothing sent
    cut_short: int = 0  # the sender died (or the request failed) mid-request


class Traffic:
    """One thread per (sender, recipient), sending through the sender's operator API.

    A message counts as accepted once the API returned its id (it is durable
    then). A request cut short by a kill is sent again: if the first one was
    stored after all, the sender holds one more message, which must be
    delivered too. Sending stops when ``stop`` is set, after the message in
    hand is accepted.
    """

    def __init__(
        self, terminals: dict[str, TerminalProcess], seed: int, stop: threading.Event
    ) -> None:
        self.terminals = terminals
        self.seed = seed
        self.stop = stop
        self.directions = [
            Direction(sender, recipient)
            for sender in terminals
            for recipient in terminals
            if sender != recipient
        ]
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.deadline = time.monotonic() + CHAOS_SECONDS + 60

    def start(self) -> None:
        for direction in self.directions:
            thread = threading.Thread(
                target=self._run,
                args=(direction,),
                name=f"send-{direction.sender}-{direction.recipient}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(max(1.0, self.deadline - time.monotonic() + 30))
        assert not any(thread.is_alive() for thread in self.threads), "a sender is stuck"
        assert not self.errors, self.errors

    def _run(self, direction: Direction) -> None:
        # Not for security: a repeatable choice of precedences and pauses.
        rng = random.Random(f"{self.seed}/{direction.sender}->{direction.recipient}")
        terminal = self.terminals[direction.sender]
        token = DataDir(terminal.data).read_token()
        try:
            with httpx.Client(
                base_url=terminal.console_url + "/api/v1",
                headers={"authorization": f"Bearer {token}", "x-parley-operator": "chaos"},
                timeout=30,
            ) as client:
                number = 0
                while not self.stop.is_set():
                    precedence = rng.choices(list(PRECEDENCES), list(PRECEDENCES.values()))[0]
                    body = {
                        "to": [direction.recipient],
                        "precedence": precedence,
                        "text": f"chaos {direction.sender}->{direction.recipient} {number}",
                    }
                    direction.accepted.append(self._send(client, direction, body))
                    direction.precedences[precedence] += 1
                    number += 1
                    self.stop.wait(rng.uniform(*SEND_PAUSE))  # pacing only
        except BaseException as exc:
            self.errors.append(exc)

    def _send(self, client: httpx.Client, direction: Direction, body: dict[str, Any]) -> str:
        while True:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{body['text']} not accepted in time")
            try:
                response = client.post("/messages", json=body)
            except httpx.ConnectError:
                direction.refused += 1
            except httpx.TransportError:
                direction.cut_short += 1
            else:
                if response.status_code != 200:
                    raise AssertionError(
                        f"{body['text']}: {response.status_code} {response.text[:500]}"
                    )
                return str(response.json()["id"])
            time.sleep(0.05)  # the sender is down: try again shortly


# Faults -------------------------------------------------------------------------------


class Faults:
    """Two threads of seeded faults until ``stop`` is set: SIGKILLs and link faults."""

    def __init__(
        self,
        terminals: dict[str, TerminalProcess],
        proxies: Proxies,
        seed: int,
        stop: threading.Event,
        say: Callable[[str], None],
    ) -> None:
        self.terminals = terminals
        self.proxies = proxies
        self.seed = seed
        self.stop = stop
        self.say = say
        self.kills: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self.ready_in: list[float] = []
        self.faults: Counter[str] = Counter()
        self.crashes: list[str] = []
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._guard(self._kill_loop), name="killer", daemon=True),
            threading.Thread(target=self._guard(self._link_loop), name="links", daemon=True),
        ]

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:
                self.errors.append(exc)
                self.say(f"fault thread failed: {exc!r}")

        return run

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in self.threads), "a fault thread is stuck"
        assert not self.errors, self.errors

    def _kill_loop(self) -> None:
        rng = random.Random(f"{self.seed}/kills")  # a repeatable schedule
        victims: list[str] = []
        while not self.stop.wait(rng.uniform(*KILL_GAP)):
            if not victims:  # every terminal once per round, in a random order
                victims = list(self.terminals)
                rng.shuffle(victims)
            group = [victims.pop()]
            if victims and rng.random() < DOUBLE_KILL:
                group.append(victims.pop())  # two terminals down at once
            down = rng.uniform(*DOWN_FOR)
            for victim in group:
                if (code := exited(self.terminals[victim])) is not None:
                    self.crashes.append(f"{victim} exited with {code} by itself")
                self.terminals[victim].kill()
                self.kills[victim] += 1
            self.say(f"SIGKILL {' and '.join(group)}; down for {down:.1f} s")
            time.sleep(down)  # the outage itself, not a wait for a condition
            restarting = time.monotonic()
            for victim in group:
                self.terminals[victim].start(wait=False)
            for victim in group:
                self.terminals[victim].wait_ready()
                self.restarts[victim] += 1
            self.ready_in.append(time.monotonic() - restarting)
            self.say(f"restarted {' and '.join(group)} (ready in {self.ready_in[-1]:.1f} s)")

    def _link_loop(self) -> None:
        rng = random.Random(f"{self.seed}/links")  # a repeatable schedule
        keys = sorted(self.proxies.by_link)
        pairs = sorted({tuple(sorted((owner, peer))) for owner, peer, _ in keys})
        busy: dict[tuple[str, str, str], float] = {}  # proxy -> when its fault ends
        next_fault = time.monotonic() + rng.uniform(*FAULT_GAP)
        while not self.stop.wait(0.05):
            now = time.monotonic()
            for key, ends in list(busy.items()):
                if ends <= now:
                    self.proxies[key].restore()
                    del busy[key]
            if now < next_fault:
                continue
            next_fault = now + rng.uniform(*FAULT_GAP)
            kind = rng.choices(list(FAULTS), list(FAULTS.values()))[0]
            if kind == "partition":
                a, b = rng.choice(pairs)
                chosen = [k for k in keys if {k[0], k[1]} == {a, b} and k not in busy]
                if len(chosen) < 4:
                    continue
                lasts = rng.uniform(2.0, 8.0)
                for key in chosen:
                    self.proxies[key].cut()
                    busy[key] = now + lasts
                self.faults[kind] += 1
                self.say(f"partition {a} | {b} for {lasts:.1f} s")
                continue
            free = [k for k in keys if k not in busy]
            if not free:
                continue
            key = rng.choice(free)
            proxy = self.proxies[key]
            name = f"{key[0]}->{key[1]} {key[2]}"
            if kind == "cut":
                lasts = rng.uniform(1.0, 8.0)
                proxy.cut()
                self.say(f"cut {name} for {lasts:.1f} s")
            elif kind == "delay":
                lasts, seconds = rng.uniform(2.0, 10.0), rng.uniform(0.05, 0.6)
                proxy.delay(seconds)
                self.say(f"delay {name} by {seconds:.2f} s for {lasts:.1f} s")
            else:
                lasts = rng.uniform(0.1, 1.5)
                proxy.reset()
                self.say(f"reset {name} for {lasts:.1f} s")
            busy[key] = now + lasts
            self.faults[kind] += 1
        for key in busy:
            self.proxies[key].restore()


# Reading the records ------------------------------------------------------------------

UNRECEIPTED = text(
    "SELECT count(*) FROM messages m WHERE m.direction = 'out' AND m.kind = 'text' "
    "AND NOT EXISTS (SELECT 1 FROM receipts r "
    "WHERE r.envelope_id = m.envelope_id AND r.receiver = m.recipients)"
)


def unreceipted(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(UNRECEIPTED).scalar_one())


def transcript_envelope_ids(terminal: TerminalProcess, engine: Engine) -> Counter[str]:
    """How many times each envelope id is in the terminal's transcript (each envelope
    verified against its sender's whole card chain: ``ROTATED`` changed cards)."""
    own = CardBundle.from_json(DataDir(terminal.data).card_file.read_bytes()).card
    found: Counter[str] = Counter()
    with engine.connect() as conn:
        cards = {party: chain for party, (chain, _tls) in load_peer_chains(conn).items()}
        cards[terminal.party] = load_chain(conn, own)
        for entry in conn.execute(
            select(m.log_entries.c.entry).order_by(m.log_entries.c.idx)
        ).scalars():
            kind, raw = split_entry(bytes(entry))
            if kind is EntryType.ENVELOPE:
                found[read_envelope(raw, cards.get).id] += 1
    return found


def converged(terminal: TerminalProcess, target: int | None = None) -> tuple[bool, dict[str, Any]]:
    """Nothing pending, and a log size of at least ``target`` (by default the current
    size) cosigned by every peer.

    The logs never stop growing for good (each terminal announces a new encryption key
    every few seconds), so the drain waits for every peer to cosign a tree holding
    everything there was once the traffic was delivered, not for a quiet moment.
    """
    status: dict[str, Any] = terminal.api("GET", "/status")
    cosigned = status["cosigned_by"]
    if target is None:
        target = int(status["log_size"])
    done = status["pending"] == 0 and all(
        int(cosigned.get(peer) or 0) >= target for peer in status["peers"]
    )
    return done, status


# The test -----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_three_terminal_chaos(
    three_terminals: tuple[dict[str, TerminalProcess], Proxies],
) -> None:
    terminals, proxies = three_terminals
    seed = int(os.environ.get("PARLEY_CHAOS_SEED") or secrets.randbits(32))
    say = Clock()
    say(
        f"seed {seed} (PARLEY_CHAOS_SEED={seed} replays the schedule); "
        f"{POSTGRES_PARTY} on PostgreSQL, the others on SQLite; "
        f"{SKEWED} runs {SKEW_SECONDS} s ahead; {len(proxies.all())} links, each via a proxy"
    )
    engines = {party: database(terminal) for party, terminal in terminals.items()}
    wall_start = datetime.now(UTC)
    try:
        for terminal in terminals.values():
            terminal.start(wait=False)
        for terminal in terminals.values():
            terminal.wait_ready()
        say("three terminals up")

        # The skewed clock, seen through the operator API: a probe message from
        # each terminal to each other one (part of the traffic checked below).
        offsets: dict[str, list[float]] = {party: [] for party in terminals}
        probes: dict[tuple[str, str], str] = {}
        for sender, terminal in terminals.items():
            for recipient in terminals:
                if recipient == sender:
                    continue
                sent = terminal.api(
                    "POST",
                    "/messages",
                    {"to": [recipient], "precedence": "FLASH", "text": f"probe {sender}"},
                )
                now = datetime.now(UTC)
                created = parse_iso(terminal.api("GET", f"/messages/{sent['id']}")["created_at"])
                offsets[sender].append((created - now).total_seconds())
                probes[(sender, recipient)] = str(sent["id"])
        measured = {party: round(statistics.median(o), 1) for party, o in offsets.items()}
        say(f"clock offsets measured through the API (s): {measured}")
        for party, offset in measured.items():
            expected = SKEW_SECONDS if party == SKEWED else 0
            assert abs(offset - expected) < 5, f"{party} runs {offset} s ahead, not {expected}"

        # Chaos -------------------------------------------------------------------
        stop = threading.Event()
        traffic = Traffic(terminals, seed, stop)
        faults = Faults(terminals, proxies, seed, stop, say)
        chaos_began = time.monotonic()
        traffic.start()
        faults.start()
        try:
            stop.wait(CHAOS_SECONDS / 2)
            rotated_to = rotate_identity(terminals[ROTATED], say)
            stop.wait(max(0.0, CHAOS_SECONDS - (time.monotonic() - chaos_began)))
        finally:
            stop.set()
            faults.join()
            traffic.join()
        for proxy in proxies.all():
            proxy.restore()
        crashes = faults.crashes + [
            f"{party} exited with {code} by itself"
            for party, terminal in terminals.items()
            if (code := exited(terminal)) is not None
        ]
        assert not crashes, crashes
        chaos_took = time.monotonic() - chaos_began
        accepted = sum(len(d.accepted) for d in traffic.directions)
        say(
            f"chaos over after {chaos_took:.1f} s: {accepted} messages accepted; "
            f"kills {dict(faults.kills)}, restarts {dict(faults.restarts)} "
            f"(ready in {min(faults.ready_in, default=0):.1f}-"
            f"{max(faults.ready_in, default=0):.1f} s); link faults {dict(faults.faults)}"
        )
        for d in traffic.directions:
            say(
                f"  {d.sender:>8} -> {d.recipient:<8} {len(d.accepted):4} accepted "
                f"{dict(sorted(d.precedences.items()))}; {d.refused} sends refused "
                f"(sender down), {d.cut_short} cut short"
            )
        assert sum(faults.kills.values()) >= len(terminals), "too few kills to mean anything"
        assert all(faults.kills[party] for party in terminals), faults.kills
        assert faults.kills == faults.restarts

        # Drain -------------------------------------------------------------------
        drain_began = time.monotonic()
        last_report = [drain_began]
        receipted_in: list[float] = []  # when nothing was left to deliver
        statuses: dict[str, dict[str, Any]] = {}
        targets: dict[str, int] = {}  # each log's size once everything was delivered

        def drained() -> bool:
            for party, terminal in terminals.items():
                code = exited(terminal)
                assert code is None, f"{party} exited with {code}: {terminal.output()[-3000:]}"
            left = {party: unreceipted(engine) for party, engine in engines.items()}
            done = True
            for party, terminal in terminals.items():
                ok, statuses[party] = converged(terminal, targets.get(party))
                done = done and ok
            delivered = not any(left.values()) and all(s["pending"] == 0 for s in statuses.values())
            if delivered and not receipted_in:
                receipted_in.append(time.monotonic() - drain_began)
                targets.update({p: int(s["log_size"]) for p, s in statuses.items()})
            done = done and not any(left.values())
            if done or time.monotonic() - last_report[0] > 10:
                last_report[0] = time.monotonic()
                say(
                    "drain: unreceipted "
                    + ", ".join(f"{p} {n}" for p, n in left.items())
                    + "; pending "
                    + ", ".join(f"{p} {s['pending']}" for p, s in statuses.items())
                    + "; log size / cosigned by "
                    + "; ".join(
                        f"{p} {s['log_size']}/{s['cosigned_by']}" for p, s in statuses.items()
                    )
                )
            return done

        wait_until(drained, timeout=DRAIN_TIMEOUT, interval=1.0, what="the network to drain")
        drain_took = time.monotonic() - drain_began
        say(
            f"drained in {drain_took:.1f} s: every message receipted (after "
            f"{receipted_in[0]:.1f} s), every log cosigned by every peer at least at its "
            f"size then: {targets}"
        )

        # Both key changes reached everyone: the peers hold the rotated card, and every
        # terminal destroyed encryption keys while the traffic went on.
        for party, terminal in terminals.items():
            keys = terminal.api("GET", "/keys")
            states = Counter(k["state"] for k in keys["encryption_keys"])
            say(f"{party} encryption keys: {dict(states)}")
            assert states["destroyed"] >= 1, (party, states)
            if party != ROTATED:
                held = {p["party"]: p["card_version"] for p in keys["peers"]}
                assert held[ROTATED] == rotated_to, (party, held)

        # A clean stop, then the audit of every record.
        reports = stop_and_verify(*terminals.values())
        say(
            "verify: "
            + "; ".join(
                f"{p} ok, {r['entries']} entries, {r['envelopes']} envelopes, "
                f"{r['receipts']} receipts, {r['checkpoints']} checkpoints, "
                f"{r['cosignatures']} cosignatures"
                for p, r in reports.items()
            )
        )
        held = check_records(terminals, engines, traffic, probes, targets, wall_start, say)
        say(
            f"summary: seed {seed}; messages "
            + ", ".join(f"{s}->{r} {n}" for (s, r), n in held.items())
            + f", {sum(held.values())} in all, each delivered once; "
            f"SIGKILLs {sum(faults.kills.values())} {dict(faults.kills)}, "
            f"restarts {sum(faults.restarts.values())}; link faults {dict(faults.faults)}; "
            f"chaos {chaos_took:.0f} s, drain {drain_took:.0f} s, "
            f"total {time.monotonic() - say.began:.0f} s"
        )
    finally:
        for engine in engines.values():
            engine.dispose()


def rotate_identity(terminal: TerminalProcess, say: Callable[[str], None]) -> int:
    """Rotate ``terminal``'s identity through the operator API while the chaos goes on
    (it may be down for a moment: asked again until it answers); the new card version."""
    deadline = time.monotonic() + 60
    before: int | None = None
    while True:
        try:
            version = int(terminal.api("GET", "/keys")["card"]["card_version"])
            if before is None:
                before = version
            if version > before:  # a request cut short by a kill had gone through
                return version
            rotated = terminal.api("POST", "/keys/rotate", {}, operator="admin")
            say(f"{terminal.party} rotated its identity to card version {rotated['version']}")
            return int(rotated["version"])
        except (RuntimeError, httpx.HTTPError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{terminal.party} could not rotate its keys: {exc}") from exc
            time.sleep(0.5)


def check_records(
    terminals: dict[str, TerminalProcess],
    engines: dict[str, Engine],
    traffic: Traffic,
    probes: dict[tuple[str, str], str],
    targets: dict[str, int],
    wall_start: datetime,
    say: Callable[[str], None],
) -> dict[tuple[str, str], int]:
    """Read every stopped terminal's database: nothing lost, doubled or unwitnessed.

    Returns how many text messages each direction carried.
    """
    sent: dict[tuple[str, str], dict[str, str]] = {}
    received: dict[tuple[str, str], list[tuple[str, str, datetime, datetime]]] = {}
    receipts: dict[str, set[tuple[str, str]]] = {}
    pending: dict[str, int] = {}
    log_sizes: dict[str, int] = {}
    stored_at: dict[str, tuple[datetime, datetime]] = {}
    checkpoint_sizes: dict[str, set[int]] = {}
    cosignatures: dict[str, set[tuple[str, str, int]]] = {}
    links_used: Counter[str] = Counter()
    alarms: dict[str, Counter[str]] = {}
    security: dict[str, Counter[str]] = {}
    for party, engine in engines.items():
        with engine.connect() as conn:
            for row in conn.execute(
                select(m.messages).where(
                    and_(m.messages.c.direction == "out", m.messages.c.kind == "text")
                )
            ):
                sent.setdefault((party, row.recipients), {})[row.envelope_id] = row.body
            for row in conn.execute(
                select(m.messages).where(
                    and_(m.messages.c.direction == "in", m.messages.c.kind == "text")
                )
            ):
                received.setdefault((row.sender, party), []).append(
                    (row.envelope_id, row.body, utc(row.created_at), utc(row.stored_at))
                )
            receipts[party] = {
                (row.envelope_id, row.receiver) for row in conn.execute(select(m.receipts))
            }
            # Key announcements go on after the drain (one every few seconds); the
            # drain saw every outbox empty, so only they may be left in flight.
            pending[party] = int(
                conn.execute(
                    select(func.count())
                    .select_from(
                        m.outbox.join(
                            m.messages, m.messages.c.envelope_id == m.outbox.c.envelope_id
                        )
                    )
                    .where(and_(m.outbox.c.state != "delivered", m.messages.c.kind != "key"))
                ).scalar_one()
            )
            count, first, last = conn.execute(
                select(
                    func.count(),
                    func.min(m.log_entries.c.stored_at),
                    func.max(m.log_entries.c.stored_at),
                )
            ).one()
            log_sizes[party] = int(count)
            stored_at[party] = (utc(first), utc(last))
            checkpoint_sizes[party] = {
                int(size) for size in conn.execute(select(m.checkpoints.c.size)).scalars()
            }
            cosignatures[party] = {
                (row.direction, row.party, int(row.size))
                for row in conn.execute(select(m.cosignatures))
            }
            links_used.update(str(link) for link in conn.execute(select(m.outbox.c.link)).scalars())
            alarms[party] = Counter(conn.execute(select(m.alarms.c.kind)).scalars())
            security[party] = Counter(conn.execute(select(m.security_events.c.code)).scalars())
    checked_at = datetime.now(UTC)

    # Nothing lost, nothing doubled, nothing invented; a receipt for everything.
    for d in traffic.directions:
        key = (d.sender, d.recipient)
        held = sent.get(key, {})
        got = received.get(key, [])
        ids = [row[0] for row in got]
        extra = len(held) - len(d.accepted) - 1  # the probe is not in ``accepted``
        say(
            f"{d.sender:>8} -> {d.recipient:<8} holds {len(held)} sent ({extra} stored just "
            f"before a kill, their id never returned); {d.recipient} holds {len(got)}"
        )
        assert len(set(d.accepted)) == len(d.accepted), f"{key}: an id returned twice"
        assert set(d.accepted) <= set(held), f"{key}: an accepted message is gone"
        assert probes[key] in held
        assert len(ids) == len(set(ids)), f"{key}: a message is held twice"
        assert set(ids) - set(held) == set(), f"{key}: received what was never sent"
        missing = sorted(set(held) - set(ids))
        assert not missing, f"{key}: {len(missing)} lost, such as {missing[:5]}"
        assert {row[0]: row[1] for row in got} == held, f"{key}: a body differs"
        unreceipted = sorted(i for i in held if (i, d.recipient) not in receipts[d.sender])
        assert not unreceipted, f"{key}: {len(unreceipted)} without a receipt: {unreceipted[:5]}"
    assert pending == dict.fromkeys(terminals, 0), f"outbox rows left pending: {pending}"
    say(f"deliveries per link: {dict(links_used)}")
    assert links_used["backup"], "nothing went over a backup link: no failover"
    assert links_used["primary"], "nothing went over a primary link"
    say(f"alarms raised: { {p: dict(a) for p, a in alarms.items()} }")
    say(f"security events: { {p: dict(e) for p, e in security.items()} }")

    # Each envelope exactly once in each transcript.
    for party, terminal in terminals.items():
        counted = transcript_envelope_ids(terminal, engines[party])
        doubled = {i: n for i, n in counted.items() if n > 1}
        assert not doubled, f"{party}: envelopes in the transcript more than once: {doubled}"
        mine = {i for (sender, _), held in sent.items() if sender == party for i in held}
        theirs = {i for (s, r), rows in received.items() if r == party for i, *_ in rows}
        assert (mine | theirs) <= set(counted), f"{party}: a message is not in the transcript"

    # Every log cosigned by both peers at a size holding everything delivered (the
    # key announcements made since may lie beyond the last cosigned checkpoint).
    for party, target in targets.items():
        assert log_sizes[party] >= target, f"{party}'s log shrank: {log_sizes} {targets}"
        for peer in terminals:
            if peer == party:
                continue
            cosigned = {n for way, who, n in cosignatures[party] if way == "of-us" and who == peer}
            ours = {n for way, who, n in cosignatures[peer] if way == "by-us" and who == party}
            both = {n for n in cosigned & ours if n >= target and n in checkpoint_sizes[party]}
            assert both, (
                f"no checkpoint of {party} at or beyond {target} cosigned by {peer} "
                f"and recorded on both sides: {sorted(cosigned)[-3:]} {sorted(ours)[-3:]}"
            )
    say(f"every log cosigned by both peers at or beyond its drained size {targets}")

    # No serve process crashed or logged an error (a SIGKILL only cuts its output short).
    for party, terminal in terminals.items():
        errors = [
            line
            for line in terminal.output().splitlines()
            if "Traceback" in line or '"level": "error"' in line or '"level": "critical"' in line
        ]
        assert not errors, f"{party} logged errors: {errors[:5]}"

    # The skewed clock, seen in the records: the skewed terminal stamped every
    # entry it stored at least SKEW_SECONDS after the test began, and each
    # receiver sees the sender's creation times shifted by the difference.
    skew = {party: SKEW_SECONDS if party == SKEWED else 0 for party in terminals}
    for party, (first, last) in stored_at.items():
        if party == SKEWED:
            assert (first - wall_start).total_seconds() > SKEW_SECONDS - 5, (party, first)
        else:
            assert last <= checked_at, f"{party} stored an entry in the future: {last}"
    shifts = {}
    for (sender, recipient), rows in received.items():
        # created (sender's clock) - stored (receiver's clock) = skew difference - latency;
        # its largest value is the skew difference less the quickest delivery.
        shift = max((created - stored).total_seconds() for _, _, created, stored in rows)
        shifts[f"{sender}->{recipient}"] = round(shift, 1)
        expected = skew[sender] - skew[recipient]
        assert expected - 10 < shift < expected + 2, f"{sender}->{recipient}: {shift} s"
    say(f"creation time minus receipt time, largest per direction (s): {shifts}")
    say(
        f"{SKEWED} log entries stored from {stored_at[SKEWED][0]:%H:%M:%S}, "
        f"test began {wall_start:%H:%M:%S}"
    )
    return {(d.sender, d.recipient): len(sent[(d.sender, d.recipient)]) for d in traffic.directions}
