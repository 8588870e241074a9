"""Sending: sealing messages, logging them and queueing them for every recipient.

A message is in the log and the outbox before ``send`` returns; a batch is
stored in one transaction (all or none). Acknowledging a received message is
sending one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, insert, select, update

from parley.core.canonical import JSONValue, canonical_bytes
from parley.core.envelope import PRECEDENCES
from parley.core.party import Outgoing
from parley.errors import AlreadyAcknowledged, NothingToAcknowledge, ParleyError, UsageError
from parley.service.channels import require_active_channel
from parley.service.kernel import HUMAN_KINDS, Kernel
from parley.store import models as m
from parley.store.db import reading

__all__ = ["Draft", "Messaging"]

log = structlog.get_logger("parley.terminal")


@dataclass(frozen=True, slots=True)
class Draft:
    """A message an operator asked to send, before it is sealed."""

    to: tuple[str, ...]
    kind: str
    body: dict[str, JSONValue]
    operator: str
    channel: str | None = None
    precedence: str = "ROUTINE"
    exercise: bool = False
    lang: str = "en"
    via: str | None = None
    #: The first delivery attempt not before this (None: at once).
    not_before: datetime | None = None


class Messaging:
    """Seal, log and queue messages; send the acknowledgement of a received one."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def send(
        self,
        to: Sequence[str],
        *,
        kind: str,
        body: dict[str, JSONValue],
        operator: str,
        channel: str | None = None,
        precedence: str = "ROUTINE",
        exercise: bool = False,
        lang: str = "en",
        via: str | None = None,
    ) -> dict[str, Any]:
        """Seal a message, log it and queue it for every recipient, in one transaction."""
        draft = Draft(
            tuple(to),
            kind=kind,
            body=body,
            operator=operator,
            channel=channel,
            precedence=precedence,
            exercise=exercise,
            lang=lang,
            via=via,
        )
        return self.send_many([draft])[0]

    def send_many(self, drafts: Sequence[Draft]) -> list[dict[str, Any]]:
        """Seal several messages and store them all in one transaction (all or none).

        One commit (one fsync) for the whole batch is what lets an operator
        queue thousands of messages a second; a draft that is refused refuses
        the batch, and the error names which one.
        """
        for n, draft in enumerate(drafts):
            if draft.precedence not in PRECEDENCES:
                raise UsageError(
                    f"message {n + 1}: precedence must be one of {', '.join(PRECEDENCES)}"
                )
        if not drafts:
            return []
        with self.kernel.lock:
            start = self.kernel.party.transcript.size
            sealed: list[tuple[Draft, Outgoing]] = []
            try:
                for draft in drafts:
                    recipients = sorted(set(draft.to))
                    if draft.channel is not None and draft.kind in HUMAN_KINDS:
                        require_active_channel(self.kernel.engine, draft.channel, recipients)
                    out = self.kernel.party.send(
                        recipients,
                        kind=draft.kind,
                        body=draft.body,
                        operator=draft.operator,
                        channel=draft.channel,
                        precedence=draft.precedence,
                        exercise=draft.exercise,
                        lang=draft.lang,
                    )
                    sealed.append((draft, out))
            except ParleyError as exc:
                if sealed:
                    self.kernel.reload()  # forget the drafts sealed before the refused one
                if len(drafts) > 1:
                    raise type(exc)(f"message {len(sealed) + 1} of {len(drafts)}: {exc}") from exc
                raise

            def work(conn: Connection) -> None:
                self.kernel.log_new_entries(conn, start)
                self._store_sent(conn, sealed)

            self.kernel.commit(work)
        self.kernel.outbox_changed()
        for draft, out in sealed:
            log.info(
                "message_queued",
                id=out.envelope_id,
                kind=draft.kind,
                channel=out.channel,
                seq=out.seq,
                precedence=out.precedence,
                to=list(out.recipients),
            )
        return [
            {
                "id": out.envelope_id,
                "channel": out.channel,
                "seq": out.seq,
                "log_index": out.log_index,
            }
            for _, out in sealed
        ]

    def store_sealed(self, conn: Connection, sealed: Sequence[tuple[Draft, Outgoing]]) -> None:
        """The rows of messages the core sealed outside ``send_many`` (a key rotation's)."""
        self._store_sent(conn, sealed)

    def _store_sent(self, conn: Connection, sealed: Sequence[tuple[Draft, Outgoing]]) -> None:
        """The message and outbox rows of messages just sealed (one statement each)."""
        now = self.kernel.clock()
        messages: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        for draft, out in sealed:
            messages.append(
                {
                    "envelope_id": out.envelope_id,
                    "log_index": out.log_index,
                    "direction": "out",
                    "channel": out.channel,
                    "sender": self.kernel.me,
                    "recipients": ",".join(out.recipients),
                    "seq": out.seq,
                    "kind": draft.kind,
                    "precedence": out.precedence,
                    "exercise": draft.exercise,
                    "created_at": out.created_at or now,
                    "stored_at": now,
                    "operator": draft.operator,
                    "lang": draft.lang,
                    "body": canonical_bytes(draft.body).decode(),
                    "content": out.content,
                    "ack_due": now + self.kernel.config.ack_deadline(out.precedence)
                    if draft.kind in HUMAN_KINDS
                    else None,
                    "acked_at": None,
                    "acked_by": None,
                    "overdue": False,
                }
            )
            outbox.extend(
                {
                    "envelope_id": out.envelope_id,
                    "peer": peer,
                    "precedence": out.precedence,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt": max(now, draft.not_before or now),
                    "via": draft.via,
                }
                for peer in out.recipients
            )
            self.kernel.ensure_channel(conn, out.channel, [self.kernel.me, *out.recipients], now)
        conn.execute(insert(m.messages), messages)
        conn.execute(insert(m.outbox), outbox)

    def acknowledge(self, envelope_id: str, *, operator: str) -> dict[str, Any]:
        """Send the human acknowledgement of a received message (once: the check and the
        sending happen under one lock, so two operators at once send one acknowledgement)."""
        with self.kernel.lock:
            with reading(self.kernel.engine) as conn:
                row = conn.execute(
                    select(m.messages).where(m.messages.c.envelope_id == envelope_id)
                ).first()
            if row is None or row.direction != "in":
                raise UsageError(f"no received message {envelope_id} to acknowledge")
            if row.acked_at is not None:
                raise AlreadyAcknowledged(
                    f"message {envelope_id} was already acknowledged by {row.acked_by}",
                    operator=str(row.acked_by),
                )
            if row.kind not in HUMAN_KINDS:
                raise NothingToAcknowledge(
                    f"message {envelope_id} is a {row.kind} message: nothing to acknowledge",
                    kind=str(row.kind),
                )
            start = self.kernel.party.transcript.size
            out = self.kernel.party.acknowledge(envelope_id, operator=operator)
            digest = self.kernel.party.received_digest(envelope_id) or ""
            body: dict[str, JSONValue] = {"ack": {"digest": digest, "envelope_id": envelope_id}}

            def work(conn: Connection) -> None:
                self.kernel.log_new_entries(conn, start)
                self._store_sent(conn, [(Draft(out.recipients, "ack", body, operator), out)])
                conn.execute(
                    update(m.messages)
                    .where(m.messages.c.envelope_id == envelope_id)
                    .values(acked_at=self.kernel.clock(), acked_by=operator)
                )

            self.kernel.commit(work)
        self.kernel.outbox_changed()
        log.info("message_acknowledged", id=envelope_id, operator=operator, ack=out.envelope_id)
        return {"id": out.envelope_id, "acknowledges": envelope_id}
