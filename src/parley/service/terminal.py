"""The terminal: one party's protocol state, database and alarms, behind one object.

``Terminal`` is a façade over the application layer. It composes one part
per job, all sharing one ``Kernel`` (identity, engine, clock, lock and the
protocol state, ``parley.service.kernel``):

* ``peers``: pinning peers' cards and links (and ``CardBundle``);
* ``messaging``: sealing, logging and queueing messages, acknowledgements (``Draft``);
* ``translations``: certified translations and their countersignatures;
* ``receiving``: verifying, logging and indexing envelopes, catch-up;
* ``receipts``: checking and keeping receipts;
* ``outbox``: the delivery worker's bookkeeping;
* ``witness``: offering checkpoints and cosigning peers' checkpoints;
* ``channels``, ``links``, ``alarms``, ``deadlines``;
* ``resume``: the state the protocol core resumes from.

Every operation that changes the protocol state writes the transcript entries
it produced, and the indexes over them, in one transaction; if that
transaction fails the in-memory state is rebuilt from the database, so memory
is never ahead of the disk. Received envelopes are logged and committed before
their receipt leaves the terminal; a message is in the log and the outbox
before ``send`` returns.

All methods are synchronous and serialised by one lock; the listeners call
them from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from parley.config import Config, DataDir
from parley.core.canonical import JSONValue
from parley.core.envelope import Limits
from parley.core.forms import FormRegistry
from parley.core.identity import Identity, IdentityCard
from parley.core.party import Party
from parley.core.witness import OfferPlan
from parley.errors import ParleyError, RemoteError
from parley.keyfile import load_identity
from parley.service.alarms import Alarms
from parley.service.channels import Channels
from parley.service.deadlines import Deadlines
from parley.service.kernel import (
    HUMAN_KINDS,
    PRECEDENCE_RANK,
    Forward,
    Kernel,
    utc_now,
)
from parley.service.keys import Keys
from parley.service.keystore import key_store_key
from parley.service.ledger import StoreLedger
from parley.service.links import Links
from parley.service.messaging import Draft, Messaging
from parley.service.outbox import Outbox
from parley.service.peers import CardBundle, Peers
from parley.service.reads import Records, fill_contents
from parley.service.receipts import Receipts
from parley.service.receiving import Receiving
from parley.service.recovery import Candidate, Recovery, RecoveryAnswers, RecoveryReport
from parley.service.rotation import KeyRotation, finish_pending_rotation
from parley.service.translations import Translations
from parley.service.witness import Witnessing
from parley.store import models as m
from parley.store.db import engine_for, migrate, reading, schema_is_current

__all__ = [
    "HUMAN_KINDS",
    "PRECEDENCE_RANK",
    "CardBundle",
    "Draft",
    "Records",
    "Terminal",
    "utc_now",
]


class Terminal(Records):
    """One party's terminal: protocol state, database, alarms."""

    data = Forward[DataDir]()
    config = Forward[Config]()
    identity = Forward[Identity]()
    clock = Forward[Callable[[], datetime]]()
    limits = Forward[Limits]()
    lock = Forward[threading.RLock]()
    tls_certificate = Forward[bytes]()
    tls_identity = Forward[Identity]()
    forms = Forward[FormRegistry]()
    party = Forward[Party]()
    ledger = Forward[StoreLedger]()
    peer_certificates = Forward[dict[str, bytes]]()
    gaps = Forward[dict[tuple[str, str], int]]()
    gap_seen = Forward[dict[tuple[str, str], float]]()
    activity = Forward[dict[str, int]]()
    on_outbox = Forward[Callable[[], None]]()
    on_alarm = Forward[Callable[[dict[str, Any]], None]]()

    def __init__(
        self,
        data: DataDir,
        config: Config,
        identity: Identity,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utc_now,
        store_key: bytes | None = None,
    ) -> None:
        self.kernel = kernel = Kernel(
            data, config, identity, engine, clock=clock, store_key=store_key
        )
        super().__init__(
            engine, identity.party, own_card=identity.card, tree=lambda: self.party.transcript.tree
        )
        self._alarms = alarms = Alarms(kernel)
        self._peers = Peers(kernel)
        self._messaging = messaging = Messaging(kernel)
        self._translating = Translations(kernel)
        self._receiving = Receiving(kernel, alarms)
        self._receipts = Receipts(kernel, alarms)
        self._outbox = Outbox(kernel)
        self._witnessing = Witnessing(kernel, alarms)
        self._channels = Channels(kernel, messaging)
        self._links = Links(kernel, alarms)
        self._deadlines = Deadlines(kernel, alarms)
        self._keys = Keys(kernel, alarms, messaging)
        self._rotation = KeyRotation(kernel, alarms, messaging)
        self._receiving.keychain = self._rotation
        kernel.chains_changed = lambda: self.chains_changed(kernel.identity.card)
        self._answers = RecoveryAnswers(kernel)
        self._recovery = Recovery(kernel, alarms)

    @classmethod
    def open(
        cls,
        path: Path,
        passphrase: str,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> Terminal:
        data = DataDir(path)
        config = data.load_config()
        engine = engine_for(config.database)
        migrated = not schema_is_current(engine)
        if migrated:
            migrate(engine)
        with reading(engine) as conn:
            stored = set(
                conn.execute(
                    select(m.card_chain.c.key_id).where(m.card_chain.c.party == config.party)
                ).scalars()
            )
        finish_pending_rotation(data.key_file, passphrase, stored)
        identity = load_identity(data.key_file, passphrase)
        if migrated:
            fill_contents(engine, identity)  # rows kept before messages.content existed
        store_key = key_store_key(engine, data.key_file, passphrase)
        terminal = cls(data, config, identity, engine, clock=clock, store_key=store_key)
        terminal.kernel.passphrase = passphrase
        return terminal

    @contextmanager
    def joined(self, work: Callable[[Connection], None]) -> Iterator[Callable[[], bool]]:
        """Run ``work`` in the next transaction this thread commits (``Kernel.joined``)."""
        with self.kernel.joined(work) as ran:
            yield ran

    # Peers (service.peers) ---------------------------------------------------

    def card_bundle(self) -> CardBundle:
        return self._peers.card_bundle()

    def add_peer(
        self, bundle: CardBundle, fingerprint: str, links: Sequence[tuple[str, str]]
    ) -> IdentityCard:
        return self._peers.add_peer(bundle, fingerprint, links)

    # Sending (service.messaging) ---------------------------------------------

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
        return self._messaging.send(
            to,
            kind=kind,
            body=body,
            operator=operator,
            channel=channel,
            precedence=precedence,
            exercise=exercise,
            lang=lang,
            via=via,
        )

    def send_many(self, drafts: Sequence[Draft]) -> list[dict[str, Any]]:
        return self._messaging.send_many(drafts)

    def acknowledge(self, envelope_id: str, *, operator: str) -> dict[str, Any]:
        return self._messaging.acknowledge(envelope_id, operator=operator)

    # Certified translations (service.translations) ---------------------------

    def certify_translation(
        self, envelope_id: str, *, target_lang: str, text: str, operator: str
    ) -> dict[str, Any]:
        return self._translating.certify_translation(
            envelope_id, target_lang=target_lang, text=text, operator=operator
        )

    def countersign_translation(self, digest: str, *, operator: str) -> dict[str, Any]:
        return self._translating.countersign_translation(digest, operator=operator)

    # Receiving and catch-up (service.receiving) ------------------------------

    def receive_envelope(self, raw: bytes, *, tls_party: str | None = None) -> bytes:
        return self._receiving.receive_envelope(raw, tls_party=tls_party)

    def receive_batch(
        self, raws: Sequence[bytes], *, tls_party: str | None = None
    ) -> list[bytes | RemoteError]:
        return self._receiving.receive_batch(raws, tls_party=tls_party)

    def catch_up(self, channel: str, after_seq: int, *, for_party: str, limit: int = 256) -> bytes:
        return self._receiving.catch_up(channel, after_seq, for_party=for_party, limit=limit)

    def apply_catch_up(self, peer: str, data: bytes) -> list[bytes | RemoteError]:
        return self._receiving.apply_catch_up(peer, data)

    def catch_up_allowed(self, peer: str) -> bool:
        return self._receiving.catch_up_allowed(peer)

    # Receipts (service.receipts) ---------------------------------------------

    def receive_receipt(self, raw: bytes, *, peer: str, link: str | None = None) -> dict[str, Any]:
        return self._receipts.receive_receipt(raw, peer=peer, link=link)

    def receive_receipts(
        self, raws: Sequence[bytes], *, peer: str, link: str | None = None
    ) -> list[dict[str, Any] | ParleyError]:
        return self._receipts.receive_receipts(raws, peer=peer, link=link)

    # Delivery bookkeeping (service.outbox) -----------------------------------

    def due_deliveries(
        self,
        peer: str,
        limit: int = 64,
        *,
        urgent: bool | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        return self._outbox.due_deliveries(peer, limit, urgent=urgent, exclude=exclude)

    def next_due(self, peer: str, *, urgent: bool | None = None) -> datetime | None:
        return self._outbox.next_due(peer, urgent=urgent)

    def delivery_failed(self, envelope_id: str, peer: str, error: str, retry_at: datetime) -> None:
        self._outbox.delivery_failed(envelope_id, peer, error, retry_at)

    def retry_now(self, peer: str) -> int:
        return self._outbox.retry_now(peer)

    def postpone(self, envelope_id: str, peer: str, seconds: float) -> None:
        self._outbox.postpone(envelope_id, peer, seconds)

    def pending_test(self, peer: str, link: str) -> bool:
        return self._outbox.pending_test(peer, link)

    def pending_count(self) -> int:
        return self._outbox.pending_count()

    # Checkpoints and witnessing (service.witness) ----------------------------

    def offer_checkpoint(self, request: bytes, *, tls_party: str | None = None) -> bytes:
        return self._witnessing.offer_checkpoint(request, tls_party=tls_party)

    def checkpoint_request(self, owner: str) -> bytes:
        return self._witnessing.checkpoint_request(owner)

    def log_leaves(self, start: int, limit: int) -> list[bytes]:
        return self._witnessing.log_leaves(start, limit)

    def plan_witness(self, owner: str, offer: bytes) -> OfferPlan:
        return self._witnessing.plan(owner, offer)

    def cosign(self, owner: str, plan: OfferPlan, leaves: Sequence[bytes]) -> bytes:
        return self._witnessing.cosign(owner, plan, leaves)

    def witness(
        self,
        owner: str,
        offer: bytes,
        leaves: Callable[[int, int], Sequence[bytes]] | None = None,
    ) -> bytes:
        return self._witnessing.witness(owner, offer, leaves)

    def mirror_size(self, owner: str) -> int:
        return self._witnessing.mirror_size(owner)

    def extend_mirror(self, owner: str, start: int, leaves: Sequence[bytes]) -> int:
        return self._witnessing.extend_mirror(owner, start, leaves)

    def mirror(self, owner: str, start: int, limit: int) -> list[bytes]:
        return self._witnessing.mirror(owner, start, limit)

    def largest_seen(self, owner: str) -> str | None:
        return self._witnessing.largest_seen(owner)

    def accept_cosignature(self, note: bytes, *, tls_party: str | None = None) -> dict[str, Any]:
        return self._witnessing.accept_cosignature(note, tls_party=tls_party)

    # Rollback and recovery (service.recovery, docs/recovery.md) --------------

    @property
    def frozen(self) -> str | None:
        """Why this terminal signs nothing new (its log is behind its peers'), or None."""
        return self.kernel.frozen

    def freeze(self, reason: str) -> None:
        self.kernel.freeze(reason)

    def thaw(self) -> None:
        self.kernel.thaw()

    def recovery_status(self, party: str) -> dict[str, Any]:
        self.kernel.cosign_again.add(party)  # it may have lost what we cosigned
        return self._answers.status(party)

    def last_cosignature(self, owner: str, size: int) -> bytes | None:
        return self._witnessing.last_cosignature(owner, size)

    def recovery_leaves(self, party: str, start: int, limit: int) -> list[bytes]:
        return self._answers.leaves(party, start, limit)

    def recovery_entries(self, party: str, after: int, limit: int) -> dict[str, Any]:
        return self._answers.entries(party, after, limit)

    @property
    def recovery(self) -> Recovery:
        return self._recovery

    def apply_recovery(
        self,
        target_note: str,
        mirror: Sequence[bytes],
        candidates: Sequence[Candidate],
        *,
        mirror_from: str,
        peers: dict[str, str],
    ) -> RecoveryReport:
        target = self._recovery.own_checkpoint(target_note)
        return self._recovery.apply(
            target, mirror, candidates, mirror_from=mirror_from, peers=peers
        )

    # Channels (service.channels) ---------------------------------------------

    def create_channel(self, name: str, members: Sequence[str], *, operator: str) -> dict[str, Any]:
        return self._channels.create_channel(name, members, operator=operator)

    def agree_channel(self, name: str, *, operator: str) -> dict[str, Any]:
        return self._channels.agree_channel(name, operator=operator)

    # Links (service.links) ---------------------------------------------------

    def record_link(
        self,
        peer: str,
        name: str,
        *,
        ok: bool,
        rtt_ms: float | None = None,
        error: str | None = None,
        test: bool = False,
        count: bool = True,
    ) -> str:
        return self._links.record_link(
            peer, name, ok=ok, rtt_ms=rtt_ms, error=error, test=test, count=count
        )

    # Alarms (service.alarms) -------------------------------------------------

    def raise_alarm(
        self, kind: str, severity: str, subject: str, message: str, *, once: bool = False
    ) -> dict[str, Any] | None:
        return self._alarms.raise_alarm(kind, severity, subject, message, once=once)

    def clear_alarms(self, kind: str, subject: str) -> None:
        self._alarms.clear_alarms(kind, subject)

    def record_security_event(
        self, *, endpoint: str, remote: str, tls_party: str | None, error: ParleyError
    ) -> None:
        self._alarms.record_security_event(
            endpoint=endpoint, remote=remote, tls_party=tls_party, error=error
        )

    # Deadlines (service.deadlines) -------------------------------------------

    def check_deadlines(self) -> int:
        """Acknowledgement deadlines, (at most hourly) the cards' ends, and the encryption keys
        (made, announced, destroyed as they fall due); returns alarms raised.

        ``parley serve``'s deadlines loop calls this every few seconds.
        """
        raised = self._deadlines.check_deadlines() + self._keys.check_expiry()
        self._keys.check_encryption_keys()  # rotation and destruction: no alarms
        return raised

    def check_encryption_keys(self) -> dict[str, list[str]]:
        """Make, announce and destroy medium-term encryption keys as they fall due."""
        return self._keys.check_encryption_keys()

    def check_card_expiry(self, *, force: bool = False) -> int:
        """Raise or clear the ``card_expiry`` alarms now (``force``) or when an hour is up."""
        return self._keys.check_expiry(force=force)

    # Key rotation and revocation (service.rotation) --------------------------

    def rotate_keys(self, *, validity_days: int | None = None) -> dict[str, Any]:
        return self._rotation.rotate(validity_days=validity_days)

    def revoke_keys(
        self,
        *,
        reason: str,
        compromised_at: datetime | None = None,
        version: int | None = None,
        certificate: str | None = None,
    ) -> dict[str, Any]:
        return self._rotation.revoke(
            reason=reason, compromised_at=compromised_at, version=version, certificate=certificate
        )

    def import_revocation(self, statement: bytes) -> dict[str, Any]:
        return self._rotation.import_revocation(statement)

    def keys_status(self, now: datetime | None = None) -> dict[str, Any]:
        return super().keys_status(now or self.kernel.clock())

    def status(self) -> dict[str, Any]:
        with self.lock:
            # Read, never signed here: a frozen terminal reports its state too.
            tree = self.party.transcript.tree
            size, root = tree.size, tree.root()
        return {
            "party": self.me,
            "name": self.identity.card.name,
            "fingerprint": self.identity.card.fingerprint,
            "log_size": size,
            "root": root.hex(),
            "frozen": self.kernel.frozen,
            "pending": self.pending_count(),
            "peers": sorted(self.party.peers),
            "cosigned_by": {
                p: c.size
                for p in self.party.peers
                if (c := self.party.last_cosigned_by(p)) is not None
            },
        }
