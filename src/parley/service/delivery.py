"""The delivery worker: outbox, links, retries, failover, link tests, witnessing.

One task per peer drains that peer's outbox in precedence order:

* FLASH and IMMEDIATE go over every link that is not down, at once; the first
  receipt wins (the receiver deduplicates, and answers the others with the
  same cumulative receipt);
* PRIORITY and ROUTINE go over the best link (up before degraded, then the
  lowest round-trip time) and fail over to the next;
* a delivery that fails on every link is retried after an exponential
  backoff with full jitter, capped per precedence (FLASH retries within 2 s).

After traffic with a peer, the worker asks it for a checkpoint and cosigns
it, and hands it this terminal's own cosignature request in turn, so every
transcript is witnessed along with the traffic. Each link is tested on a
schedule with a ``test`` message; gaps reported by the core are filled from
the sender's catch-up endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import httpx
import structlog
from starlette.concurrency import run_in_threadpool

from parley.core.encoding import b64decode
from parley.core.witness import split_leaves
from parley.errors import (
    CheckpointRejected,
    InvalidReceipt,
    ParleyError,
    RemoteError,
    VerificationError,
)
from parley.service import tls
from parley.service.peer_api import (
    BUSY,
    FRAMES,
    MAX_LEAVES_PAGE,
    MAX_LEAVES_WITH_RECEIPTS,
    MIRROR_HEADER,
    frame,
)
from parley.service.recovering import LogGuard
from parley.service.recovery import RecoveryReport
from parley.service.terminal import Terminal

__all__ = ["BACKOFF_CAP", "DeliveryWorker", "Timings", "backoff"]

log = structlog.get_logger("parley.delivery")

#: ``send(method, path, **kwargs)``: the answer's body from one peer (any link, or one).
Send = Callable[..., Awaitable[bytes]]

BACKOFF_BASE = 0.25
BACKOFF_CAP = {"FLASH": 2.0, "IMMEDIATE": 5.0, "PRIORITY": 30.0, "ROUTINE": 60.0}
STATE_RANK = {"up": 0, "unknown": 1, "degraded": 2, "down": 3}
WITNESS_EVERY = 2.0  # seconds between checkpoint rounds with a busy peer
#: Seconds between rounds with a peer we exchange nothing with: its log may
#: grow from traffic with a third party, which we would not otherwise notice.
#: Each round in which its log has not grown doubles the wait, up to
#: ``WITNESS_IDLE_MAX``; a round that finds it grown starts again from here.
WITNESS_IDLE = 10.0
WITNESS_IDLE_MAX = 60.0
#: Seconds of the first-round window per peer (see ``first_round_window``).
FIRST_ROUND_PER_PEER = 1.0
#: Seconds over which the first link tests after start are spread (then each
#: round of tests is spread over the whole test interval).
FIRST_LINK_TESTS = 300.0
#: Idle rounds are spread over +/- this share of their interval, so that the
#: rounds with many peers do not all fall in the same instant.
WITNESS_JITTER = 0.2
#: Seconds a loop with nothing due sleeps before looking again by itself (new
#: work, a retry that comes due and a reachable peer wake it at once).
IDLE_WAIT = 60.0
#: Seconds an idle connection to a peer stays open (the peer listener keeps
#: it a little longer), so that rounds with an idle peer need no new TLS
#: handshake.
KEEPALIVE = 120.0
#: Seconds the links read from the database serve the worker before being
#: read again (a failed request reads them again at once).
LINKS_FRESH = 5.0
#: Messages per bulk request: one receiver checkpoint signature and one commit
#: on each side for all of them.
BULK_BATCH = 256
#: Bulk batches in flight to one peer at once.
BULK_IN_FLIGHT = 2
#: Seconds a gap may last before it is filled by a catch-up request (batches in
#: flight together can arrive out of order; the later one fills it first).
CATCH_UP_GRACE = 1.0
#: Seconds between health probes of a peer that stopped answering: as soon as
#: one answers, every retry waiting for that peer is brought forward.
PROBE_EVERY = 2.0
#: FLASH and IMMEDIATE messages taken at once (each goes in its own request).
URGENT_BATCH = 32
#: Witness rounds and bulk batches in progress at once, to every peer together
#: (the urgent lane is not counted): a terminal with dozens of peers does not
#: ask all of them at the same moment.
MAX_BULK_REQUESTS = 8


@dataclass(frozen=True, slots=True)
class Timings:
    """How long the delivery worker waits for what, in seconds (the constants above)."""

    witness_every: float = WITNESS_EVERY
    witness_idle: float = WITNESS_IDLE
    witness_idle_max: float = WITNESS_IDLE_MAX
    first_round_per_peer: float = FIRST_ROUND_PER_PEER
    first_link_tests: float = FIRST_LINK_TESTS
    witness_jitter: float = WITNESS_JITTER
    idle_wait: float = IDLE_WAIT
    links_fresh: float = LINKS_FRESH
    catch_up_grace: float = CATCH_UP_GRACE
    probe_every: float = PROBE_EVERY


def first_round_window(peers: int, timings: Timings | None = None) -> float:
    """Seconds over which the first idle witness rounds after start are spread."""
    t = timings or Timings()
    return min(t.witness_idle_max, max(t.witness_idle, t.first_round_per_peer * peers))


def backoff(attempts: int, precedence: str, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempts))."""
    cap = BACKOFF_CAP.get(precedence, 60.0)
    return rng.uniform(0.0, min(cap, BACKOFF_BASE * 2 ** min(attempts, 20)))


class LinkFailed(Exception):
    """A link could not carry a request (transport error or 5xx)."""


class Busy(LinkFailed):
    """The peer answered ``503 busy``: it serves as many requests as it can at once.

    Not a link failure (the link carried the answer; its state is left as it
    was, nothing is recorded against it): the request goes again after
    ``retry_after`` seconds, the peer's ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _answers_another(item: dict[str, Any], answer: dict[str, Any]) -> InvalidReceipt:
    """A valid receipt, but for another envelope than the one delivered (kept; not this one's)."""
    return InvalidReceipt(
        f"the receipt answering envelope {item['envelope_id']} is for envelope "
        f"{answer['envelope_id']}"
    )


def _forget(sending: set[str], ids: set[str], _: object) -> None:
    sending.difference_update(ids)


class Rejected(Exception):
    """The peer answered with a 4xx: retrying the same bytes will not help soon.

    ``retry_after``: the seconds a peer's ``429`` (over its quota for us) asks us
    to wait before sending again, or None.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """A 429's ``Retry-After`` in seconds (bounded to an hour), or None."""
    if response.status_code != 429:
        return None
    value = response.headers.get("retry-after", "")
    return float(min(int(value), 3600)) if value.isdigit() else BACKOFF_CAP["ROUTINE"]


def _busy(response: httpx.Response) -> Busy | None:
    """A peer's ``503 busy`` answer (``parley.service.peer_api.WorkGate``), or None."""
    if response.status_code != 503:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("error") != BUSY:
        return None
    value = response.headers.get("retry-after", "")
    wait = float(min(int(value), 600)) if value.isdigit() else WITNESS_IDLE
    return Busy(f"busy: {str(body.get('message', ''))[:200]}", retry_after=max(1.0, wait))


def _longest_wait(errors: Sequence[BaseException]) -> float | None:
    waits = [e.retry_after for e in errors if isinstance(e, (Rejected, Busy)) and e.retry_after]
    return max(waits) if waits else None


@dataclass(slots=True)
class Link:
    peer: str
    name: str
    url: str
    state: str
    rtt_ms: float | None


class DeliveryWorker:
    """Delivers the outbox, runs witness rounds and link tests, for one terminal.

    ``timings`` sets how long it waits for what (tests shorten them), ``clock``
    is its monotonic clock, and ``transport(peer)`` (tests: an ASGI transport to
    the peer's app in the same process, ``parley.testing.inprocess``) replaces
    the TLS connection to that peer.
    """

    def __init__(
        self,
        terminal: Terminal,
        *,
        rng: random.Random | None = None,
        timings: Timings | None = None,
        clock: Callable[[], float] | None = None,
        transport: Callable[[str], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.terminal = terminal
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.timings = timings or Timings()
        self.clock: Callable[[], float] = clock or (lambda: time.monotonic())
        self._transport = transport
        self.wake = asyncio.Event()
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._peer_events: dict[str, asyncio.Event] = {}
        self._urgent_events: dict[str, asyncio.Event] = {}
        self._last_witness: dict[str, float] = {}
        self._stopping = False
        self._inflight: set[str] = set()
        self._witness_due: set[str] = set()
        self._witnessed_activity: dict[str, int] = {}
        #: A cosignature made but not yet handed to its log owner (sent next round).
        self._unsent_cosignature: dict[str, bytes] = {}
        #: peer -> link -> whether the last request over it got an answer.
        self._link_ok: dict[str, dict[str, bool]] = {}
        self._last_probe: dict[str, float] = {}
        #: peer -> monotonic time of the next idle witness round; quiet rounds in a row.
        self._next_idle_round: dict[str, float] = {}
        self._round_locks: dict[str, asyncio.Lock] = {}
        self._quiet_rounds: dict[str, int] = {}
        #: Witness rounds failed in a row, per peer (their retries back off).
        self._witness_failures: dict[str, int] = {}
        self._links_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bulk_slots = asyncio.Semaphore(MAX_BULK_REQUESTS)
        #: Compares our log with what the peers saw of it; recovers it (docs/recovery.md).
        self.guard = LogGuard(terminal, self._any_link)

    # Lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.terminal.on_outbox = self.notify
        self._tasks.append(asyncio.create_task(self._supervise(), name="delivery-supervisor"))
        self._tasks.append(asyncio.create_task(self.guard.run(), name="log-guard"))

    async def recover(self) -> RecoveryReport:
        """Rebuild the missing tail of our log from the peers (``parley recover``)."""
        return await self.guard.recover()

    def notify(self) -> None:
        """Thread-safe: there is new work in the outbox."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._links_cache = None  # a peer or a link may have been added
        self.wake.set()
        for event in (*self._peer_events.values(), *self._urgent_events.values()):
            event.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def _supervise(self) -> None:
        running: dict[str, asyncio.Task[None]] = {}
        urgent: dict[str, asyncio.Task[None]] = {}
        tests = asyncio.create_task(self._link_tests(), name="link-tests")
        deadlines = asyncio.create_task(self._deadlines(), name="ack-deadlines")
        self._tasks.extend([tests, deadlines])
        while not self._stopping:
            for peer in self.terminal.party.peers:
                if peer not in running or running[peer].done():
                    self._peer_events.setdefault(peer, asyncio.Event()).set()
                    running[peer] = asyncio.create_task(self._peer_loop(peer), name=f"peer-{peer}")
                    self._tasks.append(running[peer])
                if peer not in urgent or urgent[peer].done():
                    self._urgent_events.setdefault(peer, asyncio.Event()).set()
                    urgent[peer] = asyncio.create_task(
                        self._urgent_loop(peer), name=f"urgent-{peer}"
                    )
                    self._tasks.append(urgent[peer])
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=5.0)

    # HTTP ---------------------------------------------------------------------

    def forget_client(self, peer: str) -> None:
        """Thread-safe: drop the connection pool to ``peer`` (its certificates changed);
        the next request makes a new one. The old pool closes when idle."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._clients.pop(peer, None)
            return
        loop.call_soon_threadsafe(self._clients.pop, peer, None)

    def _client(self, peer: str) -> httpx.AsyncClient:
        client = self._clients.get(peer)
        if client is None:
            timeout = httpx.Timeout(self.terminal.config.link_timeout)
            if self._transport is not None:
                client = httpx.AsyncClient(transport=self._transport(peer), timeout=timeout)
            else:
                cert = self.terminal.peer_certificates[peer]
                context = tls.client_context(self.terminal.tls_identity, cert)
                limits = httpx.Limits(keepalive_expiry=KEEPALIVE)
                client = httpx.AsyncClient(
                    verify=context, timeout=timeout, limits=limits, http2=False
                )
            self._clients[peer] = client
        return client

    async def _all_links(self) -> list[dict[str, Any]]:
        """Every link, read at most every ``links_fresh`` s (in a worker thread)."""
        cached = self._links_cache
        if cached is not None and self.clock() - cached[0] < self.timings.links_fresh:
            return cached[1]
        rows = await run_in_threadpool(self.terminal.links)
        self._links_cache = (self.clock(), rows)
        return rows

    async def _links(self, peer: str) -> list[Link]:
        """The peer's links, best first (read in a worker thread: never on the event loop)."""
        links = [
            Link(item["peer"], item["name"], item["url"], item["state"], item["rtt_ms"])
            for item in await self._all_links()
            if item["peer"] == peer
        ]
        links.sort(key=lambda li: (STATE_RANK.get(li.state, 9), li.rtt_ms or 1e9))
        return links

    async def _request(
        self,
        link: Link,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> bytes:
        client = self._client(link.peer)
        started = time.perf_counter()
        sent_headers = dict(headers or {})
        if content is not None:
            sent_headers["content-type"] = content_type
        try:
            response = await client.request(
                method,
                link.url.rstrip("/") + path,
                content=content,
                params=params,
                headers=sent_headers or None,
            )
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}".strip(": ")
            self._link_ok.setdefault(link.peer, {})[link.name] = False
            self._links_cache = None
            await run_in_threadpool(
                self.terminal.record_link, link.peer, link.name, ok=False, error=error
            )
            raise LinkFailed(error) from None
        rtt = (time.perf_counter() - started) * 1000
        busy = _busy(response)
        if busy is not None:
            raise busy  # the link works; the peer asks us to come back later
        if response.status_code >= 500:
            error = f"HTTP {response.status_code}"
            self._link_ok.setdefault(link.peer, {})[link.name] = False
            self._links_cache = None
            await run_in_threadpool(
                self.terminal.record_link, link.peer, link.name, ok=False, error=error
            )
            raise LinkFailed(error)
        await run_in_threadpool(
            self.terminal.record_link, link.peer, link.name, ok=True, rtt_ms=rtt
        )
        was_unreachable = self._unreachable(link.peer)
        self._link_ok.setdefault(link.peer, {})[link.name] = True
        if was_unreachable:
            self._links_cache = None
            await self._reachable_again(link.peer)
        if response.status_code >= 400:
            raise Rejected(
                f"HTTP {response.status_code}: {response.text[:300]}",
                retry_after=_retry_after(response),
            )
        return response.content

    def _unreachable(self, peer: str) -> bool:
        """Whether the last request on every link to ``peer`` tried so far failed."""
        states = self._link_ok.get(peer, {})
        return bool(states) and not any(states.values())

    async def _reachable_again(self, peer: str) -> None:
        """The peer answers again after every link failed: what waits for a retry goes now."""
        waiting = await run_in_threadpool(self.terminal.retry_now, peer)
        if waiting:
            log.info("peer_reachable_again", peer=peer, retries_brought_forward=waiting)
        for events in (self._peer_events, self._urgent_events):
            if peer in events:
                events[peer].set()

    async def _probe(self, peer: str) -> None:
        """While a peer is unreachable, ask each link for its health every ``probe_every`` s."""
        now = self.clock()
        if now - self._last_probe.get(peer, 0.0) < self.timings.probe_every:
            return
        self._last_probe[peer] = now
        for link in await self._links(peer):
            try:
                await self._request(link, "GET", "/v1/health")
                return  # _request brought the retries forward
            except (LinkFailed, Rejected):
                continue

    # Per-peer delivery -------------------------------------------------------

    async def _peer_loop(self, peer: str) -> None:
        event = self._peer_events.setdefault(peer, asyncio.Event())
        # The first idle round with each peer comes within ``witness_idle`` (or one
        # second per peer, up to ``witness_idle_max``), not at once: a network that
        # starts together does not ask everything of everyone at once.
        window = first_round_window(len(self.terminal.party.peers), self.timings)
        self._next_idle_round.setdefault(peer, self.clock() + self.rng.uniform(0.0, window))
        while not self._stopping:
            event.clear()
            try:
                if self._unreachable(peer):
                    await self._probe(peer)
                worked = await self._drain(peer)
                await self._catch_up(peer)
                if worked:
                    self._witness_due.add(peer)
                if self.terminal.activity.get(peer, 0) != self._witnessed_activity.get(peer):
                    self._witness_due.add(peer)
                if self.clock() >= self._next_idle_round.get(peer, 0.0):
                    self._witness_due.add(peer)
                if peer in self._witness_due:
                    await self._witness_scheduled(peer, traffic=worked)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery_loop_error", peer=peer)
                await asyncio.sleep(1.0)
            due = await run_in_threadpool(self.terminal.next_due, peer, urgent=False)
            if peer in self._witness_due:
                wait = self.timings.witness_every
            else:
                wait = max(0.0, self._next_idle_round.get(peer, 0.0) - self.clock())
            if self._unreachable(peer):
                wait = min(wait, self.timings.probe_every)
            if any(key[1] == peer for key in self.terminal.gaps):
                wait = min(wait, self.timings.catch_up_grace)
            if due is not None:
                wait = max(0.0, min(wait, (due - self.terminal.clock()).total_seconds()))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=wait)

    async def _urgent_loop(self, peer: str) -> None:
        """FLASH and IMMEDIATE messages in a lane of their own.

        A bulk batch in flight (up to ``BULK_BATCH`` messages) never holds up
        a FLASH: this loop delivers urgent messages as soon as they are
        queued, over every link at once, whatever the bulk loop is doing.
        """
        event = self._urgent_events.setdefault(peer, asyncio.Event())
        while not self._stopping:
            event.clear()
            try:
                while not self._stopping:
                    batch = await run_in_threadpool(
                        self.terminal.due_deliveries, peer, URGENT_BATCH, urgent=True
                    )
                    if not batch:
                        break
                    await asyncio.gather(*(self._deliver(item) for item in batch))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery_loop_error", peer=peer, lane="urgent")
                await asyncio.sleep(1.0)
            due = await run_in_threadpool(self.terminal.next_due, peer, urgent=True)
            wait = self.timings.idle_wait
            if due is not None:
                wait = max(0.0, min(wait, (due - self.terminal.clock()).total_seconds()))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=wait)

    async def _drain(self, peer: str) -> bool:
        """Deliver the due PRIORITY and ROUTINE messages (and link tests) in batches.

        Up to ``BULK_IN_FLIGHT`` batches travel at once, so that the sender
        seals and checks receipts while the receiver opens the previous batch
        (stop-and-wait left each side idle half the time). Batches may then
        arrive out of order; the receiver holds what is ahead and answers the
        gap in its receipts until the earlier batch lands.
        """
        worked = False
        inflight: set[asyncio.Task[None]] = set()
        sending: set[str] = set()
        try:
            while not self._stopping:
                rest = await run_in_threadpool(
                    partial(
                        self.terminal.due_deliveries,
                        peer,
                        BULK_BATCH,
                        urgent=False,
                        exclude=frozenset(sending),
                    )
                )
                if rest:
                    worked = True
                # A link test travels on its own link only; a dead link must not hold
                # up the rest, so each runs as its own task (its next attempt pushed
                # past the link timeout meanwhile, so it is not picked up twice).
                for item in rest:
                    if item["via"] and item["envelope_id"] not in self._inflight:
                        self._inflight.add(item["envelope_id"])
                        await run_in_threadpool(
                            self.terminal.postpone,
                            item["envelope_id"],
                            peer,
                            self.terminal.config.link_timeout + 1.0,
                        )
                        task = asyncio.create_task(self._deliver_pinned(item))
                        self._tasks.append(task)
                bulk = [item for item in rest if not item["via"]]
                if bulk:
                    ids = {item["envelope_id"] for item in bulk}
                    sending |= ids
                    batch = asyncio.create_task(self._deliver_batch(peer, bulk))
                    batch.add_done_callback(partial(_forget, sending, ids))
                    inflight.add(batch)
                elif not inflight:
                    return worked
                if inflight and (not bulk or len(inflight) >= BULK_IN_FLIGHT):
                    done, inflight = await asyncio.wait(
                        inflight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for finished in done:
                        finished.result()  # an unexpected error ends the drain
            return worked
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _deliver_pinned(self, item: dict[str, Any]) -> None:
        try:
            await self._deliver(item)
        finally:
            self._inflight.discard(item["envelope_id"])

    async def _deliver_batch(self, peer: str, items: list[dict[str, Any]]) -> None:
        """Non-urgent messages in one request over the best link, failing over to the next."""
        # The receiver sends its leaf hashes from our mirror's size with the receipts:
        # what it signs in them can be put back in order should it lose its log.
        mirror = await run_in_threadpool(self.terminal.mirror_size, peer)
        async with self._bulk_slots:
            await self._batch_over_links(peer, items, mirror)

    async def _batch_over_links(self, peer: str, items: list[dict[str, Any]], mirror: int) -> None:
        errors: list[str] = []
        refusals: list[BaseException] = []
        for link in await self._links(peer):
            try:
                data = await self._request(
                    link,
                    "POST",
                    "/v1/envelopes/batch",
                    content=frame([item["raw"] for item in items]),
                    content_type=FRAMES,
                    headers={MIRROR_HEADER: str(mirror)},
                )
            except (LinkFailed, Rejected) as exc:
                errors.append(f"{link.name}: {exc}")
                refusals.append(exc)
                if isinstance(exc, (Rejected, Busy)) and exc.retry_after:
                    # Over the peer's quota for us, or the peer is busy: every link
                    # would say the same.
                    break
                continue
            await self._batch_answers(link, items, data)
            return
        wait = _longest_wait(refusals)
        for item in items:
            await self._failed(item, "; ".join(errors)[:500] or f"no link to {peer}", wait)

    async def _mirror_after_receipt(self, link: Link) -> None:
        """A receipt showed a checkpoint of the peer's log beyond our mirror: take the leaf
        hashes now (one request), so that it can be put back in order should it lose it."""

        def behind() -> int | None:
            seen = self.terminal.party.largest_seen(link.peer)
            start = self.terminal.mirror_size(link.peer)
            return start if seen is not None and seen.size > start else None

        start = await run_in_threadpool(behind)
        if start is None:
            return
        try:
            data = await self._request(
                link,
                "GET",
                "/v1/log/leaves",
                params={"start": start, "limit": MAX_LEAVES_WITH_RECEIPTS},
            )
            hashes = split_leaves(data, MAX_LEAVES_WITH_RECEIPTS)
        except (LinkFailed, Rejected, ParleyError) as exc:
            log.info("mirror_after_receipt_failed", peer=link.peer, error=str(exc)[:200])
            return
        await run_in_threadpool(self.terminal.extend_mirror, link.peer, start, hashes)

    async def _leaves_with_receipts(self, peer: str, data: bytes) -> None:
        """Take the leaf hashes a batch answer carried into the mirror of ``peer``'s log."""
        try:
            leaves = json.loads(data).get("leaves")
            if not isinstance(leaves, dict):
                return
            start = leaves["start"]
            raw = b64decode(leaves["hashes"], "leaf hashes")
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise ValueError("start is not a log size")
            hashes = split_leaves(raw, MAX_LEAVES_WITH_RECEIPTS)
        except (ValueError, KeyError, TypeError, ParleyError) as exc:
            log.info("leaves_with_receipts_refused", peer=peer, error=str(exc)[:200])
            return
        await run_in_threadpool(self.terminal.extend_mirror, peer, start, hashes)

    async def _batch_answers(self, link: Link, items: list[dict[str, Any]], data: bytes) -> None:
        try:
            results = json.loads(data)["results"]
            if not isinstance(results, list) or len(results) != len(items):
                raise ValueError("one result per envelope expected")
        except (ValueError, KeyError, TypeError) as exc:
            for item in items:
                await self._failed(item, f"{link.name}: unreadable batch answer ({exc})")
            return
        receipts: list[tuple[dict[str, Any], bytes]] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, dict) and isinstance(result.get("receipt"), str):
                try:
                    receipts.append((item, b64decode(result["receipt"], "receipt")))
                    continue
                except ParleyError as exc:
                    result = {"error": exc.code, "message": str(exc)}
            message = result.get("message", "?") if isinstance(result, dict) else "?"
            await self._failed(item, f"{link.name}: refused by {link.peer}: {message}")
        if not receipts:
            return
        answers = await run_in_threadpool(
            self.terminal.receive_receipts,
            [raw for _, raw in receipts],
            peer=link.peer,
            link=link.name,
        )
        await self._leaves_with_receipts(link.peer, data)
        for (item, _), answer in zip(receipts, answers, strict=True):
            if not isinstance(answer, ParleyError) and answer["envelope_id"] != item["envelope_id"]:
                answer = _answers_another(item, answer)
            if isinstance(answer, ParleyError):
                await run_in_threadpool(
                    self.terminal.record_security_event,
                    endpoint="receipt",
                    remote=link.url,
                    tls_party=link.peer,
                    error=answer,
                )
                await self._failed(item, f"{link.name}: bad receipt: {answer}")

    async def _deliver(self, item: dict[str, Any]) -> bool:
        peer = item["peer"]
        links = await self._links(peer)
        if item["via"]:
            links = [li for li in links if li.name == item["via"]]
        if not links:
            await self._failed(item, f"no link to {peer}")
            return False
        errors: list[str] = []
        refusals: list[BaseException] = []
        if item["precedence"] in ("FLASH", "IMMEDIATE") and not item["via"]:
            usable = [li for li in links if li.state != "down"] or links
            tasks = [asyncio.create_task(self._post(li, item)) for li in usable]
            try:
                for next_done in asyncio.as_completed(tasks):
                    try:
                        await next_done
                        return True
                    except (LinkFailed, Rejected, ParleyError) as exc:
                        errors.append(str(exc))
                        refusals.append(exc)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        else:
            for link in links:
                try:
                    await self._post(link, item)
                    return True
                except (LinkFailed, Rejected, ParleyError) as exc:
                    errors.append(f"{link.name}: {exc}")
                    refusals.append(exc)
        await self._failed(item, "; ".join(errors)[:500] or "failed", _longest_wait(refusals))
        return False

    async def _post(self, link: Link, item: dict[str, Any]) -> None:
        receipt = await self._request(link, "POST", "/v1/envelopes", content=item["raw"])
        try:
            answer = await run_in_threadpool(
                self.terminal.receive_receipt, receipt, peer=link.peer, link=link.name
            )
            if answer["envelope_id"] != item["envelope_id"]:
                raise _answers_another(item, answer)
        except (RemoteError, VerificationError) as exc:
            await run_in_threadpool(
                self.terminal.record_security_event,
                endpoint="receipt",
                remote=link.url,
                tls_party=link.peer,
                error=exc,
            )
            raise
        await self._mirror_after_receipt(link)
        if item["via"]:
            await run_in_threadpool(
                self.terminal.record_link,
                link.peer,
                link.name,
                ok=True,
                test=True,
                rtt_ms=await self._links_rtt(link),
            )
        log.debug("delivered", id=item["envelope_id"], peer=link.peer, link=link.name)

    async def _links_rtt(self, link: Link) -> float | None:
        for item in await run_in_threadpool(self.terminal.links):
            if item["peer"] == link.peer and item["name"] == link.name:
                rtt = item["rtt_ms"]
                return float(rtt) if rtt is not None else None
        return None

    async def _failed(self, item: dict[str, Any], error: str, wait: float | None = None) -> None:
        """Schedule the next attempt: after the backoff, or after ``wait`` seconds if longer
        (the ``Retry-After`` of a peer that refused it over its quota)."""
        delay = backoff(item["attempts"], item["precedence"], self.rng)
        if wait is not None:
            delay = max(delay, wait)
        retry_at = self.terminal.clock() + timedelta(seconds=delay)
        await run_in_threadpool(
            self.terminal.delivery_failed, item["envelope_id"], item["peer"], error, retry_at
        )
        if item["via"]:
            # The failed request was already counted against the link; this marks the test.
            await run_in_threadpool(
                self.terminal.record_link,
                item["peer"],
                item["via"],
                ok=False,
                error=error,
                test=True,
                count=False,
            )
        log.info(
            "delivery_failed",
            id=item["envelope_id"],
            peer=item["peer"],
            attempts=item["attempts"] + 1,
            retry_in_s=round(delay, 3),
            error=error[:200],
        )

    # Catch-up and witnessing ----------------------------------------------------

    async def _any_link(self, peer: str, method: str, path: str, **kwargs: Any) -> bytes:
        errors = []
        for link in await self._links(peer):
            try:
                return await self._request(link, method, path, **kwargs)
            except Busy as exc:  # every link leads to the same busy peer
                raise Busy(f"{link.name}: {exc}", retry_after=exc.retry_after) from None
            except (LinkFailed, Rejected) as exc:
                errors.append(f"{link.name}: {exc}")
        raise LinkFailed("; ".join(errors) or f"no link to {peer}")

    async def _catch_up(self, peer: str) -> None:
        since = self.terminal.gap_seen
        now = self.clock()
        gaps = [
            (key, after)
            for key, after in list(self.terminal.gaps.items())
            if key[1] == peer and now - since.get(key, now) >= self.timings.catch_up_grace
        ]
        if gaps and not await run_in_threadpool(self.terminal.catch_up_allowed, peer):
            return  # over its quota: what it sent comes again once the rate allows
        for (channel, sender), after in gaps:
            try:
                data = await self._any_link(
                    peer, "GET", "/v1/catch-up", params={"channel": channel, "after": after}
                )
                got = await run_in_threadpool(self.terminal.apply_catch_up, sender, data)
                log.info("caught_up", peer=peer, channel=channel, after=after, received=len(got))
            except (LinkFailed, ParleyError) as exc:
                log.info("catch_up_failed", peer=peer, channel=channel, error=str(exc)[:200])

    async def _witness_scheduled(self, peer: str, *, traffic: bool) -> None:
        """A witness round, and when the next idle one is due.

        A round without traffic between the two terminals is quiet: each quiet
        round in a row doubles the wait before the next idle one, from
        ``WITNESS_IDLE`` up to ``WITNESS_IDLE_MAX``, so a peer that says
        nothing to us costs one small request a minute. A log grown by the
        peer's traffic with third parties is cosigned at that pace too (the
        witnessing work grows with our traffic, not with peers x time); traffic
        with us brings rounds back to ``WITNESS_IDLE`` (and each exchange has
        its own round at once).
        """
        last = self._last_witness.get(peer)
        await self._witness(peer)
        if self._last_witness.get(peer) == last:
            return  # too soon after the previous round: none ran
        if peer in self._witness_failures:
            self._quiet_rounds[peer] = 0
            return  # it failed: _witness set when to try again
        quiet = not traffic and peer not in self._witness_due
        streak = self._quiet_rounds[peer] = self._quiet_rounds.get(peer, 0) + 1 if quiet else 0
        interval = min(self.timings.witness_idle * 2.0**streak, self.timings.witness_idle_max)
        spread = self.rng.uniform(
            1.0 - self.timings.witness_jitter, 1.0 + self.timings.witness_jitter
        )
        self._next_idle_round[peer] = self.clock() + interval * spread

    async def _witness(self, peer: str) -> None:
        """Cosign the peer's latest checkpoint, and have it cosign ours.

        One request when the peer's log has not grown (its offer is the
        checkpoint last cosigned); otherwise the leaves the mirror lacks are
        fetched in pages, checked against the offered root, and the
        cosignature goes back to the log owner.
        """
        now = self.clock()
        if now - self._last_witness.get(peer, 0) < self.timings.witness_every:
            return  # still due: the loop comes back within ``witness_every``
        self._last_witness[peer] = now
        self._witnessed_activity[peer] = self.terminal.activity.get(peer, 0)
        self._witness_due.discard(peer)
        try:
            await self._round(peer, partial(self._any_link, peer))
        except Busy as exc:
            # Not a failure: the peer asked us to come back (its Retry-After, jittered).
            spread = self.rng.uniform(1.0, 1.0 + self.timings.witness_jitter)
            self._next_idle_round[peer] = self.clock() + exc.retry_after * spread
            # Kept as the time of the next round (see _witness_scheduled); not counted
            # as a failure.
            self._witness_failures.setdefault(peer, 0)
            log.debug("witness_round_deferred", peer=peer, retry_in=exc.retry_after)
            return
        except (LinkFailed, ParleyError) as exc:
            self.terminal.kernel.cosign_again.add(peer)  # it may come back without it
            # Tried again after 2, 4, 8 … up to 60 s (jittered): a peer that cannot
            # answer, or a network that is overloaded, is not asked every 2 s.
            failures = self._witness_failures[peer] = self._witness_failures.get(peer, 0) + 1
            delay = min(
                self.timings.witness_every * 2.0 ** (failures - 1), self.timings.witness_idle_max
            )
            spread = self.rng.uniform(
                1.0 - self.timings.witness_jitter, 1.0 + self.timings.witness_jitter
            )
            self._next_idle_round[peer] = self.clock() + delay * spread
            log.info("witness_round_failed", peer=peer, error=str(exc)[:300], retry_in=delay)
            return
        self._witness_failures.pop(peer, None)

    async def _round(self, peer: str, send: Send) -> None:
        """One witness round with ``peer``, its requests made by ``send(method, path, ...)``
        (any link, or one link for a link test); one round with a peer at a time."""
        lock = self._round_locks.setdefault(peer, asyncio.Lock())
        async with lock, self._bulk_slots:
            request = await run_in_threadpool(self.terminal.checkpoint_request, peer)
            offer = await send("POST", "/v1/checkpoint-offers", content=request)
            plan = await run_in_threadpool(self.terminal.plan_witness, peer, offer)
            cosigned = self._unsent_cosignature.pop(peer, None)
            again = peer in self.terminal.kernel.cosign_again
            if plan.fresh:
                leaves = await self._mirror_leaves(peer, plan.start, plan.checkpoint.size, send)
                cosigned = await run_in_threadpool(self.terminal.cosign, peer, plan, leaves)
            elif cosigned is None and again:
                # Not new to us, but the owner may have lost it (restored from a backup).
                cosigned = await run_in_threadpool(
                    self.terminal.last_cosignature, peer, plan.checkpoint.size
                )
            self.terminal.kernel.cosign_again.discard(peer)
            if cosigned is not None:
                self._unsent_cosignature[peer] = cosigned
                # Our cosignature travels back to the log owner.
                await send("POST", "/v1/cosignatures", content=cosigned, content_type="text/plain")
                self._unsent_cosignature.pop(peer, None)

    async def _test_link(self, peer: str, name: str) -> None:
        """A scheduled link test: a witness round over that link alone.

        Its first answer is the peer's checkpoint offer, signed by its
        identity and carried over the pinned TLS link, so the link is shown
        to reach the real peer with one small request when the peer's log has
        not grown (a test message, with its envelope, receipt and two log
        entries, is what an operator's ``link test`` sends instead). The
        round-trip time is that of the offer.
        """
        link = next((li for li in await self._links(peer) if li.name == name), None)
        if link is None:
            return
        timings: list[float] = []

        began = time.perf_counter()

        async def send(method: str, path: str, **kwargs: Any) -> bytes:
            nonlocal began
            began = time.perf_counter()
            data = await self._request(link, method, path, **kwargs)
            timings.append((time.perf_counter() - began) * 1000)
            return data

        try:
            await self._round(peer, send)
        except Busy:
            # The peer answered over this link, pinned TLS and all: the link passed;
            # the round itself waits for the peer's next idle round.
            timings.append((time.perf_counter() - began) * 1000)
        except (LinkFailed, Rejected) as exc:
            # The failed request was already counted against the link; this marks the test.
            await run_in_threadpool(
                self.terminal.record_link,
                peer,
                name,
                ok=False,
                error=str(exc),
                test=True,
                count=False,
            )
            log.info("link_test_failed", peer=peer, link=name, error=str(exc)[:200])
            return
        except ParleyError as exc:
            # The peer's signed answer came over the link: the link passed; what the
            # answer held is the witness's business (it raised its own alarm).
            log.info("link_test_round_refused", peer=peer, link=name, error=str(exc)[:200])
        if timings:
            await run_in_threadpool(
                self.terminal.record_link, peer, name, ok=True, test=True, rtt_ms=timings[0]
            )

    async def _mirror_leaves(self, peer: str, start: int, end: int, send: Send) -> list[bytes]:
        """The peer's leaf hashes ``start`` .. ``end`` from its ``GET /v1/log/leaves``, paged."""
        leaves: list[bytes] = []
        while start + len(leaves) < end:
            at = start + len(leaves)
            limit = min(MAX_LEAVES_PAGE, end - at)
            data = await send("GET", "/v1/log/leaves", params={"start": at, "limit": limit})
            page = split_leaves(data, limit)
            if not page:
                raise CheckpointRejected(
                    f"{peer} has no leaf hash {at} for its checkpoint {end}: its log does not "
                    "hold what it signed"
                )
            leaves.extend(page)
        return leaves

    # Schedules ------------------------------------------------------------------

    async def _link_tests(self) -> None:
        """Test every link once per interval, one link at a time, spread evenly over it.

        The first round is spread over at most ``FIRST_LINK_TESTS`` seconds: a
        network that starts at once (every terminal testing every link) would
        otherwise flood itself.
        """
        interval = max(1.0, self.terminal.config.link_test_interval)
        period = min(interval, self.timings.first_link_tests)
        await asyncio.sleep(min(interval, 2.0))
        while not self._stopping:
            links = await run_in_threadpool(self.terminal.links)
            self.rng.shuffle(links)
            gap = period / max(1, len(links))
            for item in links:
                try:
                    await self._test_link(item["peer"], item["name"])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("link_test_error", peer=item["peer"], link=item["name"])
                await asyncio.sleep(gap * self.rng.uniform(0.5, 1.5))
            period = interval

    async def test_links(self, peers: Sequence[str] | None = None) -> None:
        """Queue one ``test`` message per link (each pinned to its link)."""
        for item in await run_in_threadpool(self.terminal.links):
            if peers is not None and item["peer"] not in peers:
                continue
            try:
                await run_in_threadpool(self._queue_test, item["peer"], item["name"])
            except ParleyError as exc:
                log.warning("link_test_not_queued", peer=item["peer"], error=str(exc))

    def _queue_test(self, peer: str, link: str) -> None:
        if self.terminal.pending_test(peer, link):
            return  # the previous test of this link is still under way
        self.terminal.send(
            [peer],
            kind="test",
            body={"test": {"link": link}},
            operator="link-test",
            precedence="ROUTINE",
            via=link,
        )

    async def _deadlines(self) -> None:
        while not self._stopping:
            try:
                await run_in_threadpool(self.terminal.check_deadlines)
            except Exception:
                log.exception("deadline_check_failed")
            await asyncio.sleep(5.0)
