"""The shift handover: what the outgoing watch hands over, read from the record.

``open_items`` lists everything still open on the terminal now: received
messages not acknowledged, alarms not cleared, exchanges not agreed or with
discrepancies, FLASH messages held for a supervisor, and messages not yet
delivered. A sign-off (``Operations.sign_off``) records it with the officer's
note; every front end shows it from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Engine, and_, select

from parley.errors import ParleyError
from parley.service.exchanges import exchange_summaries
from parley.service.kernel import PRECEDENCE_RANK, iso
from parley.store import models as m
from parley.store.db import reading

if TYPE_CHECKING:
    from parley.service.terminal import Terminal

__all__ = ["OPEN_ITEMS_LIMIT", "open_items"]

log = structlog.get_logger("parley.handover")

#: At most this many rows of each kind of open item on the handover page and in its record.
OPEN_ITEMS_LIMIT = 500


def open_items(terminal: Terminal, *, content: bool = False) -> dict[str, list[dict[str, Any]]]:
    """What the watch hands over: everything still open on this terminal now.

    ``content``: each message also carries its ``kind`` and ``body`` as its signed
    envelope says (a held FLASH, as it was written), for a front end to name its
    subject; the record of a sign-off keeps none of a message's words.
    """
    msg = m.messages.c
    out = m.outbox.c
    held = m.held_messages.c
    with reading(terminal.engine) as conn:
        candidates = list(
            conn.execute(
                select(msg.envelope_id)
                .where(
                    and_(
                        msg.direction == "in",
                        msg.kind.in_(("text", "form")),
                        msg.acked_at.is_(None),
                        msg.rejection_code.is_(None),
                    )
                )
                .order_by(msg.ack_due, msg.log_index)
                .limit(OPEN_ITEMS_LIMIT)
            ).scalars()
        )
        flash = []
        for r in conn.execute(
            select(m.held_messages)
            .where(held.state == "held")
            .order_by(held.id)
            .limit(OPEN_ITEMS_LIMIT)
        ):
            try:
                request = json.loads(r.request)
            except ValueError:
                request = {}
            request = request if isinstance(request, dict) else {}
            to = request.get("to")
            flash.append(
                {
                    "id": r.id,
                    "operator": r.operator,
                    "created_at": iso(r.created_at),
                    "to": [str(p) for p in to] if isinstance(to, list) else [],
                    **(
                        {"kind": request.get("kind"), "body": request.get("body")}
                        if content
                        else {}
                    ),
                }
            )
        pending = [
            {
                "id": r.envelope_id,
                "peer": r.peer,
                "precedence": r.precedence,
                "kind": r.kind,
                "attempts": r.attempts,
                "next_attempt": iso(r.next_attempt),
                "last_error": r.last_error,
            }
            for r in conn.execute(
                select(
                    out.envelope_id,
                    out.peer,
                    out.precedence,
                    out.attempts,
                    out.next_attempt,
                    out.last_error,
                    msg.kind,
                )
                .join(m.messages, msg.envelope_id == out.envelope_id)
                .where(and_(out.state == "pending", msg.kind != "test"))
                .order_by(msg.log_index, out.peer)
                .limit(OPEN_ITEMS_LIMIT)
            )
        ]
    # What the index found, as the signed envelopes say it (a row that does not
    # verify is handed over as such, with none of what it claims).
    checked = terminal.messages_by_id(
        [*candidates, *(p["id"] for p in pending)] if content else candidates
    )

    def words(envelope_id: str) -> dict[str, Any]:
        item = checked.get(envelope_id)
        if not content or item is None or not item["verified"]:
            return {}
        return {"kind": item["kind"], "body": item["body"]}

    for p in pending:
        p.update(words(p["id"]))
    unacked = []
    for envelope_id in candidates:
        item = checked.get(envelope_id)
        if item is None:
            continue
        unacked.append(
            {
                "id": envelope_id,
                "sender": item["sender"] or "",
                "channel": item["channel"] or "",
                "precedence": item["precedence"] or "",
                "kind": item["kind"] or "",
                "received_at": item["stored_at"],
                "ack_due": item["ack_due"],
                **({} if item["verified"] else {"problem": item["problem"]}),
                **words(envelope_id),
            }
        )
    unacked.sort(key=lambda i: PRECEDENCE_RANK.get(i["precedence"], 9))
    pending.sort(key=lambda i: PRECEDENCE_RANK.get(i["precedence"], 9))
    alarms = [
        {k: a[k] for k in ("id", "at", "severity", "kind", "subject", "message")}
        for a in terminal.alarms(include_cleared=False, limit=OPEN_ITEMS_LIMIT)
    ]
    try:
        summaries = exchange_summaries(terminal)
    except ParleyError as exc:  # one broken exchange must not hide the rest of the handover
        log.warning("handover_exchanges_unreadable", error=str(exc))
        summaries = []
    exchanges = [
        {
            "exchange_id": s["exchange_id"],
            "kind": s["kind"],
            "agreed": s["agreed"],
            "discrepancies": s["discrepancies"],
            "problems": s["problems"],
        }
        for s in sorted(summaries, key=lambda s: s["exchange_id"])
        if not s["agreed"] or s["discrepancies"]
    ]
    return {
        "unacknowledged": unacked,
        "alarms": alarms,
        "exchanges": exchanges[:OPEN_ITEMS_LIMIT],
        "held_flash": flash,
        "pending_delivery": pending,
    }


@dataclass(slots=True)
class Handover:
    """A recorded shift handover, with how many items of each kind it handed over."""

    id: int
    signed_off_by: str
    signed_off_at: str | None
    note: str
    accepted_by: str | None
    accepted_at: str | None
    counts: dict[str, int] = field(default_factory=dict)


def recorded_handovers(engine: Engine, limit: int = 50) -> list[Handover]:
    """The ``limit`` latest handovers, newest first."""
    cols = m.handovers.c
    with reading(engine) as conn:
        rows = conn.execute(select(m.handovers).order_by(cols.id.desc()).limit(limit)).all()
    result = []
    for r in rows:
        try:
            items = json.loads(r.open_items)
        except ValueError:
            items = {}
        counts = (
            {k: len(v) for k, v in items.items() if isinstance(v, list)}
            if isinstance(items, dict)
            else {}
        )
        result.append(
            Handover(
                r.id,
                r.signed_off_by,
                iso(r.signed_off_at),
                r.note,
                r.accepted_by,
                iso(r.accepted_at),
                counts,
            )
        )
    return result
