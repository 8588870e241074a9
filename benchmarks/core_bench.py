"""Throughput of the Parley core next to the raw primitives it is built on.

Run with ``make bench`` or ``python -m benchmarks.core_bench [--quick] [--json FILE]``.

Everything is measured in one process, in one run, on this machine, so each
Parley operation can be set against its *floor*: the rate of the bare
cryptographic or hashing work it cannot avoid, measured a few seconds
earlier or later on the same CPU. The ratio ``floor rate / Parley rate`` says
how much the protocol layer (canonical JSON, base64, schema checks, Python
glue) costs on top of the primitives: 1.0x would be free.

Method: every measure is timed with :func:`time.perf_counter` over a batch of
calls sized to last about ``--quick``-dependent fractions of a second, with
the garbage collector paused (as :mod:`timeit` does); each is repeated and
the **best** repeat is kept (the median is also written to the JSON file).
Floors combine primitive rates as times add: ``1 / (1/a + 1/b)``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cryptography
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from parley import merkle
from parley.bench.report import cpu_model
from parley.core.dsse import pae, parse_dsse
from parley.core.envelope import (
    ENVELOPE_PAYLOAD_TYPE,
    Content,
    open_envelope,
    seal_envelope,
)
from parley.core.identity import Identity, IdentityCard
from parley.core.party import Party, ReceiveResult
from parley.core.transcript import EntryType, Transcript

__all__ = ["Result", "Sample", "Settings", "main", "run"]

#: A batch runner: performs ``n`` operations of the thing being measured.
Runner = Callable[[int], None]

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TEXT = (
    "FLASH. Ceasefire line sector 4: observed artillery movement at grid 38T LN 4312 7655, "
    "0412Z. Request confirmation this is not a unit under your command. Reply by 0430Z. Out."
)
ENVELOPE_ID = "0196893c-9800-7000-8000-000000000000"  # a fixed UUIDv7 for sealing
SHA_INPUT_SIZE = 64
HPKE_SUITE_NAME = "MLKEM768_X25519 / HKDF_SHA256 / CHACHA20_POLY1305"
LOG_ENTRY_SIZE = 63  # + the 1-byte type tag = a 64-byte entry, so a leaf hash is 2 blocks


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    #: Seconds one timed batch of a calibrated measure should last.
    target_s: float
    #: Timed repeats of each measure; the best is kept.
    repeats: int
    #: Entries appended to the transcript (the proofs are made on that log).
    log_size: int
    #: Repeats of the whole log build (each one appends ``log_size`` entries).
    log_repeats: int
    #: Distinct random indices / old sizes used for proofs.
    proof_samples: int
    #: Envelopes per repeat received one at a time.
    receive_single: int
    #: Batches of 100 envelopes per repeat.
    receive_batches: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 0.04, 3, 20_000, 2, 200, 30, 1)
        return cls(False, 0.25, 5, 200_000, 3, 1_000, 150, 3)


@dataclass(frozen=True, slots=True)
class Sample:
    """Seconds per operation over ``repeats`` timed batches of ``number`` operations."""

    number: int
    per_op_s: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.per_op_s)

    @property
    def median(self) -> float:
        return statistics.median(self.per_op_s)

    @property
    def rate(self) -> float:
        return 1.0 / self.best


@dataclass(frozen=True, slots=True)
class Result:
    operation: str
    rate: float
    median_rate: float
    ops_per_repeat: int
    repeats: int
    floor_op: str | None = None
    floor_rate: float | None = None
    primitive: bool = False

    @property
    def ratio(self) -> float | None:
        if self.floor_rate is None:
            return None
        return self.floor_rate / self.rate


@dataclass(slots=True)
class Report:
    machine: dict[str, str]
    settings: Settings
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------
# Timing


def _timed(run: Runner, n: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run(n)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def measure(run: Runner, settings: Settings) -> Sample:
    """Calibrate a batch size to last ``target_s``, then keep every repeat's time per op."""
    n = 1
    while True:
        elapsed = _timed(run, n)
        if elapsed >= settings.target_s / 8 or n >= 1 << 24:
            break
        n *= 2 if elapsed > settings.target_s / 80 else 8
    number = max(1, math.ceil(n * settings.target_s / max(elapsed, 1e-9)))
    per_op = tuple(_timed(run, number) / number for _ in range(settings.repeats))
    return Sample(number, per_op)


def repeated(fn: Callable[[], object]) -> Runner:
    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


def combined(*rates: float) -> float:
    """The rate of doing one of each operation in turn: 1 / (1/a + 1/b + ...)."""
    return 1.0 / sum(1.0 / r for r in rates)


# --------------------------------------------------------------------------
# Machine


def machine_info() -> dict[str, str]:
    from cryptography.hazmat.backends.openssl.backend import backend

    try:
        jcs = importlib.metadata.version("rfc8785")
    except importlib.metadata.PackageNotFoundError:
        jcs = "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": f"{cryptography.__version__} ({backend.openssl_version_text()})",
        "rfc8785": jcs,
    }


# --------------------------------------------------------------------------
# The measures


@dataclass(frozen=True, slots=True)
class _Fixture:
    alice: Identity
    bob: Identity
    content: Content
    envelope: bytes
    lookup: Callable[[str], IdentityCard | None]


def _fixture() -> _Fixture:
    alice = Identity.generate("ALICE", "Alice", now=NOW)
    bob = Identity.generate("BOB", "Bob", now=NOW)
    content = Content(lang="en", operator="duty officer", body={"text": TEXT})
    envelope = _seal(alice, bob.card, content)
    return _Fixture(alice, bob, content, envelope, {"ALICE": alice.card}.get)


def _seal(sender: Identity, recipient: IdentityCard, content: Content) -> bytes:
    return seal_envelope(
        sender,
        [recipient],
        envelope_id=ENVELOPE_ID,
        channel="ALICE.BOB",
        seq=1,
        created_at=NOW,
        precedence="FLASH",
        kind="text",
        content=content,
    )


@dataclass(frozen=True, slots=True)
class _Primitives:
    ed_sign: float
    ed_verify: float
    hpke_seal: float
    hpke_open: float
    mldsa_sign: float
    mldsa_verify: float
    sha256: float


def bench_primitives(report: Report, fx: _Fixture) -> _Primitives:
    s = report.settings
    # Ed25519 over a message the size of what an envelope signs (its DSSE PAE).
    message = pae(
        ENVELOPE_PAYLOAD_TYPE,
        parse_dsse(
            fx.envelope, payload_type=ENVELOPE_PAYLOAD_TYPE, max_size=1 << 20, what="envelope"
        ).payload,
    )
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_pub = ed_key.public_key()
    ed_sig = ed_key.sign(message)
    ed_sign = measure(repeated(lambda: ed_key.sign(message)), s)
    ed_verify = measure(repeated(lambda: ed_pub.verify(ed_sig, message)), s)

    # HPKE on the same plaintext size as one envelope ciphertext, with an info of the same size.
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    hpke_key = hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    )
    hpke_pub = hpke_key.public_key()
    plaintext = fx.content.to_bytes()
    info = f"parley/v1 envelope\n{ENVELOPE_ID}\nALICE\nBOB".encode()
    ciphertext = suite.encrypt(plaintext, hpke_pub, info=info)
    hpke_seal = measure(repeated(lambda: suite.encrypt(plaintext, hpke_pub, info=info)), s)
    hpke_open = measure(repeated(lambda: suite.decrypt(ciphertext, hpke_key, info=info)), s)

    # ML-DSA-65 over a checkpoint-sized note body.
    note = b"parley.transcript/US-EUCOM\n200000\n" + b"A" * 44 + b"\n"
    ml_key = mldsa.MLDSA65PrivateKey.generate()
    ml_pub = ml_key.public_key()
    ml_sig = ml_key.sign(note)
    mldsa_sign = measure(repeated(lambda: ml_key.sign(note)), s)
    mldsa_verify = measure(repeated(lambda: ml_pub.verify(ml_sig, note)), s)

    data = bytes(range(SHA_INPUT_SIZE))
    sha = hashlib.sha256

    def sha_run(n: int) -> None:
        for _ in range(n):
            sha(data).digest()

    sha256 = measure(sha_run, s)

    for name, sample in (
        (f"Ed25519 sign ({len(message):,} B)", ed_sign),
        (f"Ed25519 verify ({len(message):,} B)", ed_verify),
        (f"HPKE seal ({len(plaintext)} B)", hpke_seal),
        (f"HPKE open ({len(plaintext)} B)", hpke_open),
        (f"ML-DSA-65 sign ({len(note)} B)", mldsa_sign),
        (f"ML-DSA-65 verify ({len(note)} B)", mldsa_verify),
        (f"SHA-256 ({SHA_INPUT_SIZE} B)", sha256),
    ):
        report.results.append(_result(name, sample, s, primitive=True))
    report.notes.append(
        f"HPKE = {HPKE_SUITE_NAME}; plaintext is the inner content of a text envelope "
        f"({len(plaintext)} B); Ed25519 signs the envelope's DSSE PAE ({len(message):,} B)."
    )
    return _Primitives(
        ed_sign.rate,
        ed_verify.rate,
        hpke_seal.rate,
        hpke_open.rate,
        mldsa_sign.rate,
        mldsa_verify.rate,
        sha256.rate,
    )


def _result(
    name: str,
    sample: Sample,
    s: Settings,
    floor_op: str | None = None,
    floor_rate: float | None = None,
    *,
    primitive: bool = False,
) -> Result:
    return Result(
        operation=name,
        rate=sample.rate,
        median_rate=1.0 / sample.median,
        ops_per_repeat=sample.number,
        repeats=len(sample.per_op_s),
        floor_op=floor_op,
        floor_rate=floor_rate,
        primitive=primitive,
    )


def bench_envelopes(report: Report, fx: _Fixture, p: _Primitives) -> None:
    s = report.settings
    seal = measure(repeated(lambda: _seal(fx.alice, fx.bob.card, fx.content)), s)
    opened = open_envelope(fx.envelope, me=fx.bob, lookup=fx.lookup, now=NOW)
    assert opened.content.body == {"text": TEXT}
    open_ = measure(
        repeated(lambda: open_envelope(fx.envelope, me=fx.bob, lookup=fx.lookup, now=NOW)), s
    )
    report.results.append(
        _result(
            "seal_envelope (1 recipient)",
            seal,
            s,
            "Ed25519 sign + HPKE seal",
            combined(p.ed_sign, p.hpke_seal),
        )
    )
    report.results.append(
        _result(
            "open_envelope",
            open_,
            s,
            "Ed25519 verify + HPKE open",
            combined(p.ed_verify, p.hpke_open),
        )
    )
    as_built = combined(p.ed_sign, p.hpke_seal, p.hpke_seal)
    report.notes.append(
        f"seal_envelope encrypts twice for one recipient (the recipient and the sender's own "
        f"copy): against Ed25519 sign + 2 x HPKE seal ({as_built:,.0f}/s) its ratio is "
        f"{as_built / seal.rate:.2f}x."
    )


def bench_log(report: Report, p: _Primitives) -> merkle.MerkleLog:
    s = report.settings
    raws = [i.to_bytes(8, "big") * 8 for i in range(s.log_size)]
    raws = [r[:LOG_ENTRY_SIZE] for r in raws]
    kind = EntryType.ENVELOPE

    def builder(transcript: Transcript) -> Runner:
        def run(n: int) -> None:
            append = transcript.append
            for raw in raws[:n]:
                append(kind, raw)

        return run

    per_op: list[float] = []
    transcript = Transcript()
    for _ in range(s.log_repeats):
        transcript = Transcript()
        per_op.append(_timed(builder(transcript), s.log_size) / s.log_size)
    assert transcript.size == s.log_size
    sample = Sample(s.log_size, tuple(per_op))
    report.results.append(
        _result(
            f"Transcript.append (to {s.log_size:,} entries)",
            sample,
            s,
            f"SHA-256 x 2 ({SHA_INPUT_SIZE} B)",
            p.sha256 / 2,
        )
    )
    return transcript.tree


def bench_proofs(report: Report, log: merkle.MerkleLog, p: _Primitives) -> None:
    s = report.settings
    rng = random.Random(20260501)
    size = log.size
    indices = [rng.randrange(size) for _ in range(s.proof_samples)]
    olds = [rng.randrange(1, size) for _ in range(s.proof_samples)]
    k = len(indices)

    def gen_inclusion(n: int) -> None:
        proof = log.inclusion_proof
        for i in range(n):
            proof(indices[i % k])

    def gen_consistency(n: int) -> None:
        proof = log.consistency_proof
        for i in range(n):
            proof(olds[i % k])

    report.results.append(
        _result(
            "MerkleLog.inclusion_proof (random index)",
            measure(gen_inclusion, s),
            s,
        )
    )
    report.results.append(
        _result(
            "MerkleLog.consistency_proof (random old size)",
            measure(gen_consistency, s),
            s,
        )
    )

    root = log.root()
    inclusions = [(log.leaf(i), i, log.inclusion_proof(i)) for i in indices]
    consistencies = [(old, log.root_at(old), log.consistency_proof(old)) for old in olds]
    for leaf, index, path in inclusions[:10]:
        merkle.verify_inclusion(leaf, index, size, path, root)
    for old, old_root, path in consistencies[:10]:
        merkle.verify_consistency(old, size, old_root, root, path)
    incl_len = statistics.fmean(len(x[2]) for x in inclusions)
    cons_len = statistics.fmean(len(x[2]) for x in consistencies)

    def verify_inclusion(n: int) -> None:
        verify = merkle.verify_inclusion
        for i in range(n):
            leaf, index, path = inclusions[i % k]
            verify(leaf, index, size, path, root)

    def verify_consistency(n: int) -> None:
        verify = merkle.verify_consistency
        for i in range(n):
            old, old_root, path = consistencies[i % k]
            verify(old, size, old_root, root, path)

    report.results.append(
        _result(
            f"verify_inclusion (avg {incl_len:.1f} hashes)",
            measure(verify_inclusion, s),
            s,
            f"SHA-256 x {incl_len:.1f}",
            p.sha256 / incl_len,
        )
    )
    report.results.append(
        _result(
            f"verify_consistency (avg {cons_len:.1f} hashes)",
            measure(verify_consistency, s),
            s,
            f"SHA-256 x {cons_len:.1f}",
            p.sha256 / cons_len,
        )
    )
    report.notes.append(
        f"Proofs are on the log of {size:,} entries built above, at {k:,} random indices / old "
        "sizes; verify_consistency hashes up to twice per proof hash (old and new root), so "
        "its floor of one hash per proof hash is optimistic."
    )


def bench_receive(report: Report, fx: _Fixture, p: _Primitives) -> None:
    s = report.settings
    sender = Party(fx.alice, clock=lambda: NOW)
    receiver = Party(fx.bob, clock=lambda: NOW)
    sender.add_peer(fx.bob.card, fx.bob.card.fingerprint)
    receiver.add_peer(fx.alice.card, fx.alice.card.fingerprint)
    singles = s.repeats * s.receive_single
    batched = s.repeats * s.receive_batches * 100
    # Envelopes are received in the order they were sent (no gaps), each once.
    raws = [
        sender.send_text(["BOB"], TEXT, operator="duty officer").raw
        for _ in range(singles + batched)
    ]
    receive = receiver.receive_envelopes
    results: list[object] = []

    def one_by_one(chunk: Sequence[bytes]) -> Runner:
        def run(n: int) -> None:
            for raw in chunk[:n]:
                results.extend(receive([raw]))

        return run

    def in_batches(chunk: Sequence[bytes]) -> Runner:
        def run(n: int) -> None:
            for start in range(0, n, 100):
                results.extend(receive(chunk[start : start + 100]))

        return run

    rows: list[tuple[int, Sample]] = []
    for batch, per_repeat, make in (
        (1, s.receive_single, one_by_one),
        (100, s.receive_batches * 100, in_batches),
    ):
        per_op = []
        for _ in range(s.repeats):
            chunk, raws = raws[:per_repeat], raws[per_repeat:]
            per_op.append(_timed(make(chunk), per_repeat) / per_repeat)
        rows.append((batch, Sample(per_repeat, tuple(per_op))))
    bad = [r for r in results if not isinstance(r, ReceiveResult)]
    if bad or len(results) != singles + batched:
        raise RuntimeError(f"receive_envelopes rejected envelopes: {bad[:3]!r}")
    for batch, sample in rows:
        floor = 1.0 / (
            1 / p.ed_verify
            + 1 / p.hpke_open
            + 1 / p.ed_sign
            + (1 / p.ed_sign + 1 / p.mldsa_sign) / batch
        )
        report.results.append(
            _result(
                f"receive_envelopes, batch of {batch} (env/s)",
                sample,
                s,
                f"open floor + Ed25519 sign + ckpt/{batch}",
                floor,
            )
        )
    report.notes.append(
        "receive floor: Ed25519 verify + HPKE open + Ed25519 sign (the receipt) per envelope, "
        "plus one checkpoint (Ed25519 + ML-DSA-65 sign) per batch."
    )


# --------------------------------------------------------------------------
# Output


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def format_table(report: Report) -> str:
    header = ("operation", "rate/s", "floor op", "floor rate/s", "ratio")
    rows: list[tuple[str, str, str, str, str] | None] = []
    parley = [r for r in report.results if not r.primitive]
    primitives = [r for r in report.results if r.primitive]
    for r in parley:
        ratio = r.ratio
        rows.append(
            (
                r.operation,
                _rate(r.rate),
                r.floor_op or "-",
                _rate(r.floor_rate) if r.floor_rate is not None else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
            )
        )
    rows.append(None)
    for r in primitives:
        rows.append((r.operation, _rate(r.rate), "(primitive)", "", ""))
    widths = [len(h) for h in header]
    for row in rows:
        if row is not None:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    right = (False, True, False, True, True)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    out.extend(rule if row is None else line(row) for row in rows)
    return "\n".join(out)


def format_report(report: Report) -> str:
    s = report.settings
    lines = [
        f"Parley core benchmark ({'quick' if s.quick else 'full'} run)",
        *(f"  {k:<13}{v}" for k, v in report.machine.items()),
        f"  {'method':<13}best of {s.repeats} timed batches (time.perf_counter, GC paused; "
        f"the log build: best of {s.log_repeats}); ratio = floor rate / Parley rate",
        "",
        format_table(report),
        "",
        *(f"* {n}" for n in report.notes),
        f"* Whole run: {report.elapsed_s:.1f} s.",
    ]
    return "\n".join(lines)


def to_json(report: Report) -> dict[str, object]:
    return {
        "machine": report.machine,
        "settings": asdict(report.settings),
        "method": "best of repeats (rate_per_s); median_rate_per_s is the median repeat",
        "results": [
            {
                "operation": r.operation,
                "rate_per_s": r.rate,
                "median_rate_per_s": r.median_rate,
                "ops_per_repeat": r.ops_per_repeat,
                "repeats": r.repeats,
                "floor_op": r.floor_op,
                "floor_rate_per_s": r.floor_rate,
                "ratio": r.ratio,
                "primitive": r.primitive,
            }
            for r in report.results
        ],
        "notes": report.notes,
        "elapsed_s": report.elapsed_s,
    }


# --------------------------------------------------------------------------
# Entry point


def run(settings: Settings) -> Report:
    start = time.perf_counter()
    report = Report(machine_info(), settings)
    fx = _fixture()
    prims = bench_primitives(report, fx)
    bench_envelopes(report, fx, prims)
    log = bench_log(report, prims)
    bench_proofs(report, log, prims)
    del log
    bench_receive(report, fx, prims)
    report.elapsed_s = time.perf_counter() - start
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_bench",
        description="Measure the Parley core against the raw primitives, on this machine.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (under ~15 s) with a 20,000-entry log"
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    report = run(Settings.for_mode(bool(args.quick)))
    print(format_report(report))
    if args.json is not None:
        path: Path = args.json
        path.write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
        print(f"* Results written to {path}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
