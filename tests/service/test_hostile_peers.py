"""Hostile peers against a real running terminal, on SQLite and PostgreSQL.

RU-GS runs as a real ``parley serve`` process. The attacker either holds no
pinned key at all (TLS-level attacks) or holds US-EUCOM's keys, loaded from
its key file, and speaks to RU-GS's peer listener over US-EUCOM's pinned
mutual-TLS connection with crafted bodies. US-EUCOM's own terminal is never
started, so nothing but these tests talks to RU-GS.

For every rejected request the rules are the same:

* a 4xx answer whose JSON body names the machine-readable ``error`` code;
* exactly one new security event, with that code;
* nothing else stored: RU-GS's log size and its inbox are unchanged;
* the terminal still serves: a valid envelope afterwards gets a 200 and a
  signed receipt that proves the envelope is in RU-GS's log.

One network per backend is shared by the module (starting terminals is the
slow part); every assertion is about what changed during one attack, so the
attacks do not depend on each other. The one attack that, today, leaves RU-GS
damaged for later tests runs on a network of its own.

"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from parley.config import DataDir
from parley.core.canonical import canonical_bytes
from parley.core.dsse import sign_dsse
from parley.core.encoding import b64encode, format_time, uuid7
from parley.core.envelope import ENVELOPE_PAYLOAD_TYPE, Content, Limits, seal_envelope
from parley.core.identity import HPKE_SUITE, Identity, IdentityCard
from parley.core.party import bilateral_channel
from parley.core.receipts import read_receipt, verify_receipt_inclusion
from parley.keyfile import load_identity
from parley.service import tls
from parley.service.terminal import CardBundle
from parley.testing.network import (
    PASSPHRASE,
    TerminalProcess,
    make_network,
    postgres_database,
    wait_until,
)
from tests.service.conftest import POSTGRES_ADMIN, RU, US, NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(180)]

TIMEOUT = httpx.Timeout(10.0)
"""Every request of these tests is bounded; none may hang."""

ENVELOPES = "/v1/envelopes"
JSON_HEADERS = {"content-type": "application/json"}
MAX_BODY = Limits().max_body_bytes
"""The largest envelope the core accepts (4 MiB; the terminals here keep the default)."""
LISTENER_LIMIT = MAX_BODY + 64 * 1024
"""What the peer listener reads at most before it answers 413."""

TLS_FAILURES = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


# The target: RU-GS running, and US-EUCOM's keys in the attacker's hands -------------


@dataclass(frozen=True)
class Snapshot:
    """What RU-GS has stored, as its operator API shows it."""

    last_event_id: int
    log_size: int
    inbox: list[dict[str, Any]]


@dataclass
class Target:
    backend: str
    ru: TerminalProcess
    us: Identity
    ru_card: IdentityCard
    ru_cert: bytes
    #: RU-GS's operator API, authenticated with its console token.
    console: httpx.Client
    #: The last sequence number RU-GS accepted from US-EUCOM on their channel.
    seq: int = 0
    delivered: list[str] = field(default_factory=list)

    @property
    def channel(self) -> str:
        return bilateral_channel(self.us.party, self.ru_card.party)

    def client(self, identity: Identity | None = None) -> httpx.Client:
        """An HTTPS client presenting ``identity``'s certificate (US-EUCOM's by default)."""
        context = tls.client_context(identity or self.us, self.ru_cert)
        return httpx.Client(base_url=self.ru.peer_url, verify=context, timeout=TIMEOUT)

    def api(self, path: str) -> Any:
        """GET from RU-GS's operator API (as ``TerminalProcess.api``, on one kept client)."""
        response = self.console.get("/api/v1" + path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def lookup(self, party: str) -> IdentityCard | None:
        return {self.ru_card.party: self.ru_card, self.us.party: self.us.card}.get(party)

    def seal(
        self,
        *,
        identity: Identity | None = None,
        recipients: list[IdentityCard] | None = None,
        envelope_id: str | None = None,
        channel: str | None = None,
        seq: int | None = None,
        created_at: datetime | None = None,
        text: str = "Hostile peer test",
    ) -> bytes:
        """A correctly sealed envelope; by default US-EUCOM's next text to RU-GS."""
        identity = identity or self.us
        recipients = recipients or [self.ru_card]
        now = datetime.now(UTC)
        return seal_envelope(
            identity,
            recipients,
            envelope_id=envelope_id or uuid7(now),
            channel=channel or ".".join(sorted({identity.party, *(c.party for c in recipients)})),
            seq=self.seq + 1 if seq is None else seq,
            created_at=created_at or now,
            precedence="ROUTINE",
            kind="text",
            content=Content(
                lang="en", operator="hostile-test", body={"text": text}, salt=os.urandom(16)
            ),
            exercise=False,
        )

    def snapshot(self) -> Snapshot:
        events = self.security_events()
        return Snapshot(
            last_event_id=max((e["id"] for e in events), default=0),
            log_size=self.log_size(),
            inbox=self.inbox(),
        )

    def security_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.api("/security-events")
        return events

    def events_since(self, before: Snapshot) -> list[dict[str, Any]]:
        return sorted(
            (e for e in self.security_events() if e["id"] > before.last_event_id),
            key=lambda e: int(e["id"]),
        )

    def inbox(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api("/inbox?all=true")
        return sorted(items, key=lambda m: str(m["id"]))

    def log_size(self) -> int:
        return int(self.api("/status")["log_size"])

    def assert_nothing_stored(self, before: Snapshot) -> None:
        assert self.log_size() == before.log_size, "a rejected input grew RU-GS's log"
        assert self.inbox() == before.inbox, "a rejected input changed RU-GS's inbox"

    def deliver_valid(self, *, timeout: float = 10.0) -> float:
        """Deliver US-EUCOM's next valid envelope; check the receipt; return the seconds taken."""
        raw = self.seal()
        envelope_id = payload_of(raw)["id"]
        before = self.snapshot()
        started = time.monotonic()
        with self.client() as client:
            response = client.post(
                ENVELOPES, content=raw, headers=JSON_HEADERS, timeout=httpx.Timeout(timeout)
            )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        self.seq += 1
        self.delivered.append(envelope_id)
        receipt = read_receipt(response.content, self.lookup)
        assert receipt.receiver == "RU-GS"
        assert receipt.sender == "US-EUCOM"
        assert receipt.envelope_id == envelope_id
        assert receipt.envelope_digest == hashlib.sha256(raw).hexdigest()
        assert receipt.through_seq == self.seq
        assert receipt.missing == ()
        verify_receipt_inclusion(receipt, raw)
        assert self.events_since(before) == []
        # The envelope and RU-GS's receipt for it: two entries in RU-GS's log.
        assert self.log_size() == before.log_size + 2
        inbox = self.inbox()
        assert [m["id"] for m in inbox if m not in before.inbox] == [envelope_id]
        return elapsed

    def assert_rejected(
        self, before: Snapshot, response: httpx.Response, status: int, code: str
    ) -> None:
        """The full check of one rejected request (see the module docstring)."""
        assert response.status_code == status, response.text[:500]
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error", "message"}, body
        assert isinstance(body["message"], str)
        assert body["message"]
        events = self.events_since(before)
        assert len(events) == 1, events
        assert events[0]["code"] == body["error"]
        assert events[0]["endpoint"] == "envelopes"
        assert events[0]["tls_party"] == "US-EUCOM"
        self.assert_nothing_stored(before)
        self.deliver_valid()
        # Last, so that a wrong spelling of the code still gets every other check.
        assert body["error"] == code, body


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """RU-GS running (US-EUCOM pinned but stopped), shared by the module per backend."""
    backend = str(request.param)
    with contextlib.ExitStack() as stack:
        databases = None
        if backend == "postgresql":
            databases = {
                party: stack.enter_context(postgres_database(POSTGRES_ADMIN))
                for party, _ in (US, RU)
            }
        terminals = make_network(
            tmp_path_factory.mktemp(f"hostile-{backend}"), (US, RU), databases=databases
        )
        stack.callback(terminals["RU-GS"].kill)
        yield attack(terminals, backend, stack)


def attack(
    terminals: dict[str, TerminalProcess], backend: str, stack: contextlib.ExitStack
) -> Target:
    """Start RU-GS alone and take US-EUCOM's keys: the attacker's position."""
    ru = terminals["RU-GS"]
    ru.start()
    # Two seconds after it starts, RU-GS's delivery worker queues one link
    # test message to US-EUCOM (the next one is an hour later): let that
    # entry land in its log before measuring anything.
    wait_until(
        lambda: ru.api("GET", "/status")["log_size"] >= 1,
        timeout=30,
        what="RU-GS's first link test",
    )
    bundle = CardBundle.from_json((ru.data / "card.json").read_bytes())
    us = load_identity(terminals["US-EUCOM"].data / "identity.key", PASSPHRASE)
    console = stack.enter_context(
        httpx.Client(
            base_url=ru.console_url,
            headers={
                "authorization": f"Bearer {DataDir(ru.data).read_token()}",
                "x-parley-operator": "hostile-test",
            },
            timeout=TIMEOUT,
        )
    )
    return Target(backend, ru, us, bundle.card, bundle.tls_certificate, console)


@pytest.fixture
def ru(target: Target) -> Iterator[Target]:
    """The shared target, checked to be up before and after each test."""
    if not target.ru.running:  # an earlier test brought it down: do not cascade
        target.ru.start()
    yield target
    assert target.ru.running, f"RU-GS died:\n{target.ru.output()[-3000:]}"


# Crafting envelopes -----------------------------------------------------------------


def payload_of(raw: bytes) -> dict[str, Any]:
    outer = json.loads(raw)
    payload: dict[str, Any] = json.loads(base64.b64decode(outer["payload"]))
    return payload


def seal_by_hand(t: Target, inner: bytes, *, kind: str) -> bytes:
    """US-EUCOM's next envelope to RU-GS around arbitrary inner content bytes.

    What ``seal_envelope`` does, without its checks of the content: a hostile
    sender does not run our sealing code. ``inner`` is encrypted for both
    readers with the HPKE ``info`` the protocol binds, and the payload signed.
    """
    now = datetime.now(UTC)
    envelope_id = uuid7(now)
    readers = {"RU-GS": t.ru_card, "US-EUCOM": t.us.card}
    payload = {
        "channel": t.channel,
        "ciphertexts": {
            party: b64encode(
                HPKE_SUITE.encrypt(
                    inner,
                    card.hpke_key,
                    info=f"parley/v1 envelope\n{envelope_id}\nUS-EUCOM\n{party}".encode(),
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
        "recipients": ["RU-GS"],
        "sender": "US-EUCOM",
        "seq": t.seq + 1,
        "v": 1,
    }
    return sign_payload(t.us, payload)


def inner_content(
    body: dict[str, Any], *, operator: str = "duty-officer", lang: str = "en"
) -> bytes:
    salt = b64encode(os.urandom(16))
    return canonical_bytes({"body": body, "lang": lang, "operator": operator, "salt": salt})


def payload_bytes_of(raw: bytes) -> bytes:
    return base64.b64decode(json.loads(raw)["payload"])


def sign_payload(
    identity: Identity, payload: dict[str, Any] | bytes, *, payload_type: str = ""
) -> bytes:
    """Sign ``payload`` (a dict, canonicalised, or exact bytes) as a DSSE envelope."""
    data = payload if isinstance(payload, bytes) else canonical_bytes(payload)
    return sign_dsse(
        payload_type or ENVELOPE_PAYLOAD_TYPE, data, identity.card.key_id, identity.sign_ed25519
    )


def flip_last_byte(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 0x01
    return b64encode(bytes(raw))


def now_plus(delta: timedelta) -> datetime:
    return datetime.now(UTC) + delta


def stranger(party: str = "XX-ROGUE") -> Identity:
    return Identity.generate(party, "Not pinned by anyone", now=datetime.now(UTC))


# The crafted bodies: (status, code, build). Each build returns the request body.

Build = Callable[[Target], bytes]


def unknown_sender(t: Target) -> bytes:
    rogue = stranger()
    return t.seal(identity=rogue, seq=1)


def sender_claims_to_be_the_receiver(t: Target) -> bytes:
    impostor = stranger("RU-GS")
    return t.seal(identity=impostor, recipients=[t.us.card], seq=1)


def impersonated_sender(t: Target) -> bytes:
    # A fresh key that calls itself US-EUCOM: the envelope names a key id
    # that is not the pinned key of US-EUCOM.
    return t.seal(identity=stranger("US-EUCOM"))


def impersonated_sender_with_pinned_key_id(t: Target) -> bytes:
    impostor = stranger("US-EUCOM")
    payload = payload_bytes_of(t.seal(identity=impostor))
    return sign_dsse(ENVELOPE_PAYLOAD_TYPE, payload, t.us.card.key_id, impostor.sign_ed25519)


def forged_signature(t: Target) -> bytes:
    raw = t.seal()
    outer = json.loads(raw)
    sig = bytearray(base64.b64decode(outer["signatures"][0]["sig"]))
    sig[17] ^= 0x20
    outer["signatures"][0]["sig"] = b64encode(bytes(sig))
    forged = canonical_bytes(outer)
    assert forged != raw
    assert len(forged) == len(raw)  # one signature byte differs; still canonical JSON
    return forged


def tampered_payload(t: Target) -> bytes:
    raw = t.seal()
    outer = json.loads(raw)
    payload = payload_of(raw)
    payload["precedence"] = "FLASH"  # upgraded after signing; the signature is kept
    outer["payload"] = b64encode(canonical_bytes(payload))
    return canonical_bytes(outer)


def missing_signature(t: Target) -> bytes:
    outer = json.loads(t.seal())
    outer["signatures"] = []
    return canonical_bytes(outer)


def wrong_payload_type(t: Target) -> bytes:
    return sign_payload(t.us, payload_bytes_of(t.seal()), payload_type="application/json")


def unknown_envelope_version(t: Target) -> bytes:
    payload = payload_of(t.seal())
    payload["v"] = 2
    return sign_payload(t.us, payload)


def key_id_with_a_nul(t: Target) -> bytes:
    # The key id is read before any signature is checked, and the error
    # message names it.
    outer = json.loads(t.seal())
    outer["signatures"][0]["keyid"] = "\x00" + outer["signatures"][0]["keyid"][1:]
    return canonical_bytes(outer)


def version_with_a_nul(t: Target) -> bytes:
    payload = payload_of(t.seal())
    payload["v"] = "\x00"
    return sign_payload(t.us, payload)


def not_a_recipient(t: Target) -> bytes:
    other = stranger("XX-OTHER")
    return t.seal(recipients=[other.card], seq=1)


def dated_in_the_future(t: Target) -> bytes:
    return t.seal(created_at=now_plus(timedelta(hours=1)))


def dated_before_the_senders_card(t: Target) -> bytes:
    # The core has no lower bound on an envelope's age other than the
    # validity of the sender's card, and refuses a signature dated outside it.
    return t.seal(created_at=t.us.card.valid_from - timedelta(days=1))


def corrupted_ciphertext(t: Target) -> bytes:
    payload = payload_of(t.seal())
    payload["ciphertexts"]["RU-GS"] = flip_last_byte(payload["ciphertexts"]["RU-GS"])
    return sign_payload(t.us, payload)


def ciphertext_moved_from_another_envelope(t: Target) -> bytes:
    payload = payload_of(t.seal())
    other = payload_of(t.seal(text="another envelope, another id"))
    payload["ciphertexts"]["RU-GS"] = other["ciphertexts"]["RU-GS"]
    return sign_payload(t.us, payload)


def content_digest_mismatch(t: Target) -> bytes:
    payload = payload_of(t.seal())
    payload["content_digest"] = hashlib.sha256(b"something else was said").hexdigest()
    return sign_payload(t.us, payload)


def truncated_json(t: Target) -> bytes:
    return t.seal()[:-1]


def invalid_utf8(t: Target) -> bytes:
    return b'{"payload":"\xff\xfe","payloadType":"x","signatures":[]}'


def empty_body(t: Target) -> bytes:
    return b""


def top_level_array(t: Target) -> bytes:
    return b"[]"


def indented_json(t: Target) -> bytes:
    return json.dumps(json.loads(t.seal()), indent=2, sort_keys=True).encode()


def spaced_json(t: Target) -> bytes:
    return json.dumps(json.loads(t.seal()), sort_keys=True).encode()


def byte_order_mark(t: Target) -> bytes:
    return b"\xef\xbb\xbf" + t.seal()


def duplicate_key(t: Target) -> bytes:
    raw = t.seal()
    assert raw.startswith(b'{"payload":"')
    return b'{"payload":"AAAA",' + raw[1:]


def duplicate_key_in_signed_payload(t: Target) -> bytes:
    payload = payload_bytes_of(t.seal())
    assert payload.startswith(b'{"channel":"')
    return sign_payload(t.us, b'{"channel":"XX","channel":' + payload[len(b'{"channel":') :])


def float_in_body(t: Target) -> bytes:
    return b'{"payload":1.5,"payloadType":"x","signatures":[]}'


def _replace_seq(t: Target, spelling: bytes) -> bytes:
    payload = payload_bytes_of(t.seal())
    seq = b'"seq":%d,' % (t.seq + 1)
    assert payload.count(seq) == 1
    return sign_payload(t.us, payload.replace(seq, b'"seq":' + spelling + b","))


def float_in_signed_payload(t: Target) -> bytes:
    return _replace_seq(t, b"%d.0" % (t.seq + 1))


def integer_beyond_2_53(t: Target) -> bytes:
    return _replace_seq(t, b"9007199254740993")


def nested_arrays(t: Target) -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


def nested_objects(t: Target) -> bytes:
    return b'{"a":' * 40_000 + b"1" + b"}" * 40_000


def nested_arrays_in_signed_payload(t: Target) -> bytes:
    return sign_payload(t.us, b"[" * 50_000 + b"]" * 50_000)


def body_above_the_core_limit(t: Target) -> bytes:
    # Within what the listener reads, beyond what the core accepts.
    # The text is encrypted for two readers and base64-encoded twice, so its
    # size on the wire is measured rather than guessed.
    empty, kilo = len(t.seal(text="")), len(t.seal(text="x" * 1000))
    wanted = (MAX_BODY + LISTENER_LIMIT) // 2
    body = t.seal(text="x" * ((wanted - empty) * 1000 // (kilo - empty)))
    assert MAX_BODY < len(body) < LISTENER_LIMIT
    return body


REJECTED: list[Any] = [
    # unknown party
    pytest.param(unknown_sender, 403, "unknown_sender", id="unknown-sender"),
    pytest.param(
        sender_claims_to_be_the_receiver, 403, "unknown_sender", id="sender-claims-to-be-receiver"
    ),
    pytest.param(impersonated_sender, 400, "invalid_signature", id="impersonated-sender"),
    pytest.param(
        impersonated_sender_with_pinned_key_id,
        400,
        "invalid_signature",
        id="impersonated-pinned-key-id",
    ),
    # forged or missing signature
    pytest.param(forged_signature, 400, "invalid_signature", id="forged-signature"),
    pytest.param(tampered_payload, 400, "invalid_signature", id="tampered-payload"),
    pytest.param(missing_signature, 400, "missing_signature", id="missing-signature"),
    pytest.param(wrong_payload_type, 400, "unknown_version", id="wrong-payload-type"),
    pytest.param(unknown_envelope_version, 400, "unknown_version", id="unknown-envelope-version"),
    pytest.param(key_id_with_a_nul, 400, "invalid_signature", id="key-id-with-a-nul"),
    pytest.param(version_with_a_nul, 400, "unknown_version", id="version-with-a-nul"),
    pytest.param(not_a_recipient, 403, "not_a_recipient", id="not-a-recipient"),
    # timestamps
    pytest.param(dated_in_the_future, 400, "timestamp_in_future", id="dated-1h-in-the-future"),
    pytest.param(
        dated_before_the_senders_card, 400, "invalid_signature", id="dated-before-senders-card"
    ),
    # ciphertext that does not open
    pytest.param(corrupted_ciphertext, 400, "decryption_failed", id="corrupted-ciphertext"),
    pytest.param(
        ciphertext_moved_from_another_envelope, 400, "decryption_failed", id="moved-ciphertext"
    ),
    pytest.param(content_digest_mismatch, 400, "decryption_failed", id="content-digest-mismatch"),
    # bytes that are not canonical JSON
    pytest.param(truncated_json, 400, "invalid_json", id="truncated-json"),
    pytest.param(invalid_utf8, 400, "invalid_json", id="invalid-utf8"),
    pytest.param(empty_body, 400, "invalid_json", id="empty-body"),
    pytest.param(top_level_array, 400, "schema_violation", id="top-level-array"),
    pytest.param(indented_json, 400, "non_canonical_json", id="indented-json"),
    pytest.param(spaced_json, 400, "non_canonical_json", id="spaced-json"),
    pytest.param(byte_order_mark, 400, "non_canonical_json", id="byte-order-mark"),
    pytest.param(duplicate_key, 400, "duplicate_key", id="duplicate-key"),
    pytest.param(duplicate_key_in_signed_payload, 400, "duplicate_key", id="duplicate-key-signed"),
    pytest.param(float_in_body, 400, "float_not_allowed", id="float"),
    pytest.param(float_in_signed_payload, 400, "float_not_allowed", id="float-signed"),
    pytest.param(integer_beyond_2_53, 400, "integer_out_of_range", id="integer-beyond-2^53"),
    # deep nesting
    pytest.param(nested_arrays, 400, "invalid_json", id="nested-arrays-100000"),
    pytest.param(nested_objects, 400, "invalid_json", id="nested-objects-40000"),
    pytest.param(
        nested_arrays_in_signed_payload,
        400,
        "invalid_json",
        id="nested-arrays-signed-50000",
    ),
    # size
    pytest.param(body_above_the_core_limit, 413, "body_too_large", id="body-above-core-limit"),
]


# The tests ------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "status", "code"), REJECTED)
def test_crafted_envelope_is_rejected_and_leaves_only_a_security_event(
    ru: Target, build: Build, status: int, code: str, request: pytest.FixtureRequest
) -> None:
    body = build(ru)
    before = ru.snapshot()
    with ru.client() as client:
        response = client.post(ENVELOPES, content=body, headers=JSON_HEADERS)
    ru.assert_rejected(before, response, status, code)


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_oversized_body_is_refused_with_413(ru: Target, transfer: str) -> None:
    size = LISTENER_LIMIT + 1024
    before = ru.snapshot()
    with ru.client() as client:
        if transfer == "content-length":
            response = client.post(ENVELOPES, content=b"x" * size, headers=JSON_HEADERS)
            assert response.request.headers["content-length"] == str(size)
        else:
            response = client.post(ENVELOPES, content=_chunks(size), headers=JSON_HEADERS)
            assert response.request.headers["transfer-encoding"] == "chunked"
    ru.assert_rejected(before, response, 413, "body_too_large")


def _no_client_certificate(t: Target) -> httpx.Client:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cadata=tls.certificate_der(t.ru_cert))
    return httpx.Client(base_url=t.ru.peer_url, verify=context, timeout=TIMEOUT)


def _unpinned_stranger(t: Target) -> httpx.Client:
    return t.client(stranger())


def _unpinned_key_named_us(t: Target) -> httpx.Client:
    return t.client(stranger("US-EUCOM"))


def _plain_http(t: Target) -> httpx.Client:
    return httpx.Client(base_url=t.ru.peer_url.replace("https://", "http://"), timeout=TIMEOUT)


@pytest.mark.parametrize(
    "make_client",
    [
        pytest.param(_no_client_certificate, id="no-client-certificate"),
        pytest.param(_unpinned_stranger, id="unpinned-certificate"),
        pytest.param(_unpinned_key_named_us, id="unpinned-certificate-named-US-EUCOM"),
        pytest.param(_plain_http, id="plain-http"),
    ],
)
def test_connection_without_a_pinned_client_certificate_is_refused(
    ru: Target, make_client: Callable[[Target], httpx.Client]
) -> None:
    # A perfectly valid envelope: only the connection is wrong.
    body = ru.seal()
    before = ru.snapshot()
    with make_client(ru) as client, pytest.raises(TLS_FAILURES):
        client.post(ENVELOPES, content=body, headers=JSON_HEADERS)
    ru.assert_nothing_stored(before)
    ru.deliver_valid()


def test_replayed_envelope_is_answered_again_but_logged_once(ru: Target) -> None:
    raw = ru.seal()
    first_id = payload_of(raw)["id"]
    before = ru.snapshot()
    with ru.client() as client:
        first = client.post(ENVELOPES, content=raw, headers=JSON_HEADERS)
        assert first.status_code == 200, first.text
        ru.seq += 1
        after_first = ru.snapshot()
        assert after_first.log_size == before.log_size + 2
        assert len(after_first.inbox) == len(before.inbox) + 1

        # The same bytes again: a fresh receipt for the same envelope, nothing logged.
        second = client.post(ENVELOPES, content=raw, headers=JSON_HEADERS)
        assert second.status_code == 200, second.text
        receipt = read_receipt(second.content, ru.lookup)
        assert receipt.envelope_id == first_id
        assert receipt.envelope_digest == hashlib.sha256(raw).hexdigest()
        verify_receipt_inclusion(receipt, raw)
        assert ru.events_since(after_first) == []
        ru.assert_nothing_stored(after_first)

        # The same id with other bytes (same sequence number, fresh salt).
        same_id = ru.seal(envelope_id=first_id, seq=ru.seq, text="rewritten history")
        assert same_id != raw
        rejected = client.post(ENVELOPES, content=same_id, headers=JSON_HEADERS)
    ru.assert_rejected(after_first, rejected, 409, "replayed_envelope")

    # A new envelope id that reuses an accepted sequence number.
    reused = ru.seal(seq=ru.seq)
    before = ru.snapshot()
    with ru.client() as client:
        rejected = client.post(ENVELOPES, content=reused, headers=JSON_HEADERS)
    ru.assert_rejected(before, rejected, 409, "replayed_envelope")


def test_slow_loris_connections_do_not_stall_other_peers(ru: Target) -> None:
    host, port = "127.0.0.1", ru.ru.peer_port
    before = ru.snapshot()
    held: list[socket.socket] = []
    try:
        # TCP connections that never start the TLS handshake.
        for _ in range(8):
            held.append(socket.create_connection((host, port), timeout=5))
        # Pinned TLS connections that send half a request line and headers.
        context = tls.client_context(ru.us, ru.ru_cert)
        for i in range(8):
            sock = context.wrap_socket(socket.create_connection((host, port), timeout=5))
            held.append(sock)
            sock.sendall(b"POST /v1/envelopes HTTP/1.1\r\nHost: ru-gs\r\nContent-Le"[: 20 + i * 4])
        # Pinned TLS connections with complete headers and a body that never ends.
        for _ in range(4):
            sock = context.wrap_socket(socket.create_connection((host, port), timeout=5))
            held.append(sock)
            sock.sendall(
                b"POST /v1/envelopes HTTP/1.1\r\nHost: ru-gs\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                b'{"payload":"'
            )
        time.sleep(0.5)
        # A trickle of bytes on the half-sent bodies while the real peer speaks.
        for trickle in held[-4:]:
            trickle.sendall(b"AAAA")

        elapsed = ru.deliver_valid(timeout=10.0)
        assert elapsed < 10.0
        assert all(s.fileno() != -1 for s in held)
    finally:
        for open_socket in held:
            with contextlib.suppress(OSError):
                open_socket.close()

    # Dropping the half-sent requests stores nothing and stops nothing.
    wait_until(lambda: ru.ru.running, timeout=2, what="RU-GS to stay up")
    assert ru.log_size() == before.log_size + 2
    assert [m["id"] for m in ru.inbox() if m not in before.inbox] == ru.delivered[-1:]
    ru.deliver_valid()


@pytest.mark.parametrize("field", ["operator", "lang"])
def test_nul_in_a_signed_inner_field_is_never_a_server_error(
    ru: Target, field: str, request: pytest.FixtureRequest
) -> None:
    """A validly signed envelope whose encrypted content names its operator (or
    language) with a NUL character. The core accepts it; the terminal must then
    either store it like any other message or refuse it with a 4xx and a
    security event, the same on every backend, but never answer 500."""
    values = {"operator": "duty-officer", "lang": "en"}
    values[field] = values[field][:1] + "\x00" + values[field][1:]
    raw = seal_by_hand(ru, inner_content({"text": "x"}, **values), kind="text")
    before = ru.snapshot()
    with ru.client() as client:
        response = client.post(ENVELOPES, content=raw, headers=JSON_HEADERS)
    # Control characters in the signed inner fields are refused by the core,
    # the same on every backend (PostgreSQL text cannot even hold a NUL).
    ru.assert_rejected(before, response, 400, "schema_violation")


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"n": value}
    return value


def test_deeply_nested_form_content_does_not_break_the_operator_inbox(
    network: NetworkFactory, backend: str
) -> None:
    # Its own network: once such a message is stored, RU-GS's inbox is broken
    # for every later test.
    terminals = network(start=False)
    with contextlib.ExitStack() as stack:
        ru = attack(terminals, backend, stack)
        ru.deliver_valid()
        raw = seal_by_hand(ru, inner_content({"form": nested(300)}), kind="form")
        envelope_id = payload_of(raw)["id"]
        before = ru.snapshot()
        with ru.client() as client:
            response = client.post(ENVELOPES, content=raw, headers=JSON_HEADERS)
        # The core refuses bodies nested deeper than MAX_BODY_DEPTH levels.
        ru.assert_rejected(before, response, 400, "schema_violation")
        assert envelope_id not in [m["id"] for m in ru.inbox()]
