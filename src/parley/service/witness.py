"""Checkpoints and witnessing: offering this terminal's checkpoint, cosigning a peer's.

A witness round (docs/recovery.md §1): ``plan`` reads a peer's offer (stored
as observed before anything relies on it; a rollback or an equivocation is
evidence and one alarm per incident), the delivery worker fetches the
leaves the mirror lacks from the peer's ``GET /v1/log/leaves``, and
``cosign`` takes them into the mirror and cosigns if every rule holds. The
``seen`` field of requests and offers tells this terminal when a peer holds a
checkpoint of its own log that its log does not bear out: a ``rolled_back``
alarm and ``Kernel.note_rollback``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from parley.core.witness import OfferPlan
from parley.errors import CheckpointRejected, Equivocation, SchemaViolation
from parley.service.alarms import Alarms
from parley.service.kernel import Kernel
from parley.store import models as m
from parley.store.db import reading

__all__ = ["Witnessing"]


def our_cosignature(conn: Connection, owner: str, size: int) -> str | None:
    """The note of our latest stored cosignature of ``owner``'s checkpoint of ``size``."""
    note = conn.execute(
        select(m.cosignatures.c.note)
        .where(
            and_(
                m.cosignatures.c.direction == "by-us",
                m.cosignatures.c.party == owner,
                m.cosignatures.c.size == size,
            )
        )
        .order_by(m.cosignatures.c.id.desc())
        .limit(1)
    ).scalar()
    return note if isinstance(note, str) else None


class Witnessing:
    """Offer checkpoints to witnesses, cosign peers' checkpoints, keep cosignatures."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms

    def offer_checkpoint(self, request: bytes, *, tls_party: str | None = None) -> bytes:
        """Answer a witness's checkpoint request; learn from its ``seen`` if our log rolled back."""
        with self.kernel.lock:
            witness, seen = self.kernel.party.read_checkpoint_request(request)
            if tls_party is not None and witness != tls_party:
                raise SchemaViolation(f"{tls_party} sent a checkpoint request as {witness[:63]}")
            if witness in self.kernel.party.peers:
                self._check_seen(witness, seen)
            start = self.kernel.party.transcript.size
            offer = self.kernel.party.offer_checkpoint(request)
            self.kernel.commit(lambda conn: self.kernel.log_new_entries(conn, start))
            return offer

    def checkpoint_request(self, owner: str) -> bytes:
        with self.kernel.lock:
            return self.kernel.party.checkpoint_request(owner)

    def log_leaves(self, start: int, limit: int) -> list[bytes]:
        """Leaf hashes of this terminal's own log, for a witness's mirror."""
        with self.kernel.lock:
            return self.kernel.party.log_leaves(start, limit)

    def plan(self, owner: str, offer: bytes) -> OfferPlan:
        """Read ``owner``'s offer: stored as observed, judged, and its ``seen`` checked.

        A rollback or an equivocation is kept as evidence and raised (one
        alarm per incident); the plan says which leaves the mirror needs.
        """
        with self.kernel.lock:
            party = self.kernel.party
            try:
                plan, seen = party.plan_witness(offer)
                if plan.owner != owner:
                    raise SchemaViolation(f"{owner} offered a checkpoint of {plan.owner}'s log")
            except CheckpointRejected as exc:
                self._store_changes()
                self._refused(owner, exc)
                raise
            self._store_changes()
            self._check_seen(owner, seen)
            return plan

    def cosign(self, owner: str, plan: OfferPlan, leaves: Sequence[bytes]) -> bytes:
        """Extend the mirror with ``owner``'s leaves and cosign the planned checkpoint."""
        with self.kernel.lock:
            try:
                cosigned = self.kernel.party.cosign(plan, leaves)
            except CheckpointRejected as exc:
                self._store_changes()
                self._refused(owner, exc)
                raise
            checkpoint = plan.checkpoint
            now = self.kernel.clock()

            def work(conn: Connection) -> None:
                self.kernel.store_witness_changes(conn)
                conn.execute(
                    update(m.observed_checkpoints)
                    .where(
                        and_(
                            m.observed_checkpoints.c.party == owner,
                            m.observed_checkpoints.c.size <= checkpoint.size,
                        )
                    )
                    .values(verified=True)
                )
                conn.execute(
                    insert(m.cosignatures).values(
                        direction="by-us",
                        party=owner,
                        size=checkpoint.size,
                        note=cosigned.decode(),
                        at=now,
                    )
                )

            self.kernel.commit(work)
            return cosigned

    def witness(
        self,
        owner: str,
        offer: bytes,
        leaves: Callable[[int, int], Sequence[bytes]] | None = None,
    ) -> bytes:
        """Plan, take the leaves from ``leaves(start, limit)`` and cosign, in one call."""
        plan = self.plan(owner, offer)
        needed = plan.checkpoint.size - plan.start
        got = list(leaves(plan.start, needed))[:needed] if needed and leaves else []
        return self.cosign(owner, plan, got)

    def last_cosignature(self, owner: str, size: int) -> bytes | None:
        """Our stored cosignature of ``owner``'s checkpoint of ``size``, or None."""
        with reading(self.kernel.engine) as conn:
            note = our_cosignature(conn, owner, size)
        return note.encode() if note is not None else None

    def mirror_size(self, owner: str) -> int:
        with self.kernel.lock:
            return self.kernel.party.mirror_size(owner)

    def extend_mirror(self, owner: str, start: int, leaves: Sequence[bytes]) -> int:
        """Leaf hashes that came with ``owner``'s receipts: the mirror reaches what they
        showed (``Party.extend_mirror``), stored before it is relied on."""
        with self.kernel.lock:
            before = self.kernel.party.mirror_size(owner)
            size = self.kernel.party.extend_mirror(owner, start, leaves)
            if size != before:
                self._store_changes()
            return size

    def mirror(self, owner: str, start: int, limit: int) -> list[bytes]:
        """Leaf hashes of ``owner``'s log from this terminal's mirror (verified ones only)."""
        with self.kernel.lock:
            return self.kernel.party.mirror(owner, start, limit)

    def largest_seen(self, owner: str) -> str | None:
        """The largest checkpoint note of ``owner``'s log held (observed or cosigned)."""
        with self.kernel.lock:
            largest = self.kernel.party.largest_seen(owner)
        return largest.note if largest is not None else None

    def _store_changes(self) -> None:
        self.kernel.commit(self.kernel.store_witness_changes)

    def _refused(self, owner: str, exc: CheckpointRejected) -> None:
        if isinstance(exc, Equivocation):
            self.alarms.record_equivocation(exc, owner)
        else:
            self.alarms.raise_alarm("checkpoint_rejected", "critical", owner, str(exc), once=True)

    def _check_seen(self, peer: str, seen: str | None) -> None:
        """A peer's ``seen``: raise one ``rolled_back`` alarm per incident if our log is behind."""
        found = self.kernel.party.check_seen(peer, seen)
        if found is None:
            return
        reason = self.kernel.note_rollback(peer, found.seen_size)
        # One incident, one alarm: about this terminal's own log, naming the peers.
        self.alarms.raise_alarm(
            "rolled_back", "critical", self.kernel.me, f"{found.reason}: {reason}", once=True
        )

    def accept_cosignature(self, note: bytes, *, tls_party: str | None = None) -> dict[str, Any]:
        with self.kernel.lock:
            accepted = self.kernel.party.accept_cosignature(note)
            if tls_party is not None and accepted.witness != tls_party:
                raise SchemaViolation(
                    f"{tls_party} delivered a cosignature made by {accepted.witness}"
                )
            with self.kernel.engine.begin() as conn:
                conn.execute(
                    insert(m.cosignatures).values(
                        direction="of-us",
                        party=accepted.witness,
                        size=accepted.size,
                        note=accepted.note,
                        at=self.kernel.clock(),
                    )
                )
        return {"witness": accepted.witness, "size": accepted.size}
