"""Checkpoints and witnessing: offering this terminal's checkpoint, cosigning a peer's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from parley.errors import CheckpointRejected, Equivocation, SchemaViolation
from parley.service.alarms import Alarms
from parley.service.kernel import Kernel
from parley.store import models as m

__all__ = ["Witnessing"]


class Witnessing:
    """Offer checkpoints to witnesses, cosign peers' checkpoints, keep cosignatures."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms

    def offer_checkpoint(self, request: bytes) -> bytes:
        with self.kernel.lock:
            start = self.kernel.party.transcript.size
            offer = self.kernel.party.offer_checkpoint(request)
            self.kernel.commit(lambda conn: self.kernel.log_new_entries(conn, start))
            return offer

    def checkpoint_request(self, owner: str) -> bytes:
        with self.kernel.lock:
            return self.kernel.party.checkpoint_request(owner)

    def witness(self, owner: str, offer: bytes) -> bytes:
        """Cosign ``owner``'s offered checkpoint; keep the cosigned note."""
        with self.kernel.lock:
            try:
                cosigned = self.kernel.party.witness(offer)
            except Equivocation as exc:
                self.alarms.record_equivocation(exc, owner)
                raise
            except CheckpointRejected as exc:
                self.alarms.raise_alarm(
                    "checkpoint_rejected", "critical", owner, str(exc), once=True
                )
                raise
            checkpoint = self.kernel.party.last_cosigned_of(owner)
            assert checkpoint is not None
            now = self.kernel.clock()
            with self.kernel.engine.begin() as conn:
                conn.execute(
                    insert(m.cosignatures).values(
                        direction="by-us",
                        party=owner,
                        size=checkpoint.size,
                        note=cosigned.decode(),
                        at=now,
                    )
                )
            return cosigned

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
