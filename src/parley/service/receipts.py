"""Receipts: checking and keeping the signed receipts peers return for envelopes sent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select, update

from parley.core.receipts import Receipt
from parley.errors import Equivocation, ParleyError, RemoteError, SchemaViolation, VerificationError
from parley.service.alarms import Alarms
from parley.service.kernel import Kernel
from parley.store import models as m

__all__ = ["Receipts"]


class Receipts:
    """Check receipts from a peer, keep them and mark the outbox delivered."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms

    def receive_receipt(self, raw: bytes, *, peer: str, link: str | None = None) -> dict[str, Any]:
        """Check and keep a receipt; mark the envelope delivered to ``peer``."""
        result = self.receive_receipts([raw], peer=peer, link=link)[0]
        if isinstance(result, ParleyError):
            raise result
        return result

    def receive_receipts(
        self, raws: Sequence[bytes], *, peer: str, link: str | None = None
    ) -> list[dict[str, Any] | ParleyError]:
        """Check and keep receipts from ``peer`` in one commit (each checked on its own)."""
        with self.kernel.lock:
            start = self.kernel.party.transcript.size
            accepted: list[tuple[Receipt, int | None]] = []
            answers: list[dict[str, Any] | ParleyError] = []
            for raw in raws:
                before = self.kernel.party.transcript.size
                try:
                    receipt = self.kernel.party.receive_receipt(raw).receipt
                    if receipt.receiver != peer:
                        raise SchemaViolation(
                            f"a receipt signed by {receipt.receiver} came back from {peer}"
                        )
                except Equivocation as exc:
                    self.alarms.record_equivocation(exc, peer)
                    answers.append(exc)
                    continue
                except (RemoteError, VerificationError) as exc:
                    answers.append(exc)
                    continue
                logged = before if self.kernel.party.transcript.size > before else None
                accepted.append((receipt, logged))
                answers.append(
                    {
                        "envelope_id": receipt.envelope_id,
                        "receiver": receipt.receiver,
                        "through_seq": receipt.through_seq,
                    }
                )
            now = self.kernel.clock()

            def work(conn: Connection) -> None:
                self.kernel.log_new_entries(conn, start)
                self._store_receipts(conn, accepted, peer, link, now)

            if accepted:
                self.kernel.commit(work)
        for receipt, logged in accepted:
            if receipt.rejection is not None and logged is not None:
                self.alarms.raise_alarm(
                    "negative_receipt",
                    "warning",
                    receipt.envelope_id,
                    f"{receipt.receiver} refused message {receipt.envelope_id} "
                    f"({receipt.rejection.code}): {receipt.rejection.reason}",
                )
        return answers

    def _store_receipts(
        self,
        conn: Connection,
        accepted: Sequence[tuple[Receipt, int | None]],
        peer: str,
        link: str | None,
        now: datetime,
    ) -> None:
        """Keep receipts (once per envelope and receiver) and mark the outbox delivered."""
        held = {
            (r.envelope_id, r.receiver)
            for r in conn.execute(
                select(m.receipts.c.envelope_id, m.receipts.c.receiver).where(
                    m.receipts.c.envelope_id.in_({r.envelope_id for r, _ in accepted})
                )
            )
        }
        rows = []
        for receipt, logged in accepted:
            key = (receipt.envelope_id, receipt.receiver)
            if key in held:
                continue
            held.add(key)
            rows.append(
                {
                    "envelope_id": receipt.envelope_id,
                    "receiver": receipt.receiver,
                    "issued_at": receipt.issued_at,
                    "stored_at": now,
                    "through_seq": receipt.through_seq,
                    "log_index": logged,
                    "rejection_code": receipt.rejection.code if receipt.rejection else None,
                    "rejection_reason": receipt.rejection.reason if receipt.rejection else None,
                }
            )
        if rows:
            conn.execute(insert(m.receipts), rows)
        conn.execute(
            update(m.outbox)
            .where(
                and_(
                    m.outbox.c.envelope_id == bindparam("receipt_for"),
                    m.outbox.c.peer == bindparam("receipt_from"),
                )
            )
            .values(state="delivered", delivered_at=now, link=link, last_error=None),
            [
                {"receipt_for": eid, "receipt_from": peer}
                for eid in dict.fromkeys(r.envelope_id for r, _ in accepted)
            ],
        )
