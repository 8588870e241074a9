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
6. the message index: each row names the envelope stored at its log index.

A single changed byte in a log entry breaks its signature or its leaf hash
and therefore the checkpoints over it; the audit names the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from parley import merkle
from parley.core.checkpoint import verify_checkpoint, verify_cosignature
from parley.core.envelope import EnvelopeHeader, Limits, read_envelope
from parley.core.identity import IdentityCard
from parley.core.receipts import read_receipt, verify_receipt_inclusion
from parley.core.transcript import EntryType, split_entry
from parley.errors import ParleyError
from parley.store import models as m

__all__ = ["AuditReport", "audit"]


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


def audit(
    engine: Engine,
    own: IdentityCard,
    *,
    progress: Callable[[int, int], None] | None = None,
    max_failures: int = 100,
) -> AuditReport:
    report = AuditReport()

    def fail(text: str) -> None:
        if len(report.failures) < max_failures:
            report.failures.append(text)

    cards: dict[str, IdentityCard] = {own.party: own}
    with engine.connect() as conn:
        for row in conn.execute(select(m.peers)):
            try:
                card = IdentityCard.from_bytes(row.card).pinned(row.fingerprint)
            except ParleyError as exc:
                fail(f"pinned card of {row.party}: {exc}")
                continue
            if card.party != row.party:
                fail(f"pinned card stored under {row.party} belongs to {card.party}")
                continue
            cards[card.party] = card
        total = (
            conn.execute(select(m.log_entries.c.idx).order_by(m.log_entries.c.idx.desc())).scalar()
            or -1
        )
    lookup = cards.get
    limits = Limits()
    tree = merkle.MerkleLog()
    sent: dict[str, bytes] = {}
    headers: dict[int, EnvelopeHeader] = {}
    receipts_held = []

    for idx, entry in _entries(engine):
        if idx != tree.size:
            fail(f"log entry {tree.size} is missing (the next stored entry is {idx})")
            break
        tree.append(merkle.leaf_hash(entry))
        report.entries += 1
        if progress is not None and report.entries % 1000 == 0:
            progress(report.entries, total + 1)
        try:
            kind, raw = split_entry(entry)
            if kind is EntryType.ENVELOPE:
                header = read_envelope(raw, lookup, limits)
                headers[idx] = header
                report.envelopes += 1
                if header.sender == own.party:
                    sent[header.id] = raw
            else:
                receipt = read_receipt(raw, lookup)
                report.receipts += 1
                if receipt.sender == own.party and receipt.receiver != own.party:
                    receipts_held.append((idx, receipt))
        except ParleyError as exc:
            fail(f"log entry {idx}: {exc}")

    for idx, receipt in receipts_held:
        raw_sent = sent.get(receipt.envelope_id)
        if raw_sent is None:
            fail(f"log entry {idx}: receipt for envelope {receipt.envelope_id}, never sent")
            continue
        try:
            verify_receipt_inclusion(receipt, raw_sent)
        except ParleyError as exc:
            fail(f"log entry {idx}: {exc}")

    with engine.connect() as conn:
        for row in conn.execute(select(m.checkpoints).order_by(m.checkpoints.c.size)):
            report.checkpoints += 1
            try:
                checkpoint = verify_checkpoint(row.note, own)
            except ParleyError as exc:
                fail(f"checkpoint {row.size}: {exc}")
                continue
            if checkpoint.size != row.size or checkpoint.size > tree.size:
                fail(f"checkpoint {row.size} names size {checkpoint.size}; the log has {tree.size}")
            elif tree.root_at(checkpoint.size) != checkpoint.root:
                fail(
                    f"checkpoint {checkpoint.size}: the stored log does not hash to the signed "
                    "root (an entry before it was changed)"
                )
        for row in conn.execute(select(m.cosignatures)):
            report.cosignatures += 1
            witness = cards.get(row.party)
            if witness is None:
                fail(f"cosignature by/of unknown party {row.party}")
                continue
            try:
                if row.direction == "of-us":
                    checkpoint = verify_checkpoint(row.note, own)
                    verify_cosignature(checkpoint, row.note, witness)
                    if checkpoint.size > tree.size or (
                        tree.root_at(checkpoint.size) != checkpoint.root
                    ):
                        fail(
                            f"{row.party} cosigned checkpoint {checkpoint.size}, which the "
                            "stored log does not match"
                        )
                else:
                    checkpoint = verify_checkpoint(row.note, witness)
                    verify_cosignature(checkpoint, row.note, own)
            except ParleyError as exc:
                fail(f"cosignature {row.direction} {row.party} at size {row.size}: {exc}")
        for row in conn.execute(select(m.messages)):
            report.messages += 1
            found = headers.get(row.log_index)
            if found is None or found.id != row.envelope_id:
                fail(f"message {row.envelope_id}: not the envelope at log entry {row.log_index}")
            elif (found.channel, found.sender, found.seq, found.kind, found.precedence) != (
                row.channel,
                row.sender,
                row.seq,
                row.kind,
                row.precedence,
            ):
                fail(f"message {row.envelope_id}: its index row differs from the signed envelope")
    return report


def _entries(engine: Engine, batch: int = 5000) -> Iterator[tuple[int, bytes]]:
    last = -1
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(m.log_entries.c.idx, m.log_entries.c.entry)
                .where(m.log_entries.c.idx > last)
                .order_by(m.log_entries.c.idx)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield row.idx, row.entry
        last = rows[-1].idx
