"""When a card's end is near: the alarm thresholds and the state of a card at a time.

Every terminal raises an alarm when its own card, or a peer's, comes within
90 days (a warning), 30 days (a warning) and 7 days (critical) of its end,
and when it has ended (critical): a card is replaced by arrangement between
the parties, and that takes time. Pure rules; the time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from parley.core.identity import IdentityCard

__all__ = [
    "EXPIRY_THRESHOLDS",
    "ExpiryAlarm",
    "card_state",
    "days_left",
    "expiry_alarm",
]

#: (days before the end, severity), most urgent last; 0 means "has ended".
EXPIRY_THRESHOLDS: Final = ((90, "warning"), (30, "warning"), (7, "critical"), (0, "critical"))


@dataclass(frozen=True, slots=True)
class ExpiryAlarm:
    """The most urgent threshold a card has crossed: ``days`` before its end (0: ended)."""

    days: int
    severity: str


def days_left(card: IdentityCard, now: datetime) -> int:
    """Whole days until the card ends (rounded down); negative once it has ended."""
    return (card.valid_until - now) // timedelta(days=1)


def expiry_alarm(card: IdentityCard, now: datetime) -> ExpiryAlarm | None:
    """The most urgent threshold of ``EXPIRY_THRESHOLDS`` crossed at ``now``, if any."""
    left = card.valid_until - now
    crossed = None
    for days, severity in EXPIRY_THRESHOLDS:
        if left <= timedelta(days=days):
            crossed = ExpiryAlarm(days, severity)
    return crossed


def card_state(card: IdentityCard, now: datetime) -> str:
    """``not yet valid``, ``valid``, ``expiring`` (within the first threshold) or ``expired``."""
    if now < card.valid_from:
        return "not yet valid"
    if now > card.valid_until:
        return "expired"
    if card.valid_until - now <= timedelta(days=EXPIRY_THRESHOLDS[0][0]):
        return "expiring"
    return "valid"
