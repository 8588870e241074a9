"""The terminal's keys and cards over time: expiry alarms, encryption key rotation and
``parley keys status``.

Forward secrecy (``parley.core.enckeys``): the same loop calls
``Keys.check_encryption_keys``. When the current medium-term encryption key is
older than ``keys.encryption_key_rotation`` (or there is none) a new one is
made, kept sealed (``parley.service.keystore``) and announced to every pinned
peer in a message of kind ``key`` on the bilateral channel (logged in both
transcripts); a peer pinned later gets the current announcement at the next
check. Peers encrypt to the card's own key until the announcement reaches them, so
it is not urgent: a ROUTINE message, and when many peers lack it (a network starting
together, an identity rotation) their first attempts are spread over
``announcement_window`` (a few seconds per peer, at most ten minutes), so that 57
terminals starting together do not ask 3,192 deliveries of one machine at once.
The replaced key still opens what was sent to it until
``keys.encryption_key_grace`` has passed; then its private half is
overwritten. A frozen terminal (docs/recovery.md) makes, announces and
destroys no key until it is recovered (recovery reads received envelopes
again with their keys).

``parley serve``'s deadlines loop calls ``Keys.check_expiry`` every few
seconds; it looks at the cards at most once an hour. For the terminal's own
card and each pinned peer's card it raises one ``card_expiry`` alarm per
threshold crossed (``parley.core.expiry``: 90 and 30 days, warnings; 7 days
and the end, critical), once: an alarm an operator has cleared is not raised
again, and an open one is cleared when it no longer applies (a more urgent
threshold took its place, or the card is no longer in use).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog
from sqlalchemy import and_, insert, select

from parley.core.enckeys import EncryptionKeyPair
from parley.core.encoding import format_time
from parley.core.expiry import EXPIRY_THRESHOLDS, card_state, days_left, expiry_alarm
from parley.core.identity import IdentityCard
from parley.service.keystore import destroy_key, store_key_pair
from parley.store import models as m
from parley.store.db import reading

if TYPE_CHECKING:  # the read model (reads.py) imports this module; the kernel imports it
    from parley.service.alarms import Alarms
    from parley.service.kernel import Kernel
    from parley.service.messaging import Messaging

__all__ = ["CARD_EXPIRY", "CHECK_EVERY", "Keys", "card_version", "keys_report"]

log = structlog.get_logger("parley.terminal")

CARD_EXPIRY: Final = "card_expiry"
#: The card's encryption key: RFC 9180 base mode, as ``parley.core.identity.HPKE_SUITE``.
HPKE_SUITE_NAME: Final = "MLKEM768_X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (RFC 9180 base mode)"
#: How often ``parley serve`` looks at the cards' ends.
CHECK_EVERY: Final = timedelta(hours=1)
#: The operator named in the service messages that announce encryption keys.
KEYS_OPERATOR: Final = "parley-keys"
#: Announcements sent at once; beyond, their first attempts are spread (see below).
ANNOUNCE_AT_ONCE: Final = 4
#: Seconds of the spreading window per peer lacking the announcement, and its cap.
ANNOUNCE_PER_PEER: Final = 5.0
ANNOUNCE_WINDOW_MAX: Final = 600.0


def announcement_window(peers: int) -> float:
    """Seconds over which the first attempts of ``peers`` key announcements are spread
    (0: all at once)."""
    if peers <= ANNOUNCE_AT_ONCE:
        return 0.0
    return min(ANNOUNCE_PER_PEER * peers, ANNOUNCE_WINDOW_MAX)


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

    def __init__(self, kernel: Kernel, alarms: Alarms, messaging: Messaging) -> None:
        self.kernel = kernel
        self.alarms = alarms
        self.messaging = messaging
        self._next_check: datetime | None = None
        self._check_lock = threading.Lock()
        #: check_encryption_keys: nothing is due before this, for the state in _keys_seen.
        self._keys_idle_until: datetime | None = None
        self._keys_seen: tuple[int, str, frozenset[str]] | None = None
        self._rng = random.Random()  # noqa: S311 - spreading, not secrets

    # Forward secrecy: rotation, announcement, destruction ---------------------------

    def check_encryption_keys(self) -> dict[str, list[str]]:
        """Destroy the keys past their grace, make a new key when the current one is due,
        announce it to the peers that lack it. Returns the key ids destroyed and made, and
        the peers announced to. Between the times something falls due it reads nothing,
        as long as the peers, the card and the protocol state are the ones it last saw."""
        done: dict[str, list[str]] = {"destroyed": [], "created": [], "announced_to": []}
        store_key = self.kernel.store_key
        if store_key is None:
            return done  # opened without the passphrase: no key can be sealed
        now = self.kernel.clock()
        if self.kernel.frozen is not None:
            # Recovery re-reads received envelopes with these keys: none is destroyed,
            # and none made (announcing one would sign something new), until it is done.
            return done
        party = self.kernel.party
        seen = (id(party), party.identity.card.key_id, frozenset(party.peers))
        idle = self._keys_idle_until
        if self._keys_seen == seen and idle is not None and now < idle:
            return done
        with reading(self.kernel.engine) as conn:
            pending = conn.execute(
                select(m.encryption_keys.c.key_id, m.encryption_keys.c.destroy_after).where(
                    and_(
                        m.encryption_keys.c.destroyed_at.is_(None),
                        m.encryption_keys.c.destroy_after.is_not(None),
                    )
                )
            ).all()
        due = [row for row in pending if _aware(row.destroy_after) <= now]
        for row in due:
            with self.kernel.lock:
                destroy_key(self.kernel.engine, row.key_id, now)
                self.kernel.party.keyring.destroyed(row.key_id, now)
            done["destroyed"].append(row.key_id)
        if not self.kernel.party.identity.card.valid_at(now):
            return done  # an expired card signs nothing: no key can be announced
        with self.kernel.lock:
            current = self.kernel.party.keyring.current
            if (
                current is None
                or current.key.created_at + self.kernel.config.rotation_interval <= now
                # A new card (identity rotation): its keys announce a new key at once.
                or current.key.card != self.kernel.party.identity.card.key_id
            ):
                with reading(self.kernel.engine) as conn:
                    serials = conn.execute(select(m.encryption_keys.c.serial)).scalars().all()
                pair = EncryptionKeyPair.generate(
                    self.kernel.party.identity, serial=max(serials, default=0) + 1, now=now
                )
                with self.kernel.engine.begin() as conn:
                    store_key_pair(conn, store_key, pair, self.kernel.config.grace_period)
                self.kernel.party.keyring.add_own(pair, current=True)
                done["created"].append(pair.key_id)
                log.info("encryption_key_created", key_id=pair.key_id, serial=pair.key.serial)
                current = pair
        done["announced_to"] = self._announce(current)
        # Nothing more is due before the current key's turn or the next destruction.
        waits = [current.key.created_at + self.kernel.config.rotation_interval]
        waits += [_aware(r.destroy_after) for r in pending if _aware(r.destroy_after) > now]
        self._keys_idle_until = min(waits)
        party = self.kernel.party
        self._keys_seen = (id(party), party.identity.card.key_id, frozenset(party.peers))
        return done

    def _announce(self, current: EncryptionKeyPair) -> list[str]:
        """Send the current key's announcement to every pinned peer that lacks it."""
        from parley.service.messaging import Draft  # messaging imports the kernel

        with reading(self.kernel.engine) as conn:
            sent = set(
                conn.execute(
                    select(m.encryption_key_sent.c.party).where(
                        m.encryption_key_sent.c.key_id == current.key_id
                    )
                ).scalars()
            )
        with self.kernel.lock:
            missing = sorted(set(self.kernel.party.peers) - sent)
        if not missing:
            return []
        body: dict[str, Any] = {"key": dict(current.key.announcement)}
        window = announcement_window(len(missing))
        now = self.kernel.clock()
        drafts: Sequence[Draft] = [
            Draft(
                (peer,),
                "key",
                body,
                KEYS_OPERATOR,
                not_before=now + timedelta(seconds=self._rng.uniform(0.0, window))
                if window
                else None,
            )
            for peer in missing
        ]
        results = self.messaging.send_many(drafts)
        now = self.kernel.clock()
        with self.kernel.engine.begin() as conn:
            conn.execute(
                insert(m.encryption_key_sent),
                [
                    {"party": peer, "key_id": current.key_id, "envelope_id": r["id"], "at": now}
                    for peer, r in zip(missing, results, strict=True)
                ],
            )
        log.info("encryption_key_announced", key_id=current.key_id, to=missing)
        return missing

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


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back: every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return format_time(value if value.tzinfo else value.replace(tzinfo=UTC))


def _key_state(row: Any) -> str:
    if row.destroyed_at is not None:
        return "destroyed"
    return "grace" if row.retired_at is not None else "current"


def keys_report(
    own: IdentityCard,
    peers: Iterable[IdentityCard],
    now: datetime,
    own_keys: Sequence[Any] = (),
    peer_keys: Sequence[Any] = (),
) -> dict[str, Any]:
    """What ``parley keys status`` shows: own card and keys, every peer's card, at ``now``.

    ``own_keys`` are rows of ``encryption_keys``, ``peer_keys`` of
    ``peer_encryption_keys``. Medium-term keys come first, newest first; the
    card's own key last: ``current`` while no medium-term key is (peers that
    have had no announcement still use it), else ``fallback``.
    """
    state = card_state(own, now)
    medium = [
        {
            "kind": "medium-term",
            "key_id": row.key_id,
            "serial": row.serial,
            "algorithm": "MLKEM768_X25519",
            "suite": HPKE_SUITE_NAME,
            "card_version": card_version(own),
            "state": _key_state(row),
            "valid_from": _time(row.created_at),
            "valid_until": _time(row.retired_at),
            "destroy_after": _time(row.destroy_after),
            "destroyed_at": _time(row.destroyed_at),
        }
        for row in sorted(own_keys, key=lambda r: -int(r.serial))
    ]
    any_current = any(k["state"] == "current" for k in medium)
    card_key = {
        "kind": "card",
        "key_id": "card",
        "serial": 0,
        "algorithm": "MLKEM768_X25519",
        "suite": HPKE_SUITE_NAME,
        "card_version": card_version(own),
        "state": ("fallback" if any_current else "current")
        if state in ("valid", "expiring")
        else state,
        "valid_from": format_time(own.valid_from),
        "valid_until": format_time(own.valid_until),
        "destroy_after": None,
        "destroyed_at": None,
    }
    latest: dict[str, Any] = {}
    for row in peer_keys:
        if row.party not in latest or row.serial > latest[row.party].serial:
            latest[row.party] = row
    peer_rows = []
    for card in sorted(peers, key=lambda c: c.party):
        row = _card_row(card, now)
        held = latest.get(card.party)
        row["encryption_key"] = (
            None
            if held is None
            else {
                "key_id": held.key_id,
                "serial": held.serial,
                "received_at": _time(held.received_at),
            }
        )
        peer_rows.append(row)
    return {
        "at": format_time(now),
        "card": _card_row(own, now),
        "encryption_keys": [*medium, card_key],
        "signature_keys": [
            {
                "algorithm": "Ed25519",
                "signs": "the card, envelopes, receipts, checkpoints, cosignatures",
            },
            {"algorithm": "ML-DSA-65", "signs": "the card, checkpoints, cosignatures"},
        ],
        "peers": peer_rows,
        "alarm_days": [days for days, _ in EXPIRY_THRESHOLDS if days],
    }
