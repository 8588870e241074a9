"""What a service message says, as language-free facts each front end words in its own
language.

A service message is the terminals' own business (a channel proposed or agreed,
a new identity card announced, a card revoked): it is logged, receipted and
shown like any message, but no human acknowledges it (``HUMAN_KINDS``). Its
body is ``{"service": {KIND: DETAILS, …}}``; ``service_notices`` reads the
kinds this terminal knows into ``Notice`` values, and names any other kind as
``unknown`` (shown, never guessed at).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parley.core.party import CARD_ROTATION, REVOCATION

__all__ = ["NOTICE_KINDS", "Notice", "service_notices"]

#: Every kind of notice ``service_notices`` returns.
NOTICE_KINDS = ("channel_proposal", "channel_agreement", CARD_ROTATION, REVOCATION, "unknown")

_MAX_TEXT = 120


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing a service message says: its ``kind`` and the values to word it with."""

    kind: str
    params: Mapping[str, str]


def _text(value: Any) -> str:
    return str(value)[:_MAX_TEXT] if isinstance(value, str | int) else "?"


def _one(kind: str, details: Any) -> Notice:
    given = details if isinstance(details, Mapping) else {}
    if kind == "channel_proposal":
        members = given.get("members")
        listed = [str(p) for p in members] if isinstance(members, list) else []
        return Notice(kind, {"name": _text(given.get("name")), "members": ", ".join(listed)})
    if kind == "channel_agreement":
        return Notice(kind, {"name": _text(given.get("name"))})
    if kind == CARD_ROTATION:
        card = given.get("card")
        version = card.get("version") if isinstance(card, Mapping) else None
        return Notice(kind, {"version": _text(version)})
    if kind == REVOCATION:
        statement = given.get("revocation", given)
        statement = statement if isinstance(statement, Mapping) else {}
        return Notice(
            kind,
            {"party": _text(statement.get("party")), "version": _text(statement.get("version"))},
        )
    return Notice("unknown", {"what": _text(kind)})


def service_notices(body: Mapping[str, Any]) -> tuple[Notice, ...]:
    """The notices of a service message's body, in the order of their kinds' names."""
    service = body.get("service")
    if not isinstance(service, Mapping) or not service:
        return (Notice("unknown", {"what": "—"}),)
    return tuple(_one(str(kind), service[kind]) for kind in sorted(service))
