"""The terminal's ledger: message records read from the database as needed.

The protocol core asks its ledger for the records of envelopes sent and
received (``parley.core.ledger``). Here the database is the ledger: records
created or touched since the last commit are held in memory (the commit
writes them, in the terminal's own rows), and a bounded cache keeps the
most recent ones, so that memory does not grow with the transcript.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import Engine, and_, func, select

from parley.core.ledger import ReceivedRecord, SentRecord
from parley.store import models as m
from parley.store.db import reading

__all__ = ["StoreLedger"]

#: Records kept after their commit (the most recently used).
CACHE_SIZE = 4096


class StoreLedger:
    """Records in the terminal's database, with the uncommitted ones in memory.

    ``committed()`` is called after each successful commit; after a failed one
    the terminal builds a new ledger.
    """

    def __init__(self, engine: Engine, me: str, entry: Callable[[int], bytes]) -> None:
        self._engine = engine
        self._me = me
        self._entry = entry
        self._pending_sent: dict[str, SentRecord] = {}
        self._pending_received: dict[str, ReceivedRecord] = {}
        self._sent: OrderedDict[str, SentRecord] = OrderedDict()
        self._received: OrderedDict[str, ReceivedRecord] = OrderedDict()
        # hash() of every envelope id received: almost every envelope that
        # arrives is new, and this answers "never seen" without a query. Equal
        # hashes only send the question to the database. About 60 bytes an id.
        with reading(engine) as conn:
            self._received_ids = {
                hash(envelope_id)
                for envelope_id in conn.execute(
                    select(m.messages.c.envelope_id).where(m.messages.c.direction == "in")
                ).scalars()
            }

    # The Ledger protocol ---------------------------------------------------------

    def sent(self, envelope_id: str) -> SentRecord | None:
        record = self._pending_sent.get(envelope_id)
        if record is not None:
            return record
        record = self._sent.get(envelope_id)
        if record is None:
            record = self._load_sent(envelope_id)
            if record is None:
                return None
            # The caller may update its receipts or acks before the commit that
            # stores them: the cache is trimmed only after a commit.
            self._sent[envelope_id] = record
        self._sent.move_to_end(envelope_id)
        return record

    def add_sent(self, record: SentRecord) -> None:
        self._pending_sent[record.envelope_id] = record

    def sent_since(self, channel: str, after_seq: int, limit: int) -> list[int]:
        cols = m.messages.c
        with reading(self._engine) as conn:
            rows = conn.execute(
                select(cols.seq, cols.log_index)
                .where(
                    and_(
                        cols.channel == channel,
                        cols.sender == self._me,
                        cols.seq > after_seq,
                        cols.seq <= after_seq + limit,
                    )
                )
                .order_by(cols.seq)
            ).all()
        by_seq = {row.seq: row.log_index for row in rows}
        for record in self._pending_sent.values():
            if record.channel == channel and after_seq < record.seq <= after_seq + limit:
                by_seq[record.seq] = record.log_index
        found = []
        seq = after_seq + 1
        while seq in by_seq:
            found.append(by_seq[seq])
            seq += 1
        return found

    def received(self, envelope_id: str) -> ReceivedRecord | None:
        if hash(envelope_id) not in self._received_ids:
            return None
        record = self._pending_received.get(envelope_id) or self._received.get(envelope_id)
        if record is not None:
            return record
        return self._load_received(envelope_id)

    def add_received(self, record: ReceivedRecord) -> None:
        self._pending_received[record.envelope_id] = record
        self._received_ids.add(hash(record.envelope_id))

    # Commit ---------------------------------------------------------------------------

    def committed(self) -> None:
        """The database now holds everything recorded so far."""
        self._sent.update(self._pending_sent)
        self._received.update(self._pending_received)
        self._pending_sent.clear()
        self._pending_received.clear()
        for cache in (self._sent, self._received):
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)

    @property
    def held(self) -> int:
        """Records in memory (for tests and metrics)."""
        return (
            len(self._pending_sent)
            + len(self._pending_received)
            + len(self._sent)
            + len(self._received)
        )

    # Loading -----------------------------------------------------------------------

    def _digest(self, log_index: int) -> str:
        return hashlib.sha256(self._entry(log_index)[1:]).hexdigest()

    def _load_sent(self, envelope_id: str) -> SentRecord | None:
        cols = m.messages.c
        with reading(self._engine) as conn:
            row = conn.execute(
                select(
                    cols.channel, cols.seq, cols.recipients, cols.precedence, cols.log_index
                ).where(and_(cols.envelope_id == envelope_id, cols.direction == "out"))
            ).first()
            if row is None:
                return None
            receipts = {
                r.receiver: r.through_seq
                for r in conn.execute(
                    select(
                        m.receipts.c.receiver,
                        func.max(m.receipts.c.through_seq).label("through_seq"),
                    )
                    .where(m.receipts.c.envelope_id == envelope_id)
                    .group_by(m.receipts.c.receiver)
                )
            }
            acks = {
                a.party: a.operator
                for a in conn.execute(
                    select(m.acks.c.party, m.acks.c.operator).where(
                        m.acks.c.envelope_id == envelope_id
                    )
                )
            }
        return SentRecord(
            envelope_id,
            row.channel,
            row.seq,
            tuple(row.recipients.split(",")),
            row.precedence,
            row.log_index,
            self._digest(row.log_index),
            receipts,
            acks,
        )

    def _load_received(self, envelope_id: str) -> ReceivedRecord | None:
        cols = m.messages.c
        with reading(self._engine) as conn:
            row = conn.execute(
                select(cols.channel, cols.sender, cols.seq, cols.log_index).where(
                    and_(cols.envelope_id == envelope_id, cols.direction == "in")
                )
            ).first()
        if row is None:
            return None
        return ReceivedRecord(
            envelope_id,
            self._digest(row.log_index),
            row.log_index,
            row.channel,
            row.sender,
            row.seq,
        )
