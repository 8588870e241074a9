"""Receiving: verifying, logging and indexing envelopes from peers, and catching up.

Received envelopes are logged and committed before their receipt leaves the
terminal.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, insert, select

from parley import merkle
from parley.core.canonical import canonical_bytes, parse_canonical, require_object
from parley.core.checkpoint import verify_checkpoint
from parley.core.encoding import b64decode, b64encode
from parley.core.envelope import EnvelopeHeader, read_envelope
from parley.core.party import (
    REVOCATION,
    AckReceived,
    CardRotated,
    DuplicateReceived,
    GapDetected,
    KeyAnnounced,
    MessageReceived,
)
from parley.core.transcript import EntryType, entry_bytes
from parley.errors import ParleyError, RemoteError, SchemaViolation, SupersededKey, UnknownPeer
from parley.service.alarms import Alarms
from parley.service.channels import apply_service
from parley.service.kernel import HUMAN_KINDS, Kernel
from parley.service.quotas import PeerQuotas
from parley.store import models as m

if TYPE_CHECKING:
    from parley.service.rotation import KeyRotation

__all__ = ["REISSUED_KEPT", "Receiving", "signed_columns"]

log = structlog.get_logger("parley.terminal")

#: Receipts issued again for one duplicate envelope that are kept for its sender.
REISSUED_KEPT = 8


def signed_columns(
    header: EnvelopeHeader, index: int, direction: str, now: datetime
) -> dict[str, Any]:
    """The message index's columns that come from the envelope's signed header."""
    return {
        "envelope_id": header.id,
        "log_index": index,
        "direction": direction,
        "channel": header.channel,
        "sender": header.sender,
        "recipients": ",".join(header.recipients),
        "seq": header.seq,
        "kind": header.kind,
        "precedence": header.precedence,
        "exercise": header.exercise,
        "created_at": header.created_at,
        "stored_at": now,
    }


class Receiving:
    """Receive envelopes (one commit per batch) and catch up on gaps in a peer's stream."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms
        self.quotas = PeerQuotas(kernel.config)
        #: Keeps peers' rotated cards and revocations (set by the terminal).
        self.keychain: KeyRotation | None = None

    def receive_envelope(self, raw: bytes, *, tls_party: str | None = None) -> bytes:
        """Verify, log and commit one envelope a peer delivered, then return its signed
        receipt (a single delivery: FLASH, IMMEDIATE and link tests come this way)."""
        self.admit(tls_party, [raw], bulk=False)
        result = self._receive([raw], tls_party=tls_party)[0]
        if isinstance(result, RemoteError):
            raise result
        return result

    def receive_batch(
        self, raws: Sequence[bytes], *, tls_party: str | None = None
    ) -> list[bytes | RemoteError]:
        """Receive envelopes a peer delivered in bulk, under one checkpoint signature
        and one commit.

        Each item yields its signed receipt, or the ``RemoteError`` that
        rejected it (a rejected envelope leaves no trace). Receipts are
        returned only after the commit.
        """
        self.admit(tls_party, raws, bulk=True)
        return self._receive(raws, tls_party=tls_party)

    def admit(self, peer: str | None, raws: Sequence[bytes], *, bulk: bool) -> None:
        """Charge a delivery to the quota of ``peer`` (whose certificate the connection
        presented; ``parley.service.quotas``), or refuse it whole with ``QuotaExceeded``."""
        if peer is None:
            return  # not from the peer listener: our own calls, nothing to charge
        refusal = self.quotas.charge(
            peer, len(raws), sum(len(r) for r in raws), bulk=bulk, now=self.kernel.clock()
        )
        if refusal is None:
            return
        if refusal.count:
            self.alarms.raise_alarm(
                "peer_quota_exceeded",
                "warning",
                peer,
                f"{peer} sends more than its quota ({self.quotas.describe()}): its deliveries "
                "are refused (429) until the rate allows; its outbox keeps them",
                once=True,
                count=refusal.count,
            )
        raise refusal.error

    def _receive(
        self, raws: Sequence[bytes], *, tls_party: str | None
    ) -> list[bytes | RemoteError]:
        with self.kernel.lock:
            start = self.kernel.party.transcript.size
            results = self.kernel.party.receive_envelopes(raws)
            now = self.kernel.clock()
            answers: list[bytes | RemoteError] = []
            received: list[MessageReceived] = []
            acked: list[AckReceived] = []
            announced: list[KeyAnnounced] = []
            rotated: list[CardRotated] = []
            superseded: list[SupersededKey] = []
            reissued: list[dict[str, object]] = []
            for result in results:
                if isinstance(result, RemoteError):
                    answers.append(result)
                    if isinstance(result, SupersededKey):
                        superseded.append(result)
                    continue
                answers.append(result.receipt)
                for event in result.events:
                    if isinstance(event, DuplicateReceived):
                        # A new receipt for an envelope already logged: not in our log,
                        # but the sender may log this one; kept for its recovery.
                        reissued.append(
                            {
                                "envelope_id": event.envelope_id,
                                "sender": event.sender,
                                "receipt": result.receipt,
                                "issued_at": now,
                            }
                        )
                    if isinstance(event, MessageReceived):
                        header = event.envelope.header
                        if tls_party is not None and header.sender != tls_party:
                            # Relaying another party's envelope is allowed (store and
                            # forward); it is noted in the log.
                            log.info("relayed_envelope", sender=header.sender, via=tls_party)
                        received.append(event)
                    elif isinstance(event, AckReceived):
                        acked.append(event)
                    elif isinstance(event, KeyAnnounced):
                        announced.append(event)
                    elif isinstance(event, CardRotated):
                        rotated.append(event)
                    elif isinstance(event, GapDetected):
                        key = (event.channel, event.sender)
                        held, _ = self.kernel.party.held_through(*key)
                        self.kernel.gaps[key] = held
                        self.kernel.gap_seen.setdefault(key, time.monotonic())
            for key in list(self.kernel.gaps):
                if not self.kernel.party.held_through(*key)[1]:
                    del self.kernel.gaps[key]
                    self.kernel.gap_seen.pop(key, None)

            def work(conn: Connection) -> None:
                self.kernel.log_new_entries(conn, start)
                self.store_received(conn, received, now)
                self._keep_reissued(conn, reissued)
                for event in rotated:
                    assert self.keychain is not None
                    self.keychain.on_card_rotated(conn, event, now)
                for ack in acked:
                    conn.execute(
                        insert(m.acks).values(
                            envelope_id=ack.envelope_id,
                            party=ack.by,
                            operator=ack.operator,
                            ack_envelope_id=ack.ack_envelope_id,
                            at=now,
                        )
                    )
                for key in announced:
                    conn.execute(
                        insert(m.peer_encryption_keys).values(
                            party=key.key.party,
                            key_id=key.key.key_id,
                            serial=key.key.serial,
                            announcement=key.key.announcement_bytes,
                            envelope_id=key.envelope_id,
                            received_at=now,
                        )
                    )

            if received or acked or reissued or self.kernel.party.transcript.size != start:
                self.kernel.commit(work)
        if self.keychain is not None:
            for event in rotated:
                self.keychain.after_card_rotated(event)
            for exc in superseded:
                self.keychain.superseded_key_used(
                    exc.card, exc.revoked, exc.card.split()[0], str(exc)
                )
            for event in received:
                self._revocation_in(event)
        for event in received:
            sender = event.envelope.header.sender
            self.kernel.activity[sender] = self.kernel.activity.get(sender, 0) + 1
        if received:
            self.kernel.outbox_changed()  # wakes the worker: the sender's log grew, witness it
        for event in received:
            if event.rejection is not None:
                h = event.envelope.header
                self.alarms.raise_alarm(
                    "content_refused",
                    "warning",
                    h.id,
                    f"{h.precedence} message {h.id} from {h.sender} was refused and answered "
                    f"with a negative receipt ({event.rejection.code}): {event.rejection.reason}",
                )
        for event in received:
            h = event.envelope.header
            log.info(
                "message_received",
                id=h.id,
                sender=h.sender,
                channel=h.channel,
                seq=h.seq,
                kind=h.kind,
                precedence=h.precedence,
            )
        return answers

    def _revocation_in(self, event: MessageReceived) -> None:
        """A revocation a peer sent in a service message: applied like one handed over."""
        if event.envelope.header.kind != "service" or self.keychain is None:
            return
        service = event.envelope.content.body.get("service")
        if not isinstance(service, dict) or REVOCATION not in service:
            return
        try:
            statement = canonical_bytes(require_object(service[REVOCATION], "revocation"))
            self.keychain.import_revocation(statement)
        except ParleyError as exc:
            # Logged and answered already: the revocation inside is refused on its own.
            self.alarms.raise_alarm(
                "revocation_refused",
                "warning",
                event.envelope.header.id,
                f"{event.envelope.header.sender} sent a revocation this terminal refuses: {exc}",
                once=True,
            )

    def _keep_reissued(self, conn: Connection, reissued: Sequence[dict[str, object]]) -> None:
        """Keep receipts issued again for duplicates, at most REISSUED_KEPT per envelope
        (a replay flood must not grow the store)."""
        if not reissued:
            return
        ids = {str(r["envelope_id"]) for r in reissued}
        stored = conn.execute(
            select(m.issued_receipts.c.envelope_id, m.issued_receipts.c.receipt).where(
                m.issued_receipts.c.envelope_id.in_(ids)
            )
        ).all()
        held = Counter(str(r.envelope_id) for r in stored)
        known = {bytes(r.receipt) for r in stored}
        rows = []
        for row in reissued:
            envelope_id = str(row["envelope_id"])
            receipt = row["receipt"]
            assert isinstance(receipt, bytes)
            if held[envelope_id] < REISSUED_KEPT and receipt not in known:
                held[envelope_id] += 1
                known.add(receipt)
                rows.append(row)
        if rows:
            conn.execute(insert(m.issued_receipts), rows)

    def store_received(
        self, conn: Connection, events: Sequence[MessageReceived], now: datetime
    ) -> None:
        """The message index rows of envelopes received and logged (and what a service
        message changes); recovery indexes the envelopes it puts back the same way."""
        rows = []
        for event in events:
            header = event.envelope.header
            content = event.envelope.content
            human = header.kind in HUMAN_KINDS
            rows.append(
                {
                    **signed_columns(header, event.log_index, "in", now),
                    "operator": content.operator,
                    "lang": content.lang,
                    "body": canonical_bytes(content.body).decode(),
                    "content": content.to_bytes(),
                    "ack_due": now + self.kernel.config.ack_deadline(header.precedence)
                    if human and event.rejection is None
                    else None,
                    "acked_at": None,
                    "acked_by": None,
                    "overdue": False,
                    "rejection_code": event.rejection.code if event.rejection else None,
                    "rejection_reason": event.rejection.reason if event.rejection else None,
                }
            )
            self.kernel.ensure_channel(
                conn, header.channel, [header.sender, *header.recipients], now
            )
        if rows:
            conn.execute(insert(m.messages), rows)
        for event in events:
            if event.envelope.header.kind == "service":
                header = event.envelope.header
                apply_service(conn, header.channel, header.sender, event.envelope.content.body, now)

    # Catch-up -------------------------------------------------------------------

    def catch_up(self, channel: str, after_seq: int, *, for_party: str, limit: int = 256) -> bytes:
        """The envelopes this terminal sent on ``channel`` after ``after_seq``, with proofs."""
        with self.kernel.lock:
            envelopes = self.kernel.party.envelopes_since(channel, after_seq, for_party=for_party)[
                :limit
            ]
            checkpoint = self.kernel.party.checkpoint()
            items = []
            for raw in envelopes:
                header = read_envelope(raw, self.kernel.party.card_of, self.kernel.limits)
                index = self.kernel.party.sent(header.id).log_index
                proof = self.kernel.party.transcript.tree.inclusion_proof(index, checkpoint.size)
                items.append(
                    {
                        "envelope": b64encode(raw),
                        "log_index": index,
                        "inclusion": [b64encode(h) for h in proof],
                    }
                )
        return canonical_bytes(
            {"checkpoint": checkpoint.note, "envelopes": items, "type": "parley.catch-up/v1"}
        )

    def apply_catch_up(self, peer: str, data: bytes) -> list[bytes | RemoteError]:
        """Check a catch-up answer from ``peer`` (proofs included) and receive its envelopes."""
        obj = require_object(
            parse_canonical(data, max_size=64 * 1024 * 1024, what="catch-up"), "catch-up"
        )
        card = self.kernel.party.card_of(peer)
        if card is None:
            raise UnknownPeer(f"{peer} is not a pinned peer")
        note = obj.get("checkpoint")
        items = obj.get("envelopes")
        if not isinstance(note, str) or not isinstance(items, list):
            raise SchemaViolation("a catch-up answer holds a checkpoint and a list of envelopes")
        checkpoint = verify_checkpoint(note, card)
        raws = []
        for item in items:
            if not isinstance(item, dict):
                raise SchemaViolation("catch-up entries are objects")
            raw = b64decode(item.get("envelope"), "catch-up envelope")
            index = item.get("log_index")
            proof = item.get("inclusion")
            if not isinstance(index, int) or not isinstance(proof, list):
                raise SchemaViolation("catch-up entries carry log_index and inclusion")
            merkle.verify_inclusion(
                merkle.leaf_hash(entry_bytes(EntryType.ENVELOPE, raw)),
                index,
                checkpoint.size,
                [b64decode(h, "inclusion hash") for h in proof],
                checkpoint.root,
            )
            raws.append(raw)
        if not raws:
            return []
        self.quotas.debit(peer, len(raws), sum(len(r) for r in raws), now=self.kernel.clock())
        return self._receive(raws, tls_party=peer)

    def catch_up_allowed(self, peer: str) -> bool:
        """Whether to ask ``peer`` for a catch-up now: only while it has room in its quota."""
        return self.quotas.within(peer, now=self.kernel.clock())
