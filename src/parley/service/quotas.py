"""Per-peer quotas on what the peer listener takes: a peer cannot flood or stall a terminal.

Each pinned peer has two token buckets (``[peer_quota]`` in ``parley.toml``):

* envelopes: ``envelopes_per_minute`` sustained, up to ``burst`` at once
  after a quiet spell;
* bytes: ``stored_bytes_per_day`` of envelope bytes, refilled evenly over a
  day (so at most that much at once, and that much a day sustained).

A delivery is charged before anything in it is opened: one that does not fit
is refused whole (the peer API answers ``429`` with ``quota_exceeded`` and
``Retry-After``) and the sender's outbox sends it again later; nothing is
lost. What a terminal fetches from a peer's catch-up endpoint to fill a gap
is charged too (never refused: it was asked for), and no catch-up is asked of
a peer that has no room left, so refusals that leave gaps do not let the
same traffic in through catch-up. Bulk batches (``POST /v1/envelopes/batch``) leave a tenth of the
envelope burst untouched, which only single deliveries (``POST
/v1/envelopes``: FLASH and IMMEDIATE, link tests) may spend, so that a backlog
drained in bulk never holds up a well-behaved peer's FLASH. A delivery larger
than a whole bucket is taken when the bucket is full (it then owes the
difference), so no delivery is refused for ever.

One incident, one security event and one alarm: the first refusal opens an
incident (``QuotaExceeded.new_incident``, recorded once by the peer API) and
raises one ``peer_quota_exceeded`` alarm; later refusals count on that alarm
(written at most once a second, so a flood of refusals is not a flood of
writes). The incident ends once the peer's buckets are full again; a refusal
after that is a new incident. The buckets live in memory and start full when
``parley serve`` starts.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime

from parley.config import Config
from parley.errors import QuotaExceeded

__all__ = ["BULK_RESERVE", "PeerQuotas", "Refusal"]

#: The share of the envelope burst that bulk batches leave to single deliveries.
BULK_RESERVE = 0.1
#: Seconds between writes of a refusal count onto an incident's alarm.
COUNT_EVERY = 1.0
DAY = 86400.0


@dataclass(slots=True)
class _Bucket:
    capacity: float
    per_second: float
    level: float

    def refill(self, elapsed: float) -> None:
        self.level = min(self.capacity, self.level + elapsed * self.per_second)

    @property
    def full(self) -> bool:
        return self.level >= self.capacity

    def wait_for(self, needed: float) -> float:
        """Seconds until the level reaches ``needed`` (capped at a full bucket)."""
        target = min(needed, self.capacity)
        return max(0.0, (target - self.level) / self.per_second)


@dataclass(slots=True)
class _PeerState:
    envelopes: _Bucket | None
    octets: _Bucket | None
    at: datetime
    incident: bool = False
    #: Refusals not yet written onto the incident's alarm, and when it was last written.
    uncounted: int = 0
    counted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the caller records for one refused delivery."""

    error: QuotaExceeded
    #: Refusals to add to the incident's alarm now (0: keep counting in memory).
    count: int


class PeerQuotas:
    """The buckets of every peer, charged by the application layer for the peer API."""

    def __init__(self, config: Config) -> None:
        self.per_minute = config.quota_envelopes_per_minute
        self.burst = config.quota_burst or config.quota_envelopes_per_minute
        self.bytes_per_day = config.quota_bytes_per_day
        self._peers: dict[str, _PeerState] = {}
        self._lock = threading.Lock()

    def _state(self, peer: str, now: datetime) -> _PeerState:
        state = self._peers.get(peer)
        if state is None:
            envelopes = (
                _Bucket(float(self.burst), self.per_minute / 60.0, float(self.burst))
                if self.per_minute
                else None
            )
            octets = (
                _Bucket(float(self.bytes_per_day), self.bytes_per_day / DAY, self.bytes_per_day)
                if self.bytes_per_day
                else None
            )
            state = self._peers[peer] = _PeerState(envelopes, octets, now)
        elapsed = max(0.0, (now - state.at).total_seconds())  # a clock set back refills nothing
        state.at = now
        for bucket in (state.envelopes, state.octets):
            if bucket is not None:
                bucket.refill(elapsed)
        return state

    def charge(
        self, peer: str, envelopes: int, size: int, *, bulk: bool, now: datetime
    ) -> Refusal | None:
        """Take ``envelopes`` and ``size`` bytes from ``peer``'s buckets, or refuse them all."""
        with self._lock:
            state = self._state(peer, now)
            if state.incident and all(b is None or b.full for b in (state.envelopes, state.octets)):
                state.incident = False  # quiet long enough: the incident is over
            waits: list[float] = []
            if state.envelopes is not None:
                reserve = self.burst * BULK_RESERVE if bulk else 0.0
                needed = envelopes + reserve
                if state.envelopes.level < needed and not state.envelopes.full:
                    waits.append(state.envelopes.wait_for(needed))
            if state.octets is not None and state.octets.level < size and not state.octets.full:
                waits.append(state.octets.wait_for(size))
            if not waits:
                for bucket, cost in ((state.envelopes, envelopes), (state.octets, size)):
                    if bucket is not None:
                        bucket.level -= cost
                return None
            new = not state.incident
            state.incident = True
            state.uncounted += 1
            count = 0
            if new or (
                state.counted_at is None or (now - state.counted_at).total_seconds() >= COUNT_EVERY
            ):
                count, state.uncounted, state.counted_at = state.uncounted, 0, now
            retry_after = max(1, math.ceil(max(waits)))
            return Refusal(
                QuotaExceeded(
                    f"{peer} sent more than its quota ({self.describe()}); "
                    f"{envelopes} envelope(s), {size} bytes refused: retry after {retry_after} s",
                    retry_after=retry_after,
                    new_incident=new,
                ),
                count,
            )

    def debit(self, peer: str, envelopes: int, size: int, *, now: datetime) -> None:
        """Charge what this terminal asked the peer for (catch-up): never refused, it may
        leave the buckets owing, and what the peer pushes waits until that is repaid."""
        with self._lock:
            state = self._state(peer, now)
            for bucket, cost in ((state.envelopes, envelopes), (state.octets, size)):
                if bucket is not None:
                    bucket.level -= cost

    def within(self, peer: str, *, now: datetime) -> bool:
        """Whether ``peer`` has room left (the delivery worker asks for a catch-up only then)."""
        with self._lock:
            state = self._state(peer, now)
            return all(b is None or b.level >= 1 for b in (state.envelopes, state.octets))

    def describe(self) -> str:
        parts = []
        if self.per_minute:
            parts.append(f"{self.per_minute} envelopes a minute, {self.burst} at once")
        if self.bytes_per_day:
            parts.append(f"{self.bytes_per_day} bytes a day")
        return ", ".join(parts) or "no limit"
