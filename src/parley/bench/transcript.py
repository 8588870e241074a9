"""Build a terminal data directory holding a long, valid, verifiable transcript.

``generate_transcript(path, entries)`` makes what a terminal that has sent
``entries / 2`` messages to its peer, and holds the peer's receipt for each,
would have on disk, without running a network: its keys, card and
configuration (``parley.service.setup.init_terminal``), the peer pinned with
``Terminal.add_peer``, and its database holding

* ``log_entries``: each envelope sealed by ``Party.send`` and each receipt
  issued by the peer's ``Party.receive_envelopes`` (in batches, as the
  delivery worker sends them), in the order the terminal would log them;
* ``messages``, ``outbox`` (delivered) and ``receipts``: the indexes the
  terminal writes beside them;
* ``checkpoints`` and ``cosignatures``: a witnessing round every
  ``witness_every`` messages and one at the end, run with the parties' own
  ``checkpoint_request``, ``offer_checkpoint``, ``witness`` and
  ``accept_cosignature``, both ways, as the delivery worker runs them.

Everything is made by the real core with real keys, so ``parley verify``
checks it like any terminal's records and ``parley serve`` starts on it.

The two parties run in two worker processes, so sealing (the sender) and
receiving (the peer) use both cores; this process writes the rows with
bulk inserts. Both parties evict their transcript entries as soon as they
are handed out (``Transcript.evict``; the peer's log is not kept at all), so
memory stays small however long the transcript.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from parley.core.encoding import parse_time
from parley.core.identity import Identity, IdentityCard
from parley.core.party import Party, ReceiveResult
from parley.core.transcript import EntryType
from parley.core.witness import OfferPlan
from parley.merkle import leaf_hash

__all__ = ["GeneratedTranscript", "generate_transcript"]

SENDER = ("US-EUCOM", "US European Command")
RECEIVER = ("RU-GS", "General Staff of the Armed Forces of the Russian Federation")
TEXT = (
    "ROUTINE. Scheduled notification {n}: exercise activity in sector 4 between 0600Z and "
    "0900Z, no live firing. Acknowledge at your convenience."
)
_ROWS_PER_COMMIT = 4000


@dataclass(frozen=True, slots=True)
class GeneratedTranscript:
    path: Path
    entries: int
    messages: int
    checkpoints: int
    cosignatures: int
    seconds: float
    database_bytes: int
    batch: int
    witness_every: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _not_kept(index: int) -> bytes:
    raise IndexError(f"transcript entry {index} was handed to the database, not kept")


# --------------------------------------------------------------------------
# The two parties, each in its own process


class _Role:
    """One party in a worker process, answering requests from the generator."""

    def __init__(self, party: Party) -> None:
        self.party = party
        self._plan: OfferPlan | None = None
        self.sent = 0

    def _take(self) -> tuple[int, list[bytes]]:
        """The entries appended since the last call (and the first one's index), evicted."""
        transcript = self.party.transcript
        held = transcript.held()
        entries = [transcript.entry(index) for index in held]
        transcript.evict()
        return held.start, entries

    # The sender ------------------------------------------------------------

    def step(self, receipts: list[bytes], count: int) -> tuple[int, list[bytes], list[Any]]:
        """Log receipts received, then send ``count`` messages; return the new entries."""
        for receipt in receipts:
            self.party.transcript.append(EntryType.RECEIPT, receipt)
        sent = []
        for _ in range(count):
            self.sent += 1
            text = TEXT.format(n=self.sent)
            out = self.party.send_text([RECEIVER[0]], text, operator="duty officer")
            sent.append(
                (
                    out.envelope_id,
                    out.channel,
                    out.seq,
                    out.log_index,
                    text,
                    out.content,
                    out.created_at,
                )
            )
        first, entries = self._take()
        return first, entries, sent

    # The receiver ----------------------------------------------------------

    def receive(self, envelopes: list[bytes]) -> list[bytes]:
        receipts = []
        for result in self.party.receive_envelopes(envelopes):
            if not isinstance(result, ReceiveResult):
                raise RuntimeError(f"the receiver refused an envelope: {result}")
            receipts.append(result.receipt)
        self._take()  # the receiver's own log is not kept
        return receipts

    # Both: witnessing --------------------------------------------------------

    def checkpoint_request(self, owner: str) -> bytes:
        return self.party.checkpoint_request(owner)

    def offer_checkpoint(self, request: bytes) -> tuple[bytes, int, str]:
        offer = self.party.offer_checkpoint(request)
        latest = self.party.latest_checkpoint
        assert latest is not None
        return offer, latest.size, latest.note

    def plan_witness(self, offer: bytes) -> tuple[int, int]:
        """The leaves the mirror needs (start, end) for the offered checkpoint."""
        self._plan, _ = self.party.plan_witness(offer)
        return self._plan.start, self._plan.checkpoint.size

    def log_leaves(self, start: int, limit: int) -> list[bytes]:
        return self.party.log_leaves(start, limit)

    def witness(self, leaves: list[bytes]) -> tuple[bytes, int]:
        assert self._plan is not None
        cosigned = self.party.cosign(self._plan, leaves)
        owner = SENDER[0] if self.party.party == RECEIVER[0] else RECEIVER[0]
        checkpoint = self.party.last_cosigned_of(owner)
        assert checkpoint is not None
        return cosigned, checkpoint.size

    def accept_cosignature(self, note: bytes) -> tuple[str, int, str]:
        accepted = self.party.accept_cosignature(note)
        return accepted.witness, accepted.size, accepted.note


_OPERATIONS = {
    "step",
    "receive",
    "checkpoint_request",
    "offer_checkpoint",
    "plan_witness",
    "log_leaves",
    "witness",
    "accept_cosignature",
}


def _worker(requests: Connection, replies: Connection, role: str) -> None:
    """Run one party: the sender from its key file, or a new receiver."""
    try:
        key_file, passphrase, peer = requests.recv()
        if role == "sender":
            from parley.keyfile import load_identity

            identity = load_identity(Path(key_file), passphrase)
            hello: Any = None
        else:
            from parley.service import tls

            identity = Identity.generate(*RECEIVER, now=_utc_now() - timedelta(hours=1))
            hello = (identity.card.signed_bytes, tls.certificate_for(identity))
        # Entries are handed out and evicted as they come (Transcript.evict): the
        # parties keep their Merkle trees and message records, not the log itself.
        party = Party(identity, clock=_utc_now, entry_loader=_not_kept)
        card = IdentityCard.from_bytes(peer)
        party.add_peer(card, card.fingerprint)
        state = _Role(party)
        replies.send(("ok", hello))
        while True:
            request = requests.recv()
            if request is None:
                return
            operation, args = request
            if operation not in _OPERATIONS:
                raise ValueError(f"unknown operation {operation!r}")
            replies.send(("ok", getattr(state, operation)(*args)))
    except EOFError:
        return  # the generator went away
    except BaseException:  # reported to the generator, which raises it there
        replies.send(("error", traceback.format_exc()))


class _Remote:
    """The generator's handle on one worker process (``python -m parley.bench.transcript``).

    A plain subprocess rather than ``multiprocessing.Process``: it imports
    only this module, whatever the main module of the generating process is.
    """

    def __init__(self, role: str, key_file: Path, passphrase: str, peer: bytes) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        self.process = subprocess.Popen(  # noqa: S603 - this module, run by this interpreter
            [
                sys.executable,
                "-m",
                "parley.bench.transcript",
                "worker",
                role,
                str(to_child),
                str(from_child),
            ],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self.requests = Connection(from_parent, readable=False)
        self.replies = Connection(to_parent, writable=False)
        self.requests.send((str(key_file), passphrase, peer))
        self.hello = self.result()

    def submit(self, operation: str, *args: Any) -> None:
        self.requests.send((operation, args))

    def result(self) -> Any:
        try:
            status, value = self.replies.recv()
        except EOFError:
            raise RuntimeError(
                f"the transcript worker exited with {self.process.wait(10)}"
            ) from None
        if status != "ok":
            raise RuntimeError(f"the transcript worker failed:\n{value}")
        return value

    def call(self, operation: str, *args: Any) -> Any:
        self.submit(operation, *args)
        return self.result()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.requests.send(None)
        self.requests.close()
        self.replies.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------
# Writing the rows


class _Writer:
    """Rows for the terminal's tables, inserted in bulk, a few thousand per commit."""

    def __init__(self, url: str, me: str, peer: str, ack_deadline: timedelta) -> None:
        from parley.store import models as m
        from parley.store.db import engine_for

        self.engine = engine_for(url)
        # Newer schemas keep each entry's leaf hash beside it, as the terminal writes it.
        self.with_leaf = "leaf" in m.log_entries.c
        self.me = me
        self.peer = peer
        self.ack_deadline = ack_deadline
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.pending = 0
        self.checkpoints = 0
        self.cosignatures = 0
        self._checkpoint_sizes: set[int] = set()

    def _add(self, table: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)
        self.pending += 1

    def entries(self, first: int, entries: Sequence[bytes], sent: Sequence[Any]) -> list[bytes]:
        """Log entries and the index rows beside them; return the envelopes to deliver."""
        from parley.core.canonical import canonical_bytes

        now = _utc_now()
        envelopes = []
        for offset, entry in enumerate(entries):
            index = first + offset
            row = {"idx": index, "entry": entry, "stored_at": now}
            if self.with_leaf:
                row["leaf"] = leaf_hash(entry)
            self._add("log_entries", row)
            if entry[0] == EntryType.ENVELOPE:
                envelopes.append(entry[1:])
            else:
                payload = json.loads(base64.b64decode(json.loads(entry[1:])["payload"]))
                self._add(
                    "receipts",
                    {
                        "envelope_id": payload["envelope_id"],
                        "receiver": payload["receiver"],
                        "issued_at": parse_time(payload["issued_at"], "issued_at"),
                        "stored_at": now,
                        "through_seq": payload["through_seq"],
                        "log_index": index,
                    },
                )
                self._add(
                    "outbox",
                    {
                        "envelope_id": payload["envelope_id"],
                        "peer": payload["receiver"],
                        "precedence": "ROUTINE",
                        "state": "delivered",
                        "attempts": 0,
                        "next_attempt": now,
                        "last_error": None,
                        "delivered_at": now,
                        "link": "primary",
                        "via": None,
                    },
                )
        for envelope_id, channel, seq, log_index, text, content, created_at in sent:
            self._add(
                "messages",
                {
                    "envelope_id": envelope_id,
                    "log_index": log_index,
                    "direction": "out",
                    "channel": channel,
                    "sender": self.me,
                    "recipients": self.peer,
                    "seq": seq,
                    "kind": "text",
                    "precedence": "ROUTINE",
                    "exercise": False,
                    "created_at": created_at,
                    "stored_at": now,
                    "operator": "duty officer",
                    "lang": "en",
                    "body": canonical_bytes({"text": text}).decode(),
                    "content": content,
                    "ack_due": now + self.ack_deadline,
                    "acked_at": None,
                    "acked_by": None,
                    "overdue": False,
                },
            )
        if self.pending >= _ROWS_PER_COMMIT:
            self.flush()
        return envelopes

    def checkpoint(self, size: int, note: str) -> None:
        if size in self._checkpoint_sizes:
            return  # the log did not grow since the last round: the same checkpoint
        self._checkpoint_sizes.add(size)
        self._add("checkpoints", {"size": size, "note": note, "issued_at": _utc_now()})
        self.checkpoints += 1

    def cosignature(self, direction: str, party: str, size: int, note: str) -> None:
        self._add(
            "cosignatures",
            {"direction": direction, "party": party, "size": size, "note": note, "at": _utc_now()},
        )
        self.cosignatures += 1

    def flush(self) -> None:
        from sqlalchemy import insert

        from parley.store import models as m

        if not self.rows:
            return
        # Parents before children: the order the terminal's own transactions use.
        order = ("log_entries", "messages", "outbox", "receipts", "checkpoints", "cosignatures")
        with self.engine.begin() as conn:
            for table in order:
                rows = self.rows.get(table)
                if rows:
                    conn.execute(insert(getattr(m, table)), rows)
        self.rows = {}
        self.pending = 0

    def close(self) -> None:
        self.flush()
        self.engine.dispose()


# --------------------------------------------------------------------------
# The generator


def generate_transcript(
    path: Path,
    entries: int,
    *,
    batch: int = 32,
    witness_every: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> GeneratedTranscript:
    """Create a terminal data directory at ``path`` whose transcript has ``entries`` entries.

    ``entries`` is rounded up to an even number (each message is an envelope
    and its receipt). The sender is ``US-EUCOM``, with the passphrase of
    ``parley.testing.network``; its peer ``RU-GS`` is pinned with one link to
    a port where nothing listens. ``progress(done, total)`` is called as
    entries are written.
    """
    from parley.config import DataDir
    from parley.service.setup import init_terminal
    from parley.service.terminal import CardBundle, Terminal
    from parley.testing.network import PASSPHRASE, TEST_SCRYPT_N, free_port

    started = time.perf_counter()
    messages = (entries + 1) // 2
    total = messages * 2
    config = init_terminal(
        path,
        party=SENDER[0],
        name=SENDER[1],
        passphrase=PASSPHRASE,
        peer_listen=f"127.0.0.1:{free_port()}",
        console_listen=f"127.0.0.1:{free_port()}",
        scrypt_n=TEST_SCRYPT_N,
    )
    data = DataDir(path)
    own = CardBundle.from_json(data.card_file.read_bytes()).card
    receiver = _Remote("receiver", data.key_file, PASSPHRASE, own.signed_bytes)
    sender: _Remote | None = None
    try:
        card_bytes, certificate = receiver.hello
        peer = IdentityCard.from_bytes(card_bytes)
        terminal = Terminal.open(path, PASSPHRASE)
        try:
            terminal.add_peer(
                CardBundle(peer, certificate),
                peer.fingerprint,
                [("primary", f"https://127.0.0.1:{free_port()}")],
            )
        finally:
            terminal.engine.dispose()
        sender = _Remote("sender", data.key_file, PASSPHRASE, peer.signed_bytes)
        writer = _Writer(config.database, SENDER[0], RECEIVER[0], config.ack_deadline("ROUTINE"))
        try:
            _pipeline(sender, receiver, writer, messages, batch, witness_every, total, progress)
        finally:
            writer.close()
    finally:
        for remote in (sender, receiver):
            if remote is not None:
                remote.close()
    size = sum(p.stat().st_size for p in path.glob("parley.db*"))
    return GeneratedTranscript(
        path=path,
        entries=total,
        messages=messages,
        checkpoints=writer.checkpoints,
        cosignatures=writer.cosignatures,
        seconds=time.perf_counter() - started,
        database_bytes=size,
        batch=batch,
        witness_every=witness_every,
    )


def _pipeline(
    sender: _Remote,
    receiver: _Remote,
    writer: _Writer,
    messages: int,
    batch: int,
    witness_every: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Seal batch k+1 while the receiver answers batch k; log receipts one batch behind.

    The sender's log reads E0 E1 R0 E2 R1 E3 ...: each batch of receipts
    lands after the next batch was queued, as it does on a busy terminal.
    """
    to_seal = messages
    receipts: list[bytes] = []  # received, not yet logged by the sender
    in_flight = False  # the receiver is answering a batch
    written = 0
    since_witness = 0
    while True:
        count = min(batch, to_seal)
        to_seal -= count
        if count == 0 and not in_flight:
            if receipts:
                first, entries, sent = sender.call("step", receipts, 0)
                writer.entries(first, entries, sent)
                written += len(entries)
            break
        sender.submit("step", receipts, count)
        receipts = receiver.result() if in_flight else []
        in_flight = False
        first, entries, sent = sender.result()
        envelopes = writer.entries(first, entries, sent)
        written += len(entries)
        since_witness += count
        if since_witness >= witness_every:
            _witness_round(sender, receiver, writer)
            since_witness = 0
        if envelopes:
            receiver.submit("receive", envelopes)
            in_flight = True
        if progress is not None:
            progress(written, total)
    _witness_round(sender, receiver, writer)
    if progress is not None:
        progress(written, total)


def _witness_round(sender: _Remote, receiver: _Remote, writer: _Writer) -> None:
    """Each party cosigns the other's latest checkpoint, as the delivery worker does."""
    request = receiver.call("checkpoint_request", SENDER[0])
    offer, size, note = sender.call("offer_checkpoint", request)
    writer.checkpoint(size, note)
    start, end = receiver.call("plan_witness", offer)
    cosigned, _ = receiver.call("witness", sender.call("log_leaves", start, end - start))
    witness, cosigned_size, cosigned_note = sender.call("accept_cosignature", cosigned)
    writer.cosignature("of-us", witness, cosigned_size, cosigned_note)
    request = sender.call("checkpoint_request", RECEIVER[0])
    offer, _, _ = receiver.call("offer_checkpoint", request)
    start, end = sender.call("plan_witness", offer)
    cosigned, peer_size = sender.call("witness", receiver.call("log_leaves", start, end - start))
    writer.cosignature("by-us", RECEIVER[0], peer_size, cosigned.decode())


def _main(argv: Sequence[str]) -> int:
    """``python -m parley.bench.transcript worker ROLE READ_FD WRITE_FD``: one party."""
    if len(argv) != 4 or argv[0] != "worker" or argv[1] not in ("sender", "receiver"):
        sys.stderr.write("usage: python -m parley.bench.transcript worker ROLE READ_FD WRITE_FD\n")
        return 2
    requests = Connection(int(argv[2]), writable=False)
    replies = Connection(int(argv[3]), readable=False)
    _worker(requests, replies, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
