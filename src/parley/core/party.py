"""One party's protocol state machine, with no I/O (in the manner of h11).

A ``Party`` is fed bytes and returns bytes and events; the caller owns every
socket, file and clock (``clock`` is passed in). Two ``Party`` objects wired
together in memory can hold a whole verifiable conversation
(``parley.testing.PartyPair`` does exactly that).

The rules it enforces, in one place:

* sending: one sequence per (channel, sender) starting at 1; a channel's
  members are fixed by its first envelope; every envelope sent is appended
  to the transcript before it is handed to the caller;
* receiving: verify, then check replay (envelope id; sequence number reused
  with other bytes), then append to the transcript, then answer with a
  signed cumulative receipt carrying a fresh checkpoint and an inclusion
  proof. A duplicate is answered again but logged once (exactly once in the
  transcript). A gap is reported in the ``GapDetected`` event and in the
  receipt's ``missing`` field;
* receipts: accepted only for an envelope this party sent to that receiver,
  with a valid checkpoint and inclusion proof;
* witnessing: a peer's checkpoint is cosigned only after a consistency proof
  from the last one cosigned; a checkpoint that rolls back or contradicts
  one seen earlier is refused, kept as evidence and reported.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from parley import merkle
from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    parse_canonical,
    require_keys,
    require_list,
    require_object,
    require_str,
)
from parley.core.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from parley.core.encoding import Clock, b64decode, b64encode, check_party_id, uuid7
from parley.core.envelope import (
    Content,
    Limits,
    OpenedEnvelope,
    decrypt_envelope,
    open_envelope,
    read_envelope,
    seal_envelope,
)
from parley.core.forms import FormRegistry, FormRejected, InvalidFormData
from parley.core.identity import Identity, IdentityCard
from parley.core.ledger import Ledger, MemoryLedger, ReceivedRecord, SentRecord
from parley.core.receipts import (
    Receipt,
    Rejection,
    issue_receipt,
    read_receipt,
    verify_receipt_leaf,
)
from parley.core.transcript import EntryType, Transcript, split_entry
from parley.errors import (
    CheckpointRejected,
    CheckpointRollback,
    Equivocation,
    InvalidReceipt,
    ParleyError,
    RemoteError,
    ReplayedEnvelope,
    RolledBack,
    SchemaViolation,
    UnknownPeer,
    UnknownSender,
    UsageError,
    VerificationError,
)

__all__ = [
    "AckReceived",
    "CosignatureAccepted",
    "DuplicateReceived",
    "EquivocationDetected",
    "Event",
    "GapDetected",
    "MessageReceived",
    "Outgoing",
    "Party",
    "ReceiptAccepted",
    "ReceiveResult",
    "ResumeState",
    "bilateral_channel",
]

_REQUEST_TYPE = "parley.checkpoint-request/v1"
_OFFER_TYPE = "parley.checkpoint-offer/v1"
_MAX_PROOF_SIZES = 64
_PROOF_SIZE = re.compile(r"0|[1-9][0-9]{0,15}")  # a log size in ASCII decimal, below 2^53
#: The most missing sequence numbers one receipt lists (as read_receipt allows).
_MAX_MISSING = 1000


def bilateral_channel(a: str, b: str) -> str:
    """The default channel name between two parties, the same on both sides."""
    return ".".join(sorted((a, b)))


# Events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    envelope: OpenedEnvelope
    log_index: int
    #: Set when the content was refused (a negative receipt was issued).
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True)
class DuplicateReceived:
    envelope_id: str
    sender: str


@dataclass(frozen=True, slots=True)
class GapDetected:
    channel: str
    sender: str
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AckReceived:
    envelope_id: str
    by: str
    operator: str
    ack_envelope_id: str


@dataclass(frozen=True, slots=True)
class ReceiptAccepted:
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class CosignatureAccepted:
    witness: str
    size: int
    note: str


@dataclass(frozen=True, slots=True)
class EquivocationDetected:
    party: str
    message: str
    evidence: dict[str, str]


Event = (
    MessageReceived
    | DuplicateReceived
    | GapDetected
    | AckReceived
    | ReceiptAccepted
    | CosignatureAccepted
    | EquivocationDetected
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    envelope_id: str
    channel: str
    seq: int
    recipients: tuple[str, ...]
    precedence: str
    raw: bytes
    log_index: int
    #: The sealed inner content, exactly as the envelope's content digest commits to it.
    content: bytes = field(default=b"", repr=False)
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    events: tuple[Event, ...]
    receipt: bytes


# Bookkeeping ----------------------------------------------------------------


@dataclass(slots=True)
class _InboundStream:
    """Sequence numbers held from one sender on one channel."""

    contiguous: int = 0
    ahead: set[int] = field(default_factory=set)
    max_seen: int = 0

    def holds(self, seq: int) -> bool:
        return seq <= self.contiguous or seq in self.ahead

    def add(self, seq: int) -> None:
        self.max_seen = max(self.max_seen, seq)
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.ahead:
                self.contiguous += 1
                self.ahead.discard(self.contiguous)
        elif seq > self.contiguous:
            self.ahead.add(seq)

    def missing(self) -> tuple[int, ...]:
        """The first missing sequence numbers (at most ``_MAX_MISSING``), lowest first.

        A sender that jumps far ahead makes a huge gap; only its beginning is
        ever listed, so the cost stays bounded whatever the sequence number.
        """
        found: list[int] = []
        seq = self.contiguous + 1
        while seq < self.max_seen and len(found) < _MAX_MISSING:
            if seq not in self.ahead:
                found.append(seq)
            seq += 1
        return tuple(found)


@dataclass(slots=True)
class _WitnessView:
    """What this party knows of one peer's log."""

    last_cosigned: Checkpoint | None = None
    observed: dict[int, Checkpoint] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What a terminal's store says of its protocol state (see ``Party.resume``)."""

    leaves: Iterable[bytes]
    latest_checkpoint: str | None
    channels: dict[str, Sequence[str]]
    #: channel -> highest sequence number this party sent on it
    last_sent: dict[str, int]
    #: (channel, sender) -> (highest contiguous sequence held, sequences held beyond it)
    inbound: dict[tuple[str, str], tuple[int, Sequence[int]]]
    #: (channel, receiver) -> highest through_seq receipted
    receipted_through: dict[tuple[str, str], int]


class Party:
    """The protocol state of one terminal."""

    def __init__(
        self,
        identity: Identity,
        *,
        clock: Clock,
        limits: Limits | None = None,
        rand: Callable[[int], bytes] = secrets.token_bytes,
        ledger: Ledger | None = None,
        entry_loader: Callable[[int], bytes] | None = None,
        forms: FormRegistry | None = None,
    ) -> None:
        self.identity = identity
        #: Form definitions: forms are checked before sending and on arrival.
        #: Without a registry (protocol tests only) form content is not checked.
        self.forms = forms
        self.clock = clock
        self.limits = limits or Limits()
        self._rand = rand
        self.transcript = Transcript(entry_loader)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self._peers: dict[str, IdentityCard] = {}
        self._channels: dict[str, frozenset[str]] = {}
        self._next_seq: dict[str, int] = {}
        self._inbound: dict[tuple[str, str], _InboundStream] = {}
        self._receipted_through: dict[tuple[str, str], int] = {}
        self._witness: dict[str, _WitnessView] = {}
        self._latest: Checkpoint | None = None
        self.cosignatures: dict[str, tuple[Checkpoint, str]] = {}
        self.evidence: list[EquivocationDetected] = []
        #: Why this party must sign nothing new (its log is behind what its peers
        #: saw: no sequence numbers, receipts or checkpoints), or None.
        self.frozen: str | None = None

    def _refuse_if_frozen(self) -> None:
        if self.frozen is not None:
            raise RolledBack(self.frozen)

    # Peers and channels -------------------------------------------------------

    @property
    def party(self) -> str:
        return self.identity.party

    def add_peer(self, card: IdentityCard, fingerprint: str) -> IdentityCard:
        """Pin ``card`` after checking the fingerprint read aloud by its owner."""
        pinned = card.pinned(fingerprint)
        if pinned.party == self.party:
            raise UsageError("a terminal cannot pin its own card as a peer")
        self._peers[pinned.party] = pinned
        self._witness.setdefault(pinned.party, _WitnessView())
        return pinned

    def card_of(self, party: str) -> IdentityCard | None:
        if party == self.party:
            return self.identity.card
        return self._peers.get(party)

    @property
    def peers(self) -> dict[str, IdentityCard]:
        return dict(self._peers)

    def _members_for(self, channel: str, recipients: Sequence[str]) -> frozenset[str]:
        members = frozenset({*recipients, self.party})
        known = self._channels.get(channel)
        if known is not None and known != members:
            raise UsageError(
                f"channel {channel} has the members {', '.join(sorted(known))}; "
                f"a message on it must go to all of them"
            )
        return members

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
    ) -> Outgoing:
        """Seal an envelope, append it to the transcript and return it for delivery."""
        self._refuse_if_frozen()
        recipients = tuple(sorted(set(to)))
        if not recipients:
            raise UsageError("name at least one recipient")
        cards = []
        for party in recipients:
            card = self._peers.get(party)
            if card is None:
                raise UnknownPeer(f"{party} is not a pinned peer of {self.party}")
            cards.append(card)
        if channel is None:
            if len(recipients) != 1:
                raise UsageError("a message to several parties needs a channel name")
            channel = bilateral_channel(self.party, recipients[0])
        check_party_id(channel, "channel name")
        members = self._members_for(channel, recipients)
        now = self.clock()
        if kind == "form" and self.forms is not None:
            self._check_outgoing_form(body.get("form"), now)
        seq = self._next_seq.get(channel, 1)
        envelope_id = uuid7(now, self._rand)
        content = Content(lang=lang, operator=operator, body=body, salt=self._rand(16))
        raw = seal_envelope(
            self.identity,
            cards,
            envelope_id=envelope_id,
            channel=channel,
            seq=seq,
            created_at=now,
            precedence=precedence,
            kind=kind,
            content=content,
            exercise=exercise,
        )
        if len(raw) > self.limits.max_body_bytes:
            raise UsageError(
                f"the sealed message is {len(raw):,} bytes, over the {self.limits.max_body_bytes:,}"
                "-byte limit a terminal accepts: split it (for an exchange, into several lists)"
            )
        self._channels[channel] = members
        self._next_seq[channel] = seq + 1
        index = self.transcript.append(EntryType.ENVELOPE, raw)
        self.ledger.add_sent(
            SentRecord(
                envelope_id,
                channel,
                seq,
                recipients,
                precedence,
                index,
                hashlib.sha256(raw).hexdigest(),
            )
        )
        return Outgoing(
            envelope_id,
            channel,
            seq,
            recipients,
            precedence,
            raw,
            index,
            content=content.to_bytes(),
            created_at=now,
        )

    def _check_outgoing_form(self, form: JSONValue, now: datetime) -> None:
        """Refuse to send what the receiver would refuse, or a notice given too late."""
        assert self.forms is not None
        try:
            definition = self.forms.check(form)
        except FormRejected as exc:
            raise InvalidFormData(
                exc.code, f"this terminal will not send it: {exc.reason}"
            ) from None
        assert isinstance(form, dict)
        self.forms.check_rules(definition, form["data"], now)

    def content_rejection(self, opened: OpenedEnvelope) -> Rejection | None:
        """Why this terminal refuses an envelope's content, or None."""
        if opened.header.kind != "form" or self.forms is None:
            return None
        try:
            self.forms.check(opened.content.body["form"])
        except FormRejected as exc:
            return Rejection(exc.code, exc.reason)
        return None

    def send_text(
        self,
        to: Sequence[str],
        text: str,
        *,
        operator: str,
        channel: str | None = None,
        precedence: str = "ROUTINE",
        exercise: bool = False,
        lang: str = "en",
    ) -> Outgoing:
        return self.send(
            to,
            kind="text",
            body={"text": text},
            operator=operator,
            channel=channel,
            precedence=precedence,
            exercise=exercise,
            lang=lang,
        )

    def acknowledge(self, envelope_id: str, *, operator: str) -> Outgoing:
        """A human acknowledgement: a signed message naming the operator who read it."""
        record = self.ledger.received(envelope_id)
        if record is None:
            raise UsageError(f"no received message {envelope_id} to acknowledge")
        members = self._channels[record.channel]
        return self.send(
            sorted(members - {self.party}),
            kind="ack",
            body={"ack": {"digest": record.digest, "envelope_id": envelope_id}},
            operator=operator,
            channel=record.channel,
            precedence="IMMEDIATE",
        )

    # Receiving envelopes ------------------------------------------------------

    def receive_envelope(self, data: bytes) -> ReceiveResult:
        """Verify, log and receipt one envelope; raise a ``RemoteError`` if bad."""
        result = self.receive_envelopes([data])[0]
        if isinstance(result, RemoteError):
            raise result
        return result

    def receive_envelopes(self, batch: Iterable[bytes]) -> list[ReceiveResult | RemoteError]:
        """Receive several envelopes under one checkpoint signature.

        Each item yields either its result or the ``RemoteError`` that
        rejected it; a rejected envelope leaves no trace in the state.
        """
        self._refuse_if_frozen()
        now = self.clock()
        staged: list[tuple[bool, ReceivedRecord, list[Event], Rejection | None] | RemoteError] = []
        for data in batch:
            try:
                staged.append(self._accept(data, now))
            except RemoteError as exc:
                staged.append(exc)
        checkpoint = self.checkpoint()
        results: list[ReceiveResult | RemoteError] = []
        for item in staged:
            if isinstance(item, RemoteError):
                results.append(item)
                continue
            is_new, record, events, rejection = item
            stream = self._inbound[(record.channel, record.sender)]
            receipt = issue_receipt(
                self.identity,
                sender=record.sender,
                channel=record.channel,
                envelope_id=record.envelope_id,
                envelope_digest=record.digest,
                through_seq=stream.contiguous,
                missing=stream.missing(),
                log_index=record.log_index,
                inclusion=self.transcript.tree.inclusion_proof(record.log_index, checkpoint.size),
                checkpoint=checkpoint,
                now=now,
                rejection=rejection,
            )
            if is_new:
                # A duplicate is answered again but its new receipt is not logged:
                # a replay flood must not grow the transcript.
                self.transcript.append(EntryType.RECEIPT, receipt)
            results.append(ReceiveResult(tuple(events), receipt))
        return results

    def _accept(
        self, data: bytes, now: datetime
    ) -> tuple[bool, ReceivedRecord, list[Event], Rejection | None]:
        """Check one envelope and record it.

        Returns (is it new, its record, events, the rejection of its content).
        Content this terminal refuses (an unknown or invalid form) is still
        logged, in order, and answered by a negative receipt.
        """
        opened = open_envelope(
            data, me=self.identity, lookup=self._lookup_peer, now=now, limits=self.limits
        )
        header = opened.header
        rejection = self.content_rejection(opened)
        if header.sender == self.party:
            raise UnknownSender(f"envelope {header.id} claims to come from this terminal")
        digest = hashlib.sha256(data).hexdigest()
        known = self.ledger.received(header.id)
        if known is not None:
            if known.digest != digest:
                raise ReplayedEnvelope(
                    f"envelope id {header.id} from {header.sender} was already received "
                    "with different bytes"
                )
            return False, known, [DuplicateReceived(header.id, header.sender)], rejection
        members = frozenset({*header.recipients, header.sender})
        known_members = self._channels.get(header.channel)
        if known_members is not None and known_members != members:
            raise SchemaViolation(
                f"envelope {header.id} names members {', '.join(sorted(members))} for channel "
                f"{header.channel}, whose members are {', '.join(sorted(known_members))}"
            )
        key = (header.channel, header.sender)
        stream = self._inbound.get(key) or _InboundStream()
        if stream.holds(header.seq):
            raise ReplayedEnvelope(
                f"{header.sender} reused sequence number {header.seq} on channel "
                f"{header.channel} for a different envelope ({header.id})"
            )
        events: list[Event] = []
        if header.kind == "ack":
            events.append(self._check_ack(opened))
        # Everything is checked: now the state changes.
        self._channels[header.channel] = members
        self._inbound[key] = stream
        before = stream.missing()
        stream.add(header.seq)
        index = self.transcript.append(EntryType.ENVELOPE, data)
        record = ReceivedRecord(header.id, digest, index, header.channel, header.sender, header.seq)
        self.ledger.add_received(record)
        events.insert(0, MessageReceived(opened, index, rejection))
        after = stream.missing()
        if after and after != before:
            events.append(GapDetected(header.channel, header.sender, after))
        return True, record, events, rejection

    def _check_ack(self, opened: OpenedEnvelope) -> AckReceived:
        ack = opened.content.body["ack"]
        assert isinstance(ack, dict)
        target = self.ledger.sent(str(ack["envelope_id"]))
        if target is None or target.digest != ack["digest"]:
            raise InvalidReceipt(
                f"{opened.header.sender} acknowledges envelope {ack['envelope_id']}, "
                "which this terminal never sent"
            )
        if opened.header.sender not in target.recipients:
            raise InvalidReceipt(
                f"{opened.header.sender} acknowledges envelope {ack['envelope_id']}, "
                "which was not addressed to it"
            )
        target.acks[opened.header.sender] = opened.content.operator
        return AckReceived(
            target.envelope_id,
            opened.header.sender,
            opened.content.operator,
            opened.header.id,
        )

    def _lookup_peer(self, party: str) -> IdentityCard | None:
        return self._peers.get(party)

    # Receipts -------------------------------------------------------------------

    def receive_receipt(self, data: bytes) -> ReceiptAccepted:
        """Check a receipt against what this party sent and log it once."""
        self._refuse_if_frozen()  # logging it would change a log waiting to be recovered
        receipt = read_receipt(data, self._lookup_peer)
        sent = self.ledger.sent(receipt.envelope_id)
        if sent is None or sent.digest != receipt.envelope_digest:
            raise InvalidReceipt(
                f"{receipt.receiver} sent a receipt for envelope {receipt.envelope_id}, "
                "which this terminal never sent"
            )
        if receipt.sender != self.party or receipt.channel != sent.channel:
            raise InvalidReceipt(
                f"the receipt from {receipt.receiver} names sender {receipt.sender} on channel "
                f"{receipt.channel}, not {self.party} on {sent.channel}"
            )
        if receipt.receiver not in sent.recipients:
            raise InvalidReceipt(
                f"{receipt.receiver} sent a receipt for envelope {sent.envelope_id}, "
                "which was not addressed to it"
            )
        highest = self._next_seq.get(sent.channel, 1) - 1
        if receipt.through_seq > highest:
            raise InvalidReceipt(
                f"{receipt.receiver} claims to hold sequence 1..{receipt.through_seq} on "
                f"{sent.channel}, but only 1..{highest} were sent"
            )
        verify_receipt_leaf(receipt, self.transcript.tree.leaf(sent.log_index))
        self._observe(receipt.receiver, receipt.checkpoint)
        # The first receipt from each receiver is logged; later ones (answers to
        # a duplicate, replays) are checked but not logged, so that a flood of
        # them cannot grow the transcript.
        if receipt.receiver not in sent.receipts:
            self.transcript.append(EntryType.RECEIPT, data)
        sent.receipts[receipt.receiver] = max(
            sent.receipts.get(receipt.receiver, 0), receipt.through_seq
        )
        key = (sent.channel, receipt.receiver)
        self._receipted_through[key] = max(self._receipted_through.get(key, 0), receipt.through_seq)
        return ReceiptAccepted(receipt)

    def held_through(self, channel: str, sender: str) -> tuple[int, tuple[int, ...]]:
        """What this party holds from ``sender`` on ``channel``: (contiguous, missing)."""
        stream = self._inbound.get((channel, sender))
        if stream is None:
            return 0, ()
        return stream.contiguous, stream.missing()

    def received_digest(self, envelope_id: str) -> str | None:
        """Hex SHA-256 of a received envelope's bytes (how an ack names it)."""
        record = self.ledger.received(envelope_id)
        return record.digest if record else None

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint this party signed, if any."""
        return self._latest

    def receipted_through(self, channel: str, receiver: str) -> int:
        return self._receipted_through.get((channel, receiver), 0)

    def sent(self, envelope_id: str) -> Outgoing:
        record = self.ledger.sent(envelope_id)
        if record is None:
            raise KeyError(envelope_id)
        raw = split_entry(self.transcript.entry(record.log_index))[1]
        return Outgoing(
            record.envelope_id,
            record.channel,
            record.seq,
            record.recipients,
            record.precedence,
            raw,
            record.log_index,
        )

    def receipts_for(self, envelope_id: str) -> dict[str, int]:
        """receiver -> the highest ``through_seq`` among its receipts for the envelope."""
        record = self.ledger.sent(envelope_id)
        return dict(record.receipts) if record else {}

    def acks_for(self, envelope_id: str) -> dict[str, str]:
        record = self.ledger.sent(envelope_id)
        return dict(record.acks) if record else {}

    def envelopes_since(
        self, channel: str, after_seq: int, *, for_party: str, limit: int = 10_000
    ) -> list[bytes]:
        """Catch-up: the envelopes this party sent on ``channel`` after ``after_seq``."""
        members = self._channels.get(channel, frozenset())
        if for_party not in members:
            return []
        return [
            split_entry(self.transcript.entry(index))[1]
            for index in self.ledger.sent_since(channel, after_seq, limit)
        ]

    # Checkpoints and witnessing ----------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The signed checkpoint of the current transcript (re-signed when it grew)."""
        size = self.transcript.size
        if self._latest is None or self._latest.size != size:
            self._refuse_if_frozen()
            self._latest = sign_checkpoint(self.identity, size, self.transcript.root())
        return self._latest

    def checkpoint_request(self, log_owner: str) -> bytes:
        """Ask ``log_owner`` for a checkpoint with the proofs this witness needs."""
        if log_owner not in self._peers:
            raise UnknownPeer(f"{log_owner} is not a pinned peer of {self.party}")
        view = self._witness[log_owner]
        # The last cosigned size always; then the most recent checkpoints seen in
        # receipts, as many as one offer may carry. Older unverified ones are
        # dropped after the round: the newest already prove the most.
        sizes = sorted(s for s in view.observed if s > 0)[-(_MAX_PROOF_SIZES - 1) :]
        if view.last_cosigned is not None and view.last_cosigned.size > 0:
            sizes = sorted({view.last_cosigned.size, *sizes})
        return canonical_bytes(
            {
                "from_sizes": sizes,
                "log": log_owner,
                "type": _REQUEST_TYPE,
                "witness": self.party,
            }
        )

    def offer_checkpoint(self, request: bytes) -> bytes:
        """Answer a witness's request with a fresh checkpoint and consistency proofs."""
        obj = require_object(
            parse_canonical(request, max_size=8192, what="checkpoint request"), "checkpoint request"
        )
        require_keys(obj, "checkpoint request", {"from_sizes", "log", "type", "witness"})
        if obj["type"] != _REQUEST_TYPE or obj["log"] != self.party:
            raise SchemaViolation(f"not a checkpoint request for the log of {self.party}")
        self._refuse_if_frozen()
        sizes = require_list(obj, "from_sizes", "checkpoint request")
        if len(sizes) > _MAX_PROOF_SIZES or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
        ):
            raise SchemaViolation("from_sizes must list up to 64 positive log sizes")
        checkpoint = self.checkpoint()
        proofs = {
            str(s): [
                b64encode(h) for h in self.transcript.tree.consistency_proof(s, checkpoint.size)
            ]
            for s in sizes
            if isinstance(s, int) and s <= checkpoint.size
        }
        return canonical_bytes(
            {"checkpoint": checkpoint.note, "proofs": proofs, "type": _OFFER_TYPE}
        )

    def witness(self, offer: bytes) -> bytes:
        """Verify a peer's checkpoint offer and return the note cosigned by this party."""
        obj = require_object(
            parse_canonical(offer, max_size=256 * 1024, what="checkpoint offer"), "checkpoint offer"
        )
        require_keys(obj, "checkpoint offer", {"checkpoint", "proofs", "type"})
        if obj["type"] != _OFFER_TYPE:
            raise SchemaViolation("not a checkpoint offer")
        note = require_str(obj, "checkpoint", "checkpoint offer", max_len=65536)
        body, _ = parse_note(note)
        owner = body.split("\n", 1)[0].removeprefix("parley.transcript/")
        card = self._peers.get(owner)
        if card is None:
            raise UnknownSender(f"checkpoint offered for {owner[:64]}, which is not a pinned peer")
        checkpoint = verify_checkpoint(note, card)
        raw_proofs = require_object(obj["proofs"], "checkpoint offer proofs")
        proofs: dict[int, list[bytes]] = {}
        for size_text, hashes in raw_proofs.items():
            if (
                not _PROOF_SIZE.fullmatch(size_text)
                or not isinstance(hashes, list)
                or len(hashes) > 64
            ):
                raise SchemaViolation("checkpoint offer proofs are malformed")
            proofs[int(size_text)] = [b64decode(h, "consistency proof hash") for h in hashes]
        view = self._witness[owner]
        last = view.last_cosigned
        if last is not None:
            if checkpoint.size < last.size:
                self._raise_equivocation(
                    owner,
                    CheckpointRollback,
                    f"{owner} offered checkpoint {checkpoint.size}, smaller than checkpoint "
                    f"{last.size} already cosigned: its log would have rolled back",
                    last,
                    checkpoint,
                )
            self._check_consistent(owner, last, checkpoint, proofs, required=True)
        self._observe(owner, checkpoint)
        for size, seen in sorted(view.observed.items()):
            if size < checkpoint.size:
                self._check_consistent(owner, seen, checkpoint, proofs, required=False)
        cosigned = note + cosign_checkpoint(self.identity, checkpoint, self.clock())
        view.last_cosigned = checkpoint
        view.observed = {s: c for s, c in view.observed.items() if s > checkpoint.size}
        return cosigned.encode()

    def _check_consistent(
        self,
        owner: str,
        old: Checkpoint,
        new: Checkpoint,
        proofs: dict[int, list[bytes]],
        *,
        required: bool,
    ) -> None:
        if old.size == new.size:
            if old.root != new.root:
                self._raise_equivocation(
                    owner,
                    Equivocation,
                    f"{owner} signed two different logs of size {new.size}",
                    old,
                    new,
                )
            return
        if old.size == 0:
            return  # the empty log is a prefix of every log (RFC 9162 has no proof for it)
        proof = proofs.get(old.size)
        if proof is None:
            if required:
                raise CheckpointRejected(
                    f"{owner} offered checkpoint {new.size} without the consistency proof "
                    f"from checkpoint {old.size}, which this witness cosigned"
                )
            return
        try:
            merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
        except VerificationError as exc:
            self._raise_equivocation(
                owner,
                Equivocation,
                f"{owner}'s checkpoint {new.size} is not an extension of its checkpoint "
                f"{old.size}: {exc}",
                old,
                new,
                proof=proof,
            )

    def _observe(self, owner: str, checkpoint: Checkpoint) -> None:
        """Note a checkpoint seen in a receipt; catch same-size contradictions at once."""
        view = self._witness.setdefault(owner, _WitnessView())
        for seen in (view.last_cosigned, view.observed.get(checkpoint.size)):
            if seen is not None and seen.size == checkpoint.size and seen.root != checkpoint.root:
                self._raise_equivocation(
                    owner,
                    Equivocation,
                    f"{owner} signed two different logs of size {checkpoint.size}",
                    seen,
                    checkpoint,
                )
        if view.last_cosigned is None or checkpoint.size != view.last_cosigned.size:
            view.observed.setdefault(checkpoint.size, checkpoint)

    def _raise_equivocation(
        self,
        owner: str,
        error: type[CheckpointRejected],
        message: str,
        old: Checkpoint,
        new: Checkpoint,
        proof: Sequence[bytes] = (),
    ) -> None:
        evidence = {"earlier": old.note, "later": new.note}
        if proof:
            evidence["proof"] = " ".join(b64encode(h) for h in proof)
        self.evidence.append(EquivocationDetected(owner, message, evidence))
        if issubclass(error, Equivocation):
            raise error(message, evidence=evidence)
        raise error(message)

    def accept_cosignature(self, data: bytes) -> CosignatureAccepted:
        """Verify and keep a peer's cosignature on one of our checkpoints."""
        _, signatures = parse_note(data)
        # Our own two signatures on it prove we issued it; nothing to remember.
        try:
            checkpoint = verify_checkpoint(data, self.identity.card)
        except ParleyError:
            checkpoint = None
        if (
            checkpoint is None
            or checkpoint.size > self.transcript.size
            or self.transcript.tree.root_at(checkpoint.size) != checkpoint.root
        ):
            raise SchemaViolation("the cosigned note is not a checkpoint this terminal issued")
        own_lines = "".join(s.line() for s in signatures if s.name == checkpoint.origin)
        checkpoint = Checkpoint(
            checkpoint.origin,
            checkpoint.size,
            checkpoint.root,
            checkpoint.body,
            checkpoint.body + "\n" + own_lines,
        )
        names = {s.name for s in signatures}
        for party, card in self._peers.items():
            if witness_name(party) in names:
                verify_cosignature(checkpoint, data, card)
                note = data.decode()
                self.cosignatures[party] = (checkpoint, note)
                return CosignatureAccepted(party, checkpoint.size, note)
        raise UnknownSender("the cosigned note carries no cosignature from a pinned peer")

    # Restoring from stored records ------------------------------------------

    def restore(self, entries: Iterable[bytes]) -> None:
        """Rebuild the state of a fresh ``Party`` from its own transcript entries.

        A terminal that restarts pins its peers, then replays the entries it
        stored, in log order. Every signature is checked again; an entry that
        does not verify raises, since a terminal must not run on a damaged
        record.
        """
        if self.transcript.size:
            raise UsageError("restore() needs a Party with an empty transcript")
        for entry in entries:
            kind, raw = split_entry(entry)
            index = self.transcript.append(kind, raw)
            if kind is EntryType.ENVELOPE:
                self._restore_envelope(raw, index)
            else:
                self._restore_receipt(raw)

    def append_recovered(self, entry: bytes) -> int:
        """Append one entry of this party's own log recovered from its peers.

        The entry is checked as on restore (signatures, the receipt against
        the envelope it answers) before anything changes; its index is
        returned. Works while frozen: recovery puts back what was signed
        before, it signs nothing new.
        """
        kind, raw = split_entry(entry)
        if kind is EntryType.ENVELOPE:
            header = read_envelope(raw, self.card_of, self.limits)
            if header.sender != self.party and self.party not in header.recipients:
                raise VerificationError(
                    f"recovered envelope {header.id} is neither from nor to {self.party}"
                )
            if header.sender == self.party and self.ledger.sent(header.id) is not None:
                raise VerificationError(f"recovered envelope {header.id} is already in the log")
            if header.sender != self.party and self.ledger.received(header.id) is not None:
                raise VerificationError(f"recovered envelope {header.id} is already in the log")
            index = self.transcript.append(kind, raw)
            self._restore_envelope(raw, index)
            return index
        receipt = read_receipt(raw, self.card_of)
        sent = self.ledger.sent(receipt.envelope_id)
        if receipt.receiver != self.party and (
            sent is None or sent.digest != receipt.envelope_digest
        ):
            raise VerificationError(
                f"recovered receipt from {receipt.receiver} answers envelope "
                f"{receipt.envelope_id}, which is not in this log"
            )
        index = self.transcript.append(kind, raw)
        self._restore_receipt(raw)
        return index

    def _restore_envelope(self, raw: bytes, index: int) -> None:
        header = read_envelope(raw, self.card_of, self.limits)
        digest = hashlib.sha256(raw).hexdigest()
        self._channels[header.channel] = frozenset({*header.recipients, header.sender})
        if header.sender == self.party:
            self.ledger.add_sent(
                SentRecord(
                    header.id,
                    header.channel,
                    header.seq,
                    header.recipients,
                    header.precedence,
                    index,
                    digest,
                )
            )
            self._next_seq[header.channel] = max(
                self._next_seq.get(header.channel, 1), header.seq + 1
            )
            return
        key = (header.channel, header.sender)
        self._inbound.setdefault(key, _InboundStream()).add(header.seq)
        self.ledger.add_received(
            ReceivedRecord(header.id, digest, index, header.channel, header.sender, header.seq)
        )
        if header.kind == "ack":
            self._check_ack(decrypt_envelope(header, self.identity))

    def _restore_receipt(self, raw: bytes) -> None:
        receipt = read_receipt(raw, self.card_of)
        if receipt.receiver == self.party:
            return  # a receipt this terminal issued
        sent = self.ledger.sent(receipt.envelope_id)
        if sent is None:
            raise InvalidReceipt(f"stored receipt for unknown envelope {receipt.envelope_id}")
        sent.receipts[receipt.receiver] = max(
            sent.receipts.get(receipt.receiver, 0), receipt.through_seq
        )
        key = (sent.channel, receipt.receiver)
        self._receipted_through[key] = max(self._receipted_through.get(key, 0), receipt.through_seq)

    def resume(self, state: ResumeState) -> None:
        """Take up where a stored terminal left off, without replaying its entries.

        The caller's ledger holds the records; ``state`` gives the leaf hash of
        every entry and the per-channel counters. The tree rebuilt from the
        leaves must have the root of the last checkpoint this party signed:
        a store whose entries and checkpoints disagree is refused.
        """
        if self.transcript.size:
            raise UsageError("resume() needs a Party with an empty transcript")
        for leaf in state.leaves:
            self.transcript.append_leaf(leaf)
        if state.latest_checkpoint is not None:
            checkpoint = verify_checkpoint(state.latest_checkpoint, self.identity.card)
            if checkpoint.size > self.transcript.size or (
                self.transcript.tree.root_at(checkpoint.size) != checkpoint.root
            ):
                raise VerificationError(
                    f"the stored transcript does not hash to this terminal's own checkpoint "
                    f"{checkpoint.size}: its records were changed or lost; run parley verify"
                )
            if checkpoint.size == self.transcript.size:
                self._latest = checkpoint
        for channel, members in state.channels.items():
            self._channels[channel] = frozenset(members)
        for channel, seq in state.last_sent.items():
            self._next_seq[channel] = seq + 1
        for key, seqs in state.inbound.items():
            stream = _InboundStream()
            contiguous, ahead = seqs
            stream.contiguous = contiguous
            stream.max_seen = max([contiguous, *ahead])
            stream.ahead = set(ahead)
            self._inbound[key] = stream
        self._receipted_through.update(state.receipted_through)

    def restore_witnessed(self, owner: str, cosigned_note: str) -> None:
        """Remember the last checkpoint of ``owner`` this party cosigned."""
        card = self._peers.get(owner)
        if card is None:
            raise UnknownPeer(f"{owner} is not a pinned peer of {self.party}")
        self._witness[owner].last_cosigned = verify_checkpoint(cosigned_note, card)

    def restore_cosignature(self, witness: str, cosigned_note: str) -> None:
        """Remember ``witness``'s cosignature on one of this party's checkpoints."""
        card = self._peers.get(witness)
        if card is None:
            raise UnknownPeer(f"{witness} is not a pinned peer of {self.party}")
        checkpoint = verify_checkpoint(cosigned_note, self.identity.card)
        verify_cosignature(checkpoint, cosigned_note, card)
        self.cosignatures[witness] = (checkpoint, cosigned_note)

    def last_cosigned_by(self, witness: str) -> Checkpoint | None:
        entry = self.cosignatures.get(witness)
        return entry[0] if entry else None

    def last_cosigned_of(self, owner: str) -> Checkpoint | None:
        view = self._witness.get(owner)
        return view.last_cosigned if view else None
