"""The outbox: which envelope goes to which peer next (the delivery worker's bookkeeping)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update

from parley.service.kernel import PRECEDENCE_RANK, URGENT, Kernel, utc
from parley.store import models as m
from parley.store.db import reading

__all__ = ["SUMMARY_FRESH", "Outbox"]

#: Seconds the summary of pending rows (per peer and lane, the earliest next
#: attempt) answers the delivery worker's "anything due?" before it is read
#: again. New work (``Kernel.outbox_changed``) and the outbox's own writes
#: make it be read again at once, so the worker's loops with dozens of idle
#: peers cost one small query a second, not two per peer per loop.
SUMMARY_FRESH = 1.0


def _precedence_filter(urgent: bool | None) -> list[ColumnElement[bool]]:
    if urgent is None:
        return []
    column = m.outbox.c.precedence
    return [column.in_(URGENT) if urgent else column.not_in(URGENT)]


class Outbox:
    """Pending deliveries: what is due, retries, postponements and link tests."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        #: (read at, generation, {(peer, urgent): earliest next attempt}) of pending rows.
        self._summary: tuple[float, tuple[int, int], dict[tuple[str, bool], datetime]] | None = None
        self._generation = 0

    def _changed(self) -> None:
        """Our own write (committed): the summary is read again next time."""
        self._generation += 1

    def _pending(self) -> dict[tuple[str, bool], datetime]:
        """The earliest next attempt of the pending rows, per peer and lane (urgent or not)."""
        generation = (self.kernel.outbox_generation, self._generation)
        cached = self._summary
        if (
            cached is not None
            and cached[1] == generation
            and time.monotonic() - cached[0] < SUMMARY_FRESH
        ):
            return cached[2]
        read_at = time.monotonic()
        with reading(self.kernel.engine) as conn:
            rows = conn.execute(
                select(m.outbox.c.peer, m.outbox.c.precedence, func.min(m.outbox.c.next_attempt))
                .where(m.outbox.c.state == "pending")
                .group_by(m.outbox.c.peer, m.outbox.c.precedence)
            ).all()
        summary: dict[tuple[str, bool], datetime] = {}
        for peer, precedence, first in rows:
            key = (peer, precedence in URGENT)
            when = utc(first)
            if when is not None and (key not in summary or when < summary[key]):
                summary[key] = when
        # Stored with the generation read before the query: a change during it reads again.
        self._summary = (read_at, generation, summary)
        return summary

    def _earliest(self, peer: str, urgent: bool | None) -> datetime | None:
        pending = self._pending()
        lanes = (True, False) if urgent is None else (urgent,)
        found = [pending[(peer, lane)] for lane in lanes if (peer, lane) in pending]
        return min(found) if found else None

    def due_deliveries(
        self,
        peer: str,
        limit: int = 64,
        *,
        urgent: bool | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Pending outbox rows for ``peer`` whose next attempt is due, most urgent first.

        ``urgent`` True takes only FLASH and IMMEDIATE, False only the rest;
        envelopes in ``exclude`` (already on their way) are left out. A frozen
        terminal delivers nothing: the receipts would change a log that is
        waiting to be recovered.
        """
        if self.kernel.frozen is not None:
            return []
        now = self.kernel.clock()
        earliest = self._earliest(peer, urgent)
        if earliest is None or earliest > now:
            return []  # nothing pending, or nothing due yet (the summary says: no query)
        with reading(self.kernel.engine) as conn:
            rows = conn.execute(
                select(m.outbox, m.messages.c.log_index, m.log_entries.c.entry)
                .join(m.messages, m.messages.c.envelope_id == m.outbox.c.envelope_id)
                .join(m.log_entries, m.log_entries.c.idx == m.messages.c.log_index)
                .where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.state == "pending",
                        m.outbox.c.next_attempt <= now,
                        *_precedence_filter(urgent),
                        *([m.outbox.c.envelope_id.not_in(exclude)] if exclude else []),
                    )
                )
                .order_by(m.messages.c.log_index)
                .limit(limit * 4)
            ).all()
        rows = sorted(rows, key=lambda r: (PRECEDENCE_RANK.get(r.precedence, 9), r.log_index))
        result = []
        for row in rows[:limit]:
            raw = bytes(row.entry[1:])
            result.append(
                {
                    "envelope_id": row.envelope_id,
                    "peer": row.peer,
                    "precedence": row.precedence,
                    "attempts": row.attempts,
                    "via": row.via,
                    "raw": raw,
                }
            )
        return result

    def next_due(self, peer: str, *, urgent: bool | None = None) -> datetime | None:
        """When the next pending delivery to ``peer`` falls due (from the summary, which
        may be up to ``SUMMARY_FRESH`` s old: a worker woken early just looks again)."""
        if self.kernel.frozen is not None:
            return None
        return self._earliest(peer, urgent)

    def delivery_failed(self, envelope_id: str, peer: str, error: str, retry_at: datetime) -> None:
        with self.kernel.engine.begin() as conn:
            conn.execute(
                update(m.outbox)
                .where(and_(m.outbox.c.envelope_id == envelope_id, m.outbox.c.peer == peer))
                .values(
                    attempts=m.outbox.c.attempts + 1, next_attempt=retry_at, last_error=error[:500]
                )
            )
        self._changed()

    def retry_now(self, peer: str) -> int:
        """Bring every waiting retry to ``peer`` forward to now (it answers again).

        Link tests keep their own schedule. Returns how many were waiting.
        """
        now = self.kernel.clock()
        with self.kernel.engine.begin() as conn:
            result = conn.execute(
                update(m.outbox)
                .where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.state == "pending",
                        m.outbox.c.next_attempt > now,
                        m.outbox.c.via.is_(None),
                        # A first attempt spread over time (key announcements) is no retry.
                        m.outbox.c.attempts > 0,
                    )
                )
                .values(next_attempt=now)
            )
        self._changed()
        return int(result.rowcount or 0)

    def postpone(self, envelope_id: str, peer: str, seconds: float) -> None:
        """Push a pending delivery's next attempt ``seconds`` into the future."""
        with self.kernel.engine.begin() as conn:
            conn.execute(
                update(m.outbox)
                .where(and_(m.outbox.c.envelope_id == envelope_id, m.outbox.c.peer == peer))
                .values(next_attempt=self.kernel.clock() + timedelta(seconds=seconds))
            )
        self._changed()

    def pending_test(self, peer: str, link: str) -> bool:
        """Whether a test message pinned to this link still awaits its receipt."""
        with reading(self.kernel.engine) as conn:
            row = conn.execute(
                select(m.outbox.c.envelope_id).where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.via == link,
                        m.outbox.c.state == "pending",
                    )
                )
            ).first()
        return row is not None

    def pending_count(self) -> int:
        with reading(self.kernel.engine) as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(m.outbox).where(m.outbox.c.state == "pending")
                ).scalar_one()
            )
