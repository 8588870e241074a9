"""Exchanges (prisoners, remains) read from a terminal's stored messages.

The workflow itself is pure (``parley.core.exchange``); this module feeds it
the form messages this terminal holds, sent and received, in log order.
Messages this terminal refused (a negative receipt) are not part of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from sqlalchemy import and_, select

from parley.core.exchange import (
    AGREEMENT_FORM,
    EXCHANGE_FORMS,
    STATUS_FORM,
    Exchange,
    FormMessage,
    exchanges_from,
)
from parley.errors import UsageError
from parley.service.reads import Records
from parley.store import models as m
from parley.store.db import reading

__all__ = ["EXCHANGE_FORM_NAMES", "exchange_state", "exchange_summaries", "exchange_view"]

EXCHANGE_FORM_NAMES = frozenset({*EXCHANGE_FORMS, AGREEMENT_FORM, STATUS_FORM})


def _messages(records: Records, exchange_id: str | None) -> list[tuple[str, FormMessage]]:
    """(channel, message) for every stored exchange form, in log order.

    The index finds the candidates; each is read through the checked read
    model, so what is used is what its sender signed (a row that does not
    verify is left out here and shown as such in the inbox and outbox).
    """
    query = select(m.messages.c.envelope_id).where(
        and_(m.messages.c.kind == "form", m.messages.c.rejection_code.is_(None))
    )
    if exchange_id is not None:
        # The body is canonical JSON, so the id appears exactly like this; checked again below.
        needle = json.dumps(
            {"exchange_id": exchange_id}, ensure_ascii=False, separators=(",", ":")
        )[1:-1]
        query = query.where(m.messages.c.body.contains(needle, autoescape=True))
    with reading(records.engine) as conn:
        ids = list(conn.execute(query.order_by(m.messages.c.log_index)).scalars())
    found: list[tuple[str, FormMessage]] = []
    for lo in range(0, len(ids), 500):
        chunk = ids[lo : lo + 500]
        checked = records.messages_by_id(chunk)
        for envelope_id in chunk:
            item = checked.get(envelope_id)
            if item is None or not item["verified"] or item["kind"] != "form":
                continue
            form = item["body"].get("form", {})
            data = form.get("data")
            if form.get("name") not in EXCHANGE_FORM_NAMES or not isinstance(data, dict):
                continue
            if exchange_id is not None and data.get("exchange_id") != exchange_id:
                continue
            found.append(
                (
                    item["channel"],
                    FormMessage(
                        envelope_id=envelope_id,
                        sender=item["sender"],
                        created_at=item["created_at"] or "",
                        form=form["name"],
                        data=data,
                    ),
                )
            )
    return found


def _members(records: Records) -> dict[str, frozenset[str]]:
    return {c["name"]: frozenset(c["members"]) for c in records.channels()}


def _build(
    exchange_id: str, items: list[tuple[str, FormMessage]], members: dict[str, frozenset[str]]
) -> tuple[Exchange, str]:
    channel = items[0][0]
    # Every message of an exchange travels on the channel of its first one.
    messages = [msg for ch, msg in items if ch == channel]
    members_of = members.get(channel) or frozenset(msg.sender for msg in messages)
    # The mediator is the one member who sent no list (two sides and a mediator).
    sides = {msg.sender for msg in messages if msg.form in EXCHANGE_FORMS}
    others = members_of - sides
    mediator = next(iter(others)) if len(others) == 1 and len(sides) >= 2 else None
    exchange = exchanges_from(messages, members_of, mediator=mediator)[exchange_id]
    return exchange, channel


def exchange_state(records: Records, exchange_id: str) -> tuple[Exchange, str]:
    """The exchange as this terminal's record shows it, and its channel."""
    items = _messages(records, exchange_id)
    if not items:
        raise UsageError(f"no exchange {exchange_id} on this terminal")
    return _build(exchange_id, items, _members(records))


def exchange_view(records: Records, exchange_id: str) -> dict[str, Any]:
    """Everything about one exchange, as JSON: lists, manifest, agreements, reconciliation."""
    exchange, channel = exchange_state(records, exchange_id)
    report = exchange.report()
    me = records.me
    try:
        agreement: dict[str, Any] | None = exchange.agreement_data()
    except UsageError:
        agreement = None
    return {
        "exchange_id": exchange_id,
        "channel": channel,
        "members": sorted(exchange.members),
        "mediator": exchange.mediator,
        "kind": exchange.kind,
        "lists": {
            party: {
                "envelope_id": v.envelope_id,
                "revision": v.revision,
                "created_at": v.created_at,
                "persons": [dict(p) for p in v.persons],
            }
            for party, v in sorted(exchange.lists.items())
        },
        "history": [
            {"party": v.party, "envelope_id": v.envelope_id, "revision": v.revision}
            for v in exchange.history
        ],
        "manifest": exchange.manifest_hash,
        "agreements": dict(report.agreements),
        "agreed": report.agreed,
        "next_revision": (exchange.lists[me].revision + 1) if me in exchange.lists else 1,
        "agreement": agreement,
        "per_side": {party: asdict(c) for party, c in sorted(report.per_side.items())},
        "persons": [
            {"party": p.party, "ref": p.ref, "outcome": p.outcome, "reports": dict(p.reports)}
            for p in report.persons
        ],
        "discrepancies": [asdict(d) for d in report.discrepancies],
        "problems": [asdict(p) for p in report.problems],
    }


def exchange_summaries(records: Records) -> list[dict[str, Any]]:
    """One line per exchange this terminal holds."""
    grouped: dict[str, list[tuple[str, FormMessage]]] = {}
    for channel, msg in _messages(records, None):
        exchange_id = msg.data.get("exchange_id")
        if isinstance(exchange_id, str) and exchange_id:
            grouped.setdefault(exchange_id, []).append((channel, msg))
    members = _members(records)
    result = []
    for exchange_id, items in grouped.items():
        exchange, channel = _build(exchange_id, items, members)
        report = exchange.report()
        result.append(
            {
                "exchange_id": exchange_id,
                "channel": channel,
                "kind": exchange.kind,
                "agreed": report.agreed,
                "listed": {p: c.listed for p, c in sorted(report.per_side.items())},
                "discrepancies": len(report.discrepancies),
                "problems": len(report.problems),
            }
        )
    return result
