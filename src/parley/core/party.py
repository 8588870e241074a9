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
* witnessing (``parley.core.witness``): every checkpoint of a peer's log seen
  is kept (``take_witness_changes`` hands the new ones to the caller to
  store); a peer's checkpoint is cosigned only once the witness's mirror of
  its leaf hashes has its root and every checkpoint observed agrees with the
  mirror; an offer smaller than the largest observed is a rollback, two logs
  signed by one key an equivocation: refused, kept as evidence and reported.
  Requests and offers carry ``seen``, the largest checkpoint of the other
  party's log the sender holds, which ``check_seen`` compares with this
  party's own log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    parse_canonical,
    require_keys,
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
    verify_log_head,
    witness_name,
)
from parley.core.enckeys import EncryptionKey, Keyring, read_announcement
from parley.core.encoding import Clock, check_party_id, uuid7
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
from parley.core.keychain import (
    Revocation,
    apply_revocation,
    check_successor,
    read_revocation,
)
from parley.core.ledger import Ledger, MemoryLedger, ReceivedRecord, SentRecord
from parley.core.receipts import (
    Receipt,
    Rejection,
    issue_receipt,
    read_receipt,
    verify_receipt_leaf,
)
from parley.core.sequences import HeldSequences
from parley.core.transcript import EntryType, Transcript, split_entry
from parley.core.witness import LogWitness, Observation, OfferPlan
from parley.errors import (
    CheckpointRejected,
    Equivocation,
    InvalidReceipt,
    InvalidRotation,
    InvalidSignature,
    KeyDestroyed,
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
    "CARD_ROTATION",
    "REVOCATION",
    "AckReceived",
    "CardRotated",
    "CosignatureAccepted",
    "DuplicateReceived",
    "EquivocationDetected",
    "Event",
    "GapDetected",
    "KeyAnnounced",
    "MessageReceived",
    "Outgoing",
    "Party",
    "ReceiptAccepted",
    "ReceiveResult",
    "ResumeState",
    "RollbackSeen",
    "bilateral_channel",
]

_REQUEST_TYPE = "parley.checkpoint-request/v2"
_OFFER_TYPE = "parley.checkpoint-offer/v2"
#: A request or an offer: a checkpoint note or two (about 4.7 kB each, ML-DSA-65).
_MAX_WITNESS_MESSAGE = 16 * 1024
#: The most leaf hashes a witness takes into its mirror in one round (128 MB).
MAX_MIRROR_STEP = 1 << 22


#: The key of a service message's body that announces a rotation card.
CARD_ROTATION = "card_rotation"
#: The key of a service message's body that carries a revocation (parley.core.keychain).
REVOCATION = "revocation"


def bilateral_channel(a: str, b: str) -> str:
    """The default channel name between two parties, the same on both sides."""
    return ".".join(sorted((a, b)))


def _revocation_party(data: bytes) -> str:
    """The party a revocation names (checked again when it is verified)."""
    outer = require_object(
        parse_canonical(data, max_size=16 * 1024, what="revocation"), "revocation"
    )
    statement = require_object(outer.get("revocation"), "revocation statement")
    return check_party_id(statement.get("party"), "revocation party")


# Events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    envelope: OpenedEnvelope
    log_index: int
    #: Set when the content was refused (a negative receipt was issued).
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True)
class CardRotated:
    """A peer replaced its card by a rotation card that chains to the one pinned."""

    party: str
    #: The new card, holding the chain (``history``) of the cards it replaced.
    card: IdentityCard
    #: The rotation message's ``card_rotation`` object (the card and the TLS certificate).
    announcement: dict[str, JSONValue]


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
class KeyAnnounced:
    """A peer's new current encryption key, from a service message that verified."""

    key: EncryptionKey
    envelope_id: str


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
    | KeyAnnounced
    | ReceiptAccepted
    | CosignatureAccepted
    | EquivocationDetected
    | CardRotated
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


@dataclass(frozen=True, slots=True)
class RollbackSeen:
    """A peer holds a checkpoint of this party's log that its log does not bear out."""

    peer: str
    #: The size of the checkpoint the peer holds, and of this party's log.
    seen_size: int
    own_size: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What a terminal's store says of its protocol state (see ``Party.resume``)."""

    leaves: Iterable[bytes]
    latest_checkpoint: str | None
    channels: dict[str, Sequence[str]]
    #: channel -> highest sequence number this party sent on it
    last_sent: dict[str, int]
    #: (channel, sender) -> the sequence numbers held, as (start, end) ranges
    inbound: Mapping[tuple[str, str], Sequence[tuple[int, int]]]
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
        #: Medium-term encryption keys: this party's own and its peers' current ones.
        self.keyring = Keyring()
        self._peers: dict[str, IdentityCard] = {}
        self._channels: dict[str, frozenset[str]] = {}
        self._next_seq: dict[str, int] = {}
        self._inbound: dict[tuple[str, str], HeldSequences] = {}
        self._receipted_through: dict[tuple[str, str], int] = {}
        self._witness: dict[str, LogWitness] = {}
        #: Checkpoints of peers' logs seen for the first time, for the caller to store.
        self._unsaved: list[Observation] = []
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
        self._witness.setdefault(pinned.party, LogWitness(pinned.party))
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
        _created_at: datetime | None = None,
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
        now = _created_at or self.clock()
        if kind == "form" and self.forms is not None:
            self._check_outgoing_form(body.get("form"), now)
        seq = self._next_seq.get(channel, 1)
        envelope_id = uuid7(now, self._rand)
        content = Content(lang=lang, operator=operator, body=body, salt=self._rand(16))
        keys = self.keyring.recipient_keys(recipients)
        if self.keyring.current is not None:
            keys[self.party] = self.keyring.current.key
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
            encryption_keys=keys,
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
            data,
            me=self.identity,
            lookup=self._lookup_peer,
            now=now,
            limits=self.limits,
            keys=self.keyring.private,
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
        stream = self._inbound.get(key) or HeldSequences()
        if stream.holds(header.seq):
            raise ReplayedEnvelope(
                f"{header.sender} reused sequence number {header.seq} on channel "
                f"{header.channel} for a different envelope ({header.id})"
            )
        events: list[Event] = []
        if header.kind == "ack":
            events.append(self._check_ack(opened))
        rotated = self._check_rotation(opened) if header.kind == "service" else None
        if rotated is not None:
            events.append(rotated)
            self._peers[rotated.party] = rotated.card
        announced = self._announced_key(opened)
        if announced is not None:
            events.append(KeyAnnounced(announced, header.id))
            self.keyring.adopt(announced)
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

    def _announced_key(self, opened: OpenedEnvelope) -> EncryptionKey | None:
        """The new current key a ``key`` message announces, checked; None if it is none
        (or announces the current key again). Refuses one not signed by the sender's card,
        or older than the sender's current key."""
        if opened.header.kind != "key":
            return None
        card = self._peers[opened.header.sender]  # read_envelope found it pinned
        key = read_announcement(opened.content.body["key"], card)
        return key if self.keyring.check_announcement(key) else None

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

    # Rotation and revocation ----------------------------------------------------

    def _check_rotation(self, opened: OpenedEnvelope) -> CardRotated | None:
        """A service message announcing the sender's next card: check that it chains.

        The same card again (a replayed announcement) or an older card of the
        chain changes nothing; a card that does not chain is refused.
        """
        service = opened.content.body.get("service")
        if not isinstance(service, dict) or CARD_ROTATION not in service:
            return None
        sender = opened.header.sender
        announcement = require_object(service[CARD_ROTATION], "card rotation")
        require_keys(announcement, "card rotation", {"card", "tls_certificate"})
        require_str(announcement, "tls_certificate", "card rotation", max_len=8192)
        card = IdentityCard.from_bytes(
            canonical_bytes(require_object(announcement["card"], "rotation card"))
        )
        current = self._peers[sender]
        if card.party != sender:
            raise InvalidRotation(f"{sender} announced a card of {card.party}")
        if current.for_key(card.key_id) is not None:
            return None  # already in the chain: a replay, or a rotation seen twice
        return CardRotated(sender, check_successor(current, card), announcement)

    def rotate(self, successor: Identity, announcement: dict[str, JSONValue]) -> list[Outgoing]:
        """Replace this terminal's keys by ``successor`` (a rotation card of our chain).

        The last thing the old keys sign is one service message per peer
        carrying ``announcement`` (the new card and its TLS certificate): the
        peers accept the new card by themselves because it chains to the one
        they pinned. Every later signature is the new keys'.
        """
        self._refuse_if_frozen()
        chained = check_successor(self.identity.card, successor.card)
        if successor.card.log_size != self.transcript.size:
            raise UsageError(
                f"the rotation card ends the old keys at transcript size {successor.card.log_size}"
                f", but the transcript holds {self.transcript.size} entries"
            )
        if successor.card.valid_from > self.clock():
            raise UsageError("the rotation card begins after this terminal's clock")
        # The old keys' last checkpoint is of this size: sign it now, under them.
        self.checkpoint()
        # The announcements are the old keys' last signatures: dated when the new card
        # begins (not later, or the old keys would have signed after they stopped).
        sent = [
            self.send(
                [peer],
                kind="service",
                body={"service": {CARD_ROTATION: announcement}},
                operator="terminal",
                precedence="IMMEDIATE",
                _created_at=successor.card.valid_from,
            )
            for peer in sorted(self._peers)
        ]
        self.identity = dataclasses.replace(successor, card=chained)
        return sent

    def replace_revoked_identity(self, replacement: Identity) -> None:
        """Take new keys after this terminal's card in use was revoked.

        The replacement card does not chain (no revoked key can vouch for it):
        the peers pin it by its fingerprint read aloud. The revoked chain stays
        as its history, so what it signed before the compromise still verifies.
        """
        self._refuse_if_frozen()
        current = self.identity.card
        if current.revoked is None:
            raise UsageError("the card in use is not revoked: rotate the keys instead")
        card = replacement.card
        if card.party != self.party or card.version <= current.version or card.previous:
            raise UsageError("the replacement card must be a later version of this party's card")
        history = (dataclasses.replace(current, history=()), *current.history)
        self.identity = dataclasses.replace(
            replacement, card=dataclasses.replace(card, history=history)
        )
        self._latest = None

    def adopt_chain(self, card: IdentityCard) -> None:
        """Use ``card`` (this terminal's own card, with its history) for verification."""
        if card.key_id != self.identity.card.key_id:
            raise UsageError("the chain does not end in this terminal's own card")
        self.identity = dataclasses.replace(self.identity, card=card)

    def set_peer_chain(self, card: IdentityCard) -> None:
        """Replace a pinned peer's card by ``card`` with its history (as stored)."""
        if card.party not in self._peers:
            raise UnknownPeer(f"{card.party} is not a pinned peer of {self.party}")
        self._peers[card.party] = card

    def accept_revocation(self, data: bytes) -> tuple[Revocation, IdentityCard]:
        """Verify and apply a revocation of one of a peer's (or our own) cards.

        Returns the revocation and the party's chain with it applied. Nothing
        signed by the revoked card dated after the compromise is accepted from
        now on; if the revoked card is the party's current one, no rotation can
        follow it (``check_successor``): the next card is pinned by fingerprint.
        """
        party = _revocation_party(data)
        chain = self.card_of(party)
        if chain is None:
            raise UnknownSender(f"a revocation for {party}, who is not a pinned peer")
        revocation = read_revocation(data, chain)
        revoked = apply_revocation(chain, revocation)
        if party == self.party:
            self.identity = dataclasses.replace(self.identity, card=revoked)
        else:
            self._peers[party] = revoked
        return revocation, revoked

    # Receipts -------------------------------------------------------------------

    def receive_receipt(self, data: bytes) -> ReceiptAccepted:
        """Check a receipt against what this party sent and log it once."""
        self._refuse_if_frozen()  # logging it would change a log waiting to be recovered
        receipt = read_receipt(data, self._lookup_peer)
        card = self._peers[receipt.receiver]  # read_receipt found it pinned
        signer = card.for_key(receipt.key_id)
        if signer is None:  # read_receipt found it in the chain
            raise InvalidSignature(f"the receipt from {receipt.receiver} names no key of its chain")
        # As for envelopes: a card vouches only for signatures dated in its window,
        # and a rotated-out or revoked key for none dated after it stopped.
        signer.check_signed_at(receipt.issued_at, f"the receipt from {receipt.receiver}")
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
        self._observe(receipt.receiver, receipt.checkpoint, "receipt")
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

    def held_ranges(self, channel: str, sender: str) -> list[tuple[int, int]]:
        """The sequence numbers this party holds from ``sender`` on ``channel``, as ranges."""
        stream = self._inbound.get((channel, sender))
        return stream.ranges() if stream is not None else []

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
        """Ask ``log_owner`` for its checkpoint, showing the largest one of its log held."""
        if log_owner not in self._peers:
            raise UnknownPeer(f"{log_owner} is not a pinned peer of {self.party}")
        view = self._witness.get(log_owner)
        if view is not None:
            view.request()
        return canonical_bytes(
            {
                "log": log_owner,
                "seen": self._seen_note(log_owner),
                "type": _REQUEST_TYPE,
                "witness": self.party,
            }
        )

    def _seen_note(self, owner: str) -> str | None:
        largest = self._witness[owner].largest() if owner in self._witness else None
        return largest.note if largest is not None else None

    def read_checkpoint_request(self, request: bytes) -> tuple[str, str | None]:
        """The witness that asks, and the largest checkpoint of this party's log it holds."""
        obj = require_object(
            parse_canonical(request, max_size=_MAX_WITNESS_MESSAGE, what="checkpoint request"),
            "checkpoint request",
        )
        require_keys(obj, "checkpoint request", {"log", "seen", "type", "witness"})
        if obj["type"] != _REQUEST_TYPE or obj["log"] != self.party:
            raise SchemaViolation(f"not a checkpoint request for the log of {self.party}")
        witness = require_str(obj, "witness", "checkpoint request", max_len=63)
        seen = obj["seen"]
        if seen is not None and not isinstance(seen, str):
            raise SchemaViolation("the seen field of a checkpoint request is a note or null")
        return witness, seen

    def offer_checkpoint(self, request: bytes) -> bytes:
        """Answer a witness's request with a fresh checkpoint (its leaves are fetched apart).

        The offer shows the largest checkpoint of the witness's own log this
        party holds (``seen``), so that a witness whose log was rolled back
        learns it.
        """
        witness, _ = self.read_checkpoint_request(request)
        self._refuse_if_frozen()
        checkpoint = self.checkpoint()
        return canonical_bytes(
            {
                "checkpoint": checkpoint.note,
                "seen": self._seen_note(witness) if witness in self._peers else None,
                "type": _OFFER_TYPE,
            }
        )

    def log_leaves(self, start: int, limit: int) -> list[bytes]:
        """Leaf hashes ``start`` .. ``start + limit`` of this party's log (fewer at its end)."""
        tree = self.transcript.tree
        return [tree.leaf(i) for i in range(max(0, start), min(tree.size, start + max(0, limit)))]

    def check_seen(self, peer: str, note: str | None) -> RollbackSeen | None:
        """Whether a checkpoint of this party's log that ``peer`` holds shows it rolled back.

        The note must carry this party's own signatures (else the peer's
        input is refused). A size beyond the log, or a root the tree does not
        have at that size, means the log was rolled back or replaced.
        """
        if note is None:
            return None
        checkpoint = verify_checkpoint(note, self.identity.card)
        size = self.transcript.size
        if checkpoint.size > size:
            return RollbackSeen(
                peer,
                checkpoint.size,
                size,
                f"{peer} holds checkpoint {checkpoint.size} of this terminal's log, which has "
                f"only {size} entries: the log was rolled back",
            )
        if self.transcript.tree.root_at(checkpoint.size) != checkpoint.root:
            return RollbackSeen(
                peer,
                checkpoint.size,
                size,
                f"{peer} holds checkpoint {checkpoint.size} of this terminal's log with another "
                "root than the log has at that size: the log was replaced",
            )
        return None

    def plan_witness(self, offer: bytes) -> tuple[OfferPlan, str | None]:
        """Read a peer's checkpoint offer and judge it before any leaf is fetched.

        Returns the plan (the mirror's leaves needed) and the offer's
        ``seen`` note (a checkpoint of this party's log, for ``check_seen``).
        A rollback or an equivocation raises, with its evidence kept.
        """
        obj = require_object(
            parse_canonical(offer, max_size=_MAX_WITNESS_MESSAGE, what="checkpoint offer"),
            "checkpoint offer",
        )
        require_keys(obj, "checkpoint offer", {"checkpoint", "seen", "type"})
        if obj["type"] != _OFFER_TYPE:
            raise SchemaViolation("not a checkpoint offer")
        note = require_str(obj, "checkpoint", "checkpoint offer", max_len=65536)
        seen = obj["seen"]
        if seen is not None and not isinstance(seen, str):
            raise SchemaViolation("the seen field of a checkpoint offer is a note or null")
        body, _ = parse_note(note)
        owner = body.split("\n", 1)[0].removeprefix("parley.transcript/")
        card = self._peers.get(owner)
        if card is None:
            raise UnknownSender(f"checkpoint offered for {owner[:64]}, which is not a pinned peer")
        checkpoint = verify_checkpoint(note, card)
        view = self._witness[owner]
        known = checkpoint.size in view.observed
        try:
            plan = view.plan_offer(checkpoint)
        except Equivocation as exc:
            self._keep_evidence(owner, exc)
            raise
        if not known:
            self._unsaved.append(Observation(owner, plan.checkpoint, "offer"))
        if plan.checkpoint.size - plan.start > MAX_MIRROR_STEP:
            raise CheckpointRejected(
                f"{owner} offered checkpoint {plan.checkpoint.size}, more than "
                f"{MAX_MIRROR_STEP:,} entries beyond the {plan.start} this terminal witnessed"
            )
        return plan, seen

    def cosign(self, plan: OfferPlan, leaves: Sequence[bytes]) -> bytes:
        """Take the owner's leaves into the mirror and cosign the planned checkpoint.

        Cosigns only if the mirror then ends at the checkpoint's root and
        every checkpoint of the log observed is consistent with it
        (docs/recovery.md §1, rules 2 to 4).
        """
        view = self._witness[plan.owner]
        try:
            view.extend(plan, leaves)
            view.check_cosignable(plan)
        except Equivocation as exc:
            self._keep_evidence(plan.owner, exc)
            raise
        checkpoint = plan.checkpoint
        cosigned = checkpoint.note + cosign_checkpoint(self.identity, checkpoint, self.clock())
        view.cosigned(checkpoint)
        return cosigned.encode()

    def witness(
        self, offer: bytes, leaves: Callable[[int, int], Sequence[bytes]] | None = None
    ) -> bytes:
        """Plan, fetch the leaves from ``leaves(start, limit)`` and cosign, in one call.

        For parties wired together in memory; a terminal fetches the leaves
        over the network between ``plan_witness`` and ``cosign``.
        """
        plan, _ = self.plan_witness(offer)
        needed = plan.checkpoint.size - plan.start
        got: list[bytes] = []
        if needed and leaves is not None:
            got = list(leaves(plan.start, needed))[:needed]
        return self.cosign(plan, got)

    def _observe(self, owner: str, checkpoint: Checkpoint, source: str) -> None:
        """Note a checkpoint seen in a receipt; catch a contradiction at once."""
        view = self._witness.setdefault(owner, LogWitness(owner))
        try:
            new = view.observe(checkpoint)
        except Equivocation as exc:
            self._keep_evidence(owner, exc)
            raise
        if new:
            self._unsaved.append(Observation(owner, view.observed[checkpoint.size], source))

    def _keep_evidence(self, owner: str, exc: Equivocation) -> None:
        self.evidence.append(EquivocationDetected(owner, str(exc), dict(exc.evidence)))

    def take_witness_changes(self) -> tuple[list[Observation], dict[str, tuple[int, list[bytes]]]]:
        """What to store of the witness state: new observations; new mirror leaves per owner.

        The caller stores them in the transaction it commits next (a failed
        commit rebuilds the state from the store).
        """
        observations, self._unsaved = self._unsaved, []
        leaves: dict[str, tuple[int, list[bytes]]] = {}
        for owner, view in self._witness.items():
            if view.mirror.size > view.mirror_saved:
                start = view.mirror_saved
                leaves[owner] = (start, view.leaves(start, view.mirror.size - start))
                view.mirror_saved = view.mirror.size
        return observations, leaves

    def mirror_size(self, owner: str) -> int:
        """How many of ``owner``'s leaf hashes this party holds, verified."""
        view = self._witness.get(owner)
        return view.mirror.size if view else 0

    def extend_mirror(self, owner: str, start: int, leaves: Sequence[bytes]) -> int:
        """Take ``owner``'s leaf hashes from ``start`` up to the largest checkpoint of its
        log observed that they reach, if they hash to it (they came with receipts).

        Nothing is cosigned: the mirror only grows, so that what the owner
        signed in those receipts can be put back in order should it lose its
        log. Leaves that do not hash to the checkpoint are ignored (the next
        witness round fetches and judges them). Returns the mirror's size.
        """
        view = self._witness.get(owner)
        if view is None or start != view.mirror.size:
            return self.mirror_size(owner)
        reach = start + len(leaves)
        sizes = [s for s in view.observed if start < s <= reach]
        if not sizes:
            return view.mirror.size
        target = view.observed[max(sizes)]
        plan = OfferPlan(owner, target, start, fresh=False)
        try:
            view.extend(plan, leaves[: target.size - start])
        except (CheckpointRejected, SchemaViolation):
            return view.mirror.size
        return view.mirror.size

    def mirror(self, owner: str, start: int, limit: int) -> list[bytes]:
        """Leaf hashes of ``owner``'s log from the witness mirror."""
        view = self._witness.get(owner)
        return view.leaves(start, limit) if view else []

    def observed_of(self, owner: str) -> list[Checkpoint]:
        """Every checkpoint of ``owner``'s log held, smallest first."""
        view = self._witness.get(owner)
        return [view.observed[s] for s in sorted(view.observed)] if view else []

    def largest_seen(self, owner: str) -> Checkpoint | None:
        """The largest checkpoint of ``owner``'s log held (observed or cosigned)."""
        view = self._witness.get(owner)
        return view.largest() if view else None

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
        self._inbound.setdefault(key, HeldSequences()).add(header.seq)
        self.ledger.add_received(
            ReceivedRecord(header.id, digest, index, header.channel, header.sender, header.seq)
        )
        if header.kind == "ack":
            try:
                opened = decrypt_envelope(header, self.identity, self.keyring.private)
            except KeyDestroyed:
                return  # its key is gone: the acknowledgement was checked when it came
            self._check_ack(opened)

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
            checkpoint = verify_log_head(
                self.transcript.tree, state.latest_checkpoint, self.identity.card
            )
            if checkpoint.size == self.transcript.size:
                self._latest = checkpoint
        for channel, members in state.channels.items():
            self._channels[channel] = frozenset(members)
        for channel, seq in state.last_sent.items():
            self._next_seq[channel] = seq + 1
        for key, ranges in state.inbound.items():
            self._inbound[key] = HeldSequences(ranges)
        self._receipted_through.update(state.receipted_through)

    def restore_witnessed(self, owner: str, cosigned_note: str) -> None:
        """Remember the last checkpoint of ``owner`` this party cosigned."""
        self.restore_witness(owner, [], [], cosigned_note)

    def restore_witness(
        self,
        owner: str,
        observed_notes: Iterable[str],
        leaves: Iterable[bytes],
        cosigned_note: str | None,
    ) -> None:
        """Take up the stored witness state of ``owner``'s log.

        Every note is verified under the owner's pinned card (one that does
        not verify is left out); the mirror is kept as far as a checkpoint
        bears it out, and contradictions are found again.
        """
        card = self._peers.get(owner)
        if card is None:
            raise UnknownPeer(f"{owner} is not a pinned peer of {self.party}")
        observed: list[Checkpoint] = []
        for note in observed_notes:
            try:
                observed.append(verify_checkpoint(note, card))
            except ParleyError:
                continue
        cosigned = verify_checkpoint(cosigned_note, card) if cosigned_note else None
        view = LogWitness(owner)
        view.restore(observed, leaves, cosigned)
        self._witness[owner] = view

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
