"""Measures on real terminals: two ``parley serve`` processes on loopback.

Every time here comes from the sending terminal's own database clock (the
``stored_at`` columns it writes), read by this process through a separate
SQLite connection that only ever reads, so measuring loads the terminals no
more than an operator's polling would not: the operator API is used only to
queue messages, exactly as the CLI does.

* ``measure_latency``: FLASH messages sent one at a time; for each, from the
  message row's ``stored_at`` (written in the transaction that accepts it)
  to the receipt row's ``stored_at`` (written once the receiver's signed
  receipt has been verified), both on the sender's clock.
* ``measure_throughput``: a few client threads keep the sender fed with
  ROUTINE messages (through ``POST /api/v1/messages/batch`` when the terminal
  has it, else one ``POST /api/v1/messages`` each), never more than a
  high-water mark of messages without receipts; after a warm-up, the receipts
  stored within a fixed window are counted.
* ``measure_backlog``: the sender's only link runs through a ``FaultProxy``;
  it is cut, messages are queued, the link is restored, and the time from the
  restore to the last receipt stored is taken.
* ``measure_serve_memory``: the peak resident set of ``parley serve`` started
  on a given data directory, once it has answered a status request and
  accepted one message.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from parley.bench.floors import peak_rss_mb, proc_status_mb
from parley.config import DataDir
from parley.testing.faultproxy import FaultProxy
from parley.testing.network import TerminalProcess, free_port, make_network, set_peer_quota

__all__ = [
    "RECEIVER",
    "SENDER",
    "BacklogResult",
    "LatencyResult",
    "MemoryResult",
    "OperatorClient",
    "SenderRecords",
    "ThroughputResult",
    "measure_backlog",
    "measure_latency",
    "measure_serve_memory",
    "measure_throughput",
    "two_terminals",
]

SENDER = ("US-EUCOM", "US European Command")
RECEIVER = ("RU-GS", "General Staff of the Armed Forces of the Russian Federation")

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------
# Talking to a terminal


class OperatorClient:
    """The operator API of one terminal over one kept-alive connection.

    ``send_many`` uses ``POST /api/v1/messages/batch`` and falls back, for
    good, to one ``POST /api/v1/messages`` per message when the terminal
    answers 404 or 405 (a terminal without the batch endpoint).
    """

    #: Shared by every client of the run: None until a terminal has answered.
    batch_supported: bool | None = None

    def __init__(
        self,
        terminal: TerminalProcess,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = DataDir(terminal.data).read_token()
        self.client = httpx.Client(
            base_url=terminal.console_url + "/api/v1",
            headers={"authorization": f"Bearer {token}", "x-parley-operator": "bench"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def send(self, message: dict[str, Any]) -> str:
        return str(self.call("POST", "/messages", message)["id"])

    def send_many(self, messages: Sequence[dict[str, Any]]) -> list[str]:
        if OperatorClient.batch_supported is not False:
            response = self.client.post("/messages/batch", json={"messages": list(messages)})
            if response.status_code in (404, 405):
                OperatorClient.batch_supported = False
            elif response.status_code >= 400:
                raise RuntimeError(
                    f"POST /messages/batch: {response.status_code} {response.text[:300]}"
                )
            else:
                OperatorClient.batch_supported = True
                results = response.json()["messages"]
                if len(results) != len(messages):
                    raise RuntimeError("the batch endpoint answered for fewer messages")
                return [str(item["id"]) for item in results]
        return [self.send(message) for message in messages]


def _parse_time(value: str) -> datetime:
    # SQLAlchemy writes SQLite times as naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff".
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _sql_time(value: datetime) -> str:
    """A UTC time as SQLAlchemy stores it in SQLite, so text comparison orders times."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class SenderRecords:
    """Read-only queries on a terminal's SQLite database, from a separate connection.

    Every query is its own short read transaction (autocommit), so it never
    holds up the terminal's writers or its WAL checkpoints.
    """

    def __init__(self, terminal: TerminalProcess) -> None:
        path = DataDir(terminal.data).sqlite_file
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def _one(self, sql: str, *args: Any) -> Any:
        with self.lock:
            return self.db.execute(sql, args).fetchone()

    def receipt_held(self, envelope_id: str) -> bool:
        return self._one("SELECT 1 FROM receipts WHERE envelope_id = ?", envelope_id) is not None

    def receipts_total(self) -> int:
        return int(self._one("SELECT count(*) FROM receipts")[0])

    def receipts_between(self, start: datetime, end: datetime) -> int:
        row = self._one(
            "SELECT count(*) FROM receipts WHERE stored_at >= ? AND stored_at < ?",
            _sql_time(start),
            _sql_time(end),
        )
        return int(row[0])

    def sent_between(self, start: datetime, end: datetime) -> int:
        row = self._one(
            "SELECT count(*) FROM messages WHERE direction = 'out' AND kind = 'text' "
            "AND stored_at >= ? AND stored_at < ?",
            _sql_time(start),
            _sql_time(end),
        )
        return int(row[0])

    def latencies_ms(self, ids: Sequence[str]) -> list[float]:
        """Message ``stored_at`` to receipt ``stored_at`` for each id, in milliseconds."""
        found: dict[str, tuple[str, str]] = {}
        with self.lock:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(
                    f"SELECT m.envelope_id, m.stored_at, r.stored_at FROM messages m "  # noqa: S608
                    f"JOIN receipts r ON r.envelope_id = m.envelope_id "
                    f"WHERE m.envelope_id IN ({marks})",
                    chunk,
                ).fetchall()
                found.update({row[0]: (row[1], row[2]) for row in rows})
        return [
            (_parse_time(found[i][1]) - _parse_time(found[i][0])).total_seconds() * 1000
            for i in ids
            if i in found
        ]

    def backlog_status(self, since: datetime) -> tuple[int, int, str | None, str | None]:
        """For text messages stored since ``since``: (count, receipted, first, last receipt)."""
        row = self._one(
            "SELECT count(*), count(r.envelope_id), min(r.stored_at), max(r.stored_at) "
            "FROM messages m LEFT JOIN receipts r ON r.envelope_id = m.envelope_id "
            "WHERE m.direction = 'out' AND m.kind = 'text' AND m.stored_at >= ?",
            _sql_time(since),
        )
        return int(row[0]), int(row[1]), row[2], row[3]

    def attempts(self, since: datetime) -> tuple[int, int]:
        """(total, highest) failed delivery attempts of text messages stored since ``since``."""
        row = self._one(
            "SELECT coalesce(sum(o.attempts), 0), coalesce(max(o.attempts), 0) "
            "FROM outbox o JOIN messages m ON m.envelope_id = o.envelope_id "
            "WHERE m.kind = 'text' AND m.stored_at >= ?",
            _sql_time(since),
        )
        return int(row[0]), int(row[1])


def _wait(predicate: Callable[[], bool], *, timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def two_terminals(
    root: Path, *, proxy: bool = False, say: Say = _quiet
) -> Iterator[tuple[TerminalProcess, TerminalProcess, FaultProxy | None]]:
    """A sender and a receiver, pinned to each other and serving; stopped afterwards.

    With ``proxy``, the sender's only link to the receiver runs through a
    ``FaultProxy`` (the receiver's way back is direct).
    """
    proxies: list[FaultProxy] = []

    def links(owner: str, peer: str, peer_terminal: TerminalProcess) -> list[tuple[str, str]]:
        if proxy and owner == SENDER[0]:
            fault = FaultProxy(("127.0.0.1", peer_terminal.peer_port))
            fault.start()
            proxies.append(fault)
            return [("primary", fault.url())]
        return [("primary", peer_terminal.peer_url)]

    say(f"starting two terminals in {root}{' (sender linked through a proxy)' if proxy else ''}")
    try:
        terminals = make_network(root, [SENDER, RECEIVER], links=links)
        sender, receiver = terminals[SENDER[0]], terminals[RECEIVER[0]]
        for terminal in (sender, receiver):
            set_peer_quota(terminal.data)  # the throughput and backlog figures run far past it
        try:
            for terminal in (sender, receiver):
                terminal.start(wait=False)
            for terminal in (sender, receiver):
                terminal.wait_ready(timeout=120)
            yield sender, receiver, (proxies[0] if proxies else None)
        finally:
            for terminal in (sender, receiver):
                terminal.stop()
    finally:
        for fault in proxies:
            fault.close()


def _message(precedence: str, text: str) -> dict[str, Any]:
    return {"to": [RECEIVER[0]], "precedence": precedence, "text": text}


def _warm_up(client: OperatorClient, records: SenderRecords, count: int = 5) -> None:
    """Connections, the first witnessing round: a few messages, each waited for."""
    ids = client.send_many([_message("FLASH", f"warm-up {i}") for i in range(count)])
    _wait(
        lambda: all(records.receipt_held(envelope_id) for envelope_id in ids),
        timeout=120,
        interval=0.01,
        what="the warm-up receipts",
    )


# --------------------------------------------------------------------------
# Latency


@dataclass(frozen=True, slots=True)
class LatencyResult:
    samples_ms: list[float]
    sent: int
    seconds: float


def measure_latency(
    sender: TerminalProcess, count: int, *, say: Say = _quiet, timeout: float = 60.0
) -> LatencyResult:
    """FLASH messages one at a time; accepted-to-receipt-held, from the sender's clock."""
    client = OperatorClient(sender)
    records = SenderRecords(sender)
    try:
        _warm_up(client, records)
        ids: list[str] = []
        started = time.perf_counter()
        for i in range(count):
            envelope_id = client.send(_message("FLASH", f"latency probe {i}"))
            ids.append(envelope_id)
            _wait(
                lambda envelope_id=envelope_id: records.receipt_held(envelope_id),  # type: ignore[misc]
                timeout=timeout,
                interval=0.001,
                what=f"the receipt of FLASH message {i}",
            )
            if (i + 1) % max(1, count // 10) == 0:
                say(f"latency: {i + 1}/{count} messages receipted")
        seconds = time.perf_counter() - started
        samples = records.latencies_ms(ids)
    finally:
        client.close()
        records.close()
    if len(samples) != count:
        raise RuntimeError(f"only {len(samples)} of {count} latency samples were found")
    return LatencyResult(samples, count, seconds)


# --------------------------------------------------------------------------
# Throughput


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    window_s: float
    warmup_s: float
    receipts_in_window: int
    accepted_in_window: int
    accepted_total: int
    outstanding_at_end: int
    threads: int
    batch: int
    high_water: int
    batch_endpoint: bool

    @property
    def msgs_per_s(self) -> float:
        return self.receipts_in_window / self.window_s

    @property
    def accepted_per_s(self) -> float:
        return self.accepted_in_window / self.window_s


def measure_throughput(
    sender: TerminalProcess,
    *,
    window_s: float,
    warmup_s: float,
    threads: int = 4,
    batch: int = 50,
    high_water: int = 2000,
    say: Say = _quiet,
) -> ThroughputResult:
    """Receipts stored per second in a window, with the sender kept fed.

    ``threads`` clients each queue ``batch`` ROUTINE messages per request
    (one message per request without the batch endpoint) as fast as the
    operator API accepts them, pausing while more than ``high_water``
    messages wait for their receipts, so the sender always has work queued
    without the queue growing without bound.
    """
    records = SenderRecords(sender)
    baseline = records.receipts_total()
    stop = threading.Event()
    accepted = [0] * threads
    errors: list[BaseException] = []
    held = [baseline]

    def outstanding() -> int:
        return sum(accepted) - (held[0] - baseline)

    def monitor() -> None:
        while not stop.is_set():
            held[0] = records.receipts_total()
            time.sleep(0.05)

    def feed(slot: int) -> None:
        client = OperatorClient(sender)
        n = 0
        try:
            while not stop.is_set():
                if outstanding() > high_water:
                    time.sleep(0.005)
                    continue
                size = batch if OperatorClient.batch_supported is not False else 1
                messages = [_message("ROUTINE", f"throughput {slot}-{n + i}") for i in range(size)]
                accepted[slot] += len(client.send_many(messages))
                n += size
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            client.close()

    workers = [threading.Thread(target=monitor, daemon=True)]
    workers += [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(threads)]
    began = utc_now()
    for worker in workers:
        worker.start()
    try:
        time.sleep(warmup_s)
        window_start = utc_now()
        say(f"throughput: {window_s:.0f} s window opened after {warmup_s:.0f} s of warm-up")
        time.sleep(window_s)
        window_end = utc_now()
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    if errors:
        raise RuntimeError(f"a feeding thread failed: {errors[0]!r}") from errors[0]
    try:
        in_window = records.receipts_between(window_start, window_end)
        sent_in_window = records.sent_between(window_start, window_end)
        total = records.sent_between(began, utc_now())
        end_outstanding = total - records.receipts_between(began, utc_now())
    finally:
        records.close()
    return ThroughputResult(
        window_s=(window_end - window_start).total_seconds(),
        warmup_s=warmup_s,
        receipts_in_window=in_window,
        accepted_in_window=sent_in_window,
        accepted_total=sum(accepted),
        outstanding_at_end=end_outstanding,
        threads=threads,
        batch=batch if OperatorClient.batch_supported else 1,
        high_water=high_water,
        batch_endpoint=bool(OperatorClient.batch_supported),
    )


# --------------------------------------------------------------------------
# Backlog


@dataclass(frozen=True, slots=True)
class BacklogResult:
    messages: int
    queue_s: float
    drain_s: float
    first_receipt_s: float
    attempts_total: int
    attempts_max: int
    batch_endpoint: bool
    timeline: list[float] = field(default_factory=list)


def measure_backlog(
    sender: TerminalProcess,
    proxy: FaultProxy,
    count: int,
    *,
    batch: int = 250,
    say: Say = _quiet,
    timeout: float = 900.0,
) -> BacklogResult:
    """Cut the link, queue ``count`` messages, restore: seconds to the last receipt."""
    client = OperatorClient(sender)
    records = SenderRecords(sender)
    try:
        _warm_up(client, records)
        proxy.cut()
        since = utc_now()
        queued = 0
        started = time.perf_counter()
        while queued < count:
            size = min(batch, count - queued)
            if OperatorClient.batch_supported is False:
                size = 1
            messages = [_message("ROUTINE", f"backlog {queued + i}") for i in range(size)]
            queued += len(client.send_many(messages))
        queue_s = time.perf_counter() - started
        say(f"backlog: {count} messages queued in {queue_s:.1f} s with the link cut; restoring")
        proxy.restore()
        restored = utc_now()
        timeline: list[float] = []
        progress_at = time.monotonic()

        def drained() -> bool:
            nonlocal progress_at
            total, done, _, _ = records.backlog_status(since)
            if time.monotonic() - progress_at >= 1.0:
                progress_at = time.monotonic()
                timeline.append(done)
                say(f"backlog: {done}/{total} receipts held")
            return total >= count and done >= total

        _wait(drained, timeout=timeout, interval=0.05, what="the backlog to drain")
        _, done, first, last = records.backlog_status(since)
        attempts_total, attempts_max = records.attempts(since)
    finally:
        client.close()
        records.close()
    assert first is not None
    assert last is not None
    return BacklogResult(
        messages=done,
        queue_s=queue_s,
        drain_s=(_parse_time(last) - restored).total_seconds(),
        first_receipt_s=(_parse_time(first) - restored).total_seconds(),
        attempts_total=attempts_total,
        attempts_max=attempts_max,
        batch_endpoint=bool(OperatorClient.batch_supported),
        timeline=timeline,
    )


# --------------------------------------------------------------------------
# Memory


@dataclass(frozen=True, slots=True)
class MemoryResult:
    peak_rss_mb: float
    rss_mb: float | None
    startup_s: float
    log_size: int


def measure_serve_memory(
    data: Path, party: str, *, timeout: float = 600.0, say: Say = _quiet
) -> MemoryResult:
    """Start ``parley serve`` on ``data``; status, one message; its peak RSS (VmHWM)."""
    store = DataDir(data)
    config = store.load_config()
    peer_port, console_port = free_port(), free_port()
    config.peer_listen = f"127.0.0.1:{peer_port}"
    config.console_listen = f"127.0.0.1:{console_port}"
    store.save_config(config)
    terminal = TerminalProcess(party, data, peer_port, console_port)
    say(f"memory: starting parley serve on {data}")
    started = time.perf_counter()
    terminal.start(wait=False)
    try:
        terminal.wait_ready(timeout=timeout)
        startup_s = time.perf_counter() - started
        client = OperatorClient(terminal)
        try:
            status = client.call("GET", "/status")
            client.send(_message("ROUTINE", "memory probe"))
        finally:
            client.close()
        assert terminal.proc is not None
        peak = peak_rss_mb(terminal.proc.pid)
        rss = proc_status_mb(terminal.proc.pid, "VmRSS")
    finally:
        terminal.stop()
    if peak is None:
        raise RuntimeError("cannot read the peak RSS of parley serve from /proc")
    return MemoryResult(peak, rss, startup_s, int(status["log_size"]))
