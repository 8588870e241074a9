"""Floors: what this machine and Parley's own stack allow without Parley's protocol work.

Every figure of ``parley bench`` is set against a floor measured in the same
run, on the same machine:

* ``measure_tls_floor``: a bare mutual-TLS HTTP POST round trip with one
  fsync'd SQLite commit on each side, built from the stack a terminal runs
  on (uvicorn with h11 and a TLS 1.3 mutual-TLS context from
  ``parley.service.tls``, an httpx client on a kept-alive connection, SQLite
  in WAL mode with ``synchronous=FULL``). The server is its own process, as
  the receiving terminal is; run it with
  ``python -m parley.bench.floors serve DIR --reply-size N``.
* ``measure_core_rates``: the rates the protocol core seals envelopes
  (``seal_envelope``), receives them (``Party.receive_envelopes`` in
  batches) and checks receipts (``Party.receive_receipt``), in this process.
* ``measure_bare_signatures``: the time of the bare Ed25519 and ML-DSA-65
  verifications of every distinct signature an audit of a transcript checks,
  without parsing, hashing or database work.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from parley.core.checkpoint import (
    COSIGNATURE_ED25519_TYPE,
    COSIGNATURE_MLDSA_TYPE,
    ED25519_TYPE,
    MLDSA_TYPE,
    key_id,
    log_origin,
    parse_note,
    witness_name,
)
from parley.core.dsse import pae, parse_dsse
from parley.core.encoding import uuid7
from parley.core.envelope import ENVELOPE_PAYLOAD_TYPE, Content, seal_envelope
from parley.core.identity import Identity, IdentityCard
from parley.core.party import Party, ReceiveResult
from parley.core.receipts import RECEIPT_PAYLOAD_TYPE
from parley.core.transcript import EntryType, split_entry

__all__ = [
    "BareSignatures",
    "CoreRates",
    "TlsFloor",
    "measure_bare_signatures",
    "measure_core_rates",
    "measure_tls_floor",
    "peak_rss_mb",
    "proc_status_mb",
    "sample_sizes",
]

_READY_FILE = "floor-server.json"


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (``VmHWM``) of a live process, in MiB."""
    return proc_status_mb(pid, "VmHWM")


def proc_status_mb(pid: int, key: str) -> float | None:
    """A size field (``VmHWM``, ``VmRSS``...) of ``/proc/PID/status``, in MiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------
# Sizes of the real things


def _pair(now: datetime) -> tuple[Party, Party]:
    us = Party(Identity.generate("US-EUCOM", "US European Command", now=now), clock=_utc_now)
    ru = Party(Identity.generate("RU-GS", "General Staff", now=now), clock=_utc_now)
    us.add_peer(ru.identity.card, ru.identity.card.fingerprint)
    ru.add_peer(us.identity.card, us.identity.card.fingerprint)
    return us, ru


def _utc_now() -> datetime:
    return datetime.now(UTC)


def sample_sizes(text: str) -> tuple[int, int]:
    """Bytes of a sealed FLASH envelope carrying ``text`` and of the receipt it gets."""
    us, ru = _pair(_utc_now() - timedelta(days=1))
    out = us.send_text(["RU-GS"], text, operator="duty", precedence="FLASH")
    result = ru.receive_envelope(out.raw)
    return len(out.raw), len(result.receipt)


# --------------------------------------------------------------------------
# The mutual-TLS round-trip floor


@dataclass(frozen=True, slots=True)
class TlsFloor:
    """Round trips of the bare stack, in milliseconds, in the order measured."""

    samples_ms: list[float]
    body_bytes: int
    reply_bytes: int
    server_peak_rss_mb: float | None


def _open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS rows ("
        "id INTEGER PRIMARY KEY, body BLOB NOT NULL, stored_at REAL NOT NULL)"
    )
    return db


def _commit_row(db: sqlite3.Connection, body: bytes) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO rows (body, stored_at) VALUES (?, ?)", (body, time.time()))
    db.execute("COMMIT")


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _serve(directory: Path, reply_size: int) -> None:
    """The floor's server: one endpoint that commits the body as a row and answers."""
    import asyncio

    import uvicorn

    from parley.service import tls

    identity = Identity.generate("FLOOR-SERVER", "Floor server", now=_utc_now() - timedelta(days=1))
    context = tls.server_context(identity, [(directory / "client.pem").read_bytes()])
    db = _open_db(directory / "server.db")
    reply = b"r" * reply_size
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        _commit_row(db, b"".join(chunks))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    # Created as a TCP socket, as parley serve creates its listeners, so that
    # asyncio sets TCP_NODELAY on what it accepts.
    sockets = [_listener(socket.IPPROTO_TCP)]
    config = uvicorn.Config(app, http="h11", log_config=None, access_log=False, lifespan="off")
    config.load()
    config.ssl = context
    server = uvicorn.Server(config)
    (directory / "server.pem").write_bytes(tls.certificate_for(identity))
    ready = {
        "pid": os.getpid(),
        "port": sockets[0].getsockname()[1],
    }
    (directory / _READY_FILE).write_text(json.dumps(ready))
    asyncio.run(server.serve(sockets=sockets))


def _listener(protocol: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def measure_tls_floor(
    workdir: Path,
    count: int,
    *,
    body_size: int,
    reply_size: int,
    warmup: int = 20,
    timeout: float = 60.0,
) -> TlsFloor:
    """``count`` round trips: a client commit, then a POST over kept-alive mutual TLS."""
    import httpx

    from parley.service import tls

    workdir.mkdir(parents=True, exist_ok=True)
    client_identity = Identity.generate(
        "FLOOR-CLIENT", "Floor client", now=_utc_now() - timedelta(days=1)
    )
    (workdir / "client.pem").write_bytes(tls.certificate_for(client_identity))
    (workdir / _READY_FILE).unlink(missing_ok=True)
    with open(workdir / "server.out", "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - this module, run by this interpreter
            [
                sys.executable,
                "-m",
                "parley.bench.floors",
                "serve",
                str(workdir),
                "--reply-size",
                str(reply_size),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = _wait_ready(workdir / _READY_FILE, proc, timeout)
        context = tls.client_context(client_identity, (workdir / "server.pem").read_bytes())
        db = _open_db(workdir / "client.db")
        # Hex digits: a body that no layer could compress, of the exact size.
        body = os.urandom(body_size).hex().encode()[:body_size]

        def run(port: int, n: int) -> list[float]:
            url = f"https://127.0.0.1:{port}/v1/envelopes"
            headers = {"content-type": "application/json"}
            with httpx.Client(verify=context, http2=False, timeout=timeout) as client:

                def round_trip() -> float:
                    started = time.perf_counter()
                    _commit_row(db, body)
                    response = client.post(url, content=body, headers=headers)
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    if len(response.content) != reply_size:
                        raise RuntimeError(
                            f"the floor server answered {len(response.content)} bytes"
                        )
                    return elapsed * 1000

                for _ in range(min(warmup, n)):
                    round_trip()
                return [round_trip() for _ in range(n)]

        samples = run(int(ready["port"]), count)
        db.close()
        rss = peak_rss_mb(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return TlsFloor(samples, body_size, reply_size, rss)


def _wait_ready(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the floor server exited with {proc.returncode}")
        try:
            ready: dict[str, Any] = json.loads(path.read_text())
            return ready
        except (OSError, ValueError):
            time.sleep(0.02)
    raise TimeoutError(f"the floor server did not start within {timeout} s")


# --------------------------------------------------------------------------
# The core's own rates


@dataclass(frozen=True, slots=True)
class CoreRates:
    """Per-second rates of the protocol core on one core of this machine (best repeat)."""

    seal_per_s: float
    receive_per_s: float
    receipt_check_per_s: float
    receive_batch: int
    repeats: int
    envelopes_per_repeat: int

    @property
    def floor_per_s(self) -> float:
        """Two terminals on two cores: the slower of sealing and receiving."""
        return min(self.seal_per_s, self.receive_per_s)

    @property
    def one_core_per_s(self) -> float:
        """Sealing and receiving on one core, one after the other."""
        return 1.0 / (1.0 / self.seal_per_s + 1.0 / self.receive_per_s)

    @property
    def sender_per_s(self) -> float:
        """The sender's whole core work: sealing plus checking the receipt."""
        return 1.0 / (1.0 / self.seal_per_s + 1.0 / self.receipt_check_per_s)


def _timed(work: Callable[[], object]) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started
    finally:
        if enabled:
            gc.enable()


def measure_core_rates(seconds: float, *, batch: int = 32, repeats: int = 3) -> CoreRates:
    """Seal, receive (batches of ``batch``) and receipt-check rates, best of ``repeats``.

    ``seconds`` is roughly the time all repeats of all three measures take.
    """
    us, ru = _pair(_utc_now() - timedelta(days=1))
    card = ru.identity.card

    def seal(n: int) -> None:
        for i in range(n):
            now = _utc_now()
            seal_envelope(
                us.identity,
                [card],
                envelope_id=uuid7(now),
                channel="RU-GS.US-EUCOM",
                seq=i + 1,
                created_at=now,
                precedence="ROUTINE",
                kind="text",
                content=Content(lang="en", operator="duty", body={"text": f"bulk {i}"}),
            )

    # Calibrate on a small batch: about a third of the time for each measure.
    probe = 32
    per_envelope = _timed(lambda: seal(probe)) / probe * 2.5  # seal + receive + check
    number = max(batch, int(seconds / 3 / repeats / per_envelope) // batch * batch)

    seal_times = [_timed(lambda: seal(number)) / number for _ in range(repeats)]
    receive_times: list[float] = []
    check_times: list[float] = []
    for _ in range(repeats):
        raws = [us.send_text(["RU-GS"], f"bulk {i}", operator="duty").raw for i in range(number)]
        results: list[ReceiveResult] = []

        def receive(raws: list[bytes] = raws, results: list[ReceiveResult] = results) -> None:
            for start in range(0, len(raws), batch):
                for result in ru.receive_envelopes(raws[start : start + batch]):
                    if not isinstance(result, ReceiveResult):
                        raise RuntimeError(f"the core refused an envelope: {result}")
                    results.append(result)

        receive_times.append(_timed(receive) / number)
        receipts = [r.receipt for r in results]

        def check(receipts: list[bytes] = receipts) -> None:
            for receipt in receipts:
                us.receive_receipt(receipt)

        check_times.append(_timed(check) / number)
    return CoreRates(
        seal_per_s=1.0 / min(seal_times),
        receive_per_s=1.0 / min(receive_times),
        receipt_check_per_s=1.0 / min(check_times),
        receive_batch=batch,
        repeats=repeats,
        envelopes_per_repeat=number,
    )


# --------------------------------------------------------------------------
# Bare signature verification of a stored transcript


@dataclass(slots=True)
class BareSignatures:
    """Time of the bare verifications of every distinct signature an audit checks."""

    seconds: float = 0.0
    ed25519: int = 0
    mldsa65: int = 0
    entries: int = 0
    repeated_skipped: int = 0
    _seen: set[bytes] = field(default_factory=set, repr=False)


_Check = tuple[Callable[[bytes, bytes], None], bytes, bytes]


class _Collector:
    """Turns records into (verify, signature, message) triples, each signature once."""

    def __init__(self, cards: dict[str, IdentityCard], result: BareSignatures) -> None:
        self.cards = cards
        self.result = result
        self.checks: list[_Check] = []
        self._ed: dict[str, Callable[[bytes, bytes], None]] = {}
        self._ml: dict[str, Callable[[bytes, bytes], None]] = {}
        from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

        for party, card in cards.items():
            self._ed[party] = ed25519.Ed25519PublicKey.from_public_bytes(card.ed25519_public).verify
            self._ml[party] = mldsa.MLDSA65PublicKey.from_public_bytes(card.mldsa65_public).verify

    def _add(self, kind: str, party: str, signature: bytes, message: bytes) -> None:
        digest = hashlib.sha256(kind.encode() + party.encode() + b"\n" + signature).digest()
        if digest in self.result._seen:
            self.result.repeated_skipped += 1
            return
        self.result._seen.add(digest)
        if kind == "ed":
            self.result.ed25519 += 1
            self.checks.append((self._ed[party], signature, message))
        else:
            self.result.mldsa65 += 1
            self.checks.append((self._ml[party], signature, message))

    def entry(self, entry: bytes) -> None:
        kind, raw = split_entry(entry)
        payload_type = ENVELOPE_PAYLOAD_TYPE if kind is EntryType.ENVELOPE else RECEIPT_PAYLOAD_TYPE
        dsse = parse_dsse(raw, payload_type=payload_type, max_size=1 << 22, what="entry")
        obj = json.loads(dsse.payload)
        signer = obj["sender"] if kind is EntryType.ENVELOPE else obj["receiver"]
        self._add("ed", signer, dsse.signature, pae(payload_type, dsse.payload))
        if kind is EntryType.RECEIPT:
            self.checkpoint(obj["checkpoint"], signer)

    def checkpoint(self, note: str, owner: str) -> None:
        body, signatures = parse_note(note)
        origin = log_origin(owner)
        card = self.cards[owner]
        ed_id = key_id(origin, ED25519_TYPE, card.ed25519_public)
        ml_id = key_id(origin, MLDSA_TYPE, card.mldsa65_public)
        for sig in signatures:
            if sig.name == origin and sig.key_id == ed_id:
                self._add("ed", owner, sig.signature, body.encode())
            elif sig.name == origin and sig.key_id == ml_id:
                self._add("ml", owner, sig.signature, body.encode())

    def cosignature(self, note: str, owner: str, witness: str) -> None:
        self.checkpoint(note, owner)
        body, signatures = parse_note(note)
        name = witness_name(witness)
        card = self.cards[witness]
        ed_id = key_id(name, COSIGNATURE_ED25519_TYPE, card.ed25519_public)
        ml_id = key_id(name, COSIGNATURE_MLDSA_TYPE, card.mldsa65_public)
        for sig in signatures:
            if sig.name != name or sig.key_id not in (ed_id, ml_id):
                continue
            timestamp = int.from_bytes(sig.signature[:8], "big")
            message = f"cosignature/v1\ntime {timestamp}\n{body}".encode()
            kind = "ed" if sig.key_id == ed_id else "ml"
            self._add(kind, witness, sig.signature[8:], message)

    def run(self) -> None:
        """Time the verifications collected so far, then forget them."""
        checks, self.checks = self.checks, []

        def verify() -> None:
            for check, signature, message in checks:
                check(signature, message)  # raises InvalidSignature

        self.result.seconds += _timed(verify)


def measure_bare_signatures(
    url: str,
    own: IdentityCard,
    peers: Sequence[IdentityCard],
    *,
    chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> BareSignatures:
    """Verify every distinct signature ``parley verify`` checks in the database at ``url``.

    Entries are read and parsed in chunks (not timed); only the calls to the
    Ed25519 and ML-DSA-65 verifiers are timed. A signature that occurs several
    times (the checkpoint carried by every receipt of one batch) is verified
    once: that is all the work the record strictly needs.
    """
    from sqlalchemy import select

    from parley.store import models as m
    from parley.store.db import engine_for

    result = BareSignatures()
    cards = {own.party: own, **{card.party: card for card in peers}}
    collector = _Collector(cards, result)
    engine = engine_for(url)
    try:
        for rows in _chunks(engine, chunk):
            for entry in rows:
                collector.entry(entry)
            result.entries += len(rows)
            collector.run()
            if progress is not None:
                progress(result.entries)
        with engine.connect() as conn:
            for row in conn.execute(select(m.checkpoints.c.note)):
                collector.checkpoint(row.note, own.party)
            for row in conn.execute(select(m.cosignatures)):
                if row.direction == "of-us":
                    collector.cosignature(row.note, own.party, row.party)
                else:
                    collector.cosignature(row.note, row.party, own.party)
        collector.run()
    finally:
        engine.dispose()
    result._seen.clear()
    return result


def _chunks(engine: Any, size: int) -> Iterator[list[bytes]]:
    """The stored entries in log order, ``size`` at a time."""
    from parley.service.audit import stored_entries

    rows: list[bytes] = []
    for _, entry in stored_entries(engine, batch=size):
        rows.append(entry)
        if len(rows) == size:
            yield rows
            rows = []
    if rows:
        yield rows


# --------------------------------------------------------------------------
# python -m parley.bench.floors serve DIR --reply-size N


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parley.bench.floors")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the mutual-TLS floor server")
    serve.add_argument("directory", type=Path)
    serve.add_argument("--reply-size", type=int, required=True)
    args = parser.parse_args(argv)
    _serve(args.directory, args.reply_size)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
