"""Recovery: answering a peer that lost its log, and rebuilding our own from our peers.

The design is in docs/recovery.md (section 3). Two halves:

* ``RecoveryAnswers`` (the peer side): what this terminal holds of another
  party's log: the largest checkpoint of it seen, its leaf hashes as
  witnessed, the entries of this terminal's own log that concern it, and
  the receipts this terminal issued to it. Read-only, from the database.
* ``Recovery`` (our side): given those answers, put the missing entries
  back in their original order (``parley.core.recovery``), check each
  through the protocol state, rebuild the indexes from the entries, in one
  transaction; then thaw the terminal if its log is complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, and_, insert, select, update

from parley import merkle
from parley.core.canonical import canonical_bytes
from parley.core.checkpoint import Checkpoint, verify_checkpoint
from parley.core.encoding import b64encode
from parley.core.envelope import Content, EnvelopeHeader, decrypt_envelope, read_envelope
from parley.core.party import MessageReceived
from parley.core.receipts import Receipt, read_receipt
from parley.core.recovery import Hole, plan_recovery
from parley.core.transcript import EntryType, entry_bytes, split_entry
from parley.errors import ParleyError, UsageError, VerificationError
from parley.service.alarms import Alarms
from parley.service.kernel import HUMAN_KINDS, Kernel
from parley.service.receiving import Receiving, signed_columns
from parley.service.witness import our_cosignature
from parley.store import models as m
from parley.store.db import reading

__all__ = ["PAGE", "Candidate", "Recovery", "RecoveryAnswers", "RecoveryReport"]

log = structlog.get_logger("parley.terminal")

#: Entries or leaf hashes per recovery page.
PAGE = 1000


# The peer side ----------------------------------------------------------------


class RecoveryAnswers:
    """What this terminal holds of another party's log (read-only)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def status(self, party: str) -> dict[str, Any]:
        """What this terminal holds of ``party``'s log: the largest checkpoint of it seen
        (``seen``), how many of its leaf hashes it witnessed (``mirror``) and the
        checkpoint they end at (``witnessed``)."""
        self._pinned(party)
        with reading(self.kernel.engine) as conn:
            observed = conn.execute(
                select(m.observed_checkpoints.c.size, m.observed_checkpoints.c.note)
                .where(m.observed_checkpoints.c.party == party)
                .order_by(m.observed_checkpoints.c.size.desc())
                .limit(1)
            ).first()
            cosigned = conn.execute(
                select(m.cosignatures.c.size, m.cosignatures.c.note)
                .where(and_(m.cosignatures.c.direction == "by-us", m.cosignatures.c.party == party))
                .order_by(m.cosignatures.c.size.desc())
                .limit(1)
            ).first()
            mirror = conn.execute(
                select(m.witnessed_leaves.c.idx)
                .where(m.witnessed_leaves.c.party == party)
                .order_by(m.witnessed_leaves.c.idx.desc())
                .limit(1)
            ).scalar()
            size = 0 if mirror is None else int(mirror) + 1
            # The checkpoint the mirror ends at: its leaves are all held.
            witnessed = conn.execute(
                select(m.observed_checkpoints.c.note)
                .where(
                    and_(
                        m.observed_checkpoints.c.party == party,
                        m.observed_checkpoints.c.size == size,
                    )
                )
                .limit(1)
            ).scalar()
            if witnessed is None and size:
                witnessed = our_cosignature(conn, party, size)
        seen = max(
            (row for row in (observed, cosigned) if row is not None),
            key=lambda row: int(row.size),
            default=None,
        )
        return {
            "seen": seen.note if seen is not None else None,
            "witnessed": witnessed,
            "mirror": size,
            "size": self.kernel.party.transcript.size,
        }

    def leaves(self, party: str, start: int, limit: int) -> list[bytes]:
        """The leaf hashes of ``party``'s log this terminal witnessed, from ``start``."""
        self._pinned(party)
        with reading(self.kernel.engine) as conn:
            rows = conn.execute(
                select(m.witnessed_leaves.c.idx, m.witnessed_leaves.c.leaf)
                .where(and_(m.witnessed_leaves.c.party == party, m.witnessed_leaves.c.idx >= start))
                .order_by(m.witnessed_leaves.c.idx)
                .limit(min(limit, PAGE))
            ).all()
        leaves: list[bytes] = []
        for expected, row in enumerate(rows, start):
            if row.idx != expected:
                break  # the mirror is contiguous; stop at a gap rather than shift indexes
            leaves.append(bytes(row.leaf))
        return leaves

    def entries(self, party: str, after: int, limit: int) -> dict[str, Any]:
        """Entries of this terminal's log past ``after`` that may be entries of ``party``'s log.

        Envelopes ``party`` sent or was sent, with the decrypted content of
        those it sent (it cannot open its own envelopes), and the receipts
        this terminal issued for its envelopes. Candidates only: the
        recovering terminal checks every one.
        """
        self._pinned(party)
        limit = min(limit, PAGE)
        with reading(self.kernel.engine) as conn:
            rows = conn.execute(
                select(
                    m.log_entries.c.idx,
                    m.log_entries.c.entry,
                    m.messages.c.sender,
                    m.messages.c.recipients,
                    m.messages.c.content,
                )
                .select_from(
                    m.log_entries.outerjoin(
                        m.messages, m.messages.c.log_index == m.log_entries.c.idx
                    )
                )
                .where(m.log_entries.c.idx > after)
                .order_by(m.log_entries.c.idx)
                .limit(limit)
            ).all()
            issued = []
            if after < 0:
                issued = [
                    bytes(r)
                    for r in conn.execute(
                        select(m.issued_receipts.c.receipt).where(
                            m.issued_receipts.c.sender == party
                        )
                    ).scalars()
                ]
        items: list[dict[str, Any]] = []
        for row in rows:
            entry = bytes(row.entry)
            if row.sender is not None:
                recipients = str(row.recipients).split(",")
                if row.sender != party and party not in recipients:
                    continue
                content = row.content if row.sender == party else None
                items.append(
                    {
                        "entry": b64encode(entry),
                        "content": b64encode(bytes(content)) if content is not None else None,
                    }
                )
                continue
            kind, raw = split_entry(entry)
            if kind is EntryType.RECEIPT and self._receipt_for(raw, party):
                items.append({"entry": b64encode(entry), "content": None})
        items.extend(
            {"entry": b64encode(entry_bytes(EntryType.RECEIPT, raw)), "content": None}
            for raw in issued
        )
        last = int(rows[-1].idx) if rows else after
        return {"items": items, "next": last, "more": len(rows) == limit}

    def _receipt_for(self, raw: bytes, party: str) -> bool:
        try:
            receipt = read_receipt(raw, self.kernel.party.card_of)
        except ParleyError:
            return False
        me = self.kernel.me
        # Ours for the caller's envelopes, and the caller's for ours: both in its log.
        return (receipt.sender, receipt.receiver) in ((party, me), (me, party))

    def _pinned(self, party: str) -> None:
        if party not in self.kernel.party.peers:
            raise UsageError(f"{party} is not a pinned peer of {self.kernel.me}")


# Our side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entry a peer offered, with the inner content it holds for our own envelopes."""

    entry: bytes
    content: bytes | None = None


@dataclass(slots=True)
class RecoveryReport:
    """What a recovery did, for the operator."""

    before: int
    target: int
    after: int
    recovered: int = 0
    appended_past_target: int = 0
    holes: tuple[Hole, ...] = ()
    peers: dict[str, str] = field(default_factory=dict)
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "target": self.target,
            "after": self.after,
            "recovered": self.recovered,
            "appended_past_target": self.appended_past_target,
            "complete": self.complete,
            "missing": [
                {"index": h.index, "leaf": h.leaf.hex(), "reason": h.reason} for h in self.holes
            ],
            "peers": dict(self.peers),
        }


class Recovery:
    """Rebuild the missing tail of this terminal's own log from its peers' answers."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms
        self.receiving = Receiving(kernel, alarms)

    def own_checkpoint(self, note: str) -> Checkpoint:
        """A checkpoint note a peer holds, checked to be this terminal's own signature."""
        return verify_checkpoint(note, self.kernel.identity.card)

    def needs(self, seen: Checkpoint) -> bool:
        """Whether a checkpoint of our own log that a peer saw is beyond (or off) our log."""
        tree = self.kernel.party.transcript.tree
        if seen.size > tree.size:
            return True
        return seen.size > 0 and tree.root_at(seen.size) != seen.root

    def apply(
        self,
        target: Checkpoint,
        mirror: Sequence[bytes],
        candidates: Iterable[Candidate],
        *,
        mirror_from: str,
        peers: dict[str, str],
    ) -> RecoveryReport:
        """Put back what the candidates allow, in one transaction.

        The terminal stays frozen: it thaws when its peers confirm the log
        (``LogGuard.check``).

        ``mirror`` holds the witness's leaf hashes from index ``len(own log)``
        on; the leaves this terminal still holds come first.
        """
        offered = list(candidates)
        contents = self._contents(offered)
        with self.kernel.lock:
            party = self.kernel.party
            before = party.transcript.size
            own = [party.transcript.tree.leaf(i) for i in range(before)]
            plan = plan_recovery(
                own,
                target,
                [*own, *mirror][: max(target.size, before)],
                (c.entry for c in offered),
                mirror_from=mirror_from,
            )
            report = RecoveryReport(before, target.size, before, peers=dict(peers))
            report.holes = plan.holes
            appended: list[int] = []
            try:
                for entry in plan.entries:
                    appended.append(party.append_recovered(entry))
                report.recovered = len(appended)
                if plan.complete:
                    past = self._past_target(offered)
                    for entry in past:
                        try:
                            appended.append(party.append_recovered(entry))
                        except ParleyError as exc:
                            log.warning("recovery_entry_skipped", error=str(exc)[:300])
                    report.appended_past_target = len(appended) - report.recovered
            except BaseException:
                self.kernel.reload()
                raise
            if plan.complete and party.transcript.tree.root_at(target.size) != target.root:
                self.kernel.reload()
                raise VerificationError(
                    f"the recovered log does not hash to this terminal's checkpoint {target.size}"
                )
            now = self.kernel.clock()

            def work(conn: Connection) -> None:
                self.kernel.log_new_entries(conn, before)
                self._index(conn, appended, contents, now)

            if appended:
                self.kernel.commit(work)
            report.after = party.transcript.size
            report.complete = plan.complete
        log.info("recovery", **report.as_dict())
        return report

    # Past the largest checkpoint anyone saw ---------------------------------------

    def _past_target(self, offered: Sequence[Candidate]) -> list[bytes]:
        """Entries peers hold that belong in our log but that no checkpoint placed.

        Our envelopes and those sent to us, by creation time (then channel
        and sequence number); then the receipts for our envelopes among them.
        Their sequence numbers are then never reused.
        """
        party = self.kernel.party
        envelopes: list[tuple[EnvelopeHeader, bytes]] = []
        receipts: list[tuple[Receipt, bytes]] = []
        seen: set[bytes] = set()
        for candidate in offered:
            leaf = merkle.leaf_hash(candidate.entry)
            if leaf in seen:
                continue
            seen.add(leaf)
            try:
                kind, raw = split_entry(candidate.entry)
                if kind is EntryType.ENVELOPE:
                    header = read_envelope(raw, party.card_of, party.limits)
                    held = (
                        party.ledger.sent(header.id)
                        if header.sender == party.party
                        else party.ledger.received(header.id)
                    )
                    if held is None:
                        envelopes.append((header, candidate.entry))
                else:
                    receipt = read_receipt(raw, party.card_of)
                    if receipt.sender == party.party:
                        receipts.append((receipt, candidate.entry))
            except ParleyError:
                continue
        envelopes.sort(key=lambda item: (item[0].created_at, item[0].channel, item[0].seq))
        ids = {header.id for header, _ in envelopes if header.sender == party.party}
        first: dict[tuple[str, str], bytes] = {}
        for receipt, entry in sorted(receipts, key=lambda item: item[0].issued_at):
            if receipt.envelope_id in ids:
                first.setdefault((receipt.envelope_id, receipt.receiver), entry)
        return [entry for _, entry in envelopes] + list(first.values())

    # Indexes rebuilt from the entries -------------------------------------------

    def _contents(self, offered: Sequence[Candidate]) -> dict[str, bytes]:
        """Inner contents offered for our envelopes, by the SHA-256 (hex) of the content."""
        return {
            hashlib.sha256(c.content).hexdigest(): c.content
            for c in offered
            if c.content is not None
        }

    def _index(
        self, conn: Connection, indexes: Sequence[int], contents: dict[str, bytes], now: datetime
    ) -> None:
        party = self.kernel.party
        me = self.kernel.me
        for index in indexes:
            kind, raw = split_entry(party.transcript.entry(index))
            if kind is EntryType.RECEIPT:
                self._index_receipt(conn, raw, index, now)
                continue
            header = read_envelope(raw, party.card_of, party.limits)
            self.kernel.ensure_channel(
                conn, header.channel, [header.sender, *header.recipients], now
            )
            if header.sender == me:
                self._index_sent(conn, header, index, contents.get(header.content_digest), now)
            else:
                self._index_received(conn, header, index, now)

    def _index_sent(
        self,
        conn: Connection,
        header: EnvelopeHeader,
        index: int,
        content_bytes: bytes | None,
        now: datetime,
    ) -> None:
        content: Content | None = None
        if content_bytes is not None:
            try:
                content = Content.from_bytes(content_bytes, header.kind)
            except ParleyError:
                content, content_bytes = None, None
        conn.execute(
            insert(m.messages).values(
                **signed_columns(header, index, "out", now),
                operator=content.operator if content else "",
                lang=content.lang if content else "",
                body=canonical_bytes(dict(content.body)).decode() if content else "{}",
                content=content_bytes,
                ack_due=header.created_at + self.kernel.config.ack_deadline(header.precedence)
                if header.kind in HUMAN_KINDS
                else None,
                acked_at=None,
                acked_by=None,
                overdue=False,
            )
        )
        receipted = self.kernel.party.receipts_for(header.id)
        conn.execute(
            insert(m.outbox),
            [
                {
                    "envelope_id": header.id,
                    "peer": peer,
                    "precedence": header.precedence,
                    "state": "delivered" if peer in receipted else "pending",
                    "attempts": 0,
                    "next_attempt": now,
                    "delivered_at": now if peer in receipted else None,
                    "via": None,
                }
                for peer in header.recipients
            ],
        )
        if content is not None and header.kind == "ack":
            ack = content.body.get("ack")
            if isinstance(ack, dict):
                conn.execute(
                    update(m.messages)
                    .where(
                        and_(
                            m.messages.c.envelope_id == str(ack.get("envelope_id")),
                            m.messages.c.direction == "in",
                        )
                    )
                    .values(acked_at=header.created_at, acked_by=content.operator)
                )

    def _index_received(
        self, conn: Connection, header: EnvelopeHeader, index: int, now: datetime
    ) -> None:
        opened = decrypt_envelope(header, self.kernel.identity, self.kernel.party.keyring.private)
        content = opened.content
        rejection = self.kernel.party.content_rejection(opened)
        self.receiving.store_received(conn, [MessageReceived(opened, index, rejection)], now)
        if header.kind == "ack":
            ack = content.body.get("ack")
            if isinstance(ack, dict):
                conn.execute(
                    insert(m.acks).values(
                        envelope_id=str(ack.get("envelope_id")),
                        party=header.sender,
                        operator=content.operator,
                        ack_envelope_id=header.id,
                        at=header.created_at,
                    )
                )

    def _index_receipt(self, conn: Connection, raw: bytes, index: int, now: datetime) -> None:
        receipt = read_receipt(raw, self.kernel.party.card_of)
        if receipt.receiver == self.kernel.me:
            return  # a receipt this terminal issued: the sender's index, not ours
        held = conn.execute(
            select(m.receipts.c.envelope_id).where(
                and_(
                    m.receipts.c.envelope_id == receipt.envelope_id,
                    m.receipts.c.receiver == receipt.receiver,
                )
            )
        ).first()
        if held is None:
            conn.execute(
                insert(m.receipts).values(
                    envelope_id=receipt.envelope_id,
                    receiver=receipt.receiver,
                    issued_at=receipt.issued_at,
                    stored_at=now,
                    through_seq=receipt.through_seq,
                    log_index=index,
                    rejection_code=receipt.rejection.code if receipt.rejection else None,
                    rejection_reason=receipt.rejection.reason if receipt.rejection else None,
                )
            )
        conn.execute(
            update(m.outbox)
            .where(
                and_(
                    m.outbox.c.envelope_id == receipt.envelope_id,
                    m.outbox.c.peer == receipt.receiver,
                )
            )
            .values(state="delivered", delivered_at=now, last_error=None)
        )
