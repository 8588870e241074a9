"""The terminal's keys and cards over time: expiry alarms and ``parley keys status``.

``parley serve``'s deadlines loop calls ``Keys.check_expiry`` every few
seconds; it looks at the cards at most once an hour. For the terminal's own
card and each pinned peer's card it raises one ``card_expiry`` alarm per
threshold crossed (``parley.core.expiry``: 90 and 30 days, warnings; 7 days
and the end, critical), once: an alarm an operator has cleared is not raised
again, and an open one is cleared when it no longer applies (a more urgent
threshold took its place, or the card is no longer in use).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog
from sqlalchemy import select

from parley.core.encoding import format_time
from parley.core.expiry import EXPIRY_THRESHOLDS, card_state, days_left, expiry_alarm
from parley.core.identity import IdentityCard
from parley.store import models as m
from parley.store.db import reading

if TYPE_CHECKING:  # the read model (reads.py) imports this module; the kernel imports it
    from parley.service.alarms import Alarms
    from parley.service.kernel import Kernel

__all__ = ["CARD_EXPIRY", "CHECK_EVERY", "Keys", "card_version", "keys_report"]

log = structlog.get_logger("parley.terminal")

CARD_EXPIRY: Final = "card_expiry"
#: The card's encryption key: RFC 9180 base mode, as ``parley.core.identity.HPKE_SUITE``.
HPKE_SUITE_NAME: Final = "MLKEM768_X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (RFC 9180 base mode)"
#: How often ``parley serve`` looks at the cards' ends.
CHECK_EVERY: Final = timedelta(hours=1)


def card_version(card: IdentityCard) -> int:
    """The card's version: its signed ``version`` field (every v1 card has one, >= 1)."""
    return card.version


def _subject(card: IdentityCard, days: int) -> str:
    return f"{card.party} v{card_version(card)} {days}d"


def _message(card: IdentityCard, days: int, now: datetime, *, own: bool) -> str:
    whose = (
        f"this terminal's card ({card.party}, version {card_version(card)})"
        if own
        else f"the card of {card.party} (version {card_version(card)})"
    )
    end = format_time(card.valid_until)
    if days == 0:
        after = "nothing it signs is accepted" if own else f"nothing {card.party} signs is accepted"
        return f"{whose} expired at {end}: {after}; arrange a new card with the peers"
    left = days_left(card, now)
    return (
        f"{whose} expires at {end}, in {left} day{'' if left == 1 else 's'} "
        f"(the {days}-day alarm): arrange a new card with the peers before then"
    )


class Keys:
    """Raise and clear the ``card_expiry`` alarms of this terminal's and its peers' cards."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms
        self._next_check: datetime | None = None
        self._check_lock = threading.Lock()

    def check_expiry(self, *, force: bool = False) -> int:
        """Look at every card's end (at most once per ``CHECK_EVERY``); returns alarms raised."""
        now = self.kernel.clock()
        with self._check_lock:
            if not force and self._next_check is not None and now < self._next_check:
                return 0
            self._next_check = now + CHECK_EVERY
        with self.kernel.lock:
            peers = list(self.kernel.party.peers.values())
        cards = [(self.kernel.identity.card, True), *((card, False) for card in peers)]
        wanted: dict[str, tuple[str, str]] = {}
        for card, own in cards:
            crossed = expiry_alarm(card, now)
            if crossed is not None:
                wanted[_subject(card, crossed.days)] = (
                    crossed.severity,
                    _message(card, crossed.days, now, own=own),
                )
        with reading(self.kernel.engine) as conn:
            rows = conn.execute(
                select(m.alarms.c.subject, m.alarms.c.cleared_at).where(
                    m.alarms.c.kind == CARD_EXPIRY
                )
            ).all()
        ever = {row.subject for row in rows}
        for subject in sorted(
            {row.subject for row in rows if row.cleared_at is None} - set(wanted)
        ):
            self.alarms.clear_alarms(CARD_EXPIRY, subject)
        raised = 0
        for subject, (severity, message) in wanted.items():
            if subject in ever:
                continue  # raised before: still open, or cleared by an operator
            if self.alarms.raise_alarm(CARD_EXPIRY, severity, subject, message, once=True):
                raised += 1
        if raised:
            log.info("card_expiry_checked", raised=raised)
        return raised


def _card_row(card: IdentityCard, now: datetime) -> dict[str, Any]:
    crossed = expiry_alarm(card, now)
    return {
        "party": card.party,
        "name": card.name,
        "card_version": card_version(card),
        "fingerprint": card.fingerprint,
        "valid_from": format_time(card.valid_from),
        "valid_until": format_time(card.valid_until),
        "days_left": days_left(card, now),
        "state": card_state(card, now),
        "alarm": None if crossed is None else {"days": crossed.days, "severity": crossed.severity},
    }


def keys_report(own: IdentityCard, peers: Iterable[IdentityCard], now: datetime) -> dict[str, Any]:
    """What ``parley keys status`` shows: own card and keys, every peer's card, at ``now``."""
    state = card_state(own, now)
    return {
        "at": format_time(now),
        "card": _card_row(own, now),
        "encryption_keys": [
            {
                "algorithm": "MLKEM768_X25519",
                "suite": HPKE_SUITE_NAME,
                "card_version": card_version(own),
                # One key, the card's: it is current while the card is.
                "state": "current" if state in ("valid", "expiring") else state,
                "valid_from": format_time(own.valid_from),
                "valid_until": format_time(own.valid_until),
            }
        ],
        "signature_keys": [
            {
                "algorithm": "Ed25519",
                "signs": "the card, envelopes, receipts, checkpoints, cosignatures",
            },
            {"algorithm": "ML-DSA-65", "signs": "the card, checkpoints, cosignatures"},
        ],
        "peers": [_card_row(card, now) for card in sorted(peers, key=lambda c: c.party)],
        "alarm_days": [days for days, _ in EXPIRY_THRESHOLDS if days],
    }
