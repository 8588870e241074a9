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

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, select

from parley.config import Config, DataDir
from parley.core.canonical import JSONValue, parse_canonical, require_object
from parley.core.dsse import parse_dsse
from parley.core.envelope import Limits
from parley.core.forms import FormRegistry
from parley.core.identity import Identity, IdentityCard
from parley.core.party import Party
from parley.core.translation import CERTIFIED_TRANSLATION_TYPE
from parley.errors import ParleyError, RemoteError, UsageError
from parley.keyfile import load_identity
from parley.service.alarms import Alarms
from parley.service.channels import Channels
from parley.service.deadlines import Deadlines
from parley.service.kernel import (
    HUMAN_KINDS,
    PRECEDENCE_RANK,
    SHOWN_KINDS,
    Forward,
    Kernel,
    utc_now,
)
from parley.service.kernel import iso as _iso
from parley.service.ledger import StoreLedger
from parley.service.links import Links
from parley.service.messaging import Draft, Messaging
from parley.service.outbox import Outbox
from parley.service.peers import CardBundle, Peers
from parley.service.receipts import Receipts
from parley.service.receiving import Receiving
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


def _statement_text(statement: bytes) -> str:
    """The text of a stored certified translation (verified when it was made)."""
    dsse = parse_dsse(
        statement,
        payload_type=CERTIFIED_TRANSLATION_TYPE,
        max_size=len(statement),
        what="certified translation",
    )
    payload = require_object(parse_canonical(dsse.payload, what="translation"), "translation")
    return str(payload["text"])


class Records:
    """Read-only views of a terminal's database (no private keys needed)."""

    def __init__(self, engine: Engine, me: str) -> None:
        self.engine = engine
        self._me = me

    @property
    def me(self) -> str:
        return self._me

    # Reading --------------------------------------------------------------------

    def _message_dict(self, row: Any, conn: Connection, *, full: bool) -> dict[str, Any]:
        recipients = row.recipients.split(",")
        item: dict[str, Any] = {
            "id": row.envelope_id,
            "direction": row.direction,
            "channel": row.channel,
            "sender": row.sender,
            "recipients": recipients,
            "seq": row.seq,
            "kind": row.kind,
            "precedence": row.precedence,
            "exercise": row.exercise,
            "created_at": _iso(row.created_at),
            "stored_at": _iso(row.stored_at),
            "operator": row.operator,
            "lang": row.lang,
            "body": json.loads(row.body),
            "log_index": row.log_index,
            "ack_due": _iso(row.ack_due),
        }
        if row.kind == "text":
            item["translations"] = self._translations(conn, row.envelope_id)
        if row.direction == "in":
            item["acknowledged_at"] = _iso(row.acked_at)
            item["acknowledged_by"] = row.acked_by
            item["rejection"] = (
                {"code": row.rejection_code, "reason": row.rejection_reason}
                if row.rejection_code
                else None
            )
            return item
        receipts = conn.execute(
            select(m.receipts).where(m.receipts.c.envelope_id == row.envelope_id)
        ).all()
        acks = conn.execute(select(m.acks).where(m.acks.c.envelope_id == row.envelope_id)).all()
        outbox = conn.execute(
            select(m.outbox).where(m.outbox.c.envelope_id == row.envelope_id)
        ).all()
        item["receipts"] = {r.receiver: _iso(r.stored_at) for r in receipts}
        item["rejections"] = {
            r.receiver: {"code": r.rejection_code, "reason": r.rejection_reason}
            for r in receipts
            if r.rejection_code
        }
        item["acks"] = {a.party: {"operator": a.operator, "at": _iso(a.at)} for a in acks}
        item["delivery"] = {
            o.peer: {
                "state": o.state,
                "attempts": o.attempts,
                "link": o.link,
                "last_error": o.last_error,
            }
            for o in outbox
        }
        return item

    def _translations(self, conn: Connection, envelope_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            select(m.translations)
            .where(m.translations.c.envelope_id == envelope_id)
            .order_by(m.translations.c.created_at)
        ).all()
        checks = conn.execute(
            select(m.translation_countersignatures).where(
                m.translation_countersignatures.c.translation.in_([r.digest for r in rows])
            )
        ).all()
        result = []
        for r in rows:
            result.append(
                {
                    "digest": r.digest,
                    "target_lang": r.target_lang,
                    "operator": r.operator,
                    "text": _statement_text(bytes(r.statement)),
                    "at": _iso(r.created_at),
                    "countersignatures": [
                        {"operator": c.operator, "at": _iso(c.created_at)}
                        for c in checks
                        if c.translation == r.digest
                    ],
                }
            )
        return result

    def messages(
        self, direction: str, *, limit: int = 200, all_kinds: bool = False
    ) -> list[dict[str, Any]]:
        kinds = ("text", "form", "service", "ack", "test") if all_kinds else SHOWN_KINDS
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(m.messages)
                .where(and_(m.messages.c.direction == direction, m.messages.c.kind.in_(kinds)))
                .order_by(m.messages.c.log_index.desc())
                .limit(limit)
            ).all()
            items = [self._message_dict(row, conn, full=False) for row in rows]
        items.sort(key=lambda i: (PRECEDENCE_RANK.get(i["precedence"], 9),))
        return items

    def show(self, envelope_id: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            row = conn.execute(
                select(m.messages).where(m.messages.c.envelope_id == envelope_id)
            ).first()
            if row is None:
                raise UsageError(f"no message {envelope_id} on this terminal")
            return self._message_dict(row, conn, full=True)

    def links(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(select(m.links).order_by(m.links.c.peer, m.links.c.name)).all()
        return [
            {
                "peer": r.peer,
                "name": r.name,
                "url": r.url,
                "state": r.state,
                "rtt_ms": r.rtt_ms,
                "last_success": _iso(r.last_success),
                "last_test": _iso(r.last_test),
                "last_error": r.last_error,
                "failures": r.failures,
            }
            for r in rows
        ]

    def alarms(self, *, include_cleared: bool = True, limit: int = 500) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            query = select(m.alarms).order_by(m.alarms.c.id.desc()).limit(limit)
            if not include_cleared:
                query = query.where(m.alarms.c.cleared_at.is_(None))
            rows = conn.execute(query).all()
        return [
            {
                "id": r.id,
                "at": _iso(r.at),
                "kind": r.kind,
                "severity": r.severity,
                "subject": r.subject,
                "message": r.message,
                "cleared_at": _iso(r.cleared_at),
            }
            for r in rows
        ]

    def security_events(self, limit: int = 500) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(m.security_events).order_by(m.security_events.c.id.desc()).limit(limit)
            ).all()
        return [
            {
                "id": r.id,
                "at": _iso(r.at),
                "endpoint": r.endpoint,
                "remote": r.remote,
                "tls_party": r.tls_party,
                "code": r.code,
                "message": r.message,
            }
            for r in rows
        ]

    def peers(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            links = conn.execute(select(m.links).order_by(m.links.c.peer, m.links.c.name)).all()
            rows = conn.execute(select(m.peers).order_by(m.peers.c.party)).all()
        return [
            {
                "party": row.party,
                "name": IdentityCard.from_bytes(row.card).name,
                "fingerprint": row.fingerprint,
                "links": [
                    {"name": link.name, "url": link.url} for link in links if link.peer == row.party
                ],
            }
            for row in rows
        ]

    def channels(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(select(m.channels).order_by(m.channels.c.name)).all()
            agreements = conn.execute(select(m.channel_agreements)).all()
        result = []
        for row in rows:
            members = row.members.split(",")
            agreed = sorted(a.party for a in agreements if a.channel == row.name)
            active = row.kind == "bilateral" or set(agreed) >= set(members)
            result.append(
                {
                    "name": row.name,
                    "members": members,
                    "kind": row.kind,
                    "proposed_by": row.proposed_by,
                    "agreed": agreed,
                    "state": "active" if active else "proposed",
                }
            )
        return result


class Terminal(Records):
    """One party's terminal: protocol state, database, alarms."""

    data = Forward[DataDir]()
    config = Forward[Config]()
    identity = Forward[Identity]()
    clock = Forward[Callable[[], datetime]]()
    limits = Forward[Limits]()
    lock = Forward[threading.RLock]()
    tls_certificate = Forward[bytes]()
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
    ) -> None:
        self.kernel = kernel = Kernel(data, config, identity, engine, clock=clock)
        super().__init__(engine, identity.party)
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
        identity = load_identity(data.key_file, passphrase)
        engine = engine_for(config.database)
        if not schema_is_current(engine):
            migrate(engine)
        return cls(data, config, identity, engine, clock=clock)

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

    def offer_checkpoint(self, request: bytes) -> bytes:
        return self._witnessing.offer_checkpoint(request)

    def checkpoint_request(self, owner: str) -> bytes:
        return self._witnessing.checkpoint_request(owner)

    def witness(self, owner: str, offer: bytes) -> bytes:
        return self._witnessing.witness(owner, offer)

    def accept_cosignature(self, note: bytes, *, tls_party: str | None = None) -> dict[str, Any]:
        return self._witnessing.accept_cosignature(note, tls_party=tls_party)

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
        return self._deadlines.check_deadlines()

    def status(self) -> dict[str, Any]:
        with self.lock:
            checkpoint = self.party.checkpoint()
        return {
            "party": self.me,
            "name": self.identity.card.name,
            "fingerprint": self.identity.card.fingerprint,
            "log_size": checkpoint.size,
            "root": checkpoint.root.hex(),
            "pending": self.pending_count(),
            "peers": sorted(self.party.peers),
            "cosigned_by": {
                p: c.size
                for p in self.party.peers
                if (c := self.party.last_cosigned_by(p)) is not None
            },
        }
