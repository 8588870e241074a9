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
from parley.core.envelope import Limits
from parley.core.forms import FormRegistry
from parley.core.identity import Identity
from parley.core.party import Party
from parley.keyfile import load_identity
from parley.service.alarms import Alarms
from parley.service.channels import Channels
from parley.service.deadlines import Deadlines
from parley.service.kernel import (
    HUMAN_KINDS,
    PRECEDENCE_RANK,
    Delegated,
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

    # Peers (service.peers), sending (service.messaging), translations ------

    card_bundle = Delegated("_peers", Peers.card_bundle)
    add_peer = Delegated("_peers", Peers.add_peer)
    send = Delegated("_messaging", Messaging.send)
    send_many = Delegated("_messaging", Messaging.send_many)
    acknowledge = Delegated("_messaging", Messaging.acknowledge)
    certify_translation = Delegated("_translating", Translations.certify_translation)
    countersign_translation = Delegated("_translating", Translations.countersign_translation)

    # Receiving and catch-up (service.receiving), receipts (service.receipts) -

    receive_envelope = Delegated("_receiving", Receiving.receive_envelope)
    receive_batch = Delegated("_receiving", Receiving.receive_batch)
    catch_up = Delegated("_receiving", Receiving.catch_up)
    apply_catch_up = Delegated("_receiving", Receiving.apply_catch_up)
    catch_up_allowed = Delegated("_receiving", Receiving.catch_up_allowed)
    receive_receipt = Delegated("_receipts", Receipts.receive_receipt)
    receive_receipts = Delegated("_receipts", Receipts.receive_receipts)

    # Delivery bookkeeping (service.outbox) -----------------------------------

    due_deliveries = Delegated("_outbox", Outbox.due_deliveries)
    next_due = Delegated("_outbox", Outbox.next_due)
    delivery_failed = Delegated("_outbox", Outbox.delivery_failed)
    retry_now = Delegated("_outbox", Outbox.retry_now)
    postpone = Delegated("_outbox", Outbox.postpone)
    pending_test = Delegated("_outbox", Outbox.pending_test)
    pending_count = Delegated("_outbox", Outbox.pending_count)

    # Checkpoints and witnessing (service.witness) ----------------------------

    offer_checkpoint = Delegated("_witnessing", Witnessing.offer_checkpoint)
    checkpoint_request = Delegated("_witnessing", Witnessing.checkpoint_request)
    log_leaves = Delegated("_witnessing", Witnessing.log_leaves)
    plan_witness = Delegated("_witnessing", Witnessing.plan)
    cosign = Delegated("_witnessing", Witnessing.cosign)
    witness = Delegated("_witnessing", Witnessing.witness)
    mirror_size = Delegated("_witnessing", Witnessing.mirror_size)
    extend_mirror = Delegated("_witnessing", Witnessing.extend_mirror)
    mirror = Delegated("_witnessing", Witnessing.mirror)
    largest_seen = Delegated("_witnessing", Witnessing.largest_seen)
    accept_cosignature = Delegated("_witnessing", Witnessing.accept_cosignature)
    last_cosignature = Delegated("_witnessing", Witnessing.last_cosignature)

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

    recovery_leaves = Delegated("_answers", RecoveryAnswers.leaves)
    recovery_entries = Delegated("_answers", RecoveryAnswers.entries)

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

    # Channels, links, alarms (service.channels, .links, .alarms) -------------

    create_channel = Delegated("_channels", Channels.create_channel)
    agree_channel = Delegated("_channels", Channels.agree_channel)
    record_link = Delegated("_links", Links.record_link)
    raise_alarm = Delegated("_alarms", Alarms.raise_alarm)
    clear_alarms = Delegated("_alarms", Alarms.clear_alarms)
    record_security_event = Delegated("_alarms", Alarms.record_security_event)

    # Deadlines (service.deadlines) -------------------------------------------

    def check_deadlines(self) -> int:
        """Acknowledgement deadlines, (at most hourly) the cards' ends, and the encryption keys
        (made, announced, destroyed as they fall due); returns alarms raised.

        ``parley serve``'s deadlines loop calls this every few seconds.
        """
        raised = self._deadlines.check_deadlines() + self._keys.check_expiry()
        self._keys.check_encryption_keys()  # rotation and destruction: no alarms
        return raised

    check_encryption_keys = Delegated("_keys", Keys.check_encryption_keys)

    def check_card_expiry(self, *, force: bool = False) -> int:
        """Raise or clear the ``card_expiry`` alarms now (``force``) or when an hour is up."""
        return self._keys.check_expiry(force=force)

    # Key rotation and revocation (service.rotation) --------------------------

    rotate_keys = Delegated("_rotation", KeyRotation.rotate)
    revoke_keys = Delegated("_rotation", KeyRotation.revoke)
    import_revocation = Delegated("_rotation", KeyRotation.import_revocation)

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
