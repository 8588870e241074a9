"""The read model: what a terminal shows, derived from its signed record.

Every front end (console, operator API, CLI, exports) reads messages through
``Records``. A row of ``messages`` is an index over the transcript: a cache
that is checked on every read, never trusted. What is shown (content,
precedence, exercise flag, sender, recipients, time, operator) comes from the
logged envelope whose signature was checked and from the inner content whose
SHA-256 is the ``content_digest`` the sender signed. A row whose columns
differ from its envelope is shown as ``verified: False`` with the ``problem``
(which column), never with the edited value.

The check is cheap enough for a page refreshed every second:

* the tree of leaf hashes is verified against the terminal's own signed
  checkpoint once (the terminal's in-memory tree, verified when it resumed,
  or here on first use);
* each read hashes the stored entry and compares it with the leaf in that
  tree (one SHA-256 per row);
* a signature is checked once and what it covers is remembered by the leaf
  hash (a bounded cache), and parsed contents by their digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, and_, func, select

from parley import merkle
from parley.core.canonical import JSONValue, canonical_bytes, parse_canonical, require_object
from parley.core.checkpoint import verify_checkpoint
from parley.core.dsse import parse_dsse
from parley.core.encoding import format_time
from parley.core.envelope import Content, EnvelopeHeader, Limits, decrypt_envelope, read_envelope
from parley.core.identity import Identity, IdentityCard
from parley.core.transcript import EntryType, split_entry
from parley.core.translation import CERTIFIED_TRANSLATION_TYPE
from parley.errors import ParleyError, UsageError, VerificationError
from parley.service.cardchain import load_chain
from parley.service.keys import card_version, keys_report
from parley.store import models as m
from parley.store.db import reading

__all__ = [
    "CACHE_SIZE",
    "HUMAN_KINDS",
    "PRECEDENCE_RANK",
    "SHOWN_KINDS",
    "CheckedContent",
    "Records",
    "SignedFacts",
    "action_order",
    "checked_leaves",
    "content_problem",
    "fill_contents",
    "row_problem",
    "signed_facts",
]

PRECEDENCE_RANK = {"FLASH": 0, "IMMEDIATE": 1, "PRIORITY": 2, "ROUTINE": 3}
SHOWN_KINDS = ("text", "form", "service")
#: The kinds a human acknowledges: a service message, an ack or a link test waits for none.
HUMAN_KINDS = ("text", "form")
ALL_KINDS = ("text", "form", "service", "ack", "test", "key")

#: Signatures checked (by leaf hash) and contents parsed (by digest) kept in memory.
CACHE_SIZE = 20_000

#: A sent message's row once held the time it was stored, a moment after the
#: envelope was sealed; such a row is still taken as the envelope's time.
_SENT_LAG = timedelta(seconds=1)

_LIMITS = Limits()


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def _ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class SignedFacts:
    """What an envelope whose signature verified says in clear."""

    id: str
    channel: str
    sender: str
    recipients: tuple[str, ...]
    seq: int
    kind: str
    precedence: str
    exercise: bool
    created_at: datetime
    content_digest: str
    signer_key: str


def card_chain_rows(chain: IdentityCard) -> list[dict[str, Any]]:
    """A party's cards, newest first: in use, rotated out, or revoked (and since when
    their keys sign nothing accepted)."""
    rows = []
    for card in chain.chain:
        if card.revoked is not None:
            state = "revoked"
        elif card.signs_until is not None:
            state = "rotated out"
        else:
            state = "in use"
        rows.append(
            {
                "card_version": card.version,
                "fingerprint": card.fingerprint,
                "state": state,
                "signs_until": _iso(card.signs_until),
                "revoked": card.revoked,
            }
        )
    return rows


def signed_facts(header: EnvelopeHeader, signer: IdentityCard) -> SignedFacts:
    """The facts of a verified envelope; ``signer`` is its sender's chain, and the
    fingerprint is that of the card of the chain that signed (``keyid``)."""
    signer = signer.for_key(header.key_id) or signer
    return SignedFacts(
        header.id,
        header.channel,
        header.sender,
        header.recipients,
        header.seq,
        header.kind,
        header.precedence,
        header.exercise,
        header.created_at,
        header.content_digest,
        signer.fingerprint,
    )


@dataclass(frozen=True, slots=True)
class CheckedContent:
    """Inner content whose SHA-256 is the digest its sender signed."""

    digest: str
    lang: str
    operator: str
    body: Mapping[str, JSONValue]
    body_json: str  # canonical JSON, as the index stores it


def content_problem(
    stored: bytes | None, facts: SignedFacts
) -> tuple[CheckedContent | None, str | None]:
    """Check stored inner content against the signed digest: (content, None) or (None, why)."""
    if stored is None:
        return None, "content: not stored; open the terminal once to fill it in from the log"
    digest = hashlib.sha256(stored).hexdigest()
    if digest != facts.content_digest:
        return None, "content: does not match the content digest the sender signed"
    try:
        content = Content.from_bytes(stored, facts.kind)
    except ParleyError as exc:
        return None, f"content: {exc}"
    return (
        CheckedContent(
            digest,
            content.lang,
            content.operator,
            content.body,
            canonical_bytes(dict(content.body)).decode(),
        ),
        None,
    )


def row_problem(row: Any, facts: SignedFacts, me: str) -> str | None:
    """The first column of a ``messages`` row that differs from its signed envelope."""
    created = _utc(row.created_at)
    expected_direction = "out" if facts.sender == me else "in"
    checks: list[tuple[str, bool]] = [
        ("envelope_id", row.envelope_id == facts.id),
        ("direction", row.direction == expected_direction),
        ("channel", row.channel == facts.channel),
        ("sender", row.sender == facts.sender),
        ("recipients", row.recipients == ",".join(facts.recipients)),
        ("seq", row.seq == facts.seq),
        ("kind", row.kind == facts.kind),
        ("precedence", row.precedence == facts.precedence),
        ("exercise", bool(row.exercise) is facts.exercise and row.exercise in (0, 1)),
        ("created_at", created is not None and _same_time(created, facts, row.direction)),
    ]
    for column, same in checks:
        if not same:
            return column
    return None


def _same_time(created: datetime, facts: SignedFacts, direction: str) -> bool:
    if _ms(created) == facts.created_at:
        return True
    return direction == "out" and facts.created_at <= created < facts.created_at + _SENT_LAG


def content_columns_problem(row: Any, content: CheckedContent) -> str | None:
    """The first content column of a row that differs from the checked content."""
    for column, same in (
        ("operator", row.operator == content.operator),
        ("lang", row.lang == content.lang),
        ("body", row.body == content.body_json),
    ):
        if not same:
            return column
    return None


K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """A thread-safe LRU map of at most ``size`` items."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def checked_leaves(engine: Engine, batch: int = 2_000) -> Iterator[bytes]:
    """Every log entry's leaf hash, in order, each recomputed from the stored entry.

    A stored entry that no longer hashes to its stored leaf (or a gap in the
    indexes) raises ``VerificationError`` naming the index: a terminal whose
    record was changed does not start.
    """
    cols = m.log_entries.c
    expected = 0
    while True:
        with reading(engine) as conn:
            rows = conn.execute(
                select(cols.idx, cols.entry, cols.leaf)
                .where(cols.idx >= expected)
                .order_by(cols.idx)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            if row.idx != expected:
                raise VerificationError(
                    f"log entry {expected} is missing from the store (the next is {row.idx})"
                )
            leaf = merkle.leaf_hash(bytes(row.entry))
            if row.leaf is not None and bytes(row.leaf) != leaf:
                raise VerificationError(
                    f"log entry {row.idx} no longer hashes to its stored leaf: the record was "
                    "changed after it was written; run parley verify"
                )
            yield leaf
            expected += 1


def fill_contents(engine: Engine, identity: Identity) -> int:
    """Store the inner content of message rows kept before ``messages.content`` existed.

    The terminal decrypts its own copy from the logged envelope (every
    envelope carries a ciphertext for its sender too) and keeps it only if it
    matches the signed digest. Returns how many rows were filled.
    """
    msg = m.messages.c
    lookup = _CardLookup(engine, identity.card)
    filled = 0
    while True:
        with reading(engine) as conn:
            rows = conn.execute(
                select(msg.envelope_id, m.log_entries.c.entry)
                .join(m.log_entries, m.log_entries.c.idx == msg.log_index)
                .where(msg.content.is_(None))
                .limit(500)
            ).all()
        done: list[tuple[str, bytes]] = []
        for row in rows:
            try:
                kind, raw = split_entry(bytes(row.entry))
                if kind is not EntryType.ENVELOPE:
                    continue
                opened = decrypt_envelope(read_envelope(raw, lookup.get, _LIMITS), identity)
            except ParleyError:
                continue  # left empty: reads and the audit show it as not verifying
            done.append((row.envelope_id, opened.content.to_bytes()))
        if done:
            with engine.begin() as conn:
                for envelope_id, content in done:
                    conn.execute(
                        m.messages.update()
                        .where(and_(msg.envelope_id == envelope_id, msg.content.is_(None)))
                        .values(content=content)
                    )
            filled += len(done)
        if len(done) < len(rows) or not rows:
            return filled


class _CardLookup:
    """Pinned cards by party, read from ``peers`` (reread when an unknown party shows up)."""

    def __init__(self, engine: Engine, own: IdentityCard | None) -> None:
        self._engine = engine
        self._own = own
        self._cards: dict[str, IdentityCard] = {}
        self._loaded = False

    def _load(self) -> None:
        cards: dict[str, IdentityCard] = {}
        with reading(self._engine) as conn:
            rows = conn.execute(select(m.peers.c.party, m.peers.c.card, m.peers.c.fingerprint))
            for row in rows:
                try:
                    card = IdentityCard.from_bytes(bytes(row.card)).pinned(row.fingerprint)
                    card = load_chain(conn, card)
                except ParleyError:
                    continue  # not a card this terminal can trust; parley verify names it
                if card.party == row.party:
                    cards[card.party] = card
            if self._own is not None:
                with contextlib.suppress(ParleyError):  # parley verify names a broken chain
                    self._own = load_chain(conn, self._own)
        self._cards = cards
        self._loaded = True

    def invalidate(self, own: IdentityCard | None = None) -> None:
        """Read the chains again (after a rotation or a revocation)."""
        if own is not None:
            self._own = own
        self._loaded = False

    def own(self) -> IdentityCard | None:
        if not self._loaded:
            self._load()
        return self._own

    def get(self, party: str) -> IdentityCard | None:
        if self._own is not None and party == self._own.party:
            return self.own()
        if not self._loaded or party not in self._cards:
            self._load()
        return self._cards.get(party)


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
    """Read-only views of a terminal's database (no private keys needed).

    ``own_card`` is the terminal's own card (it checks the terminal's own
    envelopes and checkpoints). ``tree`` gives the tree of leaf hashes already
    verified against the terminal's signed checkpoint (a running terminal's
    transcript); without it the tree is built from the store and verified on
    first use.
    """

    def __init__(
        self,
        engine: Engine,
        me: str,
        *,
        own_card: IdentityCard | None = None,
        tree: Callable[[], merkle.MerkleLog] | None = None,
    ) -> None:
        self.engine = engine
        self._me = me
        self._own_card = own_card
        self._live_tree = tree
        self._built_tree: merkle.MerkleLog | None = None
        self._tree_lock = threading.Lock()
        self._cards = _CardLookup(engine, own_card)
        self._signed: _Bounded[bytes, SignedFacts | str] = _Bounded(CACHE_SIZE)
        self._contents: _Bounded[str, CheckedContent] = _Bounded(CACHE_SIZE)

    @property
    def me(self) -> str:
        return self._me

    # The verified log -------------------------------------------------------------

    def _verified_leaf(self, index: int) -> bytes | None:
        """The leaf hash at ``index`` in the verified tree (None past its end)."""
        if self._live_tree is not None:
            tree = self._live_tree()
            return tree.leaf(index) if index < tree.size else None
        with self._tree_lock:
            built = self._built_tree
            if built is None or index >= built.size:
                built = self._build_tree()
                self._built_tree = built
        return built.leaf(index) if index < built.size else None

    def _build_tree(self) -> merkle.MerkleLog:
        """The stored leaves, checked against the terminal's latest signed checkpoint."""
        tree = merkle.MerkleLog()
        cols = m.log_entries.c
        with reading(self.engine) as conn:
            for row in conn.execute(select(cols.idx, cols.leaf, cols.entry).order_by(cols.idx)):
                if row.idx != tree.size:
                    raise VerificationError(
                        f"log entry {tree.size} is missing from the store (the next is {row.idx})"
                    )
                leaf = row.leaf if row.leaf is not None else merkle.leaf_hash(bytes(row.entry))
                tree.append(bytes(leaf))
            note = conn.execute(
                select(m.checkpoints.c.note).order_by(m.checkpoints.c.size.desc()).limit(1)
            ).scalar()
        own_card = self._cards.own()
        if note is not None and own_card is not None:
            checkpoint = verify_checkpoint(note, own_card)
            if checkpoint.size > tree.size or tree.root_at(checkpoint.size) != checkpoint.root:
                raise VerificationError(
                    f"the stored transcript does not hash to this terminal's own checkpoint "
                    f"{checkpoint.size}: its records were changed or lost; run parley verify"
                )
        return tree

    def _facts(self, index: int, entry: bytes) -> SignedFacts | str:
        """What the envelope logged at ``index`` says, or why it cannot be shown."""
        leaf = merkle.leaf_hash(entry)
        verified = self._verified_leaf(index)
        if verified is None:
            return f"log entry {index} is not in the verified log"
        if verified != leaf:
            return f"log entry {index} does not hash to the verified log"
        known = self._signed.get(leaf)
        if known is not None:
            return known
        result: SignedFacts | str
        try:
            kind, raw = split_entry(entry)
            if kind is not EntryType.ENVELOPE:
                result = f"log entry {index} is not an envelope"
            else:
                header = read_envelope(raw, self._cards.get, _LIMITS)
                signer = self._cards.get(header.sender)
                assert signer is not None  # read_envelope found it
                result = signed_facts(header, signer)
        except ParleyError as exc:
            result = f"log entry {index}: {exc}"
        self._signed.put(leaf, result)
        return result

    def _content(self, stored: bytes | None, facts: SignedFacts) -> CheckedContent | str:
        if stored is not None:
            digest = hashlib.sha256(stored).hexdigest()
            known = self._contents.get(digest)
            if known is not None and digest == facts.content_digest:
                return known
        content, problem = content_problem(stored, facts)
        if content is None:
            assert problem is not None
            return problem
        self._contents.put(content.digest, content)
        return content

    def check_row(self, row: Any) -> tuple[SignedFacts, CheckedContent] | str:
        """A ``messages`` row (with its log ``entry``) checked: the facts, or the problem."""
        if row.entry is None:
            return f"log entry {row.log_index} is missing"
        facts = self._facts(row.log_index, bytes(row.entry))
        if isinstance(facts, str):
            return facts
        column = row_problem(row, facts, self._me)
        if column is not None:
            return f"{column} differs from the signed envelope"
        content = self._content(None if row.content is None else bytes(row.content), facts)
        if isinstance(content, str):
            return content
        column = content_columns_problem(row, content)
        if column is not None:
            return f"{column} differs from the signed content"
        return facts, content

    # Reading --------------------------------------------------------------------

    def _message_rows(self, conn: Connection, *where: Any, limit: int | None = None) -> list[Any]:
        query = (
            select(m.messages, m.log_entries.c.entry)
            .outerjoin(m.log_entries, m.log_entries.c.idx == m.messages.c.log_index)
            .where(*where)
            .order_by(m.messages.c.log_index.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        return list(conn.execute(query).all())

    def _message_dict(
        self, row: Any, conn: Connection, *, full: bool, extras: _Extras | None = None
    ) -> dict[str, Any]:
        checked = self.check_row(row)
        if isinstance(checked, str):
            return _unverified(row, checked)
        facts, content = checked
        item: dict[str, Any] = {
            "id": facts.id,
            "verified": True,
            "problem": None,
            "direction": row.direction,
            "channel": facts.channel,
            "sender": facts.sender,
            "recipients": list(facts.recipients),
            "seq": facts.seq,
            "kind": facts.kind,
            "precedence": facts.precedence,
            "exercise": facts.exercise,
            "created_at": _iso(facts.created_at),
            "stored_at": _iso(row.stored_at),
            "operator": content.operator,
            "lang": content.lang,
            "body": json.loads(content.body_json),
            "log_index": row.log_index,
            "ack_due": _iso(row.ack_due),
            "content_digest": facts.content_digest,
            "signer_fingerprint": facts.signer_key,
        }
        extras = extras or _Extras.load(conn, [row])
        if facts.kind == "text":
            item["translations"] = extras.translations.get(facts.id, [])
        item["needs_ack"] = facts.kind in HUMAN_KINDS
        if row.direction == "in":
            item["awaiting_ack"] = item["needs_ack"] and row.acked_at is None
            item["acknowledged_at"] = _iso(row.acked_at)
            item["acknowledged_by"] = row.acked_by
            item["rejection"] = (
                {"code": row.rejection_code, "reason": row.rejection_reason}
                if row.rejection_code
                else None
            )
            return item
        receipts = extras.receipts.get(facts.id, [])
        item["receipts"] = {r.receiver: _iso(r.stored_at) for r in receipts}
        item["rejections"] = {
            r.receiver: {"code": r.rejection_code, "reason": r.rejection_reason}
            for r in receipts
            if r.rejection_code
        }
        item["acks"] = {
            a.party: {"operator": a.operator, "at": _iso(a.at)}
            for a in extras.acks.get(facts.id, [])
        }
        item["delivery"] = {
            o.peer: {
                "state": o.state,
                "attempts": o.attempts,
                "link": o.link,
                "last_error": o.last_error,
            }
            for o in extras.outbox.get(facts.id, [])
        }
        answered = item["acks"].keys() | item["rejections"].keys()
        item["awaiting_ack"] = item["needs_ack"] and any(
            party not in answered for party in item["recipients"]
        )
        return item

    def _translations(self, conn: Connection, envelope_id: str) -> list[dict[str, Any]]:
        return _translations(conn, [envelope_id]).get(envelope_id, [])

    def messages(
        self, direction: str, *, limit: int = 200, all_kinds: bool = False
    ) -> list[dict[str, Any]]:
        """The ``limit`` newest messages of one direction, what needs action first
        (``action_order``); a received message still awaiting its acknowledgement is
        listed however old it is (up to ``limit`` more)."""
        kinds = ALL_KINDS if all_kinds else SHOWN_KINDS
        cols = m.messages.c
        with reading(self.engine) as conn:
            rows = self._message_rows(
                conn, cols.direction == direction, cols.kind.in_(kinds), limit=limit
            )
            if direction == "in" and len(rows) == limit:
                # The index finds the candidates; each is shown as its envelope says.
                listed = {row.envelope_id for row in rows}
                older = self._message_rows(
                    conn,
                    cols.direction == "in",
                    cols.kind.in_(HUMAN_KINDS),
                    cols.acked_at.is_(None),
                    cols.log_index < rows[-1].log_index,
                    limit=limit,
                )
                rows += [row for row in older if row.envelope_id not in listed]
            extras = _Extras.load(conn, rows)
            items = [self._message_dict(row, conn, full=False, extras=extras) for row in rows]
        items.sort(key=action_order)  # stable: newest first within each place
        return items

    def messages_by_id(self, envelope_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The checked view of several messages at once, by envelope id (missing ones left out)."""
        ids = list(dict.fromkeys(envelope_ids))
        if not ids:
            return {}
        with reading(self.engine) as conn:
            rows = self._message_rows(conn, m.messages.c.envelope_id.in_(ids))
            extras = _Extras.load(conn, rows)
            return {
                row.envelope_id: self._message_dict(row, conn, full=False, extras=extras)
                for row in rows
            }

    def show(self, envelope_id: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            rows = self._message_rows(conn, m.messages.c.envelope_id == envelope_id)
            if not rows:
                raise UsageError(f"no message {envelope_id} on this terminal")
            return self._message_dict(rows[0], conn, full=True)

    def unacknowledged_flash(self) -> list[str]:
        """The envelope ids of received FLASH messages no human has acknowledged, oldest
        first: candidates from the index, to be shown only through ``messages_by_id``."""
        cols = m.messages.c
        with reading(self.engine) as conn:
            return list(
                conn.execute(
                    select(cols.envelope_id)
                    .where(
                        cols.direction == "in",
                        cols.precedence == "FLASH",
                        cols.kind.in_(HUMAN_KINDS),
                        cols.acked_at.is_(None),
                    )
                    .order_by(cols.log_index)
                ).scalars()
            )

    def link_samples(
        self, peer: str, link: str, *, since: datetime
    ) -> list[tuple[datetime, bool, float | None]]:
        """(time, answered, round-trip ms) of each use of one link since ``since``, oldest first."""
        cols = m.link_samples.c
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(cols.at, cols.ok, cols.rtt_ms)
                .where(cols.peer == peer, cols.link == link, cols.at >= since)
                .order_by(cols.at)
            ).all()
        return [(row.at, bool(row.ok), row.rtt_ms) for row in rows]

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
                # One incident, one alarm: how often it was seen, first (``at``) and last.
                "count": r.count,
                "last_at": _iso(r.last_at or r.at),
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
        cards = {row.party: IdentityCard.from_bytes(row.card) for row in rows}
        return [
            {
                "party": row.party,
                "name": cards[row.party].name,
                "fingerprint": row.fingerprint,
                "card_version": card_version(cards[row.party]),
                "valid_until": format_time(cards[row.party].valid_until),
                "links": [
                    {"name": link.name, "url": link.url} for link in links if link.peer == row.party
                ],
            }
            for row in rows
        ]

    def keys_status(self, now: datetime | None = None) -> dict[str, Any]:
        """This terminal's card and keys, and every pinned peer's card (``parley keys status``)."""
        own = self._cards.own()
        if own is None:
            raise UsageError("the terminal's own card is needed to show its keys")
        with reading(self.engine) as conn:
            rows = conn.execute(select(m.peers.c.card)).all()
            own_keys = conn.execute(
                select(*(c for c in m.encryption_keys.c if c.name != "sealed"))
            ).all()
            peer_keys = conn.execute(select(m.peer_encryption_keys)).all()
        peers = [IdentityCard.from_bytes(bytes(row.card)) for row in rows]
        report = keys_report(own, peers, now or datetime.now(UTC), own_keys, peer_keys)
        # Each card chain: which cards signed before, and whether they were revoked.
        report["card"]["chain"] = card_chain_rows(own)
        for peer in report["peers"]:
            chain = self._cards.get(peer["party"])
            peer["chain"] = card_chain_rows(chain) if chain is not None else []
        return report

    def chains_changed(self, own: IdentityCard | None = None) -> None:
        """A card chain changed (a rotation, a revocation): read the cards again."""
        self._cards.invalidate(own)

    def checkpoints(self, *, offset: int = 0, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """This terminal's signed checkpoints, largest first: (how many in all, those from
        ``offset``, at most ``limit``)."""
        cols = m.checkpoints.c
        with reading(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(m.checkpoints)).scalar()
            rows = conn.execute(
                select(m.checkpoints).order_by(cols.size.desc()).offset(offset).limit(limit)
            ).all()
        return int(total or 0), [
            {"size": r.size, "issued_at": _iso(r.issued_at), "note": r.note} for r in rows
        ]

    def cosignatures(self, *, offset: int = 0, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """Cosignatures held (of this terminal's log by a peer, ``of-us``, and of a peer's
        log by this terminal, ``by-us``), newest first: (how many in all, one page)."""
        cols = m.cosignatures.c
        with reading(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(m.cosignatures)).scalar()
            rows = conn.execute(
                select(m.cosignatures).order_by(cols.id.desc()).offset(offset).limit(limit)
            ).all()
        return int(total or 0), [
            {
                "direction": r.direction,
                "party": r.party,
                "size": r.size,
                "at": _iso(r.at),
                "note": r.note,
            }
            for r in rows
        ]

    def latest_cosignatures(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(direction, party) -> the largest size cosigned, when last, and how many."""
        cols = m.cosignatures.c
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(
                    cols.direction,
                    cols.party,
                    func.max(cols.size).label("size"),
                    func.max(cols.at).label("at"),
                    func.count().label("n"),
                ).group_by(cols.direction, cols.party)
            ).all()
        return {
            (r.direction, r.party): {"size": r.size, "at": _iso(r.at), "count": r.n} for r in rows
        }

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


def action_order(item: Mapping[str, Any]) -> tuple[int, int]:
    """Where a listed message goes, what needs action first: a message still awaiting a
    human acknowledgement (ours of a received one, or the other side's of one we sent)
    before one that does not, then by precedence (FLASH first)."""
    return (0 if item.get("awaiting_ack") else 1, PRECEDENCE_RANK.get(item["precedence"], 9))


def _unverified(row: Any, problem: str) -> dict[str, Any]:
    """A row that does not verify: where it is, and why; none of what it claims."""
    return {
        "id": row.envelope_id,
        "verified": False,
        "problem": problem,
        "direction": row.direction,
        "log_index": row.log_index,
        "stored_at": _iso(row.stored_at),
        "channel": None,
        "sender": None,
        "recipients": [],
        "seq": None,
        "kind": None,
        "precedence": None,
        "exercise": None,
        "created_at": None,
        "operator": None,
        "lang": None,
        "body": None,
        "ack_due": None,
        "needs_ack": False,
        "awaiting_ack": False,
        "translations": [],
        "receipts": {},
        "rejections": {},
        "acks": {},
        "delivery": {},
        "acknowledged_at": None,
        "acknowledged_by": None,
        "rejection": None,
    }


def _translations(conn: Connection, envelope_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    rows = conn.execute(
        select(m.translations)
        .where(m.translations.c.envelope_id.in_(envelope_ids))
        .order_by(m.translations.c.created_at)
    ).all()
    if not rows:
        return {}
    checks = conn.execute(
        select(m.translation_countersignatures).where(
            m.translation_countersignatures.c.translation.in_([r.digest for r in rows])
        )
    ).all()
    result: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        result.setdefault(r.envelope_id, []).append(
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


@dataclass(frozen=True, slots=True)
class _Extras:
    """Receipts, acknowledgements, deliveries and translations of some messages."""

    receipts: dict[str, list[Any]]
    acks: dict[str, list[Any]]
    outbox: dict[str, list[Any]]
    translations: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls, conn: Connection, rows: list[Any]) -> _Extras:
        sent = [r.envelope_id for r in rows if r.direction == "out"]
        texts = [r.envelope_id for r in rows if r.kind == "text"]

        def grouped(table: Any) -> dict[str, list[Any]]:
            result: dict[str, list[Any]] = {}
            if sent:
                for r in conn.execute(select(table).where(table.c.envelope_id.in_(sent))):
                    result.setdefault(r.envelope_id, []).append(r)
            return result

        return cls(
            receipts=grouped(m.receipts),
            acks=grouped(m.acks),
            outbox=grouped(m.outbox),
            translations=_translations(conn, texts) if texts else {},
        )
