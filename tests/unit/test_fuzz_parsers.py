"""Hypothesis fuzzing of every parser of the protocol core.

Each parser is fed three kinds of input:

* arbitrary bytes, text and JSON;
* mutations of a *valid* object from a real conversation (``PartyPair``):
  bit flips, truncation, insertions, dropped or duplicated lines, deleted,
  added or replaced fields, type swaps, and the JSON re-encoded in other
  spellings;
* mutations *re-signed* with the peer's own keys, which the fuzzer holds:
  the signature then verifies, and the input reaches the checks that only an
  authenticated but hostile peer can reach (schema, sequence numbers, inner
  content, proofs, checkpoints, cosignature timestamps).

The properties:

* only ``RemoteError`` (the peer-facing family of ``ParleyError``) is ever
  raised, never ``KeyError``, ``TypeError``, ``ValueError``,
  ``RecursionError``, ``UnicodeError`` or any other exception;
* after a rejection the party under test (RU-GS) is exactly as it was: log
  size and root, what it holds from its peer, receipts, acknowledgements,
  cosignatures and what it witnessed. The only exception is a refused
  checkpoint, which keeps the evidence (``Party.evidence``), as designed;
* what is accepted is what was signed (a mutated note that still verifies
  names the same size and root, a re-signed card carries the fields signed).

The tests share one conversation per module; RU-GS is rebuilt from its
pristine records whenever an example was accepted (or left evidence), so
every example starts from the same state. The tests at the end pin down the
bugs this fuzzing found, one input each.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import hashlib
import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from parley import merkle
from parley.core.canonical import MAX_SAFE_INTEGER, canonical_bytes, parse_canonical
from parley.core.checkpoint import (
    COSIGNATURE_ED25519_TYPE,
    COSIGNATURE_MLDSA_TYPE,
    ED25519_TYPE,
    MLDSA_TYPE,
    Checkpoint,
    NoteSignature,
    cosign_checkpoint,
    key_id,
    log_origin,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from parley.core.dsse import parse_dsse, sign_dsse
from parley.core.encoding import b64encode, format_time, uuid7
from parley.core.envelope import (
    ENVELOPE_PAYLOAD_TYPE,
    Content,
    open_envelope,
    read_envelope,
    seal_envelope,
)
from parley.core.identity import HPKE_SUITE, Identity, IdentityCard
from parley.core.party import MessageReceived, Party, ReceiveResult, bilateral_channel
from parley.core.receipts import RECEIPT_PAYLOAD_TYPE, read_receipt
from parley.core.transcript import EntryType, entry_bytes
from parley.core.witness import split_leaves
from parley.errors import CheckpointRejected, MalformedInput, RemoteError
from parley.service import tls
from parley.service.peer_api import frame, split_frames
from parley.service.terminal import CardBundle
from parley.testing import ManualClock, PartyPair
from tests.scale import scaled

US = "US-EUCOM"
RU = "RU-GS"
CHANNEL = bilateral_channel(US, RU)
CHANNELS = (CHANNEL, "RU-GS.UA-GS", "TALKS", "RU-GS")
"""The channel of the conversation, and the ones the fuzzers name instead."""
T = TypeVar("T")

# ``PARLEY_FUZZ_SCALE`` scales every count (tests/scale.py): 20 for a long fuzzing run.
FUZZ = settings(
    max_examples=scaled(250),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Per test: bounded so that the whole module runs in well under a minute."""
DEEP = settings(FUZZ, max_examples=scaled(150))
"""For the tests that sign (ML-DSA) or seal (HPKE) once per example."""


# The conversation --------------------------------------------------------------------------------


def clone(template: Party) -> Party:
    """A fresh ``Party`` with exactly the records of ``template`` (as a restart builds it)."""
    party = Party(template.identity, clock=template.clock, limits=template.limits)
    for card in template.peers.values():
        party.add_peer(card, card.fingerprint)
    party.restore(template.transcript.entry(i) for i in range(template.transcript.size))
    for witness, (_, note) in template.cosignatures.items():
        party.restore_cosignature(witness, note)
    for owner in template.peers:
        last = template.last_cosigned_of(owner)
        party.restore_witness(
            owner,
            [c.note for c in template.observed_of(owner)],
            template.mirror(owner, 0, 1 << 30),
            last.note if last else None,
        )
    party.checkpoint()
    return party


@dataclass
class World:
    """RU-GS under test, and valid objects from its hostile peer US-EUCOM (whose keys we hold)."""

    clock: ManualClock
    us: Party
    template: Party
    ru: Party
    #: US-EUCOM's next text to RU-GS (seq 4), not delivered yet: RU-GS would accept it.
    new_envelope: bytes
    #: US-EUCOM's first text, delivered long ago (a duplicate).
    old_envelope: bytes
    #: US-EUCOM's acknowledgement (seq 5) of RU-GS's first message, not delivered yet.
    ack_envelope: bytes
    #: US-EUCOM's receipt for RU-GS's last message, not handed to RU-GS yet.
    fresh_receipt: bytes
    #: A receipt RU-GS already holds.
    old_receipt: bytes
    #: US-EUCOM's offer answering RU-GS's checkpoint request (a log that grew).
    offer: bytes
    #: US-EUCOM's request for a checkpoint of RU-GS's log.
    request: bytes
    #: RU-GS's latest checkpoint, cosigned by US-EUCOM (not handed to RU-GS yet).
    cosigned: bytes
    ru_checkpoint: Checkpoint
    us_checkpoint: Checkpoint
    us_ids: tuple[str, ...]
    ru_ids: tuple[str, ...]

    @property
    def us_identity(self) -> Identity:
        return self.us.identity

    @property
    def ru_card(self) -> IdentityCard:
        return self.template.identity.card

    def reset(self) -> None:
        self.ru = clone(self.template)

    def lookup(self, party: str) -> IdentityCard | None:
        return self.template.card_of(party)


def build_world() -> World:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    us, ru = pair.a, pair.b
    us_ids: list[str] = []
    ru_ids: list[str] = []
    old_receipt = b""
    for i in range(3):
        out = us.send_text([RU], f"from US {i}", operator="us-duty")
        pair.deliver(out, us)
        us_ids.append(out.envelope_id)
        clock.advance(timedelta(seconds=1))
    for i in range(2):
        out = ru.send_text([US], f"from RU {i}", operator="ru-duty", precedence="FLASH")
        _, accepted = pair.deliver(out, ru)
        old_receipt = old_receipt or accepted.receipt.raw
        ru_ids.append(out.envelope_id)
        clock.advance(timedelta(seconds=1))
    pair.witness_both()
    held = ru.send_text([US], "receipt held back", operator="ru-duty")
    ru_ids.append(held.envelope_id)
    fresh_receipt = us.receive_envelope(held.raw).receipt
    new = us.send_text([RU], "not delivered yet", operator="us-duty")
    ack = us.acknowledge(ru_ids[0], operator="us-duty")
    us_ids.extend([new.envelope_id, ack.envelope_id])
    offer = us.offer_checkpoint(ru.checkpoint_request(US))
    ru_checkpoint = ru.checkpoint()
    cosigned = ru_checkpoint.note + cosign_checkpoint(us.identity, ru_checkpoint, clock.now)
    return World(
        clock=clock,
        us=us,
        template=ru,
        ru=clone(ru),
        new_envelope=new.raw,
        old_envelope=us.sent(us_ids[0]).raw,
        ack_envelope=ack.raw,
        fresh_receipt=fresh_receipt,
        old_receipt=old_receipt,
        offer=offer,
        request=us.checkpoint_request(RU),
        cosigned=cosigned.encode(),
        ru_checkpoint=ru_checkpoint,
        us_checkpoint=us.checkpoint(),
        us_ids=tuple(us_ids),
        ru_ids=tuple(ru_ids),
    )


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


def test_the_valid_objects_are_accepted(world: World) -> None:
    """The control: every valid object the fuzzers start from is accepted as it is."""
    world.reset()
    ru = world.ru
    result = ru.receive_envelope(world.new_envelope)
    assert any(isinstance(e, MessageReceived) for e in result.events)
    assert ru.receive_envelope(world.ack_envelope).events
    assert ru.receive_receipt(world.fresh_receipt).receipt.envelope_id == world.ru_ids[-1]
    assert ru.receive_receipt(world.old_receipt).receipt.envelope_id == world.ru_ids[0]
    assert ru.accept_cosignature(world.cosigned).witness == US
    assert ru.witness(world.offer, leaves=world.us.log_leaves)
    assert ru.offer_checkpoint(world.request)
    assert IdentityCard.from_bytes(world.us_identity.card.signed_bytes).party == US
    assert CardBundle.from_json(card_file(world)).card.party == US
    world.reset()


# What must not change after a rejection ----------------------------------------------------------


def snapshot(world: World, party: Party) -> tuple[object, ...]:
    last = party.last_cosigned_of(US)
    return (
        party.transcript.size,
        party.transcript.root(),
        tuple(party.held_through(channel, US) for channel in CHANNELS),
        party.receipted_through(CHANNEL, US),
        tuple(party.received_digest(i) for i in world.us_ids),
        tuple(
            (sorted(party.receipts_for(i)), sorted(party.acks_for(i).items())) for i in world.ru_ids
        ),
        sorted((w, note) for w, (_, note) in party.cosignatures.items()),
        None if last is None else (last.size, last.root),
    )


def feed(world: World, call: Callable[[Party], object], *, observes: bool = False) -> bool:
    """Give RU-GS one hostile input; return whether it was accepted.

    Any exception but a ``RemoteError`` escapes (and fails the test). A
    rejection must leave RU-GS as it was; only a refused checkpoint may add
    evidence. After an acceptance (or new evidence) RU-GS is rebuilt, so the
    next example starts from the same state. With ``observes`` the call may
    keep a validly signed checkpoint it was offered, refused or not.
    """
    party = world.ru
    before = snapshot(world, party)
    request_before = party.checkpoint_request(US)
    evidence = len(party.evidence)
    refusal: RemoteError | None = None
    try:
        call(party)
    except RemoteError as exc:
        refusal = exc
    if refusal is None:
        event("accepted")
        world.reset()
        return True
    event(f"refused: {refusal.code}")  # --hypothesis-show-statistics shows how deep it got
    assert snapshot(world, party) == before, f"{refusal.code} left a trace in RU-GS's state"
    if len(party.evidence) != evidence or observes:
        # A refused checkpoint may leave evidence, and one validly signed is kept as observed.
        if len(party.evidence) != evidence:
            assert isinstance(refusal, CheckpointRejected), f"{refusal.code} added evidence"
        world.reset()
    else:
        assert party.checkpoint_request(US) == request_before
    return False


def attempt(what: str, call: Callable[[], T]) -> T | None:
    """Run a parser; ``None`` if it refused with a ``RemoteError`` (anything else escapes)."""
    try:
        result = call()
    except RemoteError as exc:
        event(f"{what} refused: {exc.code}")
        return None
    event(f"{what} accepted")
    return result


# Strategies --------------------------------------------------------------------------------------

PARTY_IDS = [US, RU, "UA-GS", "XX-ROGUE", CHANNEL, "us-eucom", ""]
INTERESTING_STRINGS = [
    *PARTY_IDS,
    "text",
    "ack",
    "test",
    "service",
    "FLASH",
    "ROUTINE",
    "en",
    "",
    "AAAA",
    "AA==",
    "A",
    "====",
    "0" * 64,
    "f" * 63,
    "2026-02-05T12:00:00.000Z",
    "2026-02-30T12:00:00.000Z",
    "2026-02-05T12:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "019c2dac-6a00-7298-b933-02b0bb8ff650",
    "019C2DAC-6A00-7298-B933-02B0BB8FF650",
    "00000000-0000-0000-0000-000000000000",
    ENVELOPE_PAYLOAD_TYPE,
    RECEIPT_PAYLOAD_TYPE,
    "parley.receipt/v1",
    "parley.card/v1",
    "parley.checkpoint-offer/v1",
    "parley.checkpoint-request/v1",
    "\x00",
    "\u2014",
    "\u00b2",
    "x" * 5000,
]
SMALL_INTS = st.integers(min_value=-3, max_value=5000)
"""Integers near the values of a real conversation (sequence numbers, sizes)."""
ALL_INTS = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER) | st.sampled_from(
    [0, 1, -1, 2**31, 2**32, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]
)


@functools.cache  # building a recursive strategy is dear; each is built once
def json_values(ints: st.SearchStrategy[int] = SMALL_INTS) -> st.SearchStrategy[Any]:
    """Small JSON values that canonical JSON can write (no floats, no big integers)."""
    leaves = (
        st.none()
        | st.booleans()
        | ints
        | st.text(max_size=40)
        | st.sampled_from(INTERESTING_STRINGS)
    )
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.text(max_size=8) | st.sampled_from(PARTY_IDS), children, max_size=4
            )
        ),
        max_leaves=10,
    )


Path = tuple[str | int, ...]


def _paths(value: Any, prefix: Path = ()) -> list[Path]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.extend(_paths(item, (*prefix, index)))
    return paths


def _get(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def _swap_type(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return [value] if len(value) % 2 else len(value)
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return ""


def _tweak_text(draw: st.DrawFn, text: str) -> str:
    operation = draw(st.sampled_from(["truncate", "append", "flip", "case", "insert"]))
    at = draw(st.integers(min_value=0, max_value=len(text)))
    if operation == "truncate":
        return text[:at]
    if operation == "append":
        return text + draw(st.text(min_size=1, max_size=6) | st.sampled_from(["=", "\n", " "]))
    if operation == "flip" and text:
        at = min(at, len(text) - 1)
        return text[:at] + chr(ord(text[at]) ^ (1 << draw(st.integers(0, 6)))) + text[at + 1 :]
    if operation == "case":
        return text.swapcase()
    return text[:at] + draw(st.sampled_from(["\x00", "\u2014", "\n", "A", "/", "é"])) + text[at:]


@st.composite
def mutated_json(
    draw: st.DrawFn, value: Any, ints: st.SearchStrategy[int] = SMALL_INTS, max_ops: int = 3
) -> Any:
    """``value`` with 1 to ``max_ops`` structural changes (at any depth)."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(min_value=1, max_value=max_ops))):
        path = draw(st.sampled_from(_paths(value)), label="path")
        target = _get(value, path)
        operation = draw(
            st.sampled_from(["delete", "replace", "swap", "add", "duplicate", "tweak", "empty"])
        )
        if operation == "delete" and path:
            del _get(value, path[:-1])[path[-1]]
            continue
        if operation == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=8) | st.sampled_from(PARTY_IDS))] = draw(json_values(ints))
            continue
        if operation == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
            continue
        if operation == "swap":
            new = _swap_type(target)
        elif operation == "tweak" and isinstance(target, str):
            new = _tweak_text(draw, target)
        elif operation == "tweak" and isinstance(target, int) and not isinstance(target, bool):
            new = draw(st.sampled_from([target + 1, target - 1, -target, 0]) | ints)
        elif operation == "empty":
            new = draw(st.sampled_from(["", [], {}, None, 0]))
        else:
            new = draw(json_values(ints))
        if path:
            _get(value, path[:-1])[path[-1]] = new
        else:
            value = new
    return value


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as bytes: mostly canonical JSON (to get past the parser), else other spellings."""
    choice = draw(st.integers(min_value=0, max_value=9))
    if choice <= 5:
        with contextlib.suppress(MalformedInput):
            return canonical_bytes(value)
    if choice == 6:
        return json.dumps(value).encode()
    if choice == 7:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True).encode()
    if choice == 8:
        return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    ) + draw(st.sampled_from([b"", b"\n", b" "]))


@st.composite
def mutated_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with 1 to 4 byte-level changes."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        operation = draw(
            st.sampled_from(["flip", "truncate", "insert", "delete", "replace", "repeat"])
        )
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif operation == "repeat":
            data[at:at] = data[at : at + draw(st.integers(min_value=1, max_value=16))]
        elif data:
            data[at] = draw(st.sampled_from(b'{}[]",:0123456789-eE.\\ \n\x00\xff='))
    return bytes(data)


@st.composite
def mutated_lines(draw: st.DrawFn, text: str) -> str:
    """A signed note with 1 to 3 changes to its lines (dropped, repeated, moved, altered)."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=max(len(lines) - 1, 0)))
        operation = draw(
            st.sampled_from(["drop", "repeat", "swap", "insert", "tweak", "sig", "dash"])
        )
        if operation == "drop" and lines:
            del lines[at]
        elif operation == "repeat" and lines:
            lines.insert(at, lines[at])
        elif operation == "swap" and len(lines) > 1:
            other = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif operation == "insert":
            line = draw(
                st.text(max_size=60)
                | st.builds(
                    lambda name, raw: f"\u2014 {name} {b64encode(raw)}",
                    st.sampled_from([log_origin(US), witness_name(US), witness_name(RU), "x", ""]),
                    st.binary(max_size=80),
                )
            )
            lines.insert(at, line)
        elif operation == "sig" and lines and lines[at].startswith("\u2014 "):
            dash, name, encoded_sig = [*lines[at].split(" ", 2), "", ""][:3]
            try:
                raw = bytearray(base64.b64decode(encoded_sig))
            except ValueError:
                raw = bytearray()
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
            lines[at] = f"{dash} {name} {b64encode(bytes(raw))}"
        elif operation == "dash" and lines:
            lines[at] = lines[at].replace("\u2014", draw(st.sampled_from(["-", "--", "\u2013"])))
        elif lines:
            lines[at] = _tweak_text(draw, lines[at])
    return "\n".join(lines)


def card_file(world: World) -> bytes:
    return CardBundle(world.us_identity.card, tls.certificate_for(world.us_identity)).to_json()


# Signing as the hostile peer ---------------------------------------------------------------------


def sign_envelope_payload(identity: Identity, payload: bytes) -> bytes:
    return sign_dsse(ENVELOPE_PAYLOAD_TYPE, payload, identity.card.key_id, identity.sign_ed25519)


def sign_receipt_payload(identity: Identity, payload: bytes) -> bytes:
    return sign_dsse(RECEIPT_PAYLOAD_TYPE, payload, identity.card.key_id, identity.sign_ed25519)


def payload_of(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(base64.b64decode(json.loads(raw)["payload"]))
    return result


def sign_note(identity: Identity, body: str) -> str:
    """``body`` (any text) signed as ``identity``'s checkpoint with both of its keys."""
    origin = log_origin(identity.party)
    message = body.encode()
    card = identity.card
    ed = NoteSignature(
        origin, key_id(origin, ED25519_TYPE, card.ed25519_public), identity.sign_ed25519(message)
    )
    ml = NoteSignature(
        origin, key_id(origin, MLDSA_TYPE, card.mldsa65_public), identity.sign_mldsa65(message)
    )
    return body + "\n" + ed.line() + ml.line()


def cosignature_lines(identity: Identity, body: str, ed_time: int, ml_time: int, name: str) -> str:
    """Cosignature lines made with ``identity``'s keys, for any timestamps and key name."""
    card = identity.card
    lines = ""
    for sig_type, public, sign, timestamp in (
        (COSIGNATURE_ED25519_TYPE, card.ed25519_public, identity.sign_ed25519, ed_time),
        (COSIGNATURE_MLDSA_TYPE, card.mldsa65_public, identity.sign_mldsa65, ml_time),
    ):
        message = f"cosignature/v1\ntime {timestamp}\n{body}".encode()
        signature = timestamp.to_bytes(8, "big") + sign(message)
        lines += NoteSignature(name, key_id(name, sig_type, public), signature).line()
    return lines


def seal_inner(world: World, inner: bytes, *, kind: str, seq: int) -> bytes:
    """US-EUCOM's envelope to RU-GS around any inner bytes, encrypted and signed as the
    protocol binds them (what ``seal_envelope`` does, without its checks of the content)."""
    now = world.clock.now
    envelope_id = uuid7(now)
    readers = {RU: world.ru_card, US: world.us_identity.card}
    payload = {
        "channel": CHANNEL,
        "ciphertexts": {
            party: b64encode(
                HPKE_SUITE.encrypt(
                    inner,
                    card.hpke_key,
                    info=f"parley/v1 envelope\n{envelope_id}\n{US}\n{party}".encode(),
                )
            )
            for party, card in sorted(readers.items())
        },
        "content_digest": hashlib.sha256(inner).hexdigest(),
        "created_at": format_time(now),
        "exercise": False,
        "id": envelope_id,
        "kind": kind,
        "precedence": "ROUTINE",
        "recipients": [RU],
        "sender": US,
        "seq": seq,
        "v": 1,
    }
    return sign_envelope_payload(world.us_identity, canonical_bytes(payload))


# Canonical JSON and DSSE -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_parse_canonical_refuses_arbitrary_bytes_with_malformed_input(data: bytes) -> None:
    try:
        value = parse_canonical(data)
    except MalformedInput as exc:
        event(f"refused: {exc.code}")
        return
    event("accepted")
    assert canonical_bytes(value) == data


@FUZZ
@given(st.data())
def test_parse_canonical_accepts_exactly_the_canonical_spelling(data: st.DataObject) -> None:
    value = data.draw(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**60), max_value=2**60)
            | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=6), children, max_size=4)
            ),
            max_leaves=12,
        )
    )
    raw = data.draw(encoded(value))
    if data.draw(st.booleans()):
        raw = data.draw(mutated_bytes(raw))
    try:
        parsed = parse_canonical(raw, max_size=4096)
    except MalformedInput as exc:
        event(f"refused: {exc.code}")
        return
    event("accepted")
    assert canonical_bytes(parsed) == raw


@FUZZ
@given(
    st.integers(min_value=1, max_value=5000),
    st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"a":[', b"]}")]),
)
def test_deep_nesting_is_invalid_json_never_a_recursion_error(
    depth: int, brackets: tuple[bytes, bytes]
) -> None:
    opening, closing = brackets
    data = opening * depth + b"1" + closing * depth
    try:
        parse_canonical(data)
    except MalformedInput:
        return


@FUZZ
@given(st.data())
def test_parse_dsse_refuses_mutated_wrappers_with_remote_errors(
    world: World, data: st.DataObject
) -> None:
    valid = world.new_envelope
    raw = data.draw(
        st.one_of(
            st.binary(max_size=300),
            mutated_bytes(valid),
            mutated_json(json.loads(valid), ALL_INTS).flatmap(encoded),
        )
    )
    parsed = attempt(
        "parse_dsse",
        lambda: parse_dsse(raw, payload_type=ENVELOPE_PAYLOAD_TYPE, max_size=2**18, what="x"),
    )
    if parsed is not None:
        assert parsed.raw == raw
        assert parsed.payload_type == ENVELOPE_PAYLOAD_TYPE


# Envelopes ---------------------------------------------------------------------------------------


def _every_envelope_reader(world: World, raw: bytes) -> None:
    """read_envelope, open_envelope and Party.receive_envelope on the same bytes."""
    header = attempt("read_envelope", lambda: read_envelope(raw, world.lookup))
    if header is not None:
        assert header.raw == raw
        assert header.sender == US
    opened = attempt(
        "open_envelope",
        lambda: open_envelope(
            raw, me=world.template.identity, lookup=world.lookup, now=world.clock.now
        ),
    )
    if opened is not None:
        assert opened.header.sender == US
    feed(world, lambda ru: ru.receive_envelope(raw))


@FUZZ
@given(
    st.binary(max_size=600)
    | json_values(ALL_INTS).flatmap(encoded)
    | st.sampled_from([b"", b"{}", b"[]", b"null", b'""', b"0"])
)
def test_arbitrary_bytes_as_an_envelope(world: World, raw: bytes) -> None:
    _every_envelope_reader(world, raw)


@FUZZ
@given(st.data())
def test_byte_mutations_of_valid_envelopes(world: World, data: st.DataObject) -> None:
    valid = data.draw(st.sampled_from([world.new_envelope, world.ack_envelope]))
    raw = data.draw(mutated_bytes(valid))
    _every_envelope_reader(world, raw)


@FUZZ
@given(st.data())
def test_structural_mutations_of_the_envelope_wrapper(world: World, data: st.DataObject) -> None:
    outer = json.loads(world.new_envelope)
    raw = data.draw(mutated_json(outer, ALL_INTS).flatmap(encoded))
    _every_envelope_reader(world, raw)


@FUZZ
@given(st.data())
def test_payload_changed_under_the_original_signature_is_never_accepted(
    world: World, data: st.DataObject
) -> None:
    valid = data.draw(st.sampled_from([world.new_envelope, world.ack_envelope]))
    outer = json.loads(valid)
    payload = base64.b64decode(outer["payload"])
    changed = data.draw(
        st.one_of(
            mutated_bytes(payload), mutated_json(json.loads(payload), ALL_INTS).flatmap(encoded)
        )
    )
    outer["payload"] = b64encode(changed)
    raw = canonical_bytes(outer)
    accepted = feed(world, lambda ru: ru.receive_envelope(raw))
    assert not accepted or changed == payload


@DEEP
@given(st.data())
def test_payload_mutations_signed_by_the_sender(world: World, data: st.DataObject) -> None:
    """The signature verifies: these reach every check made after it."""
    valid = data.draw(st.sampled_from([world.new_envelope, world.ack_envelope, world.old_envelope]))
    payload = payload_of(valid)
    choice = data.draw(st.integers(0, 5))
    if choice <= 2:
        changed = data.draw(retargeted(world, payload))
    else:
        changed = data.draw(mutated_json(payload, max_ops=2))
    signed = data.draw(encoded(changed))
    if choice == 5:
        signed = data.draw(mutated_bytes(signed))
    raw = sign_envelope_payload(world.us_identity, signed)
    _every_envelope_reader(world, raw)


def envelope_field_values(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """For each field of an envelope payload, values a hostile sender might sign."""
    now = world.clock.now
    card = world.us_identity.card
    times = [
        now,
        now + timedelta(minutes=9),
        now + timedelta(minutes=11),
        now - timedelta(days=30),
        card.valid_from - timedelta(seconds=1),
        card.valid_until + timedelta(seconds=1),
    ]
    payload = payload_of(world.new_envelope)
    ciphertexts = payload["ciphertexts"]
    return {
        "channel": st.sampled_from([*CHANNELS, "ru-gs.us-eucom"]),
        "ciphertexts": st.sampled_from(
            [
                {RU: ciphertexts[US], US: ciphertexts[RU]},
                {RU: ciphertexts[RU]},
                {**ciphertexts, "UA-GS": ciphertexts[RU]},
                {RU: ciphertexts[RU], US: ""},
                {RU: ciphertexts[RU][:-4], US: ciphertexts[US]},
            ]
        ),
        "content_digest": st.sampled_from(["0" * 64, "F" * 64, payload["content_digest"][:-1]]),
        "created_at": st.sampled_from([format_time(t) for t in times]),
        "exercise": st.booleans() | st.just(1),
        "id": st.sampled_from(
            [*world.us_ids, *world.ru_ids, uuid7(now), str(payload["id"]).upper()]
        ),
        "kind": st.sampled_from(["text", "form", "ack", "test", "service", "TEXT", "chat"]),
        "precedence": st.sampled_from(["FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE", "flash"]),
        "recipients": st.sampled_from(
            [[RU], [RU, "UA-GS"], ["UA-GS"], [US], [RU, US], [RU, RU], [], ["RU-GS "]]
        ),
        "sender": st.sampled_from([US, RU, "UA-GS", "XX-ROGUE"]),
        "seq": SMALL_INTS | st.sampled_from([2**31, MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1]),
        "v": st.sampled_from([1, 0, 2, True, "1", None]),
    }


@st.composite
def retargeted(draw: st.DrawFn, world: World, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with one to three fields set to plausible but wrong (or right) values."""
    values = envelope_field_values(world)
    changed = dict(payload)
    fields = draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=3, unique=True))
    for name in fields:
        changed[name] = draw(values[name])
    return changed


def inner_contents(world: World) -> st.SearchStrategy[tuple[str, bytes]]:
    """Inner content (and the envelope kind) for an envelope US-EUCOM seals by hand."""
    ack_target = world.ru_ids[0]
    digest = hashlib.sha256(world.template.sent(ack_target).raw).hexdigest()
    salt = b64encode(b"\x01" * 16)
    valid: list[tuple[str, dict[str, Any]]] = [
        ("text", {"body": {"text": "hello"}, "lang": "en", "operator": "o", "salt": salt}),
        (
            "ack",
            {
                "body": {"ack": {"digest": digest, "envelope_id": ack_target}},
                "lang": "en",
                "operator": "o",
                "salt": salt,
            },
        ),
        (
            "test",
            {"body": {"test": {"link": "primary"}}, "lang": "en", "operator": "o", "salt": salt},
        ),
        ("service", {"body": {"service": {}}, "lang": "en", "operator": "o", "salt": salt}),
    ]

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, bytes]:
        kind, inner = draw(st.sampled_from(valid))
        kind = draw(st.sampled_from([kind, kind, kind, "text", "ack", "test", "service"]))
        choice = draw(st.integers(0, 5))
        if choice == 0:
            return kind, draw(st.binary(max_size=200))
        changed = draw(mutated_json(inner, ALL_INTS, max_ops=2)) if choice > 2 else inner
        raw = draw(encoded(changed))
        if choice == 1:
            raw = draw(mutated_bytes(raw))
        return kind, raw

    return build()


@DEEP
@given(st.data())
def test_inner_content_mutations_sealed_by_the_sender(world: World, data: st.DataObject) -> None:
    kind, inner = data.draw(inner_contents(world))
    seq = data.draw(st.integers(min_value=1, max_value=8))
    raw = seal_inner(world, inner, kind=kind, seq=seq)
    _every_envelope_reader(world, raw)


def hostile_envelopes(world: World) -> st.SearchStrategy[bytes]:
    payload = payload_of(world.new_envelope)
    return st.one_of(
        st.binary(max_size=200),
        mutated_bytes(world.new_envelope),
        mutated_json(json.loads(world.new_envelope), ALL_INTS).flatmap(encoded),
        mutated_json(payload)
        .flatmap(encoded)
        .map(lambda p: sign_envelope_payload(world.us_identity, p)),
        st.sampled_from([world.old_envelope, world.new_envelope, world.ack_envelope]),
    )


@DEEP
@given(st.data())
def test_a_batch_logs_exactly_what_it_accepts(world: World, data: st.DataObject) -> None:
    batch = data.draw(st.lists(hostile_envelopes(world), min_size=1, max_size=6))
    ru = world.ru
    before = snapshot(world, ru)
    size = ru.transcript.size
    results = ru.receive_envelopes(batch)
    assert len(results) == len(batch)
    new = 0
    for raw, result in zip(batch, results, strict=True):
        if isinstance(result, RemoteError):
            continue
        assert isinstance(result, ReceiveResult)
        receipt = read_receipt(result.receipt, ru.card_of)
        assert receipt.envelope_digest == hashlib.sha256(raw).hexdigest()
        new += any(isinstance(e, MessageReceived) for e in result.events)
    # One entry for each new envelope and one for its receipt; rejections and
    # duplicates log nothing.
    assert ru.transcript.size == size + 2 * new
    if new == 0:
        assert snapshot(world, ru) == before
    world.reset()


# Receipts ----------------------------------------------------------------------------------------


def _every_receipt_reader(world: World, raw: bytes) -> None:
    receipt = attempt("read_receipt", lambda: read_receipt(raw, world.lookup))
    if receipt is not None:
        assert receipt.raw == raw
    feed(world, lambda ru: ru.receive_receipt(raw))


@FUZZ
@given(st.data())
def test_arbitrary_and_mutated_receipt_bytes(world: World, data: st.DataObject) -> None:
    valid = data.draw(st.sampled_from([world.fresh_receipt, world.old_receipt]))
    raw = data.draw(
        st.one_of(
            st.binary(max_size=400),
            json_values(ALL_INTS).flatmap(encoded),
            mutated_bytes(valid),
            mutated_json(json.loads(valid), ALL_INTS).flatmap(encoded),
        )
    )
    _every_receipt_reader(world, raw)


@DEEP
@given(st.data())
def test_receipt_payloads_signed_by_the_receiver(world: World, data: st.DataObject) -> None:
    valid = data.draw(st.sampled_from([world.fresh_receipt, world.old_receipt]))
    payload = payload_of(valid)
    choice = data.draw(st.integers(0, 4))
    if choice == 0:
        # A checkpoint of its own log that US-EUCOM really signed, for any size and root.
        size = data.draw(st.integers(min_value=0, max_value=40) | st.just(2**64 - 1))
        root = data.draw(st.binary(min_size=32, max_size=32))
        payload["checkpoint"] = sign_checkpoint(world.us_identity, size, root).note
    elif choice == 1:
        payload["checkpoint"] = data.draw(mutated_lines(payload["checkpoint"]))
    elif choice == 2:
        payload = data.draw(forked_receipt_payload(world, payload))
    elif choice == 3:
        payload = data.draw(mutated_json(payload, ALL_INTS, max_ops=2))
    if isinstance(payload, dict) and (choice == 4 or data.draw(st.integers(0, 3)) == 0):
        values = receipt_field_values(world)
        for name in data.draw(st.lists(st.sampled_from(sorted(values)), max_size=3, unique=True)):
            payload[name] = data.draw(values[name])
    signed = data.draw(encoded(payload))
    raw = sign_receipt_payload(world.us_identity, signed)
    _every_receipt_reader(world, raw)


def receipt_field_values(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """For each field of a receipt payload, values a hostile receiver might sign."""
    digests = [hashlib.sha256(world.template.sent(i).raw).hexdigest() for i in world.ru_ids]
    return {
        "channel": st.sampled_from([CHANNEL, "RU-GS.UA-GS", "x"]),
        "envelope_digest": st.sampled_from([*digests, "0" * 64, ""]),
        "envelope_id": st.sampled_from([*world.ru_ids, *world.us_ids, uuid7(world.clock.now)]),
        "inclusion": st.lists(st.binary(min_size=31, max_size=33).map(b64encode), max_size=6),
        "issued_at": st.sampled_from(["2026-02-05T12:00:00.000Z", "1970-01-01T00:00:00.000Z"]),
        "log_index": st.integers(min_value=-1, max_value=40) | ALL_INTS,
        "missing": st.lists(SMALL_INTS | st.booleans(), max_size=5) | st.just(list(range(1, 1002))),
        "receiver": st.sampled_from([US, RU, "UA-GS", "us-eucom"]),
        "sender": st.sampled_from([RU, US, "UA-GS"]),
        "through_seq": st.integers(min_value=-1, max_value=6) | ALL_INTS,
        "type": st.sampled_from(["parley.receipt/v1", "parley.receipt/v2", ""]),
        "v": st.sampled_from([1, 2, True, "1"]),
    }


@st.composite
def forked_receipt_payload(
    draw: st.DrawFn, world: World, payload: dict[str, Any]
) -> dict[str, Any]:
    """A receipt whose checkpoint US-EUCOM signed over a log of its own making that does
    hold the envelope (so the inclusion proof verifies): a fork, if RU-GS saw that size."""
    envelope_id = payload["envelope_id"]
    envelope = world.template.sent(envelope_id).raw
    cosigned = world.template.last_cosigned_of(US)
    assert cosigned is not None
    size = draw(st.just(cosigned.size) | st.integers(min_value=1, max_value=40))
    index = draw(st.integers(min_value=0, max_value=size - 1))
    seed = draw(st.binary(min_size=1, max_size=4))
    log = merkle.MerkleLog()
    for i in range(size):
        entry = entry_bytes(EntryType.ENVELOPE, envelope) if i == index else seed + bytes([i])
        log.append(merkle.leaf_hash(entry))
    return {
        **payload,
        "checkpoint": sign_checkpoint(world.us_identity, size, log.root()).note,
        "inclusion": [b64encode(h) for h in log.inclusion_proof(index, size)],
        "log_index": index,
    }


# Checkpoints and cosignatures --------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_parse_note_refuses_arbitrary_text_with_malformed_input(note: str | bytes) -> None:
    parsed = attempt("parse_note", lambda: parse_note(note))
    if parsed is not None:
        body, signatures = parsed
        assert body.endswith("\n")
        assert 1 <= len(signatures) <= 16


@FUZZ
@given(st.data())
def test_mutated_checkpoint_notes_verify_only_as_what_was_signed(
    world: World, data: st.DataObject
) -> None:
    original = world.us_checkpoint
    note = data.draw(mutated_lines(original.note))
    as_bytes = data.draw(st.booleans())
    raw: str | bytes = note.encode() if as_bytes else note
    if as_bytes and data.draw(st.booleans()):
        raw = data.draw(mutated_bytes(note.encode()))
    checkpoint = attempt(
        "verify_checkpoint", lambda: verify_checkpoint(raw, world.us_identity.card)
    )
    if checkpoint is None:
        return
    # Dropped cosignatures or added unknown lines are fine; another size or root is not.
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (
        original.origin,
        original.size,
        original.root,
    )


@DEEP
@given(st.data())
def test_checkpoint_bodies_signed_by_the_owner(world: World, data: st.DataObject) -> None:
    root = b64encode(data.draw(st.binary(min_size=30, max_size=34)))
    lines = [
        data.draw(st.sampled_from([log_origin(US), log_origin(RU), "parley.transcript/", "x"])),
        data.draw(
            st.integers(min_value=0, max_value=2**64).map(str)
            | st.sampled_from(["01", "-1", "", "1e3", "\u00b2", "18446744073709551616"])
        ),
        data.draw(st.sampled_from([root, root.rstrip("="), root + "=", ""])),
    ]
    lines.extend(
        data.draw(st.lists(st.text(max_size=20).filter(lambda s: "\n" not in s), max_size=3))
    )
    body = "\n".join(lines) + "\n"
    note = sign_note(world.us_identity, body)
    checkpoint = attempt(
        "verify_checkpoint", lambda: verify_checkpoint(note, world.us_identity.card)
    )
    if checkpoint is not None:
        assert checkpoint.body == body
        assert str(checkpoint.size) == lines[1]
        assert b64encode(checkpoint.root) == lines[2]


@FUZZ
@given(st.data())
def test_mutated_cosignatures(world: World, data: st.DataObject) -> None:
    note = data.draw(mutated_lines(world.cosigned.decode()))
    raw = note.encode()
    if data.draw(st.integers(0, 3)) == 0:
        raw = data.draw(mutated_bytes(world.cosigned))
    attempt(
        "verify_cosignature",
        lambda: verify_cosignature(world.ru_checkpoint, raw, world.us_identity.card),
    )
    feed(world, lambda ru: ru.accept_cosignature(raw))


@DEEP
@given(
    st.data(),
    st.integers(min_value=0, max_value=2**64 - 1) | st.sampled_from([0, 2**63, 2**64 - 1]),
)
def test_cosignature_lines_signed_by_the_witness(
    world: World, data: st.DataObject, ed_time: int
) -> None:
    checkpoint = world.ru_checkpoint
    ml_time = data.draw(st.sampled_from([ed_time, ed_time, 0, (ed_time + 1) % 2**64]))
    name = data.draw(
        st.sampled_from([witness_name(US), witness_name(US), witness_name(RU), log_origin(US)])
    )
    body = checkpoint.body
    if data.draw(st.integers(0, 3)) == 0:
        body = data.draw(mutated_lines(body))
    note = checkpoint.note + cosignature_lines(world.us_identity, body, ed_time, ml_time, name)
    raw = note.encode()
    when = attempt(
        "verify_cosignature", lambda: verify_cosignature(checkpoint, raw, world.us_identity.card)
    )
    if when is not None:
        assert when == ed_time == ml_time
    feed(world, lambda ru: ru.accept_cosignature(raw))


# Checkpoint requests and offers ------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_checkpoint_requests(world: World, data: st.DataObject) -> None:
    request = json.loads(world.request)
    raw = data.draw(
        st.one_of(
            st.binary(max_size=300),
            mutated_bytes(world.request),
            mutated_json(request, ALL_INTS).flatmap(encoded),
            SEEN.map(lambda seen: canonical_bytes({**request, "seen": seen})),
        )
    )
    ru = world.ru
    before = snapshot(world, ru)
    offer = attempt("offer_checkpoint", lambda: ru.offer_checkpoint(raw))
    read = attempt("read_checkpoint_request", lambda: ru.read_checkpoint_request(raw))
    if read is not None:
        attempt("check_seen", lambda: ru.check_seen(US, read[1]))
    assert snapshot(world, ru) == before  # an offer changes nothing, accepted or not
    if offer is not None:
        answer = parse_canonical(offer)
        verify_checkpoint(answer["checkpoint"], world.ru_card)


SEEN = (
    st.none()
    | ALL_INTS
    | st.text(max_size=40)
    | st.binary(min_size=32, max_size=32).map(
        lambda root: "parley.transcript/RU-GS\n7\n" + b64encode(root) + "\n"
    )
)
"""The ``seen`` field of requests and offers: a checkpoint note of the receiver's log, or null."""


@DEEP
@given(st.data())
def test_checkpoint_offers(world: World, data: st.DataObject) -> None:
    offer = json.loads(world.offer)
    choice = data.draw(st.integers(0, 4))
    if choice == 0:
        raw = data.draw(st.binary(max_size=300) | mutated_bytes(world.offer))
    else:
        if choice == 1:
            # A checkpoint US-EUCOM really signed: any size, any root (rollbacks, forks).
            size = data.draw(st.integers(min_value=0, max_value=30) | st.just(2**64 - 1))
            root = data.draw(
                st.binary(min_size=32, max_size=32) | st.just(world.us_checkpoint.root)
            )
            offer["checkpoint"] = sign_checkpoint(world.us_identity, size, root).note
        elif choice == 2:
            offer["checkpoint"] = data.draw(mutated_lines(offer["checkpoint"]))
        elif choice == 3:
            offer["seen"] = data.draw(SEEN)
        if choice == 4 or data.draw(st.booleans()):
            offer = data.draw(mutated_json(offer, ALL_INTS))
        raw = data.draw(encoded(offer))
    feed(world, lambda ru: ru.witness(raw, leaves=world.us.log_leaves), observes=True)


@FUZZ
@given(st.data())
def test_leaves_pages(world: World, data: st.DataObject) -> None:
    """A hostile page of leaf hashes: refused, or (if it is the real one) cosigned."""
    page = data.draw(
        st.binary(max_size=200)
        | st.lists(st.binary(min_size=32, max_size=32), max_size=40).map(b"".join)
    )

    def serve(start: int, limit: int) -> list[bytes]:
        return split_leaves(page, limit)

    feed(world, lambda ru: ru.witness(world.offer, leaves=serve), observes=True)


# Identity cards ----------------------------------------------------------------------------------


TIMES = [
    "2026-02-04T12:00:00.000Z",
    "2028-02-04T12:00:00.000Z",
    "2026-02-04T12:00:00Z",
    "2026-02-29T12:00:00.000Z",
    "0001-01-01T00:00:00.000Z",
    "9999-12-31T23:59:59.999Z",
    "2026-02-04T12:00:00.000+00:00",
]


def resign_card(identity: Identity, card: Any) -> bytes:
    """A card object signed with both of ``identity``'s keys (the format's signing input)."""
    with contextlib.suppress(MalformedInput):
        message = b"parley card v1\n" + canonical_bytes(card)
        signatures = {
            "ed25519": b64encode(identity.sign_ed25519(message)),
            "mldsa65": b64encode(identity.sign_mldsa65(message)),
        }
        return canonical_bytes({"card": card, "signatures": signatures})
    return b"{}"


@FUZZ
@given(st.data())
def test_arbitrary_and_mutated_card_bytes(world: World, data: st.DataObject) -> None:
    valid = world.us_identity.card.signed_bytes
    raw = data.draw(
        st.one_of(
            st.binary(max_size=300),
            mutated_bytes(valid),
            mutated_json(json.loads(valid), ALL_INTS).flatmap(encoded),
        )
    )
    card = attempt("card", lambda: IdentityCard.from_bytes(raw))
    if card is None:
        return
    assert card.signed_bytes == raw
    assert card.party == US


@DEEP
@given(st.data())
def test_cards_signed_by_their_own_keys(world: World, data: st.DataObject) -> None:
    card = json.loads(world.us_identity.card.signed_bytes)["card"]
    keys = card["keys"]
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        which = data.draw(st.sampled_from(sorted(keys)))
        raw_key = base64.b64decode(keys[which])
        keys[which] = b64encode(
            data.draw(
                st.binary(min_size=len(raw_key) - 2, max_size=len(raw_key) + 2)
                | st.just(raw_key[:-1] + bytes([raw_key[-1] ^ 1]))
            )
        )
    elif choice == 1:
        card = data.draw(mutated_json(card, ALL_INTS, max_ops=2))
    if choice == 2 or data.draw(st.integers(0, 3)) == 0:
        values = {
            "name": st.text(max_size=210) | st.sampled_from(["", "x" * 201, "\x00"]),
            "party": st.sampled_from([US, RU, "us-eucom", "", "X" * 64, 7]),
            "type": st.sampled_from(["parley.card/v1", "parley.card/v2", None]),
            "valid_from": st.sampled_from(TIMES),
            "valid_until": st.sampled_from(TIMES),
            "version": st.sampled_from([1, 2, 0, -1, True, "1", MAX_SAFE_INTEGER]),
        }
        for name in data.draw(st.lists(st.sampled_from(sorted(values)), max_size=3, unique=True)):
            if isinstance(card, dict):
                card[name] = data.draw(values[name])
    raw = resign_card(world.us_identity, card)
    parsed = attempt("card", lambda: IdentityCard.from_bytes(raw))
    if parsed is None:
        return
    assert json.loads(parsed.card_bytes) == card


@FUZZ
@given(st.data())
def test_card_files(world: World, data: st.DataObject) -> None:
    valid = card_file(world)
    obj = json.loads(valid)
    choice = data.draw(st.integers(0, 3))
    if choice == 0:
        raw = data.draw(st.binary(max_size=300) | mutated_bytes(valid))
    elif choice == 1:
        der = data.draw(mutated_bytes(tls.certificate_der(obj["tls_certificate"].encode())))
        obj["tls_certificate"] = pem_of(der)
        raw = canonical_bytes(obj)
    else:
        raw = data.draw(mutated_json(obj, ALL_INTS).flatmap(encoded))
    bundle = attempt("card file", lambda: CardBundle.from_json(raw))
    if bundle is None:
        return
    assert bundle.card.party == US


ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
"""The start of an Ed25519 SubjectPublicKeyInfo: algorithm 1.3.101.112, then the key."""


def pem_of(der: bytes) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


# The batch framing of the peer listener ----------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=64))
def test_split_frames_refuses_bad_framing_with_remote_errors(data: bytes, limit: int) -> None:
    items = attempt("split_frames", lambda: split_frames(data, limit))
    if items is None:
        return
    assert frame(items) == data
    assert all(len(item) <= limit for item in items)


@FUZZ
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8), st.data())
def test_split_frames_round_trips_and_refuses_mutations(
    items: list[bytes], data: st.DataObject
) -> None:
    framed = frame(items)
    assert split_frames(framed, 40) == items
    mutated = data.draw(mutated_bytes(framed))
    with contextlib.suppress(RemoteError):
        assert frame(split_frames(mutated, 40)) == mutated


# Bugs this fuzzing found -------------------------------------------------------------------------


def test_an_offer_of_the_first_form_with_consistency_proofs_is_refused(world: World) -> None:
    """Offers once carried consistency proofs; the witness's mirror replaced them."""
    offer = json.loads(world.offer)
    offer["proofs"] = {"1": []}
    with pytest.raises(RemoteError):
        world.ru.witness(canonical_bytes(offer), leaves=world.us.log_leaves)
    world.reset()


def test_a_deeply_nested_card_file_is_an_invalid_card() -> None:
    """Found by this fuzzing: CardBundle.from_json let json.loads's RecursionError escape."""
    raw = b'{"card":' + b"[" * 100_000 + b"]" * 100_000 + b',"tls_certificate":""}'
    with pytest.raises(RemoteError):
        CardBundle.from_json(raw)


def test_a_card_file_with_a_lone_surrogate_is_an_invalid_card() -> None:
    """Found by this fuzzing: CardBundle.from_json let rfc8785's UnicodeEncodeError escape."""
    raw = b'{"card":{"\\ud800":1},"tls_certificate":""}'
    with pytest.raises(RemoteError):
        CardBundle.from_json(raw)


def test_a_certificate_of_an_unknown_key_type_is_an_invalid_card(world: World) -> None:
    obj = json.loads(card_file(world))
    der = tls.certificate_der(obj["tls_certificate"].encode())
    assert der.count(ED25519_SPKI) == 1
    # 1.3.101.112 (Ed25519) becomes 1.2.101.112, a key type no library knows.
    obj["tls_certificate"] = pem_of(
        der.replace(ED25519_SPKI, bytes.fromhex("302a300506032a6570032100"))
    )
    with pytest.raises(RemoteError):
        CardBundle.from_json(canonical_bytes(obj))


class _CpuBudgetExceeded(BaseException):
    """Raised from SIGVTALRM: the code under test used up its CPU budget."""


@contextlib.contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Interrupt the code inside after ``seconds`` of CPU time (not wall-clock time,
    so a loaded machine does not make it fail; and not SIGALRM, pytest-timeout's)."""

    def expired(signum: int, frame: object) -> None:
        raise _CpuBudgetExceeded

    previous = signal.signal(signal.SIGVTALRM, expired)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def test_a_far_sequence_number_is_answered_at_once(world: World) -> None:
    """Found by this fuzzing: _InboundStream.missing() listed every missing sequence
    number below the highest seen, so seq 2**53-1 made the receiver loop for ever."""
    now = world.clock.now
    raw = seal_envelope(
        world.us_identity,
        [world.ru_card],
        envelope_id=uuid7(now),
        channel=CHANNEL,
        seq=MAX_SAFE_INTEGER,
        created_at=now,
        precedence="ROUTINE",
        kind="text",
        content=Content(lang="en", operator="o", body={"text": "far ahead"}),
    )
    world.reset()
    try:
        with cpu_budget(1.0):
            result = world.ru.receive_envelopes([raw])[0]
    except _CpuBudgetExceeded:
        pytest.fail("one envelope with a far sequence number took more than 1 s of CPU")
    finally:
        world.reset()
    # Either refused, or accepted with a receipt that lists a bounded gap.
    if not isinstance(result, RemoteError):
        receipt = read_receipt(result.receipt, world.lookup)
        assert 0 < len(receipt.missing) <= 1000
