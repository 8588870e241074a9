"""Test doubles shipped with Parley, for its own tests and its users'.

* ``ManualClock``: a clock that moves only when told to.
* ``make_parties``: identities and ``Party`` objects that have pinned each
  other's cards, as two duty officers would after reading fingerprints aloud.
* ``PartyPair``: two parties wired together in memory (after h11's
  ``ConnectionPair``): ``deliver`` carries an envelope across and brings the
  receipt back, ``witness_both`` runs the checkpoint exchange both ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from parley.core.identity import Identity
from parley.core.party import Event, Outgoing, Party, ReceiptAccepted

__all__ = ["ManualClock", "PartyPair", "make_parties"]

EPOCH = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)


@dataclass(slots=True)
class ManualClock:
    now: datetime = EPOCH

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_parties(parties: Sequence[tuple[str, str]], clock: ManualClock) -> dict[str, Party]:
    """Create one ``Party`` per (party id, display name), all pinned to each other."""
    result = {
        party: Party(Identity.generate(party, name, now=clock.now - timedelta(days=1)), clock=clock)
        for party, name in parties
    }
    for a in result.values():
        for b in result.values():
            if a is not b:
                a.add_peer(b.identity.card, b.identity.card.fingerprint)
    return result


@dataclass(slots=True)
class PartyPair:
    """Two parties in memory; ``a`` and ``b`` are their ``Party`` objects."""

    a: Party
    b: Party
    events: dict[str, list[Event]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        clock: ManualClock | None = None,
        a: tuple[str, str] = ("US-EUCOM", "US European Command"),
        b: tuple[str, str] = ("RU-GS", "General Staff of the Armed Forces"),
    ) -> PartyPair:
        parties = make_parties([a, b], clock or ManualClock())
        return cls(parties[a[0]], parties[b[0]])

    def peer_of(self, party: Party) -> Party:
        return self.b if party is self.a else self.a

    def deliver(self, out: Outgoing, sender: Party) -> tuple[tuple[Event, ...], ReceiptAccepted]:
        """Carry ``out`` to the other party and bring its receipt back."""
        receiver = self.peer_of(sender)
        result = receiver.receive_envelope(out.raw)
        self.events.setdefault(receiver.party, []).extend(result.events)
        return result.events, sender.receive_receipt(result.receipt)

    def witness(self, owner: Party) -> int:
        """The other party witnesses ``owner``'s log; returns the cosigned size."""
        witness = self.peer_of(owner)
        request = witness.checkpoint_request(owner.party)
        cosigned = witness.witness(owner.offer_checkpoint(request), leaves=owner.log_leaves)
        return owner.accept_cosignature(cosigned).size

    def witness_both(self) -> tuple[int, int]:
        return self.witness(self.a), self.witness(self.b)
