"""``parley verify``: audit a terminal's own records without its private keys.

Checked, in order:

1. the stored cards: the terminal's own (``card.json``) and every pinned
   peer's, against the fingerprint recorded when it was pinned;
2. the transcript: indexes contiguous from 0; every entry parses, and every
   envelope and receipt carries a valid signature of a known party;
3. every checkpoint this terminal signed: both signatures, and the root of
   the transcript at that size recomputed from the stored entries;
4. every receipt held for a message sent: its inclusion proof of that
   envelope in the receiver's log;
5. every cosignature: peers' on this terminal's checkpoints (both
   signatures, and the root matching this transcript), and this terminal's
   on peers' checkpoints;
6. the message index: each row names the envelope stored at its log index,
   and every column it shows (channel, sender, recipients, seq, kind,
   precedence, exercise flag, time, direction) equals the signed envelope;
   its stored inner content hashes to the signed ``content_digest`` and its
   operator, language and body equal that content;
7. every receipt row against the signed receipt logged at its index, every
   acknowledgement row against the acknowledgement envelope it names, and
   every cosignature row against its note.

Every row that points into the log (``messages.log_index``,
``receipts.log_index``, the acknowledgement an ``acks`` row names, the size
of a checkpoint or cosignature) must point at an entry the log holds, and at
the one it claims: a row pointing past the end (a log rolled back under its
indexes) or at another entry fails. The end is the last entry of the
contiguous log from 0.

The first row that differs is named by table, envelope id and column.

A single changed byte in a log entry breaks its signature or its leaf hash
and therefore the checkpoints over it; the audit names the entry.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlalchemy import Engine, func, select

from parley import merkle
from parley.core.checkpoint import verify_checkpoint, verify_cosignature
from parley.core.envelope import Limits, read_envelope
from parley.core.identity import IdentityCard
from parley.core.receipts import read_receipt
from parley.core.transcript import EntryType, split_entry
from parley.errors import ParleyError, VerificationError
from parley.service.cardchain import load_chain
from parley.service.reads import (
    SignedFacts,
    content_columns_problem,
    content_problem,
    row_problem,
    signed_facts,
)
from parley.store import models as m
from parley.store.db import engine_for, reading

__all__ = ["AuditReport", "audit", "stored_entries"]


@dataclass(slots=True)
class AuditReport:
    entries: int = 0
    envelopes: int = 0
    receipts: int = 0
    checkpoints: int = 0
    cosignatures: int = 0
    messages: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "envelopes": self.envelopes,
            "receipts": self.receipts,
            "checkpoints": self.checkpoints,
            "cosignatures": self.cosignatures,
            "messages": self.messages,
            "failures": list(self.failures),
        }


#: Logs shorter than this are checked in this process; longer ones by a pool
#: of worker processes, one per core, each reading and checking a range.
PARALLEL_FROM = 20_000
_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class _ReceiptFacts:
    envelope_id: str
    sender: str
    receiver: str
    log_index: int
    size: int
    root: bytes
    inclusion: tuple[bytes, ...]


#: (index, leaf hash, what the entry says, or why it failed)
_Checked = tuple[int, bytes, SignedFacts | _ReceiptFacts | None, str | None]


def _check_entry(
    idx: int, entry: bytes, own: str, lookup: Callable[[str], IdentityCard | None]
) -> _Checked:
    """Everything about one entry that needs no other entry: parse, signature, leaf hash."""
    leaf = merkle.leaf_hash(entry)
    try:
        kind, raw = split_entry(entry)
        if kind is EntryType.ENVELOPE:
            h = read_envelope(raw, lookup, _LIMITS)
            signer = lookup(h.sender)
            assert signer is not None  # read_envelope found it
            facts: SignedFacts | _ReceiptFacts = signed_facts(h, signer)
        else:
            r = read_receipt(raw, lookup)
            facts = _ReceiptFacts(
                r.envelope_id,
                r.sender,
                r.receiver,
                r.log_index,
                r.checkpoint.size,
                r.checkpoint.root,
                r.inclusion,
            )
    except ParleyError as exc:
        return idx, leaf, None, f"log entry {idx}: {exc}"
    return idx, leaf, facts, None


_LIMITS = Limits()
_worker: tuple[Engine, str, dict[str, IdentityCard]] | None = None


def _start_worker(url: str, own: str, cards: dict[str, bytes]) -> None:
    global _worker
    engine = engine_for(url)
    with reading(engine) as conn:  # each card with its chain, as the parent has it
        pinned = {
            party: load_chain(conn, IdentityCard.from_bytes(card)) for party, card in cards.items()
        }
    _worker = (engine, own, pinned)


def _check_range(bounds: tuple[int, int]) -> list[_Checked]:
    assert _worker is not None
    engine, own, cards = _worker
    return [
        _check_entry(idx, entry, own, cards.get)
        for idx, entry in stored_entries(engine, bounds[0] - 1, bounds[1])
    ]


def _checked_entries(
    engine: Engine, own: IdentityCard, cards: dict[str, IdentityCard], total: int
) -> Iterator[_Checked]:
    """Every entry checked, in log order; in parallel when the log is long."""
    workers = min(os.cpu_count() or 1, 8)
    if total < PARALLEL_FROM or workers < 2:
        for idx, entry in stored_entries(engine):
            yield _check_entry(idx, entry, own.party, cards.get)
        return
    url = engine.url.render_as_string(hide_password=False)
    ranges = [(lo, min(lo + _CHUNK, total)) for lo in range(0, total, _CHUNK)]
    # The entries past the last range (written while the audit runs) are read here.
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(url, own.party, {p: c.signed_bytes for p, c in cards.items()}),
    ) as pool:
        for chunk in pool.map(_check_range, ranges):
            yield from chunk
    for idx, entry in stored_entries(engine, total - 1):
        yield _check_entry(idx, entry, own.party, cards.get)


def audit(
    engine: Engine,
    own: IdentityCard,
    *,
    progress: Callable[[int, int], None] | None = None,
    max_failures: int = 100,
) -> AuditReport:
    """Check a terminal's records; memory stays small however long the log is."""
    report = AuditReport()

    def fail(text: str) -> None:
        if len(report.failures) < max_failures:
            report.failures.append(text)

    cards: dict[str, IdentityCard] = {own.party: own}
    with reading(engine) as conn:
        for row in conn.execute(select(m.peers)):
            try:
                card = IdentityCard.from_bytes(row.card).pinned(row.fingerprint)
            except ParleyError as exc:
                fail(f"pinned card of {row.party}: {exc}")
                continue
            if card.party != row.party:
                fail(f"pinned card stored under {row.party} belongs to {card.party}")
                continue
            try:
                card = load_chain(conn, card)
            except ParleyError as exc:
                fail(f"card chain of {row.party}: {exc}")
            cards[card.party] = card
        try:
            own = cards[own.party] = load_chain(conn, own)  # checkpoints of every own card
        except ParleyError as exc:
            fail(f"card chain of {own.party}: {exc}")
        last = conn.execute(select(func.max(m.log_entries.c.idx))).scalar()
    total = 0 if last is None else last + 1
    tree = merkle.MerkleLog()
    #: Envelopes this terminal sent whose receipts are not all in yet:
    #: envelope id -> (leaf hash, receipts still expected).
    awaiting: dict[str, tuple[bytes, int]] = {}
    index = _MessageIndex(engine, own.party, fail)

    for idx, leaf, facts, error in _checked_entries(engine, own, cards, total):
        if idx != tree.size:
            fail(f"log entry {tree.size} is missing (the next stored entry is {idx})")
            break
        tree.append(leaf)
        report.entries += 1
        if progress is not None and report.entries % 1000 == 0:
            progress(report.entries, total)
        if error is not None:
            fail(error)
            index.at(idx, "does not verify")
        elif isinstance(facts, SignedFacts):
            report.envelopes += 1
            index.at(idx, facts)
            if facts.sender == own.party:
                awaiting[facts.id] = (leaf, len(facts.recipients))
        elif isinstance(facts, _ReceiptFacts):
            report.receipts += 1
            index.at(idx, "is not an envelope")
            if facts.sender == own.party and facts.receiver != own.party:
                _check_held_receipt(idx, facts, awaiting, engine, fail)
    index.finish(tree.size)
    _check_receipt_rows(engine, cards, fail, tree.size)
    _check_ack_rows(engine, fail, tree.size, index.failed)

    with reading(engine) as conn:
        for row in conn.execute(select(m.checkpoints).order_by(m.checkpoints.c.size)):
            report.checkpoints += 1
            where = f"checkpoints row {row.size}"
            try:
                checkpoint = verify_checkpoint(row.note, own)
            except ParleyError as exc:
                fail(f"{where}: {exc}")
                continue
            if checkpoint.size != row.size:
                fail(
                    f"{where}: column size differs from the signed checkpoint "
                    f"(size {checkpoint.size})"
                )
            elif checkpoint.size > tree.size:
                fail(
                    f"{where}: size {checkpoint.size} is past the end of the log "
                    f"({tree.size} entries)"
                )
            elif tree.root_at(checkpoint.size) != checkpoint.root:
                fail(
                    f"{where}: the stored log does not hash to the signed root at size "
                    f"{checkpoint.size} (an entry before it was changed)"
                )
        for row in conn.execute(select(m.cosignatures).order_by(m.cosignatures.c.id)):
            report.cosignatures += 1
            where = f"cosignatures row {row.id} ({row.direction}, {row.party})"
            witness = cards.get(row.party)
            if witness is None:
                fail(f"{where}: column party names no pinned peer")
                continue
            if row.direction not in ("of-us", "by-us"):
                fail(f"{where}: column direction is not of-us or by-us")
                continue
            try:
                if row.direction == "of-us":
                    checkpoint = verify_checkpoint(row.note, own)
                    verify_cosignature(checkpoint, row.note, witness)
                else:
                    checkpoint = verify_checkpoint(row.note, witness)
                    verify_cosignature(checkpoint, row.note, own)
            except ParleyError as exc:
                fail(f"{where}: {exc}")
                continue
            if checkpoint.size != row.size:
                fail(f"{where}: column size differs from the cosigned checkpoint")
            elif row.direction == "by-us":
                continue  # a peer's log: this terminal's log says nothing about it
            elif checkpoint.size > tree.size:
                fail(
                    f"{where}: size {checkpoint.size} is past the end of the log "
                    f"({tree.size} entries)"
                )
            elif tree.root_at(checkpoint.size) != checkpoint.root:
                fail(f"{where}: the log's root at size {checkpoint.size} is not the cosigned root")
    report.messages = index.rows
    return report


def _check_held_receipt(
    idx: int,
    facts: _ReceiptFacts,
    awaiting: dict[str, tuple[bytes, int]],
    engine: Engine,
    fail: Callable[[str], None],
) -> None:
    """A receipt held for an envelope this terminal sent, logged before it."""
    pending = awaiting.get(facts.envelope_id)
    if pending is not None:
        leaf, expected = pending
        # Once every recipient's receipt is in, the envelope is forgotten, so
        # memory stays bounded by the receipts outstanding.
        if expected <= 1:
            del awaiting[facts.envelope_id]
        else:
            awaiting[facts.envelope_id] = (leaf, expected - 1)
    else:
        found = _sent_leaf(engine, facts.envelope_id, idx)  # a receipt issued again
        if found is None:
            fail(f"log entry {idx}: receipt for envelope {facts.envelope_id}, never sent")
            return
        leaf = found
    try:
        merkle.verify_inclusion(leaf, facts.log_index, facts.size, facts.inclusion, facts.root)
    except VerificationError as exc:
        fail(
            f"log entry {idx}: the receipt from {facts.receiver} for envelope "
            f"{facts.envelope_id} does not prove the envelope is in its log: {exc}"
        )


def _sent_leaf(engine: Engine, envelope_id: str, before: int) -> bytes | None:
    """The leaf hash of the envelope this terminal sent as ``envelope_id``, logged before."""
    with reading(engine) as conn:
        entry = conn.execute(
            select(m.log_entries.c.entry)
            .join(m.messages, m.messages.c.log_index == m.log_entries.c.idx)
            .where(
                m.messages.c.envelope_id == envelope_id,
                m.messages.c.direction == "out",
                m.log_entries.c.idx < before,
            )
        ).scalar()
    return None if entry is None else merkle.leaf_hash(entry)


class _MessageIndex:
    """The message index checked against the log, merged in log order."""

    def __init__(self, engine: Engine, own: str, fail: Callable[[str], None]) -> None:
        self._rows = _message_rows(engine)
        self._own = own
        self._fail = fail
        self._next: Any = next(self._rows, None)
        self.rows = 0
        #: envelope id -> log index of each row that did not verify (bounded by
        #: ``max_failures`` in practice: each one is also a failure).
        self.failed: dict[str, int] = {}

    def _row_fails(self, row: Any, text: str) -> None:
        self.failed[row.envelope_id] = row.log_index
        self._fail(text)

    def at(self, idx: int, facts: SignedFacts | str) -> None:
        """Check the rows pointing at entry ``idx``: its facts, or why it has none."""
        while self._next is not None and self._next.log_index <= idx:
            row = self._next
            self.rows += 1
            pointer = f"messages row {row.envelope_id}: column log_index points at log entry"
            where = f"messages row {row.envelope_id} (log entry {row.log_index})"
            if row.log_index < idx:  # only a negative index is passed over
                self._row_fails(row, f"{pointer} {row.log_index}, which does not exist")
            elif isinstance(facts, str):
                self._row_fails(row, f"{pointer} {idx}, which {facts}")
            elif facts.id != row.envelope_id:
                self._row_fails(row, f"{pointer} {idx}, which holds another envelope ({facts.id})")
            else:
                problem = self._problem(row, facts)
                if problem is not None:
                    self._row_fails(row, f"{where}: column {problem}")
            self._next = next(self._rows, None)

    def _problem(self, row: Any, facts: SignedFacts) -> str | None:
        column = row_problem(row, facts, self._own)
        if column is not None:
            return f"{column} differs from the signed envelope"
        stored = None if row.content is None else bytes(row.content)
        content, problem = content_problem(stored, facts)
        if content is None:
            return problem
        column = content_columns_problem(row, content)
        if column is not None:
            return f"{column} differs from the signed content"
        return None

    def finish(self, size: int) -> None:
        """The rows left point past the end of the log (``size`` entries)."""
        while self._next is not None:
            row = self._next
            self.rows += 1
            self._row_fails(
                row,
                f"messages row {row.envelope_id}: column log_index points past the end of the "
                f"log (log entry {row.log_index}; the log has {size} entries)",
            )
            self._next = next(self._rows, None)


def _message_rows(engine: Engine, batch: int = 2000) -> Iterator[Any]:
    last = -1
    cols = m.messages.c
    while True:
        with reading(engine) as conn:
            rows = conn.execute(
                select(m.messages)
                .where(cols.log_index > last)
                .order_by(cols.log_index)
                .limit(batch)
            ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].log_index


def _check_receipt_rows(
    engine: Engine, cards: dict[str, IdentityCard], fail: Callable[[str], None], size: int
) -> None:
    """Each receipts row points at the signed receipt for its envelope and says what it says."""
    r = m.receipts.c
    msg = m.messages.c
    with reading(engine) as conn:
        rows = conn.execute(
            select(
                m.receipts,
                m.log_entries.c.entry,
                msg.direction.label("m_direction"),
            )
            .outerjoin(m.log_entries, m.log_entries.c.idx == r.log_index)
            .outerjoin(m.messages, msg.envelope_id == r.envelope_id)
            .order_by(r.log_index, r.envelope_id, r.receiver)
        ).all()
    for row in rows:
        where = f"receipts row {row.envelope_id}/{row.receiver}"
        if row.m_direction != "out":
            fail(f"{where}: column envelope_id names no message this terminal sent")
            continue
        if row.log_index is None:
            continue  # kept from a receipt checked but not logged (a later copy)
        pointer = f"{where}: column log_index points"
        if row.log_index >= size:
            fail(
                f"{pointer} past the end of the log (log entry {row.log_index}; "
                f"the log has {size} entries)"
            )
            continue
        if row.entry is None:
            fail(f"{pointer} at log entry {row.log_index}, which does not exist")
            continue
        try:
            kind, raw = split_entry(bytes(row.entry))
            if kind is not EntryType.RECEIPT:
                fail(f"{pointer} at log entry {row.log_index}, which is not a receipt")
                continue
            receipt = read_receipt(raw, cards.get)
        except ParleyError as exc:
            fail(f"{where}: log entry {row.log_index}: {exc}")
            continue
        if receipt.envelope_id != row.envelope_id:
            fail(
                f"{pointer} at log entry {row.log_index}, the receipt for another envelope "
                f"({receipt.envelope_id})"
            )
            continue
        rejection = receipt.rejection
        issued = row.issued_at if row.issued_at.tzinfo else row.issued_at.replace(tzinfo=UTC)
        for column, same in (
            ("receiver", receipt.receiver == row.receiver),
            ("issued_at", issued == receipt.issued_at),
            ("through_seq", receipt.through_seq == row.through_seq),
            ("rejection_code", (rejection.code if rejection else None) == row.rejection_code),
            (
                "rejection_reason",
                (rejection.reason if rejection else None) == row.rejection_reason,
            ),
        ):
            if not same:
                fail(f"{where}: column {column} differs from the signed receipt")
                break


def _check_ack_rows(
    engine: Engine, fail: Callable[[str], None], size: int, failed_messages: dict[str, int]
) -> None:
    """Each acks row says what the acknowledgement envelope it names says.

    The acknowledgement's own row was checked against its envelope and its
    content digest above (``failed_messages``: the rows that failed); here the
    acks row fails with it, and its content is compared with the acks row.
    """
    a = m.acks.c
    msg = m.messages.c
    with reading(engine) as conn:
        rows = conn.execute(
            select(
                m.acks,
                msg.sender.label("m_sender"),
                msg.kind.label("m_kind"),
                msg.direction.label("m_direction"),
                msg.content.label("m_content"),
                msg.log_index.label("m_log_index"),
            )
            .outerjoin(m.messages, msg.envelope_id == a.ack_envelope_id)
            .order_by(a.envelope_id, a.party)
        ).all()
    for row in rows:
        where = f"acks row {row.envelope_id}/{row.party}"
        if row.m_kind != "ack" or row.m_direction != "in" or row.m_content is None:
            fail(f"{where}: column ack_envelope_id names no acknowledgement received")
            continue
        if row.m_log_index >= size:
            fail(
                f"{where}: column ack_envelope_id names an acknowledgement whose log entry "
                f"{row.m_log_index} is past the end of the log ({size} entries)"
            )
            continue
        if row.ack_envelope_id in failed_messages:
            fail(
                f"{where}: column ack_envelope_id names an acknowledgement whose message row "
                f"does not verify (log entry {row.m_log_index})"
            )
            continue
        try:
            content = json.loads(bytes(row.m_content))
            acked = content["body"]["ack"]["envelope_id"]
            operator = content["operator"]
        except (ValueError, KeyError, TypeError):
            fail(f"{where}: the acknowledgement's content cannot be read")
            continue
        for column, same in (
            ("party", row.party == row.m_sender),
            ("envelope_id", row.envelope_id == acked),
            ("operator", row.operator == operator),
        ):
            if not same:
                fail(f"{where}: column {column} differs from the signed acknowledgement")
                break


def stored_entries(
    engine: Engine, after: int = -1, until: int | None = None, batch: int = 5000
) -> Iterator[tuple[int, bytes]]:
    """Log entries with ``after < idx < until``, in order, read in batches."""
    last = after
    cols = m.log_entries.c
    while True:
        query = select(cols.idx, cols.entry).where(cols.idx > last)
        if until is not None:
            query = query.where(cols.idx < until)
        with reading(engine) as conn:
            rows = conn.execute(query.order_by(cols.idx).limit(batch)).all()
        if not rows:
            return
        for row in rows:
            yield row.idx, row.entry
        last = rows[-1].idx
