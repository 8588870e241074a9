"""Attacks a pinned peer could try on a real terminal, one test each, on SQLite and PostgreSQL.

These complement ``test_hostile_peers.py``, which already covers replays, a
bit-flipped or missing signature, impersonation, malformed and non-canonical
JSON, oversized and deeply nested envelopes and slow-loris connections.

RU-GS runs as a real ``parley serve`` process. US-EUCOM's terminal is never
started: its keys are in the attacker's hands, that is, this test's, which

* speaks to RU-GS's peer listener over US-EUCOM's pinned mutual-TLS
  connection, with envelopes from US-EUCOM's ``Party`` (kept here) or crafted;
* plays US-EUCOM's own peer listener (``FakePeer``: an HTTPS server on
  US-EUCOM's address, with US-EUCOM's certificate, that accepts only RU-GS's).
  What RU-GS's delivery worker gets back, the receipts for its messages, the
  checkpoints it witnesses and the catch-up answers, is the attacker's to
  choose. It answers honestly unless a test arms an attack, which then fires
  once.

For each attack: the right refusal (a 4xx with its ``error`` code where RU-GS
answers a request; for the answers RU-GS gets, the refusal of what it was
given), a security event or an alarm with evidence, nothing stored as if it
were valid, and a terminal that still serves (a valid envelope afterwards is
receipted, and witnessing goes on).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, make_url, select

from parley import merkle
from parley.config import DataDir
from parley.core.canonical import canonical_bytes
from parley.core.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from parley.core.dsse import pae
from parley.core.encoding import b64encode, uuid7
from parley.core.envelope import Content, read_envelope, seal_envelope
from parley.core.forms import FormRegistry
from parley.core.identity import Identity, IdentityCard
from parley.core.party import Outgoing, Party, bilateral_channel
from parley.core.receipts import (
    RECEIPT_PAYLOAD_TYPE,
    Receipt,
    issue_receipt,
    read_receipt,
    verify_receipt_inclusion,
)
from parley.core.transcript import EntryType, entry_bytes
from parley.errors import ParleyError, RemoteError
from parley.forms import default_registry, load_definitions
from parley.keyfile import load_identity
from parley.service import tls
from parley.service.peer_api import MAX_BATCH_BYTES, frame, split_frames
from parley.service.terminal import CardBundle
from parley.store import models as m
from parley.store.db import normalize_url
from parley.testing.network import (
    PASSPHRASE,
    TerminalProcess,
    make_network,
    postgres_database,
    wait_until,
)
from tests.service.conftest import POSTGRES_ADMIN, RU, US, NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(300)]

US_ID, RU_ID = US[0], RU[0]
CHANNEL = bilateral_channel(US_ID, RU_ID)
TIMEOUT = httpx.Timeout(10.0)
JSON_HEADERS = {"content-type": "application/json"}


def utc_now() -> datetime:
    return datetime.now(UTC)


# US-EUCOM's listener, played by the attacker ----------------------------------------------------

Answer = tuple[int, bytes]


def _error(exc: ParleyError) -> Answer:
    return 400, json.dumps({"error": exc.code, "message": str(exc)}).encode()


class FakePeer:
    """US-EUCOM's peer listener: honest ``Party`` answers, unless a test arms an attack.

    Every use of ``us`` (here and in the tests) holds ``lock``: RU-GS's worker
    calls in from the server's threads.
    """

    def __init__(self, us: Party, ru_certificate: bytes, port: int) -> None:
        self.us = us
        self.lock = threading.RLock()
        #: Answers the next envelope RU-GS delivers instead of US-EUCOM (then disarms).
        self.receipt_attack: Callable[[bytes], bytes] | None = None
        #: Answers the next checkpoint request instead of US-EUCOM (then disarms).
        self.offer_attack: Callable[[bytes], bytes] | None = None
        #: Answers the next request for leaf hashes instead of US-EUCOM (then disarms).
        self.leaves_attack: Callable[[int, int], bytes] | None = None
        self.leaves_requests: list[tuple[int, int]] = []
        self.refuse_catch_up = False
        self.received: list[bytes] = []
        self.forged: list[bytes] = []
        self.catch_up_requests: list[tuple[str, int]] = []
        self.cosignatures: list[bytes] = []
        self.errors: list[str] = []
        context = tls.server_context(us.identity, [ru_certificate])
        self.server = _Server(("127.0.0.1", port), self, context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, method: str, target: str, body: bytes) -> Answer:
        with self.lock:
            try:
                return self._handle(method, target, body)
            except RemoteError as exc:
                return _error(exc)
            except Exception as exc:  # a bug of the fake itself: show it in the test
                self.errors.append(f"{method} {target}: {type(exc).__name__}: {exc}")
                return 500, b"{}"

    def _handle(self, method: str, target: str, body: bytes) -> Answer:
        url = urlsplit(target)
        if (method, url.path) == ("POST", "/v1/envelopes"):
            return self._envelope(body)
        if (method, url.path) == ("POST", "/v1/envelopes/batch"):
            results: list[dict[str, str]] = []
            for item in split_frames(body, 1 << 20):
                status, answer = self._envelope(item)
                results.append(
                    {"receipt": b64encode(answer)} if status == 200 else json.loads(answer)
                )
            return 200, json.dumps({"results": results}).encode()
        if (method, url.path) == ("POST", "/v1/checkpoint-offers"):
            attack, self.offer_attack = self.offer_attack, None
            return 200, attack(body) if attack else self.us.offer_checkpoint(body)
        if (method, url.path) == ("POST", "/v1/cosignatures"):
            accepted = self.us.accept_cosignature(body)
            self.cosignatures.append(body)
            return 200, json.dumps({"witness": accepted.witness, "size": accepted.size}).encode()
        if (method, url.path) == ("GET", "/v1/log/leaves"):
            query = parse_qs(url.query)
            start, limit = int(query["start"][0]), int(query["limit"][0])
            self.leaves_requests.append((start, limit))
            leaves_attack, self.leaves_attack = self.leaves_attack, None
            if leaves_attack is not None:
                return 200, leaves_attack(start, limit)
            return 200, b"".join(self.us.log_leaves(start, limit))
        if (method, url.path) == ("GET", "/v1/catch-up"):
            query = parse_qs(url.query)
            channel, after = query["channel"][0], int(query["after"][0])
            self.catch_up_requests.append((channel, after))
            if self.refuse_catch_up:
                return 409, b'{"error":"refused","message":"not today"}'
            return 200, self._catch_up(channel, after)
        return 404, b'{"error":"not_found","message":"no such endpoint"}'

    def _envelope(self, raw: bytes) -> Answer:
        self.received.append(raw)
        attack, self.receipt_attack = self.receipt_attack, None
        if attack is not None:
            forged = attack(raw)
            self.forged.append(forged)
            return 200, forged
        return 200, self.us.receive_envelope(raw).receipt

    def _catch_up(self, channel: str, after: int) -> bytes:
        """What ``Terminal.catch_up`` answers: the envelopes, with proofs."""
        checkpoint = self.us.checkpoint()
        items = []
        for raw in self.us.envelopes_since(channel, after, for_party=RU_ID):
            index = self.us.sent(read_envelope(raw, self.us.card_of).id).log_index
            proof = self.us.transcript.tree.inclusion_proof(index, checkpoint.size)
            items.append(
                {
                    "envelope": b64encode(raw),
                    "inclusion": [b64encode(h) for h in proof],
                    "log_index": index,
                }
            )
        return canonical_bytes(
            {"checkpoint": checkpoint.note, "envelopes": items, "type": "parley.catch-up/v1"}
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        status, answer = self.server.peer.handle(method, self.path, body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], peer: FakePeer, context: Any) -> None:
        super().__init__(address, _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.peer = peer


# The scene -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    last_event_id: int
    last_alarm_id: int
    log_size: int
    inbox: list[str]
    rows: dict[str, int]


@dataclass
class Scene:
    backend: str
    ru: TerminalProcess
    us: Party
    ru_card: IdentityCard
    ru_cert: bytes
    console: httpx.Client
    db: Engine
    peer: FakePeer
    delivered: list[str] = field(default_factory=list)

    @property
    def identity(self) -> Identity:
        return self.us.identity

    def client(self) -> httpx.Client:
        context = tls.client_context(self.identity, self.ru_cert)
        return httpx.Client(base_url=self.ru.peer_url, verify=context, timeout=TIMEOUT)

    def post(self, path: str, body: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
        with self.client() as client:
            return client.post(path, content=body, headers=headers or JSON_HEADERS)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = self.console.request(method, "/api/v1" + path, json=body)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
        return response.json()

    def lookup(self, party: str) -> IdentityCard | None:
        return {RU_ID: self.ru_card, US_ID: self.identity.card}.get(party)

    # What RU-GS holds

    def rows(self) -> dict[str, int]:
        with self.db.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (m.log_entries, m.messages, m.receipts, m.acks, m.evidence)
            }

    def log(self) -> list[bytes]:
        with self.db.connect() as conn:
            return [
                bytes(r.entry)
                for r in conn.execute(select(m.log_entries.c.entry).order_by(m.log_entries.c.idx))
            ]

    def evidence_since(self, before: Snapshot) -> list[dict[str, str]]:
        with self.db.connect() as conn:
            rows = conn.execute(select(m.evidence).order_by(m.evidence.c.id)).all()
        return [json.loads(r.evidence) for r in rows][before.rows["evidence"] :]

    def snapshot(self) -> Snapshot:
        return Snapshot(
            last_event_id=max((e["id"] for e in self.api("GET", "/security-events")), default=0),
            last_alarm_id=max((a["id"] for a in self.api("GET", "/alarms")), default=0),
            log_size=int(self.api("GET", "/status")["log_size"]),
            inbox=sorted(str(m["id"]) for m in self.api("GET", "/inbox?all=true")),
            rows=self.rows(),
        )

    def events_since(self, before: Snapshot) -> list[dict[str, Any]]:
        events = [e for e in self.api("GET", "/security-events") if e["id"] > before.last_event_id]
        return sorted(events, key=lambda e: int(e["id"]))

    def alarms_since(self, before: Snapshot) -> list[dict[str, Any]]:
        alarms = [a for a in self.api("GET", "/alarms") if a["id"] > before.last_alarm_id]
        return sorted(alarms, key=lambda a: int(a["id"]))

    # US-EUCOM's side

    def send(self, text: str) -> Outgoing:
        with self.peer.lock:
            return self.us.send_text([RU_ID], text, operator="attacker")

    def next_seq(self) -> int:
        with self.peer.lock:
            return len(self.us.envelopes_since(CHANNEL, 0, for_party=RU_ID)) + 1

    def seal(self, *, seq: int | None = None, text: str = "crafted") -> bytes:
        """A correctly sealed envelope from US-EUCOM that its Party never logged."""
        now = utc_now()
        return seal_envelope(
            self.identity,
            [self.ru_card],
            envelope_id=uuid7(now),
            channel=CHANNEL,
            seq=self.next_seq() if seq is None else seq,
            created_at=now,
            precedence="ROUTINE",
            kind="text",
            content=Content(lang="en", operator="attacker", body={"text": text}),
        )

    def deliver(self, out: Outgoing) -> Receipt:
        """POST one of US-EUCOM's envelopes; the receipt must prove it; US-EUCOM keeps it."""
        response = self.post("/v1/envelopes", out.raw)
        assert response.status_code == 200, response.text
        receipt = read_receipt(response.content, self.lookup)
        assert receipt.envelope_id == out.envelope_id
        verify_receipt_inclusion(receipt, out.raw)
        with self.peer.lock:
            self.us.receive_receipt(response.content)
        self.delivered.append(out.envelope_id)
        return receipt

    def deliver_valid(self) -> None:
        """The terminal still serves: a new envelope is logged, stored and receipted."""
        before = self.snapshot()
        out = self.send("still there?")
        receipt = self.deliver(out)
        assert receipt.missing == ()
        assert receipt.through_seq == out.seq
        after = self.snapshot()
        assert after.log_size == before.log_size + 2
        assert set(after.inbox) - set(before.inbox) == {out.envelope_id}
        assert self.events_since(before) == []

    def assert_nothing_stored(self, before: Snapshot) -> None:
        after = self.snapshot()
        assert after.log_size == before.log_size, "a refused input grew RU-GS's log"
        assert after.inbox == before.inbox, "a refused input reached RU-GS's inbox"
        assert after.rows == before.rows, "a refused input left rows behind"

    def assert_refused(
        self, before: Snapshot, response: httpx.Response, status: int, code: str, endpoint: str
    ) -> None:
        """A 4xx with the code, one security event with it, nothing stored, still serving."""
        assert response.status_code == status, response.text[:300]
        body = response.json()
        assert set(body) == {"error", "message"}, body
        events = self.events_since(before)
        assert [(e["code"], e["endpoint"], e["tls_party"]) for e in events] == [
            (body["error"], endpoint, US_ID)
        ]
        assert self.alarms_since(before) == []
        self.assert_nothing_stored(before)
        self.deliver_valid()
        assert body["error"] == code, body

    # RU-GS's side

    def ru_sends(self, text: str) -> str:
        """RU-GS's duty officer sends a FLASH message to US-EUCOM (delivered at once)."""
        sent = self.api("POST", "/messages", {"to": [US_ID], "text": text, "precedence": "FLASH"})
        return str(sent["id"])

    def delivery(self, envelope_id: str) -> dict[str, Any]:
        state: dict[str, Any] = self.api("GET", f"/messages/{envelope_id}")["delivery"][US_ID]
        return state

    def witnessed(self) -> int:
        """How many cosignatures RU-GS has handed to US-EUCOM."""
        with self.peer.lock:
            return len(self.peer.cosignatures)

    def last_cosigned(self) -> Checkpoint:
        with self.peer.lock:
            checkpoint = self.us.last_cosigned_by(RU_ID)
        assert checkpoint is not None
        return checkpoint

    def checkpoint_of(self, note: str) -> tuple[int, bytes]:
        checkpoint = verify_checkpoint(note, self.identity.card)
        return checkpoint.size, checkpoint.root

    def fork(self, size: int) -> Party:
        """Another US-EUCOM log, signed with the same keys, of ``size`` entries."""
        fork = Party(self.identity, clock=utc_now)
        fork.add_peer(self.ru_card, self.ru_card.fingerprint)
        while fork.transcript.size < size:
            fork.send_text([RU_ID], "another history", operator="attacker")
        return fork


def read_only_engine(url: str) -> Engine:
    """Read RU-GS's records without the write lock ``engine_for`` takes for every
    SQLite transaction (``BEGIN IMMEDIATE``), so that reading never delays RU-GS."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return create_engine(f"sqlite+pysqlite:///file:{make_url(url).database}?mode=ro&uri=true")
    return create_engine(url)


def open_scene(
    terminals: dict[str, TerminalProcess], backend: str, stack: contextlib.ExitStack
) -> Scene:
    """Start US-EUCOM's listener (played here) and RU-GS; take US-EUCOM's keys."""
    ru = terminals[RU_ID]
    bundle = CardBundle.from_json((ru.data / "card.json").read_bytes())
    us = Party(load_identity(terminals[US_ID].data / "identity.key", PASSPHRASE), clock=utc_now)
    us.add_peer(bundle.card, bundle.card.fingerprint)
    peer = FakePeer(us, bundle.tls_certificate, terminals[US_ID].peer_port)
    peer.start()
    stack.callback(peer.stop)
    ru.start()
    stack.callback(ru.kill)
    console = stack.enter_context(
        httpx.Client(
            base_url=ru.console_url,
            headers={
                "authorization": f"Bearer {DataDir(ru.data).read_token()}",
                "x-parley-operator": "attack-test",
            },
            timeout=TIMEOUT,
        )
    )
    db = read_only_engine(DataDir(ru.data).load_config().database)
    stack.callback(db.dispose)
    # RU-GS's first link test, delivered to (and receipted by) US-EUCOM's listener.
    wait_until(lambda: len(peer.received) >= 1, timeout=30, what="RU-GS's link test")
    wait_until(lambda: ru.api("GET", "/status")["pending"] == 0, timeout=30, what="its receipt")
    return Scene(backend, ru, us, bundle.card, bundle.tls_certificate, console, db, peer)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def scene(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    """RU-GS running, and US-EUCOM (keys, log and listener) in the attacker's hands."""
    backend = str(request.param)
    with contextlib.ExitStack() as stack:
        databases = None
        if backend == "postgresql":
            databases = {
                party: stack.enter_context(postgres_database(POSTGRES_ADMIN))
                for party, _ in (US, RU)
            }
        terminals = make_network(
            tmp_path_factory.mktemp(f"attacks-{backend}"), (US, RU), databases=databases
        )
        yield open_scene(terminals, backend, stack)


@pytest.fixture
def attack(scene: Scene) -> Iterator[Scene]:
    """The shared scene, quiet before each test and checked after it."""
    if not scene.ru.running:  # an earlier test brought it down: do not cascade
        scene.ru.start()
    # RU-GS's first encryption key is made and announced a moment after it starts.
    wait_until(
        lambda: scene.api("GET", "/keys")["encryption_keys"][0]["kind"] == "medium-term",
        timeout=30,
        what="RU-GS's encryption key",
    )
    wait_until(lambda: scene.api("GET", "/status")["pending"] == 0, timeout=30, what="quiet")
    # One incident, one alarm: an incident of an earlier test, still open, would only count.
    for alarm in scene.api("GET", "/alarms"):
        if alarm["cleared_at"] is None:
            scene.api("POST", f"/alarms/{alarm['id']}/clear")
    yield scene
    scene.peer.receipt_attack = scene.peer.offer_attack = scene.peer.leaves_attack = None
    scene.peer.refuse_catch_up = False
    assert scene.peer.errors == []
    assert scene.ru.running, f"RU-GS died:\n{scene.ru.output()[-3000:]}"


# Reordering ------------------------------------------------------------------------------------


def test_envelopes_out_of_order_are_all_kept_and_the_gap_is_reported(attack: Scene) -> None:
    attack.peer.refuse_catch_up = True  # the attacker fills the gap itself, in its own order
    before = attack.snapshot()
    outs = [attack.send(f"in order {i}") for i in range(3)]
    k = outs[0].seq - 1

    third = attack.deliver(outs[2])
    assert (third.through_seq, third.missing) == (k, (k + 1, k + 2))
    # RU-GS noticed the gap at once and asked US-EUCOM for what it missed.
    wait_until(lambda: (CHANNEL, k) in attack.peer.catch_up_requests, timeout=15, what="catch-up")
    first = attack.deliver(outs[0])
    assert (first.through_seq, first.missing) == (k + 1, (k + 2,))
    second = attack.deliver(outs[1])
    assert (second.through_seq, second.missing) == (k + 3, ())

    after = attack.snapshot()
    assert set(after.inbox) - set(before.inbox) == {o.envelope_id for o in outs}
    assert after.log_size == before.log_size + 6  # three envelopes, three receipts
    assert attack.events_since(before) == []
    assert attack.alarms_since(before) == []
    texts = {
        m["id"]: m["body"]["text"] for m in attack.api("GET", "/inbox") if m["id"] in after.inbox
    }
    assert [texts[o.envelope_id] for o in outs] == ["in order 0", "in order 1", "in order 2"]


def test_a_gap_is_filled_from_the_senders_catch_up(attack: Scene) -> None:
    before = attack.snapshot()
    outs = [attack.send(f"partly lost {i}") for i in range(3)]
    k = outs[0].seq - 1
    last = attack.deliver(outs[2])  # the first two are "lost on the way"
    assert last.missing == (k + 1, k + 2)

    # RU-GS fetches them from US-EUCOM's catch-up endpoint, checks the proofs and keeps them.
    wait_until(
        lambda: {o.envelope_id for o in outs} <= set(attack.snapshot().inbox),
        timeout=20,
        what="the gap to be filled",
    )
    assert (CHANNEL, k) in attack.peer.catch_up_requests
    after = attack.snapshot()
    assert after.log_size == before.log_size + 6
    assert attack.events_since(before) == []
    # The envelopes RU-GS logged are exactly the ones US-EUCOM signed.
    log = attack.log()
    for out in outs:
        assert log.count(entry_bytes(EntryType.ENVELOPE, out.raw)) == 1


# Forged and transplanted signatures ------------------------------------------------------------


def _outer(raw: bytes) -> dict[str, Any]:
    outer: dict[str, Any] = json.loads(raw)
    return outer


def _payload(raw: bytes) -> bytes:
    return base64.b64decode(_outer(raw)["payload"])


def _with_signature(raw: bytes, *, keyid: str | None = None, sig: bytes | None = None) -> bytes:
    outer = _outer(raw)
    if keyid is not None:
        outer["signatures"][0]["keyid"] = keyid
    if sig is not None:
        outer["signatures"][0]["sig"] = b64encode(sig)
    return canonical_bytes(outer)


def _signature(raw: bytes) -> bytes:
    return base64.b64decode(_outer(raw)["signatures"][0]["sig"])


def ru_own_envelope(s: Scene) -> bytes:
    """An envelope RU-GS itself signed (its link test), as its catch-up endpoint gives it."""
    with s.client() as client:
        answer = client.get("/v1/catch-up", params={"channel": CHANNEL, "after": 0})
    assert answer.status_code == 200, answer.text
    return base64.b64decode(answer.json()["envelopes"][0]["envelope"])


def signature_of_another_envelope(s: Scene) -> bytes:
    # US-EUCOM's valid signature on one envelope, moved onto another of its envelopes.
    donor, target = s.seal(text="signed"), s.seal(text="never signed")
    return _with_signature(target, sig=_signature(donor))


def signature_of_another_party(s: Scene) -> bytes:
    # RU-GS's own valid signature and key id, on an envelope in US-EUCOM's name.
    donor = _outer(ru_own_envelope(s))["signatures"][0]
    return _with_signature(s.seal(), keyid=donor["keyid"], sig=base64.b64decode(donor["sig"]))


def signature_of_another_party_under_the_senders_key_id(s: Scene) -> bytes:
    return _with_signature(s.seal(), sig=_signature(ru_own_envelope(s)))


def signature_without_the_dsse_encoding(s: Scene) -> bytes:
    # US-EUCOM's signature over the bare payload bytes (as some other protocol might sign).
    raw = s.seal()
    return _with_signature(raw, sig=s.identity.sign_ed25519(_payload(raw)))


def signature_made_for_a_receipt(s: Scene) -> bytes:
    # The same payload bytes, signed as a receipt's payload: DSSE binds the payload type.
    raw = s.seal()
    return _with_signature(
        raw, sig=s.identity.sign_ed25519(pae(RECEIPT_PAYLOAD_TYPE, _payload(raw)))
    )


def signature_of_zeros(s: Scene) -> bytes:
    return _with_signature(s.seal(), sig=bytes(64))


def signature_one_byte_short(s: Scene) -> bytes:
    raw = s.seal()
    return _with_signature(raw, sig=_signature(raw)[:-1])


def receivers_own_envelope_reflected(s: Scene) -> bytes:
    return ru_own_envelope(s)


@pytest.mark.parametrize(
    ("build", "status", "code"),
    [
        pytest.param(signature_of_another_envelope, 400, "invalid_signature", id="other-envelope"),
        pytest.param(signature_of_another_party, 400, "invalid_signature", id="other-party"),
        pytest.param(
            signature_of_another_party_under_the_senders_key_id,
            400,
            "invalid_signature",
            id="other-party-senders-key-id",
        ),
        pytest.param(signature_without_the_dsse_encoding, 400, "invalid_signature", id="no-pae"),
        pytest.param(signature_made_for_a_receipt, 400, "invalid_signature", id="receipt-pae"),
        pytest.param(signature_of_zeros, 400, "invalid_signature", id="zeros"),
        pytest.param(signature_one_byte_short, 400, "invalid_signature", id="63-bytes"),
        pytest.param(receivers_own_envelope_reflected, 403, "unknown_sender", id="reflected"),
    ],
)
def test_forged_or_transplanted_signature_is_refused(
    attack: Scene, build: Callable[[Scene], bytes], status: int, code: str
) -> None:
    body = build(attack)
    before = attack.snapshot()
    response = attack.post("/v1/envelopes", body)
    attack.assert_refused(before, response, status, code, "envelopes")


# Receipts that prove nothing RU-GS sent ---------------------------------------------------------


def _forged_receipt(
    s: Scene,
    raw: bytes,
    *,
    envelope_id: str | None = None,
    digest: str | None = None,
    through_seq: int | None = None,
    size: int | None = None,
) -> bytes:
    """A receipt US-EUCOM signs for ``raw`` (or for what it names instead), whose checkpoint
    it signs over a log of its own making that does hold ``raw``: the proof verifies."""
    header = read_envelope(raw, s.lookup)
    size = size or 7
    index = size - 1
    log = merkle.MerkleLog()
    for i in range(size):
        entry = entry_bytes(EntryType.ENVELOPE, raw) if i == index else os.urandom(8)
        log.append(merkle.leaf_hash(entry))
    return issue_receipt(
        s.identity,
        sender=RU_ID,
        channel=header.channel,
        envelope_id=envelope_id or header.id,
        envelope_digest=digest or hashlib.sha256(raw).hexdigest(),
        through_seq=header.seq if through_seq is None else through_seq,
        missing=[],
        log_index=index,
        inclusion=log.inclusion_proof(index, size),
        checkpoint=sign_checkpoint(s.identity, size, log.root()),
        now=utc_now(),
    )


def for_a_message_never_sent(s: Scene, raw: bytes) -> bytes:
    return _forged_receipt(
        s, raw, envelope_id=uuid7(utc_now()), digest=hashlib.sha256(b"never sent").hexdigest()
    )


def for_other_bytes_under_the_same_id(s: Scene, raw: bytes) -> bytes:
    return _forged_receipt(s, raw, digest=hashlib.sha256(raw + b" and more").hexdigest())


def for_more_than_was_sent(s: Scene, raw: bytes) -> bytes:
    return _forged_receipt(s, raw, through_seq=read_envelope(raw, s.lookup).seq + 5)


def for_another_envelope_sent(s: Scene, raw: bytes) -> bytes:
    """US-EUCOM's honest receipt, but for an earlier envelope RU-GS sent, not this one."""
    with s.peer.lock:
        earlier = next(r for r in s.peer.received if r != raw)
        return s.peer.us.receive_envelope(earlier).receipt  # a duplicate: answered again


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(for_another_envelope_sent, id="another-envelope"),
        pytest.param(for_a_message_never_sent, id="never-sent"),
        pytest.param(for_other_bytes_under_the_same_id, id="other-bytes"),
        pytest.param(for_more_than_was_sent, id="more-than-sent"),
    ],
)
def test_a_receipt_for_a_message_never_sent_is_refused(
    attack: Scene, forge: Callable[[Scene, bytes], bytes]
) -> None:
    before = attack.snapshot()
    attack.peer.receipt_attack = lambda raw: forge(attack, raw)
    envelope_id = attack.ru_sends("is this receipt real?")

    # The forged receipt is refused and recorded; the message stays undelivered...
    wait_until(lambda: attack.events_since(before), timeout=15, what="a security event")
    events = attack.events_since(before)
    assert [(e["code"], e["endpoint"], e["tls_party"]) for e in events] == [
        ("invalid_receipt", "receipt", US_ID)
    ]
    # ...until the retry, which US-EUCOM answers honestly.
    wait_until(
        lambda: attack.delivery(envelope_id)["state"] == "delivered",
        timeout=20,
        what="the retry",
    )
    assert len(attack.peer.forged) >= 1
    forged = attack.peer.forged[-1]
    log = attack.log()
    assert entry_bytes(EntryType.RECEIPT, forged) not in log
    after = attack.snapshot()
    # RU-GS's message and the honest receipt: nothing else.
    assert after.log_size == before.log_size + 2
    assert after.rows["receipts"] == before.rows["receipts"] + 1
    assert len(attack.events_since(before)) == 1
    assert attack.alarms_since(before) == []
    attack.deliver_valid()


# Checkpoints: rollback and equivocation ----------------------------------------------------------


def _cosigned_once(s: Scene) -> Checkpoint:
    """Let RU-GS witness US-EUCOM's log once (honestly); the checkpoint it cosigned."""
    count = s.witnessed()
    s.deliver(s.send("witness me"))  # new traffic: RU-GS's worker witnesses US-EUCOM's log
    wait_until(lambda: s.witnessed() > count, timeout=30, what="an honest witness round")
    return s.last_cosigned()


def _assert_refused_checkpoint(
    s: Scene,
    before: Snapshot,
    cosigned: Checkpoint,
    forged_note: str,
    served: list[bytes],
    kind: str = "equivocation",
) -> None:
    """Evidence kept (both signed notes), an alarm of ``kind``, no cosignature given."""
    wait_until(lambda: served, timeout=30, what="RU-GS to ask for a checkpoint")
    wait_until(lambda: s.alarms_since(before), timeout=15, what="an alarm")
    with s.peer.lock:
        assert all(forged_note.encode() not in c for c in s.peer.cosignatures)
    evidence = s.evidence_since(before)
    assert len(evidence) == 1, evidence
    earlier = s.checkpoint_of(evidence[0]["earlier"])
    if kind == "rollback":  # the largest checkpoint of the log held: cosigned, or seen since
        assert earlier[0] >= cosigned.size
    else:
        assert earlier == (cosigned.size, cosigned.root)
    assert evidence[0]["later"] == forged_note
    alarms = s.alarms_since(before)
    assert [(a["kind"], a["severity"], a["subject"]) for a in alarms] == [(kind, "critical", US_ID)]
    after = s.snapshot()
    assert after.log_size == before.log_size + 2  # only the envelope that triggered the round
    # Still serving, and still witnessing US-EUCOM's real log.
    count = s.witnessed()
    s.deliver_valid()
    wait_until(lambda: s.witnessed() > count, timeout=30, what="witnessing to go on")


def _arm_forged_offer(s: Scene, size_of: Callable[[int], int]) -> tuple[list[bytes], list[str]]:
    """The next checkpoint offer comes from a fork of ``size_of(last cosigned size)``."""
    served: list[bytes] = []
    notes: list[str] = []

    def forged_offer(request: bytes) -> bytes:
        fork = s.fork(size_of(s.last_cosigned().size))
        offer = fork.offer_checkpoint(request)
        notes.append(json.loads(offer)["checkpoint"])
        served.append(offer)
        return offer

    s.peer.offer_attack = forged_offer
    return served, notes


def test_a_checkpoint_that_rolls_the_log_back_is_refused_kept_and_raised(attack: Scene) -> None:
    cosigned = _cosigned_once(attack)
    before = attack.snapshot()
    served, notes = _arm_forged_offer(attack, lambda size: 1)
    attack.deliver(attack.send("trigger a witness round"))
    wait_until(lambda: notes, timeout=30, what="the forged offer")
    assert cosigned.size > 1
    _assert_refused_checkpoint(attack, before, cosigned, notes[0], served, kind="rollback")


def test_an_equivocating_checkpoint_is_refused_kept_and_raised(attack: Scene) -> None:
    cosigned = _cosigned_once(attack)
    before = attack.snapshot()
    # Another log of exactly the size RU-GS cosigned: same size, another root.
    served, notes = _arm_forged_offer(attack, lambda size: size)
    attack.deliver(attack.send("trigger a witness round"))
    wait_until(lambda: notes, timeout=30, what="the forged offer")
    _assert_refused_checkpoint(attack, before, cosigned, notes[0], served)


def test_an_equivocating_checkpoint_in_a_receipt_is_refused_kept_and_raised(
    attack: Scene,
) -> None:
    _cosigned_once(attack)
    before = attack.snapshot()
    # The receipt for RU-GS's next message proves it is in another log of the cosigned size.
    cosigned: list[Checkpoint] = []

    def forged_receipt(raw: bytes) -> bytes:
        cosigned.append(attack.last_cosigned())
        return _forged_receipt(attack, raw, size=cosigned[0].size)

    attack.peer.receipt_attack = forged_receipt
    envelope_id = attack.ru_sends("which log am I in?")
    wait_until(lambda: attack.alarms_since(before), timeout=15, what="an alarm")
    alarms = attack.alarms_since(before)
    assert [(a["kind"], a["severity"], a["subject"]) for a in alarms] == [
        ("equivocation", "critical", US_ID)
    ]
    forged = read_receipt(attack.peer.forged[-1], attack.lookup)
    evidence = attack.evidence_since(before)
    assert len(evidence) == 1, evidence
    assert evidence[0]["later"] == forged.checkpoint.note
    assert attack.checkpoint_of(evidence[0]["earlier"]) == (cosigned[0].size, cosigned[0].root)
    events = attack.events_since(before)
    assert [(e["code"], e["endpoint"]) for e in events] == [("equivocation", "receipt")]
    # The forged receipt is not kept; the honest one of the retry is.
    wait_until(lambda: attack.delivery(envelope_id)["state"] == "delivered", timeout=20)
    assert entry_bytes(EntryType.RECEIPT, attack.peer.forged[-1]) not in attack.log()
    after = attack.snapshot()
    assert after.log_size == before.log_size + 2
    attack.deliver_valid()


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(lambda start, limit: os.urandom(32 * limit), id="wrong-leaves"),
        pytest.param(lambda start, limit: b"\x00" * (32 * limit + 7), id="garbage"),
        pytest.param(lambda start, limit: os.urandom(32) * (limit + 5000), id="oversized"),
        pytest.param(lambda start, limit: b"", id="empty"),
    ],
)
def test_a_hostile_leaves_page_is_refused_and_witnessing_goes_on(
    attack: Scene, page: Callable[[int, int], bytes]
) -> None:
    cosigned = _cosigned_once(attack)
    before = attack.snapshot()
    count = attack.witnessed()
    attack.peer.leaves_attack = page
    asked = len(attack.peer.leaves_requests)
    attack.deliver(attack.send("grow the log"))
    wait_until(
        lambda: len(attack.peer.leaves_requests) > asked and attack.peer.leaves_attack is None,
        timeout=30,
        what="RU-GS to fetch leaf hashes",
    )
    # Nothing is cosigned from the hostile page; the next round fetches the real leaves.
    wait_until(lambda: attack.witnessed() > count, timeout=30, what="witnessing to go on")
    assert attack.last_cosigned().size > cosigned.size
    assert attack.ru.running
    kinds = {a["kind"] for a in attack.alarms_since(before)}
    assert kinds <= {"checkpoint_rejected"}
    assert attack.evidence_since(before) == []


# Oversized and deeply nested bodies on the other endpoints ---------------------------------------


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code"),
    [
        pytest.param(
            "checkpoint-offers", lambda: b"x" * (16 * 1024 + 1), 413, "body_too_large", id="offer"
        ),
        pytest.param("cosignatures", lambda: b"x" * 65537, 413, "body_too_large", id="cosig"),
        pytest.param(
            "envelopes/batch",
            lambda: _chunks(MAX_BATCH_BYTES + 1024),
            413,
            "body_too_large",
            id="batch",
        ),
        pytest.param(
            "envelopes/batch",
            lambda: (1 << 30).to_bytes(4, "big") + b"{}",
            413,
            "body_too_large",
            id="batch-frame-of-1GiB",
        ),
        pytest.param(
            "checkpoint-offers",
            lambda: b"[" * 4000 + b"]" * 4000,
            400,
            "invalid_json",
            id="offer-nested",
        ),
    ],
)
def test_oversized_or_nested_bodies_on_every_endpoint(
    attack: Scene,
    endpoint: str,
    body: Callable[[], bytes | Iterator[bytes]],
    status: int,
    code: str,
) -> None:
    before = attack.snapshot()
    response = attack.post(f"/v1/{endpoint}", body(), **{"content-type": "application/json"})
    attack.assert_refused(before, response, status, code, endpoint)


def test_a_deeply_nested_envelope_inside_a_batch_is_refused_alone(attack: Scene) -> None:
    valid = attack.send("beside a nested one")
    nested = b"[" * 50_000 + b"]" * 50_000
    before = attack.snapshot()
    response = attack.post(
        "/v1/envelopes/batch",
        frame([nested, valid.raw]),
        **{"content-type": "application/x-parley-frames"},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["error"] == "invalid_json"
    receipt = read_receipt(base64.b64decode(results[1]["receipt"]), attack.lookup)
    assert receipt.envelope_id == valid.envelope_id
    with attack.peer.lock:
        attack.us.receive_receipt(base64.b64decode(results[1]["receipt"]))
    events = attack.events_since(before)
    assert [(e["code"], e["endpoint"]) for e in events] == [("invalid_json", "envelopes/batch")]
    after = attack.snapshot()
    assert after.log_size == before.log_size + 2  # the valid envelope and its receipt only
    assert set(after.inbox) - set(before.inbox) == {valid.envelope_id}
    attack.deliver_valid()


def test_ru_gs_talks_to_the_attackers_listener(attack: Scene) -> None:
    """The control: what RU-GS sends reaches US-EUCOM's listener as played here, and the
    honest receipt it gets back is kept."""
    before = attack.snapshot()
    envelope_id = attack.ru_sends("hello")
    wait_until(lambda: attack.delivery(envelope_id)["state"] == "delivered", timeout=15)
    with attack.peer.lock:
        assert any(read_envelope(r, attack.lookup).id == envelope_id for r in attack.peer.received)
    after = attack.snapshot()
    assert after.log_size == before.log_size + 2
    assert after.rows["receipts"] == before.rows["receipts"] + 1
    assert attack.events_since(before) == []


# A signed field as long as the core allows -----------------------------------------------------


def test_a_language_tag_as_long_as_the_core_allows_is_stored(
    network: NetworkFactory, backend: str
) -> None:
    """The core accepts a language tag of up to 35 characters; the terminal must store
    such a message like any other (on a network of its own: a message that cannot be
    stored would leave a gap in later tests)."""
    with contextlib.ExitStack() as stack:
        s = open_scene(network(start=False), backend, stack)
        lang = "en-GB-x-" + "a" * 27
        before = s.snapshot()
        with s.peer.lock:
            out = s.us.send_text([RU_ID], "a long tag", operator="attacker", lang=lang)
        response = s.post("/v1/envelopes", out.raw)
        assert response.status_code == 200, response.text[:300]
        receipt = read_receipt(response.content, s.lookup)
        verify_receipt_inclusion(receipt, out.raw)
        assert s.api("GET", f"/messages/{out.envelope_id}")["lang"] == lang
        assert s.events_since(before) == []
        assert s.snapshot().log_size == before.log_size + 2


# Forms this terminal refuses -------------------------------------------------------------------


def _form_example(name: str) -> dict[str, Any]:
    path = Path(__file__).parent.parent / "data" / "forms" / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))["valid"][0]
    return data


def _send_form(s: Scene, form: dict[str, Any]) -> Outgoing:
    with s.peer.lock:  # US-EUCOM's Party has no registry: it seals whatever it is given
        return s.us.send([RU_ID], kind="form", body={"form": form}, operator="attacker")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda f: f.update(version=99), "unknown_form"),
        (lambda f: f.update(definition="ab" * 32), "definition_mismatch"),
        (lambda f: f["data"].update(unexpected_field="x"), "invalid_form"),
        (lambda f: f.pop("definition"), "malformed_form"),
    ],
)
def test_a_form_refused_is_logged_answered_negatively_and_never_shown_as_valid(
    attack: Scene, change: Callable[[dict[str, Any]], None], code: str
) -> None:
    before = attack.snapshot()
    form = default_registry().body("LINK_TEST", _form_example("LINK_TEST"))
    change(form)
    out = _send_form(attack, form)
    receipt = attack.deliver(out)
    assert receipt.rejection is not None
    assert receipt.rejection.code == code
    assert receipt.through_seq == out.seq  # delivered, in order: nothing held behind it
    after = attack.snapshot()
    assert after.log_size == before.log_size + 2  # the envelope and its (negative) receipt
    shown = attack.api("GET", f"/messages/{out.envelope_id}")
    assert shown["rejection"] == {"code": code, "reason": receipt.rejection.reason}
    assert shown["ack_due"] is None
    alarms = attack.alarms_since(before)
    assert [(a["kind"], a["subject"]) for a in alarms] == [("content_refused", out.envelope_id)]
    assert code in alarms[0]["message"]
    assert attack.events_since(before) == []  # a refusal of content, not an attack on the link
    attack.deliver_valid()


def test_a_negative_receipt_for_a_form_sent_is_kept_and_raises_an_alarm(attack: Scene) -> None:
    definitions, common = load_definitions()
    before = attack.snapshot()
    with attack.peer.lock:
        attack.us.forms = FormRegistry([], common)  # US-EUCOM knows no forms at all
    try:
        sent = attack.api(
            "POST",
            "/messages",
            {"to": [US_ID], "form": "LINK_TEST", "data": _form_example("LINK_TEST")},
        )
        wait_until(
            lambda: attack.api("GET", f"/messages/{sent['id']}")["receipts"].get(US_ID),
            timeout=30,
            what="the negative receipt",
        )
    finally:
        with attack.peer.lock:
            attack.us.forms = None
    shown = attack.api("GET", f"/messages/{sent['id']}")
    assert shown["rejections"][US_ID]["code"] == "unknown_form"
    assert "LINK_TEST version 1 is not known" in shown["rejections"][US_ID]["reason"]
    assert attack.delivery(sent["id"])["state"] == "delivered"  # not retried for ever
    alarms = attack.alarms_since(before)
    assert [(a["kind"], a["subject"]) for a in alarms] == [("negative_receipt", sent["id"])]
    assert len(definitions) >= 13
