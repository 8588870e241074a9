"""The terminal's service layer: the protocol core bound to its database.

``Terminal`` owns one ``parley.core.party.Party`` and one database. Every
operation that changes the protocol state writes the transcript entries it
produced, and the indexes over them, in one transaction; if that transaction
fails the in-memory state is rebuilt from the database, so memory is never
ahead of the disk. Received envelopes are logged and committed before their
receipt leaves the terminal; a message is in the log and the outbox before
``send`` returns.

All methods are synchronous and serialised by one lock; the listeners call
them from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from parley import merkle
from parley.config import Config, DataDir
from parley.core.canonical import JSONValue, canonical_bytes, parse_canonical, require_object
from parley.core.checkpoint import verify_checkpoint
from parley.core.dsse import parse_dsse
from parley.core.encoding import b64decode, b64encode, check_party_id
from parley.core.envelope import PRECEDENCES, Limits, read_envelope
from parley.core.identity import Identity, IdentityCard
from parley.core.party import (
    AckReceived,
    GapDetected,
    MessageReceived,
    Outgoing,
    Party,
    ResumeState,
    bilateral_channel,
)
from parley.core.receipts import Receipt
from parley.core.transcript import EntryType, entry_bytes, split_entry
from parley.core.translation import (
    CERTIFIED_TRANSLATION_TYPE,
    certify_translation,
    countersign_translation,
    read_certified_translation,
    read_countersignature,
)
from parley.errors import (
    CheckpointRejected,
    Equivocation,
    InvalidCard,
    ParleyError,
    RemoteError,
    SchemaViolation,
    UnknownPeer,
    UsageError,
    VerificationError,
)
from parley.forms import default_registry
from parley.keyfile import load_identity
from parley.service import tls
from parley.service.ledger import StoreLedger
from parley.store import models as m
from parley.store.db import engine_for, migrate, reading, schema_is_current

__all__ = ["CardBundle", "Draft", "Records", "Terminal", "utc_now"]

log = structlog.get_logger("parley.terminal")

PRECEDENCE_RANK = {"FLASH": 0, "IMMEDIATE": 1, "PRIORITY": 2, "ROUTINE": 3}
HUMAN_KINDS = ("text", "form")
SHOWN_KINDS = ("text", "form", "service")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True, slots=True)
class Draft:
    """A message an operator asked to send, before it is sealed."""

    to: tuple[str, ...]
    kind: str
    body: dict[str, JSONValue]
    operator: str
    channel: str | None = None
    precedence: str = "ROUTINE"
    exercise: bool = False
    lang: str = "en"
    via: str | None = None


@dataclass(frozen=True, slots=True)
class CardBundle:
    """What a terminal gives its peers: the signed card and its TLS certificate.

    The certificate is for the card's own Ed25519 key, so the fingerprint of
    the card vouches for both.
    """

    card: IdentityCard
    tls_certificate: bytes  # PEM

    def to_json(self) -> bytes:
        card = json.loads(self.card.signed_bytes)
        return canonical_bytes(
            {"card": card, "tls_certificate": self.tls_certificate.decode("ascii")}
        )

    @classmethod
    def from_json(cls, data: bytes) -> CardBundle:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidCard(f"the card file is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidCard("the card file is nested too deeply to be a card") from None
        if not isinstance(obj, dict) or set(obj) != {"card", "tls_certificate"}:
            raise InvalidCard(
                "a card file holds exactly 'card' and 'tls_certificate' (as `parley card` prints)"
            )
        try:
            card_bytes = canonical_bytes(obj["card"])
        except ParleyError as exc:
            raise InvalidCard(f"the card in the card file cannot be a card: {exc}") from None
        except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
            # rfc8785 refuses lone surrogates and other non-JSON values this way.
            raise InvalidCard(f"the card in the card file is not canonical JSON: {exc}") from None
        card = IdentityCard.from_bytes(card_bytes)
        pem = obj["tls_certificate"]
        if not isinstance(pem, str):
            raise InvalidCard("the card file's tls_certificate must be a PEM string")
        return cls(card, tls.check_certificate(pem.encode("ascii", "replace"), card))


URGENT = ("FLASH", "IMMEDIATE")


def _precedence_filter(urgent: bool | None) -> list[ColumnElement[bool]]:
    if urgent is None:
        return []
    column = m.outbox.c.precedence
    return [column.in_(URGENT) if urgent else column.not_in(URGENT)]


def _stored_leaves(engine: Engine, batch: int = 50_000) -> Iterator[bytes]:
    """Every log entry's leaf hash, in order (hashing entries stored without one)."""
    cols = m.log_entries.c
    expected = 0
    while True:
        with reading(engine) as conn:
            rows = conn.execute(
                select(cols.idx, cols.leaf)
                .where(cols.idx >= expected)
                .order_by(cols.idx)
                .limit(batch)
            ).all()
            if not rows:
                return
            missing = [r.idx for r in rows if r.leaf is None]
            entries = (
                {
                    idx: bytes(entry)
                    for idx, entry in conn.execute(
                        select(cols.idx, cols.entry).where(cols.idx.in_(missing))
                    ).all()
                }
                if missing
                else {}
            )
        for row in rows:
            if row.idx != expected:
                raise VerificationError(
                    f"log entry {expected} is missing from the store (the next is {row.idx})"
                )
            leaf = row.leaf if row.leaf is not None else merkle.leaf_hash(entries[row.idx])
            yield bytes(leaf)
            expected += 1


def _resume_state(conn: Connection, engine: Engine, me: str) -> ResumeState:
    """The counters a Party resumes from, read from the message index."""
    msg = m.messages.c
    last_sent = {
        r.channel: r.seq
        for r in conn.execute(
            select(msg.channel, func.max(msg.seq).label("seq"))
            .where(msg.direction == "out")
            .group_by(msg.channel)
        )
    }
    inbound: dict[tuple[str, str], tuple[int, Sequence[int]]] = {}
    streams = conn.execute(
        select(msg.channel, msg.sender, func.count().label("n"), func.max(msg.seq).label("top"))
        .where(msg.direction == "in")
        .group_by(msg.channel, msg.sender)
    ).all()
    for s in streams:
        if s.n == s.top:  # 1..top, no gap: the usual case
            inbound[(s.channel, s.sender)] = (s.top, ())
            continue
        seqs = sorted(
            conn.execute(
                select(msg.seq).where(
                    and_(msg.direction == "in", msg.channel == s.channel, msg.sender == s.sender)
                )
            ).scalars()
        )
        contiguous = 0
        for seq in seqs:
            if seq != contiguous + 1:
                break
            contiguous = seq
        inbound[(s.channel, s.sender)] = (contiguous, [q for q in seqs if q > contiguous])
    receipted = {
        (r.channel, r.receiver): r.through
        for r in conn.execute(
            select(
                msg.channel,
                m.receipts.c.receiver,
                func.max(m.receipts.c.through_seq).label("through"),
            )
            .join(m.messages, msg.envelope_id == m.receipts.c.envelope_id)
            .where(msg.direction == "out")
            .group_by(msg.channel, m.receipts.c.receiver)
        )
    }
    channels = {
        r.name: r.members.split(",")
        for r in conn.execute(select(m.channels.c.name, m.channels.c.members))
    }
    latest = conn.execute(
        select(m.checkpoints.c.note).order_by(m.checkpoints.c.size.desc()).limit(1)
    ).scalar()
    return ResumeState(
        leaves=_stored_leaves(engine),
        latest_checkpoint=latest,
        channels=channels,
        last_sent=last_sent,
        inbound=inbound,
        receipted_through=receipted,
    )


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

    def __init__(
        self,
        data: DataDir,
        config: Config,
        identity: Identity,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(engine, identity.party)
        self.data = data
        self.config = config
        self.identity = identity
        self.clock = clock
        self.limits = Limits(clock_skew=timedelta(seconds=config.max_clock_skew))
        self.lock = threading.RLock()
        self.tls_certificate = tls.certificate_for(identity)
        self.forms = default_registry()
        self.party = Party(identity, clock=clock, limits=self.limits, forms=self.forms)
        self.peer_certificates: dict[str, bytes] = {}
        #: (channel, sender) -> highest contiguous sequence, for catch-up requests.
        self.gaps: dict[tuple[str, str], int] = {}
        #: When each gap was first seen (time.monotonic()).
        self.gap_seen: dict[tuple[str, str], float] = {}
        self._alarm_lock = threading.Lock()
        #: Work joined to this thread's next transaction (``joined``).
        self._joined = threading.local()
        self._stored_channels: set[str] = set()
        #: Messages received per sender since start (the worker witnesses logs that grew).
        self.activity: dict[str, int] = {}
        self._link_written: dict[tuple[str, str], tuple[str, float]] = {}
        #: Called (outside the lock) whenever there is new work for the delivery worker.
        self.on_outbox: Callable[[], None] = lambda: None
        #: Called with each alarm raised (the server runs the alarm command).
        self.on_alarm: Callable[[dict[str, Any]], None] = lambda alarm: None
        self._reload()

    # Opening ------------------------------------------------------------------

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

    def card_bundle(self) -> CardBundle:
        return CardBundle(self.identity.card, self.tls_certificate)

    def _reload(self) -> None:
        """Rebuild the protocol state from the database.

        The transcript is resumed from the stored leaf hashes and must hash
        to the last checkpoint this terminal signed; the records of single
        messages stay in the database (``StoreLedger``) and are read when
        needed. ``parley verify`` re-checks every signature.
        """
        ledger = StoreLedger(self.engine, self.me, self._load_entry)
        party = Party(
            self.identity,
            clock=self.clock,
            limits=self.limits,
            ledger=ledger,
            entry_loader=self._load_entry,
            forms=self.forms,
        )
        certs: dict[str, bytes] = {}
        with reading(self.engine) as conn:
            for row in conn.execute(select(m.peers)):
                card = IdentityCard.from_bytes(row.card)
                party.add_peer(card, row.fingerprint)
                certs[row.party] = row.tls_certificate
            state = _resume_state(conn, self.engine, self.me)
            cosignatures = conn.execute(
                select(m.cosignatures).order_by(
                    m.cosignatures.c.size.desc(), m.cosignatures.c.id.desc()
                )
            ).all()
        # Outside the connection: the leaves are read in batches of their own.
        party.resume(state)
        done: set[tuple[str, str]] = set()
        for row in cosignatures:
            key = (row.direction, row.party)
            if key in done or row.party not in party.peers:
                continue
            done.add(key)
            if row.direction == "of-us":
                party.restore_cosignature(row.party, row.note)
            else:
                party.restore_witnessed(row.party, row.note)
        self.party = party
        self.ledger = ledger
        self.peer_certificates = certs
        self._stored_channels = set()
        self._logged_through = party.transcript.size

    def _load_entry(self, index: int) -> bytes:
        with reading(self.engine) as conn:
            entry = conn.execute(
                select(m.log_entries.c.entry).where(m.log_entries.c.idx == index)
            ).scalar()
        if entry is None:
            raise VerificationError(f"log entry {index} is missing from the store")
        return bytes(entry)

    @contextmanager
    def joined(self, work: Callable[[Connection], None]) -> Iterator[Callable[[], bool]]:
        """Run ``work`` in the next transaction this thread commits, after its own writes.

        The operations layer writes the action log (and a held FLASH's
        state) this way, in the same transaction as the action it records:
        both are on disk, or neither. Yields a function saying whether
        ``work`` ran.
        """
        ran = [False]

        def once(conn: Connection) -> None:
            work(conn)
            ran[0] = True

        pending = self._pending()
        pending.append(once)
        try:
            yield lambda: ran[0]
        finally:
            if once in pending:
                pending.remove(once)

    def _pending(self) -> list[Callable[[Connection], None]]:
        pending: list[Callable[[Connection], None]] | None = getattr(self._joined, "work", None)
        if pending is None:
            pending = self._joined.work = []
        return pending

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction, with the work joined to it (``joined``) done last."""
        with self.engine.begin() as conn:
            yield conn
            pending = self._pending()
            while pending:
                pending.pop(0)(conn)

    def _commit(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work`` in one transaction; on failure rebuild memory from the disk."""
        try:
            with self._transaction() as conn:
                result = work(conn)
        except BaseException:
            self._reload()
            raise
        self.ledger.committed()
        if self._logged_through == self.party.transcript.size:
            self.party.transcript.evict()  # the store holds every entry now
        return result

    def _log_new_entries(self, conn: Connection, start: int) -> None:
        transcript = self.party.transcript
        tree = transcript.tree
        now = self.clock()
        rows = [
            {"idx": i, "entry": transcript.entry(i), "stored_at": now, "leaf": tree.leaf(i)}
            for i in range(start, transcript.size)
        ]
        if rows:
            conn.execute(insert(m.log_entries), rows)
        self._logged_through = transcript.size
        latest = self.party.latest_checkpoint
        if latest is not None and latest.size > 0:
            exists = conn.execute(
                select(m.checkpoints.c.size).where(m.checkpoints.c.size == latest.size)
            ).first()
            if exists is None:
                conn.execute(
                    insert(m.checkpoints).values(size=latest.size, note=latest.note, issued_at=now)
                )

    # Peers --------------------------------------------------------------------

    def add_peer(
        self, bundle: CardBundle, fingerprint: str, links: Sequence[tuple[str, str]]
    ) -> IdentityCard:
        """Pin a peer's card (after its fingerprint was read aloud) with its links."""
        for name, url in links:
            check_party_id(name.upper(), "link name")
            if not url.startswith("https://"):
                raise UsageError(f"link {name} must be an https:// URL, not {url!r}")
        with self.lock:
            card = bundle.card.pinned(fingerprint)
            if card.party == self.me:
                raise UsageError("a terminal cannot pin its own card as a peer")
            if card.party in self.party.peers:
                known = self.party.peers[card.party]
                if known.card_bytes != card.card_bytes:
                    raise UsageError(
                        f"{card.party} is already pinned with another card (fingerprint "
                        f"{known.fingerprint}); a new card needs a new terminal identity"
                    )
            now = self.clock()

            def work(conn: Connection) -> None:
                if card.party not in self.party.peers:
                    conn.execute(
                        insert(m.peers).values(
                            party=card.party,
                            card=card.signed_bytes,
                            fingerprint=card.fingerprint,
                            tls_certificate=bundle.tls_certificate,
                            added_at=now,
                        )
                    )
                existing = {
                    r.name
                    for r in conn.execute(
                        select(m.links.c.name).where(m.links.c.peer == card.party)
                    )
                }
                for name, url in links:
                    if name in existing:
                        conn.execute(
                            update(m.links)
                            .where(and_(m.links.c.peer == card.party, m.links.c.name == name))
                            .values(url=url)
                        )
                    else:
                        conn.execute(
                            insert(m.links).values(
                                peer=card.party, name=name, url=url, state="unknown", failures=0
                            )
                        )
                channel = bilateral_channel(self.me, card.party)
                if (
                    conn.execute(
                        select(m.channels.c.name).where(m.channels.c.name == channel)
                    ).first()
                    is None
                ):
                    conn.execute(
                        insert(m.channels).values(
                            name=channel,
                            members=",".join(sorted({self.me, card.party})),
                            kind="bilateral",
                            proposed_by=None,
                            created_at=now,
                        )
                    )

            self._commit(work)
            self.party.add_peer(card, fingerprint)
            self.peer_certificates[card.party] = bundle.tls_certificate
        log.info("peer_pinned", peer=card.party, fingerprint=card.fingerprint, links=len(links))
        return card

    # Sending ------------------------------------------------------------------

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
        """Seal a message, log it and queue it for every recipient, in one transaction."""
        draft = Draft(
            tuple(to),
            kind=kind,
            body=body,
            operator=operator,
            channel=channel,
            precedence=precedence,
            exercise=exercise,
            lang=lang,
            via=via,
        )
        return self.send_many([draft])[0]

    def send_many(self, drafts: Sequence[Draft]) -> list[dict[str, Any]]:
        """Seal several messages and store them all in one transaction (all or none).

        One commit (one fsync) for the whole batch is what lets an operator
        queue thousands of messages a second; a draft that is refused refuses
        the batch, and the error names which one.
        """
        for n, draft in enumerate(drafts):
            if draft.precedence not in PRECEDENCES:
                raise UsageError(
                    f"message {n + 1}: precedence must be one of {', '.join(PRECEDENCES)}"
                )
        if not drafts:
            return []
        with self.lock:
            start = self.party.transcript.size
            sealed: list[tuple[Draft, Outgoing]] = []
            try:
                for draft in drafts:
                    recipients = sorted(set(draft.to))
                    if draft.channel is not None and draft.kind in HUMAN_KINDS:
                        self._require_active_channel(draft.channel, recipients)
                    out = self.party.send(
                        recipients,
                        kind=draft.kind,
                        body=draft.body,
                        operator=draft.operator,
                        channel=draft.channel,
                        precedence=draft.precedence,
                        exercise=draft.exercise,
                        lang=draft.lang,
                    )
                    sealed.append((draft, out))
            except ParleyError as exc:
                if sealed:
                    self._reload()  # forget the drafts sealed before the refused one
                if len(drafts) > 1:
                    raise type(exc)(f"message {len(sealed) + 1} of {len(drafts)}: {exc}") from exc
                raise

            def work(conn: Connection) -> None:
                self._log_new_entries(conn, start)
                self._store_sent(conn, sealed)

            self._commit(work)
        self.on_outbox()
        for draft, out in sealed:
            log.info(
                "message_queued",
                id=out.envelope_id,
                kind=draft.kind,
                channel=out.channel,
                seq=out.seq,
                precedence=out.precedence,
                to=list(out.recipients),
            )
        return [
            {
                "id": out.envelope_id,
                "channel": out.channel,
                "seq": out.seq,
                "log_index": out.log_index,
            }
            for _, out in sealed
        ]

    def _store_sent(self, conn: Connection, sealed: Sequence[tuple[Draft, Outgoing]]) -> None:
        """The message and outbox rows of messages just sealed (one statement each)."""
        now = self.clock()
        messages: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        for draft, out in sealed:
            messages.append(
                {
                    "envelope_id": out.envelope_id,
                    "log_index": out.log_index,
                    "direction": "out",
                    "channel": out.channel,
                    "sender": self.me,
                    "recipients": ",".join(out.recipients),
                    "seq": out.seq,
                    "kind": draft.kind,
                    "precedence": out.precedence,
                    "exercise": draft.exercise,
                    "created_at": now,
                    "stored_at": now,
                    "operator": draft.operator,
                    "lang": draft.lang,
                    "body": canonical_bytes(draft.body).decode(),
                    "ack_due": now + self.config.ack_deadline(out.precedence)
                    if draft.kind in HUMAN_KINDS
                    else None,
                    "acked_at": None,
                    "acked_by": None,
                    "overdue": False,
                }
            )
            outbox.extend(
                {
                    "envelope_id": out.envelope_id,
                    "peer": peer,
                    "precedence": out.precedence,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt": now,
                    "via": draft.via,
                }
                for peer in out.recipients
            )
            self._ensure_channel(conn, out.channel, [self.me, *out.recipients], now)
        conn.execute(insert(m.messages), messages)
        conn.execute(insert(m.outbox), outbox)

    def _ensure_channel(
        self, conn: Connection, name: str, members: Iterable[str], now: datetime
    ) -> None:
        # Channels known to be stored are remembered: a failed commit reloads the set.
        if name in self._stored_channels:
            return
        if conn.execute(select(m.channels.c.name).where(m.channels.c.name == name)).first():
            self._stored_channels.add(name)
            return
        self._stored_channels.add(name)
        members = sorted(set(members))
        conn.execute(
            insert(m.channels).values(
                name=name,
                members=",".join(members),
                kind="bilateral" if len(members) == 2 and name == ".".join(members) else "named",
                proposed_by=None,
                created_at=now,
            )
        )

    # Certified translations ---------------------------------------------------

    def certify_translation(
        self, envelope_id: str, *, target_lang: str, text: str, operator: str
    ) -> dict[str, Any]:
        """Keep an operator's certified translation of a free-text message, signed for them.

        It is this terminal's statement, never the sender's words; a second
        operator countersigns it (``countersign_translation``).
        """
        with reading(self.engine) as conn:
            row = conn.execute(
                select(m.messages.c.kind, m.messages.c.lang, m.log_entries.c.entry)
                .join(m.log_entries, m.log_entries.c.idx == m.messages.c.log_index)
                .where(m.messages.c.envelope_id == envelope_id)
            ).first()
        if row is None:
            raise UsageError(f"no message {envelope_id} on this terminal")
        if row.kind != "text":
            raise UsageError(
                f"message {envelope_id} is a {row.kind} message: only free text is translated "
                "(a form is shown in every reader's language)"
            )
        _, raw = split_entry(bytes(row.entry))
        statement = certify_translation(
            self.identity,
            envelope_id=envelope_id,
            envelope_digest=hashlib.sha256(raw).hexdigest(),
            source_lang=row.lang,
            target_lang=target_lang,
            text=text,
            operator=operator,
            now=self.clock(),
        )
        translation = read_certified_translation(statement, self.party.card_of)
        with self._transaction() as conn:
            conn.execute(
                insert(m.translations).values(
                    digest=translation.digest,
                    envelope_id=envelope_id,
                    target_lang=target_lang,
                    operator=operator,
                    statement=statement,
                    created_at=translation.translated_at,
                )
            )
        log.info("translation_certified", id=envelope_id, lang=target_lang, operator=operator)
        return {"digest": translation.digest, "envelope_id": envelope_id}

    def countersign_translation(self, digest: str, *, operator: str) -> dict[str, Any]:
        """A second operator's check of a certified translation (not its author)."""
        with reading(self.engine) as conn:
            row = conn.execute(
                select(m.translations).where(m.translations.c.digest == digest)
            ).first()
        if row is None:
            raise UsageError(f"no certified translation {digest} on this terminal")
        statement = countersign_translation(
            self.identity, bytes(row.statement), operator=operator, now=self.clock()
        )
        translation = read_certified_translation(bytes(row.statement), self.party.card_of)
        countersigned = read_countersignature(statement, translation, self.party.card_of)
        with self._transaction() as conn:
            if conn.execute(
                select(m.translation_countersignatures.c.operator).where(
                    and_(
                        m.translation_countersignatures.c.translation == digest,
                        m.translation_countersignatures.c.operator == operator,
                    )
                )
            ).first():
                raise UsageError(f"{operator} has already countersigned translation {digest}")
            conn.execute(
                insert(m.translation_countersignatures).values(
                    translation=digest,
                    operator=operator,
                    statement=statement,
                    created_at=countersigned.countersigned_at,
                )
            )
        log.info("translation_countersigned", translation=digest, operator=operator)
        return {"digest": digest, "countersigned_by": operator}

    def acknowledge(self, envelope_id: str, *, operator: str) -> dict[str, Any]:
        """Send the human acknowledgement of a received message (once: the check and the
        sending happen under one lock, so two operators at once send one acknowledgement)."""
        with self.lock:
            with reading(self.engine) as conn:
                row = conn.execute(
                    select(m.messages).where(m.messages.c.envelope_id == envelope_id)
                ).first()
            if row is None or row.direction != "in":
                raise UsageError(f"no received message {envelope_id} to acknowledge")
            if row.acked_at is not None:
                raise UsageError(
                    f"message {envelope_id} was already acknowledged by {row.acked_by}"
                )
            if row.kind not in HUMAN_KINDS:
                raise UsageError(
                    f"message {envelope_id} is a {row.kind} message: nothing to acknowledge"
                )
            start = self.party.transcript.size
            out = self.party.acknowledge(envelope_id, operator=operator)
            digest = self.party.received_digest(envelope_id) or ""
            body: dict[str, JSONValue] = {"ack": {"digest": digest, "envelope_id": envelope_id}}

            def work(conn: Connection) -> None:
                self._log_new_entries(conn, start)
                self._store_sent(conn, [(Draft(out.recipients, "ack", body, operator), out)])
                conn.execute(
                    update(m.messages)
                    .where(m.messages.c.envelope_id == envelope_id)
                    .values(acked_at=self.clock(), acked_by=operator)
                )

            self._commit(work)
        self.on_outbox()
        log.info("message_acknowledged", id=envelope_id, operator=operator, ack=out.envelope_id)
        return {"id": out.envelope_id, "acknowledges": envelope_id}

    # Receiving ------------------------------------------------------------------

    def receive_envelope(self, raw: bytes, *, tls_party: str | None = None) -> bytes:
        """Verify, log and commit one envelope, then return its signed receipt."""
        result = self.receive_batch([raw], tls_party=tls_party)[0]
        if isinstance(result, RemoteError):
            raise result
        return result

    def receive_batch(
        self, raws: Sequence[bytes], *, tls_party: str | None = None
    ) -> list[bytes | RemoteError]:
        """Receive envelopes under one checkpoint signature and one commit.

        Each item yields its signed receipt, or the ``RemoteError`` that
        rejected it (a rejected envelope leaves no trace). Receipts are
        returned only after the commit.
        """
        with self.lock:
            start = self.party.transcript.size
            results = self.party.receive_envelopes(raws)
            now = self.clock()
            answers: list[bytes | RemoteError] = []
            received: list[MessageReceived] = []
            acked: list[AckReceived] = []
            for result in results:
                if isinstance(result, RemoteError):
                    answers.append(result)
                    continue
                answers.append(result.receipt)
                for event in result.events:
                    if isinstance(event, MessageReceived):
                        header = event.envelope.header
                        if tls_party is not None and header.sender != tls_party:
                            # Relaying another party's envelope is allowed (store and
                            # forward); it is noted in the log.
                            log.info("relayed_envelope", sender=header.sender, via=tls_party)
                        received.append(event)
                    elif isinstance(event, AckReceived):
                        acked.append(event)
                    elif isinstance(event, GapDetected):
                        key = (event.channel, event.sender)
                        held, _ = self.party.held_through(*key)
                        self.gaps[key] = held
                        self.gap_seen.setdefault(key, time.monotonic())
            for key in list(self.gaps):
                if not self.party.held_through(*key)[1]:
                    del self.gaps[key]
                    self.gap_seen.pop(key, None)

            def work(conn: Connection) -> None:
                self._log_new_entries(conn, start)
                self._store_received(conn, received, now)
                for ack in acked:
                    conn.execute(
                        insert(m.acks).values(
                            envelope_id=ack.envelope_id,
                            party=ack.by,
                            operator=ack.operator,
                            ack_envelope_id=ack.ack_envelope_id,
                            at=now,
                        )
                    )

            if received or acked or self.party.transcript.size != start:
                self._commit(work)
        for event in received:
            sender = event.envelope.header.sender
            self.activity[sender] = self.activity.get(sender, 0) + 1
        if received:
            self.on_outbox()  # wakes the worker: the sender's log grew, witness it
        for event in received:
            if event.rejection is not None:
                h = event.envelope.header
                self.raise_alarm(
                    "content_refused",
                    "warning",
                    h.id,
                    f"{h.precedence} message {h.id} from {h.sender} was refused and answered "
                    f"with a negative receipt ({event.rejection.code}): {event.rejection.reason}",
                )
        for event in received:
            h = event.envelope.header
            log.info(
                "message_received",
                id=h.id,
                sender=h.sender,
                channel=h.channel,
                seq=h.seq,
                kind=h.kind,
                precedence=h.precedence,
            )
        return answers

    def _store_received(
        self, conn: Connection, events: Sequence[MessageReceived], now: datetime
    ) -> None:
        rows = []
        for event in events:
            header = event.envelope.header
            content = event.envelope.content
            human = header.kind in HUMAN_KINDS
            rows.append(
                {
                    "envelope_id": header.id,
                    "log_index": event.log_index,
                    "direction": "in",
                    "channel": header.channel,
                    "sender": header.sender,
                    "recipients": ",".join(header.recipients),
                    "seq": header.seq,
                    "kind": header.kind,
                    "precedence": header.precedence,
                    "exercise": header.exercise,
                    "created_at": header.created_at,
                    "stored_at": now,
                    "operator": content.operator,
                    "lang": content.lang,
                    "body": canonical_bytes(content.body).decode(),
                    "ack_due": now + self.config.ack_deadline(header.precedence)
                    if human and event.rejection is None
                    else None,
                    "acked_at": None,
                    "acked_by": None,
                    "overdue": False,
                    "rejection_code": event.rejection.code if event.rejection else None,
                    "rejection_reason": event.rejection.reason if event.rejection else None,
                }
            )
            self._ensure_channel(conn, header.channel, [header.sender, *header.recipients], now)
        if rows:
            conn.execute(insert(m.messages), rows)
        for event in events:
            if event.envelope.header.kind == "service":
                header = event.envelope.header
                self._apply_service(
                    conn, header.channel, header.sender, event.envelope.content.body, now
                )

    # Receipts -------------------------------------------------------------------

    def receive_receipt(self, raw: bytes, *, peer: str, link: str | None = None) -> dict[str, Any]:
        """Check and keep a receipt; mark the envelope delivered to ``peer``."""
        result = self.receive_receipts([raw], peer=peer, link=link)[0]
        if isinstance(result, ParleyError):
            raise result
        return result

    def receive_receipts(
        self, raws: Sequence[bytes], *, peer: str, link: str | None = None
    ) -> list[dict[str, Any] | ParleyError]:
        """Check and keep receipts from ``peer`` in one commit (each checked on its own)."""
        with self.lock:
            start = self.party.transcript.size
            accepted: list[tuple[Receipt, int | None]] = []
            answers: list[dict[str, Any] | ParleyError] = []
            for raw in raws:
                before = self.party.transcript.size
                try:
                    receipt = self.party.receive_receipt(raw).receipt
                    if receipt.receiver != peer:
                        raise SchemaViolation(
                            f"a receipt signed by {receipt.receiver} came back from {peer}"
                        )
                except Equivocation as exc:
                    self._record_equivocation(exc, peer)
                    answers.append(exc)
                    continue
                except (RemoteError, VerificationError) as exc:
                    answers.append(exc)
                    continue
                logged = before if self.party.transcript.size > before else None
                accepted.append((receipt, logged))
                answers.append(
                    {
                        "envelope_id": receipt.envelope_id,
                        "receiver": receipt.receiver,
                        "through_seq": receipt.through_seq,
                    }
                )
            now = self.clock()

            def work(conn: Connection) -> None:
                self._log_new_entries(conn, start)
                self._store_receipts(conn, accepted, peer, link, now)

            if accepted:
                self._commit(work)
        for receipt, logged in accepted:
            if receipt.rejection is not None and logged is not None:
                self.raise_alarm(
                    "negative_receipt",
                    "warning",
                    receipt.envelope_id,
                    f"{receipt.receiver} refused message {receipt.envelope_id} "
                    f"({receipt.rejection.code}): {receipt.rejection.reason}",
                )
        return answers

    def _store_receipts(
        self,
        conn: Connection,
        accepted: Sequence[tuple[Receipt, int | None]],
        peer: str,
        link: str | None,
        now: datetime,
    ) -> None:
        """Keep receipts (once per envelope and receiver) and mark the outbox delivered."""
        held = {
            (r.envelope_id, r.receiver)
            for r in conn.execute(
                select(m.receipts.c.envelope_id, m.receipts.c.receiver).where(
                    m.receipts.c.envelope_id.in_({r.envelope_id for r, _ in accepted})
                )
            )
        }
        rows = []
        for receipt, logged in accepted:
            key = (receipt.envelope_id, receipt.receiver)
            if key in held:
                continue
            held.add(key)
            rows.append(
                {
                    "envelope_id": receipt.envelope_id,
                    "receiver": receipt.receiver,
                    "issued_at": receipt.issued_at,
                    "stored_at": now,
                    "through_seq": receipt.through_seq,
                    "log_index": logged,
                    "rejection_code": receipt.rejection.code if receipt.rejection else None,
                    "rejection_reason": receipt.rejection.reason if receipt.rejection else None,
                }
            )
        if rows:
            conn.execute(insert(m.receipts), rows)
        conn.execute(
            update(m.outbox)
            .where(
                and_(
                    m.outbox.c.envelope_id == bindparam("receipt_for"),
                    m.outbox.c.peer == bindparam("receipt_from"),
                )
            )
            .values(state="delivered", delivered_at=now, link=link, last_error=None),
            [
                {"receipt_for": eid, "receipt_from": peer}
                for eid in dict.fromkeys(r.envelope_id for r, _ in accepted)
            ],
        )

    # Delivery bookkeeping -------------------------------------------------------

    def due_deliveries(
        self,
        peer: str,
        limit: int = 64,
        *,
        urgent: bool | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Pending outbox rows for ``peer`` whose next attempt is due, most urgent first.

        ``urgent`` True takes only FLASH and IMMEDIATE, False only the rest;
        envelopes in ``exclude`` (already on their way) are left out.
        """
        now = self.clock()
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(m.outbox, m.messages.c.log_index, m.log_entries.c.entry)
                .join(m.messages, m.messages.c.envelope_id == m.outbox.c.envelope_id)
                .join(m.log_entries, m.log_entries.c.idx == m.messages.c.log_index)
                .where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.state == "pending",
                        m.outbox.c.next_attempt <= now,
                        *_precedence_filter(urgent),
                        *([m.outbox.c.envelope_id.not_in(exclude)] if exclude else []),
                    )
                )
                .order_by(m.messages.c.log_index)
                .limit(limit * 4)
            ).all()
        rows = sorted(rows, key=lambda r: (PRECEDENCE_RANK.get(r.precedence, 9), r.log_index))
        result = []
        for row in rows[:limit]:
            raw = bytes(row.entry[1:])
            result.append(
                {
                    "envelope_id": row.envelope_id,
                    "peer": row.peer,
                    "precedence": row.precedence,
                    "attempts": row.attempts,
                    "via": row.via,
                    "raw": raw,
                }
            )
        return result

    def next_due(self, peer: str, *, urgent: bool | None = None) -> datetime | None:
        with reading(self.engine) as conn:
            value = conn.execute(
                select(func.min(m.outbox.c.next_attempt)).where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.state == "pending",
                        *_precedence_filter(urgent),
                    )
                )
            ).scalar()
        return _utc(value)

    def delivery_failed(self, envelope_id: str, peer: str, error: str, retry_at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(m.outbox)
                .where(and_(m.outbox.c.envelope_id == envelope_id, m.outbox.c.peer == peer))
                .values(
                    attempts=m.outbox.c.attempts + 1, next_attempt=retry_at, last_error=error[:500]
                )
            )

    def retry_now(self, peer: str) -> int:
        """Bring every waiting retry to ``peer`` forward to now (it answers again).

        Link tests keep their own schedule. Returns how many were waiting.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(m.outbox)
                .where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.state == "pending",
                        m.outbox.c.next_attempt > now,
                        m.outbox.c.via.is_(None),
                    )
                )
                .values(next_attempt=now)
            )
        return int(result.rowcount or 0)

    def postpone(self, envelope_id: str, peer: str, seconds: float) -> None:
        """Push a pending delivery's next attempt ``seconds`` into the future."""
        with self.engine.begin() as conn:
            conn.execute(
                update(m.outbox)
                .where(and_(m.outbox.c.envelope_id == envelope_id, m.outbox.c.peer == peer))
                .values(next_attempt=self.clock() + timedelta(seconds=seconds))
            )

    def pending_test(self, peer: str, link: str) -> bool:
        """Whether a test message pinned to this link still awaits its receipt."""
        with reading(self.engine) as conn:
            row = conn.execute(
                select(m.outbox.c.envelope_id).where(
                    and_(
                        m.outbox.c.peer == peer,
                        m.outbox.c.via == link,
                        m.outbox.c.state == "pending",
                    )
                )
            ).first()
        return row is not None

    def pending_count(self) -> int:
        with reading(self.engine) as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(m.outbox).where(m.outbox.c.state == "pending")
                ).scalar_one()
            )

    # Catch-up -------------------------------------------------------------------

    def catch_up(self, channel: str, after_seq: int, *, for_party: str, limit: int = 256) -> bytes:
        """The envelopes this terminal sent on ``channel`` after ``after_seq``, with proofs."""
        with self.lock:
            envelopes = self.party.envelopes_since(channel, after_seq, for_party=for_party)[:limit]
            checkpoint = self.party.checkpoint()
            items = []
            for raw in envelopes:
                header = read_envelope(raw, self.party.card_of, self.limits)
                index = self.party.sent(header.id).log_index
                proof = self.party.transcript.tree.inclusion_proof(index, checkpoint.size)
                items.append(
                    {
                        "envelope": b64encode(raw),
                        "log_index": index,
                        "inclusion": [b64encode(h) for h in proof],
                    }
                )
        return canonical_bytes(
            {"checkpoint": checkpoint.note, "envelopes": items, "type": "parley.catch-up/v1"}
        )

    def apply_catch_up(self, peer: str, data: bytes) -> list[bytes | RemoteError]:
        """Check a catch-up answer from ``peer`` (proofs included) and receive its envelopes."""
        obj = require_object(
            parse_canonical(data, max_size=64 * 1024 * 1024, what="catch-up"), "catch-up"
        )
        card = self.party.card_of(peer)
        if card is None:
            raise UnknownPeer(f"{peer} is not a pinned peer")
        note = obj.get("checkpoint")
        items = obj.get("envelopes")
        if not isinstance(note, str) or not isinstance(items, list):
            raise SchemaViolation("a catch-up answer holds a checkpoint and a list of envelopes")
        checkpoint = verify_checkpoint(note, card)
        raws = []
        for item in items:
            if not isinstance(item, dict):
                raise SchemaViolation("catch-up entries are objects")
            raw = b64decode(item.get("envelope"), "catch-up envelope")
            index = item.get("log_index")
            proof = item.get("inclusion")
            if not isinstance(index, int) or not isinstance(proof, list):
                raise SchemaViolation("catch-up entries carry log_index and inclusion")
            merkle.verify_inclusion(
                merkle.leaf_hash(entry_bytes(EntryType.ENVELOPE, raw)),
                index,
                checkpoint.size,
                [b64decode(h, "inclusion hash") for h in proof],
                checkpoint.root,
            )
            raws.append(raw)
        if not raws:
            return []
        return self.receive_batch(raws, tls_party=peer)

    # Checkpoints and witnessing ----------------------------------------------

    def offer_checkpoint(self, request: bytes) -> bytes:
        with self.lock:
            start = self.party.transcript.size
            offer = self.party.offer_checkpoint(request)
            self._commit(lambda conn: self._log_new_entries(conn, start))
            return offer

    def checkpoint_request(self, owner: str) -> bytes:
        with self.lock:
            return self.party.checkpoint_request(owner)

    def witness(self, owner: str, offer: bytes) -> bytes:
        """Cosign ``owner``'s offered checkpoint; keep the cosigned note."""
        with self.lock:
            try:
                cosigned = self.party.witness(offer)
            except Equivocation as exc:
                self._record_equivocation(exc, owner)
                raise
            except CheckpointRejected as exc:
                self.raise_alarm("checkpoint_rejected", "critical", owner, str(exc), once=True)
                raise
            checkpoint = self.party.last_cosigned_of(owner)
            assert checkpoint is not None
            now = self.clock()
            with self.engine.begin() as conn:
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
        with self.lock:
            accepted = self.party.accept_cosignature(note)
            if tls_party is not None and accepted.witness != tls_party:
                raise SchemaViolation(
                    f"{tls_party} delivered a cosignature made by {accepted.witness}"
                )
            with self.engine.begin() as conn:
                conn.execute(
                    insert(m.cosignatures).values(
                        direction="of-us",
                        party=accepted.witness,
                        size=accepted.size,
                        note=accepted.note,
                        at=self.clock(),
                    )
                )
        return {"witness": accepted.witness, "size": accepted.size}

    def _record_equivocation(self, exc: Equivocation, party: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(m.evidence).values(
                    at=self.clock(),
                    party=party,
                    message=str(exc),
                    evidence=canonical_bytes(dict(exc.evidence)).decode(),
                )
            )
        self.raise_alarm("equivocation", "critical", party, str(exc))

    # Channels -------------------------------------------------------------------

    def _require_active_channel(self, channel: str, recipients: Sequence[str]) -> None:
        with reading(self.engine) as conn:
            row = conn.execute(select(m.channels).where(m.channels.c.name == channel)).first()
            if row is None or row.kind == "bilateral":
                return
            members = row.members.split(",")
            agreed = {
                r.party
                for r in conn.execute(
                    select(m.channel_agreements.c.party).where(
                        m.channel_agreements.c.channel == channel
                    )
                )
            }
        missing = sorted(set(members) - agreed)
        if missing:
            raise UsageError(
                f"channel {channel} is not agreed yet: waiting for {', '.join(missing)}"
            )

    def create_channel(self, name: str, members: Sequence[str], *, operator: str) -> dict[str, Any]:
        """Propose a named channel to its members; it is usable once every member agrees."""
        check_party_id(name, "channel name")
        members = sorted({*members, self.me})
        if len(members) < 2:
            raise UsageError("a channel needs at least two members")
        if "." in name and name == ".".join(members):
            raise UsageError("that name is reserved for the bilateral channel")
        with reading(self.engine) as conn:
            if conn.execute(select(m.channels.c.name).where(m.channels.c.name == name)).first():
                raise UsageError(f"channel {name} already exists")
        others = [p for p in members if p != self.me]

        def proposed(conn: Connection) -> None:
            conn.execute(
                update(m.channels)
                .where(m.channels.c.name == name)
                .values(kind="named", proposed_by=self.me)
            )
            conn.execute(
                insert(m.channel_agreements).values(channel=name, party=self.me, at=self.clock())
            )

        with self.joined(proposed):  # one transaction: the proposal and the channel's state
            result = self.send(
                others,
                kind="service",
                body={"service": {"channel_proposal": {"members": list(members), "name": name}}},
                operator=operator,
                channel=name,
                precedence="PRIORITY",
            )
        return {"channel": name, "members": members, "proposal": result["id"]}

    def agree_channel(self, name: str, *, operator: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            row = conn.execute(select(m.channels).where(m.channels.c.name == name)).first()
            if row is None or row.kind != "named":
                raise UsageError(f"no proposed channel {name}")
            done = conn.execute(
                select(m.channel_agreements.c.party).where(
                    and_(
                        m.channel_agreements.c.channel == name,
                        m.channel_agreements.c.party == self.me,
                    )
                )
            ).first()
        if done:
            raise UsageError(f"this terminal already agreed to channel {name}")
        others = [p for p in row.members.split(",") if p != self.me]

        def agreed(conn: Connection) -> None:
            conn.execute(
                insert(m.channel_agreements).values(channel=name, party=self.me, at=self.clock())
            )

        with self.joined(agreed):  # one transaction: the agreement and its record
            result = self.send(
                others,
                kind="service",
                body={"service": {"channel_agreement": {"name": name}}},
                operator=operator,
                channel=name,
                precedence="PRIORITY",
            )
        return {"channel": name, "agreement": result["id"]}

    def _apply_service(
        self,
        conn: Connection,
        channel: str,
        sender: str,
        body: Mapping[str, Any],
        now: datetime,
    ) -> None:
        service = body.get("service")
        if not isinstance(service, dict):
            return
        proposal = service.get("channel_proposal")
        if isinstance(proposal, dict):
            conn.execute(
                update(m.channels)
                .where(m.channels.c.name == channel)
                .values(kind="named", proposed_by=sender)
            )
        if isinstance(proposal, dict) or isinstance(service.get("channel_agreement"), dict):
            exists = conn.execute(
                select(m.channel_agreements.c.party).where(
                    and_(
                        m.channel_agreements.c.channel == channel,
                        m.channel_agreements.c.party == sender,
                    )
                )
            ).first()
            if exists is None:
                conn.execute(
                    insert(m.channel_agreements).values(channel=channel, party=sender, at=now)
                )

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
        """Record one use or test of a link; return its new state; raise alarms on failure.

        A success on a link already up is written at most every few seconds
        (the round-trip time shown may be that old), so that traffic does not
        pay a database commit per request.
        """
        now = self.clock()
        key = (peer, name)
        if ok and not test:
            previous = self._link_written.get(key)
            if previous is not None and previous[0] == "up" and time.monotonic() - previous[1] < 5:
                return "up"
        with self.engine.begin() as conn:
            row = conn.execute(
                select(m.links).where(and_(m.links.c.peer == peer, m.links.c.name == name))
            ).first()
            if row is None:
                return "unknown"
            failures = 0 if ok else row.failures + (1 if count else 0)
            state = "up" if ok else ("degraded" if failures < 3 else "down")
            values: dict[str, Any] = {"state": state, "failures": failures}
            if ok:
                values.update(last_success=now, rtt_ms=rtt_ms, last_error=None)
            else:
                values.update(last_error=(error or "failed")[:500])
            if test:
                values["last_test"] = now
            conn.execute(update(m.links).where(m.links.c.id == row.id).values(**values))
            conn.execute(
                insert(m.link_samples).values(
                    peer=peer, link=name, at=now, ok=ok, rtt_ms=rtt_ms if ok else None
                )
            )
            if test:  # keep a week of samples (the console charts the last 24 hours)
                conn.execute(
                    delete(m.link_samples).where(m.link_samples.c.at < now - timedelta(days=7))
                )
            self._link_written[key] = (state, time.monotonic())
            states = [
                r.state for r in conn.execute(select(m.links.c.state).where(m.links.c.peer == peer))
            ]
        if test and not ok:
            self.raise_alarm(
                "link_test_failed",
                "warning",
                f"{peer}/{name}",
                f"link {name} to {peer} failed its test: {error}",
                once=True,
            )
        elif test and ok:
            self.clear_alarms("link_test_failed", f"{peer}/{name}")
        if not ok and row.state != "down" and state == "down":
            log.warning("link_down", peer=peer, link=name, error=error)
        if states and all(s == "down" for s in states):
            self.raise_alarm(
                "peer_unreachable",
                "critical",
                peer,
                f"no healthy link to {peer}: every link is down",
                once=True,
            )
        elif ok:
            self.clear_alarms("peer_unreachable", peer)
        return state

    # Alarms -----------------------------------------------------------------------

    def raise_alarm(
        self, kind: str, severity: str, subject: str, message: str, *, once: bool = False
    ) -> dict[str, Any] | None:
        now = self.clock()
        # One serve process owns the database: a process lock makes "once" hold
        # under concurrent failures on every backend.
        with self._alarm_lock, self.engine.begin() as conn:
            if (
                once
                and conn.execute(
                    select(m.alarms.c.id).where(
                        and_(
                            m.alarms.c.kind == kind,
                            m.alarms.c.subject == subject,
                            m.alarms.c.cleared_at.is_(None),
                        )
                    )
                ).first()
            ):
                return None
            alarm_id = conn.execute(
                insert(m.alarms).values(
                    at=now, kind=kind, severity=severity, subject=subject, message=message
                )
            ).inserted_primary_key
        alarm = {
            "id": alarm_id[0] if alarm_id else None,
            "at": _iso(now),
            "kind": kind,
            "severity": severity,
            "subject": subject,
            "message": message,
            "party": self.me,
        }
        log.warning("alarm", **{k: v for k, v in alarm.items() if k != "at"})
        try:
            self.on_alarm(alarm)
        except Exception:  # an alarm hook must never break the terminal
            log.exception("alarm_hook_failed")
        return alarm

    def clear_alarms(self, kind: str, subject: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(m.alarms)
                .where(
                    and_(
                        m.alarms.c.kind == kind,
                        m.alarms.c.subject == subject,
                        m.alarms.c.cleared_at.is_(None),
                    )
                )
                .values(cleared_at=self.clock())
            )

    def record_security_event(
        self, *, endpoint: str, remote: str, tls_party: str | None, error: ParleyError
    ) -> None:
        code = getattr(error, "code", type(error).__name__)
        with self.engine.begin() as conn:
            conn.execute(
                insert(m.security_events).values(
                    at=self.clock(),
                    endpoint=endpoint,
                    remote=remote,
                    tls_party=tls_party,
                    code=code,
                    # A peer's bytes may be quoted in the message: no NUL reaches the database.
                    message=str(error)[:1000].replace("\x00", "\\x00"),
                )
            )
        log.warning(
            "security_event",
            endpoint=endpoint,
            remote=remote,
            peer=tls_party,
            code=code,
            message=str(error)[:300],
        )

    # Deadlines --------------------------------------------------------------------

    def check_deadlines(self) -> int:
        """Raise overdue-acknowledgement alarms (sender) and reminders (receiver)."""
        now = self.clock()
        raised = 0
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(m.messages).where(
                    and_(
                        m.messages.c.ack_due.is_not(None),
                        m.messages.c.ack_due <= now,
                        m.messages.c.overdue.is_(False),
                    )
                )
            ).all()
            acks = {
                (a.envelope_id, a.party)
                for a in conn.execute(select(m.acks.c.envelope_id, m.acks.c.party))
            }
        for row in rows:
            if row.direction == "out":
                waiting = [p for p in row.recipients.split(",") if (row.envelope_id, p) not in acks]
                if waiting:
                    self.raise_alarm(
                        "ack_overdue",
                        "warning",
                        row.envelope_id,
                        f"{row.precedence} message {row.envelope_id} is not acknowledged by "
                        f"{', '.join(waiting)} within its deadline",
                    )
                    raised += 1
            elif row.acked_at is None:
                self.raise_alarm(
                    "ack_reminder",
                    "info",
                    row.envelope_id,
                    f"{row.precedence} message {row.envelope_id} from {row.sender} awaits "
                    "acknowledgement: its deadline has passed",
                )
                raised += 1
            with self.engine.begin() as conn:
                conn.execute(
                    update(m.messages)
                    .where(m.messages.c.envelope_id == row.envelope_id)
                    .values(overdue=True)
                )
        return raised

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
