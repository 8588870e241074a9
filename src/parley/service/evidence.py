"""Evidence: what the stored records prove, recomputed from them.

* ``message_evidence``: for one message, the sender's signature over the
  envelope as logged, the inclusion of its log entry under this terminal's
  latest signed checkpoint, and each other party's cosignature covering it;
  shown on the console's message page.
* ``evidence_bundle``: everything needed to re-check the log offline (cards,
  every entry, checkpoints, cosignatures), streamed as JSON a batch at a time;
  written by ``parley export`` and the console's export.

Both read the store and verify; neither writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, select

from parley import merkle
from parley.core.checkpoint import Checkpoint, verify_checkpoint, verify_cosignature
from parley.core.envelope import read_envelope
from parley.core.transcript import EntryType, split_entry
from parley.errors import ParleyError, UsageError
from parley.service.audit import stored_entries
from parley.service.kernel import iso as _iso
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.store.db import reading

__all__ = ["BUNDLE_TYPE", "Check", "Evidence", "evidence_bundle", "message_evidence"]


@dataclass(frozen=True, slots=True)
class Check:
    """One piece of evidence: ``ok``, ``bad`` (with the verifier's reason) or ``pending``."""

    state: str
    detail: str = ""
    party: str = ""  # the signer or witness
    size: int | None = None  # the checkpoint's size
    at: datetime | None = None  # when it was cosigned


@dataclass(frozen=True, slots=True)
class Evidence:
    envelope_id: str
    log_index: int
    digest: str  # SHA-256 of the envelope's exact bytes
    signature: Check
    inclusion: Check
    cosigned: tuple[Check, ...]  # one per other party of the message

    @property
    def cosigned_state(self) -> str:
        states = {c.state for c in self.cosigned}
        if "bad" in states:
            return "bad"
        if not states or states == {"ok"}:
            return "ok" if states else "pending"
        return "pending"


#: What a check of stored bytes may raise: the verifiers' errors, and malformed data.
_FAILED = (ParleyError, ValueError, TypeError, KeyError)


def _latest_checkpoint(terminal: Terminal, conn: Any) -> Checkpoint | None:
    """This terminal's latest signed checkpoint, its signatures verified."""
    own = terminal.identity.card
    note = conn.execute(
        select(m.checkpoints.c.note).order_by(m.checkpoints.c.size.desc()).limit(1)
    ).scalar()
    stored = verify_checkpoint(note, own) if note is not None else None
    latest = terminal.party.latest_checkpoint
    if latest is not None and (stored is None or latest.size > stored.size):
        return verify_checkpoint(latest.note, own)
    return stored


def _included(terminal: Terminal, leaf: bytes, index: int, checkpoint: Checkpoint) -> None:
    """Recompute the inclusion proof of entry ``index`` and check it against ``checkpoint``."""
    with terminal.lock:
        proof = terminal.party.transcript.tree.inclusion_proof(index, checkpoint.size)
    merkle.verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root)


def message_evidence(terminal: Terminal, envelope_id: str) -> Evidence:
    """The evidence for one message, recomputed from the stored records.

    * signature: the envelope's bytes as logged, verified with the pinned
      card of its sender (``read_envelope``), and naming this message;
    * inclusion: the log entry's leaf hash, recomputed from the stored
      entry, under this terminal's latest signed checkpoint (an inclusion
      proof checked with ``merkle.verify_inclusion``);
    * cosigned: for each other party of the message, its latest cosignature
      of this terminal's log (both signatures verified) covers the entry,
      and the entry is included in the tree it cosigned.
    """
    with reading(terminal.engine) as conn:
        row = conn.execute(
            select(m.messages).where(m.messages.c.envelope_id == envelope_id)
        ).first()
        if row is None:
            raise UsageError(f"no message {envelope_id} on this terminal")
        entry = conn.execute(
            select(m.log_entries.c.entry).where(m.log_entries.c.idx == row.log_index)
        ).scalar()
        try:
            checkpoint = _latest_checkpoint(terminal, conn)
            checkpoint_problem = ""
        except _FAILED as exc:
            checkpoint, checkpoint_problem = None, str(exc)
        others = sorted({row.sender, *row.recipients.split(",")} - {terminal.me})
        cosignature_notes = {
            party: conn.execute(
                select(m.cosignatures.c.note)
                .where(
                    and_(
                        m.cosignatures.c.direction == "of-us",
                        m.cosignatures.c.party == party,
                    )
                )
                .order_by(m.cosignatures.c.size.desc(), m.cosignatures.c.id.desc())
                .limit(1)
            ).scalar()
            for party in others
        }
    index = int(row.log_index)
    if entry is None:
        missing = Check("bad", f"log entry {index} is missing from the store")
        return Evidence(envelope_id, index, "", missing, missing, ())
    entry = bytes(entry)
    leaf = merkle.leaf_hash(entry)
    raw = b""
    try:
        kind, raw = split_entry(entry)
        if kind is not EntryType.ENVELOPE:
            raise UsageError(f"log entry {index} is not an envelope")
        header = read_envelope(raw, terminal.party.card_of, terminal.limits)
        if header.id != envelope_id or header.sender != row.sender:
            raise UsageError(
                f"log entry {index} holds envelope {header.id} from {header.sender}, "
                f"not {envelope_id} from {row.sender}"
            )
        card = terminal.party.card_of(header.sender)
        signature = Check("ok", card.fingerprint if card else "", party=header.sender)
    except _FAILED as exc:
        signature = Check("bad", str(exc), party=row.sender)
    digest = hashlib.sha256(raw).hexdigest() if raw else ""

    if checkpoint is None:
        inclusion = Check("bad", checkpoint_problem) if checkpoint_problem else Check("pending")
    elif checkpoint.size <= index:
        inclusion = Check("pending", size=checkpoint.size)
    else:
        try:
            _included(terminal, leaf, index, checkpoint)
            inclusion = Check("ok", size=checkpoint.size, party=terminal.me)
        except _FAILED as exc:
            inclusion = Check("bad", str(exc), size=checkpoint.size)

    cosigned = []
    for party in others:
        note = cosignature_notes[party]
        known = terminal.party.last_cosigned_by(party)
        card = terminal.party.card_of(party)
        if note is None or known is None or card is None:
            cosigned.append(Check("pending", party=party))
            continue
        try:
            cosigned_checkpoint = verify_checkpoint(note, terminal.identity.card)
            timestamp = verify_cosignature(cosigned_checkpoint, note, card)
        except _FAILED as exc:
            cosigned.append(Check("bad", str(exc), party=party))
            continue
        at = datetime.fromtimestamp(timestamp, UTC)
        size = cosigned_checkpoint.size  # the note kept, verified here (``known`` is memory's)
        if size <= index:
            cosigned.append(Check("pending", party=party, size=size, at=at))
            continue
        try:
            _included(terminal, leaf, index, cosigned_checkpoint)
        except _FAILED as exc:
            cosigned.append(Check("bad", str(exc), party=party, size=size, at=at))
            continue
        cosigned.append(Check("ok", party=party, size=cosigned_checkpoint.size, at=at))
    return Evidence(envelope_id, index, digest, signature, inclusion, tuple(cosigned))


BUNDLE_TYPE = "parley.evidence-bundle/v1"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _card_object(card_bytes: bytes) -> Any:
    return json.loads(card_bytes)


def evidence_bundle(
    engine: Engine,
    own_card: bytes,
    *,
    party: str,
    operator: str,
    now: datetime,
    batch: int = 2000,
) -> tuple[int, Iterator[bytes]]:
    """(log size, the chunks of the bundle's JSON): everything to re-check offline.

    The bundle is the party's card, every pinned peer's card (with the
    fingerprint it was pinned under and its TLS certificate), every log entry
    (base64) below the size read at the start, every checkpoint note of this
    terminal up to that size and every cosignature held. It is written as it
    is read, a batch of rows at a time, so a long log never sits in memory.
    """
    with reading(engine) as conn:
        last = conn.execute(select(func.max(m.log_entries.c.idx))).scalar()
        peers = [
            {
                "party": r.party,
                "fingerprint": r.fingerprint,
                "card": _card_object(bytes(r.card)),
                "tls_certificate": bytes(r.tls_certificate).decode("ascii", "replace"),
                "pinned_at": _iso(r.added_at),
            }
            for r in conn.execute(select(m.peers).order_by(m.peers.c.party))
        ]
    size = 0 if last is None else int(last) + 1
    head = {
        "type": BUNDLE_TYPE,
        "party": party,
        "exported_at": _iso(now),
        "exported_by": operator,
        "card": _card_object(own_card),
        "peers": peers,
        "log_size": size,
        "entry_encoding": "base64 of each stored entry (type byte, then the signed bytes)",
    }

    def chunks() -> Iterator[bytes]:
        opening = _json(head)
        yield (opening[:-1] + ',"entries":[').encode()
        first = True
        pending: list[str] = []
        for idx, entry in stored_entries(engine, -1, size, batch=batch):
            item = _json({"index": idx, "entry": base64.b64encode(bytes(entry)).decode("ascii")})
            pending.append(item if first else "," + item)
            first = False
            if len(pending) >= batch:
                yield "\n".join(pending).encode()
                pending = []
        if pending:
            yield "\n".join(pending).encode()
        yield b'],"checkpoints":['
        yield from _rows_json(
            engine,
            m.checkpoints.c.size,
            lambda r: {"size": r.size, "issued_at": _iso(r.issued_at), "note": r.note},
            extra=m.checkpoints.c.size <= size,
            batch=batch,
        )
        yield b'],"cosignatures":['
        yield from _rows_json(
            engine,
            m.cosignatures.c.id,
            lambda r: {
                "direction": r.direction,
                "party": r.party,
                "size": r.size,
                "at": _iso(r.at),
                "note": r.note,
            },
            batch=batch,
        )
        yield b"]}\n"

    return size, chunks()


def _rows_json(
    engine: Engine,
    key: Any,
    shape: Callable[[Any], dict[str, Any]],
    *,
    extra: Any = None,
    batch: int,
) -> Iterator[bytes]:
    """The rows of ``key``'s table in key order, as JSON array items, a batch per read."""
    table = key.table
    last: Any = None
    first = True
    while True:
        query = select(table).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        if extra is not None:
            query = query.where(extra)
        with reading(engine) as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        items = []
        for row in rows:
            item = _json(shape(row))
            items.append(item if first else "," + item)
            first = False
        yield "\n".join(items).encode()
        last = getattr(rows[-1], key.name)
