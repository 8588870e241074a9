"""``parley bench``: two real terminals on this machine, each figure beside its floor.

``run(settings, workdir)`` measures, in this order (floors first, while the
machine is otherwise idle, then the terminals):

1. the core's sealing, receiving and receipt-checking rates (the
   throughput floor) and the mutual-TLS round trip with two commits (the
   latency floor), see ``parley.bench.floors``;
2. on two ``parley serve`` processes: FLASH latency, sustained throughput,
   then, on a fresh pair whose link runs through a fault proxy, the backlog
   drain, see ``parley.bench.terminals``;
3. on a generated data directory with a transcript of ``transcript_entries``
   entries (``parley.bench.transcript``): the time of the real ``parley
   verify`` against the bare signature verifications it contains, and the
   peak RSS of ``parley serve`` started on it.

``main`` is what the ``parley bench`` command runs: it prints the table,
writes the JSON and draws the latency plot. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from parley.bench import floors, report, terminals
from parley.bench.transcript import generate_transcript
from parley.core.identity import IdentityCard

__all__ = ["Settings", "main", "run"]

#: Bytes per log entry ``parley serve`` cannot avoid keeping: its leaf hash
#: (32) plus the Merkle log's cache of subtree hashes (about 1).
LEAF_BYTES = 33
LATENCY_TEXT = "latency probe 123"


@dataclass(frozen=True, slots=True)
class Settings:
    mode: str
    latency_messages: int
    throughput_window_s: float
    throughput_warmup_s: float
    throughput_threads: int
    throughput_batch: int
    throughput_high_water: int
    backlog_messages: int
    transcript_entries: int
    core_seconds: float
    core_repeats: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls("quick", 200, 10.0, 2.0, 4, 50, 1000, 2_000, 100_000, 3.0, 3)
        return cls("full", 1000, 60.0, 5.0, 4, 50, 1000, 10_000, 1_000_000, 8.0, 5)

    @classmethod
    def tiny(cls) -> Settings:
        """Sizes for the harness's own test: every stage, in well under a minute."""
        return cls("tiny", 20, 2.0, 1.0, 2, 25, 500, 200, 2_000, 1.0, 1)


class Output:
    """Progress lines and bars on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, log_path=False)

    def say(self, text: str) -> None:
        self.console.log(text, highlight=False, markup=False)

    @contextlib.contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=total)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            yield update


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor <= 0:
        return None
    return round(value / floor, 3)


def run(settings: Settings, workdir: Path, *, output: Output | None = None) -> dict[str, Any]:
    """Measure everything; return the JSON document (``_latency_samples`` keys hold raw data)."""
    out = output or Output()
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "mode": settings.mode,
        "machine": report.machine_info(),
        "settings": asdict(settings),
    }
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    notes: list[str] = []
    started = time.perf_counter()

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        out.say(f"[{name}] ...")
        began = time.perf_counter()
        try:
            yield
        except Exception as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
            brief = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
            errors[name] = f"{type(exc).__name__}: {brief[:400]}"
            saved = workdir / f"error-{name}.txt"
            saved.write_text(traceback.format_exc())
            out.say(f"[{name}] FAILED: {errors[name]} (traceback in {saved})")
        finally:
            timings[name] = round(time.perf_counter() - began, 2)
            out.say(f"[{name}] done in {timings[name]:.1f} s")

    envelope_bytes, receipt_bytes = floors.sample_sizes(LATENCY_TEXT)
    rates: floors.CoreRates | None = None
    tls_floor: floors.TlsFloor | None = None

    with stage("core_floor"):
        rates = floors.measure_core_rates(
            settings.core_seconds, batch=_bulk_batch(), repeats=settings.core_repeats
        )
        result["throughput_floor"] = {
            "method": (
                f"in this process, best of {rates.repeats} repeats: seal_envelope (ROUTINE "
                "text, one recipient), Party.receive_envelopes in batches of the delivery "
                "worker's size, Party.receive_receipt; the floor is min(seal, receive) since "
                "the two terminals run on separate cores"
            ),
            "seal_per_s": round(rates.seal_per_s, 1),
            "receive_per_s": round(rates.receive_per_s, 1),
            "receive_batch": rates.receive_batch,
            "receipt_check_per_s": round(rates.receipt_check_per_s, 1),
            "one_core_combined_msgs_per_s": round(rates.one_core_per_s, 1),
            "sender_seal_and_receipt_check_per_s": round(rates.sender_per_s, 1),
            "floor_with_receipt_check_msgs_per_s": round(
                min(rates.sender_per_s, rates.receive_per_s), 1
            ),
            "envelopes_per_repeat": rates.envelopes_per_repeat,
        }
        result["throughput_floor_msgs_per_s"] = round(rates.floor_per_s, 1)

    with stage("latency_floor"):
        tls_floor = floors.measure_tls_floor(
            workdir / "tls-floor",
            settings.latency_messages,
            body_size=envelope_bytes,
            reply_size=receipt_bytes,
        )
        result["floor_ms"] = report.summary_ms(tls_floor.samples_ms)
        result["floor_samples_ms"] = [round(x, 3) for x in tls_floor.samples_ms]
        result["floor"] = {
            "method": (
                "uvicorn (h11) with a TLS 1.3 mutual-TLS context from parley.service.tls in its "
                "own process, one endpoint that commits the body as one row (SQLite, WAL, "
                "synchronous=FULL) and answers; an httpx client that commits one row to its own "
                "SQLite database and POSTs, over one kept-alive connection; one round trip at a "
                "time, time.perf_counter around commit + POST"
            ),
            "body_bytes": envelope_bytes,
            "reply_bytes": receipt_bytes,
            "server_peak_rss_mb": tls_floor.server_peak_rss_mb,
        }

    latency: terminals.LatencyResult | None = None
    with stage("terminals"), terminals.two_terminals(workdir / "pair", say=out.say) as pair:
        sender = pair[0]
        with stage("latency"):
            latency = terminals.measure_latency(sender, settings.latency_messages, say=out.say)
            result["latency_ms"] = report.summary_ms(latency.samples_ms)
            result["latency_samples_ms"] = [round(x, 3) for x in latency.samples_ms]
            result["latency"] = {
                "method": (
                    "FLASH text messages sent one at a time through POST /api/v1/messages; "
                    "for each, the sender's messages.stored_at (the transaction that "
                    "accepts it) to its receipts.stored_at (the receiver's signed receipt "
                    "verified and held), both from the sender's own clock; the next message "
                    "is sent once the receipt is held (polled from a separate read-only "
                    "connection)"
                ),
                "messages": latency.sent,
                "wall_s": round(latency.seconds, 2),
            }
        with stage("throughput"):
            throughput = terminals.measure_throughput(
                sender,
                window_s=settings.throughput_window_s,
                warmup_s=settings.throughput_warmup_s,
                threads=settings.throughput_threads,
                batch=settings.throughput_batch,
                high_water=settings.throughput_high_water,
                say=out.say,
            )
            result["throughput_msgs_per_s"] = round(throughput.msgs_per_s, 1)
            result["throughput"] = {
                "method": (
                    f"{throughput.threads} client threads queue ROUTINE messages "
                    + (
                        f"{throughput.batch} per POST /api/v1/messages/batch"
                        if throughput.batch_endpoint
                        else "one per POST /api/v1/messages (no batch endpoint)"
                    )
                    + f", pausing while more than {throughput.high_water} wait for their "
                    f"receipts; after {throughput.warmup_s:g} s of warm-up, the receipts "
                    f"the sender stored (receipts.stored_at) within a "
                    f"{throughput.window_s:.1f} s window are counted: receipts held per "
                    "second in steady state"
                ),
                "endpoint": (
                    "POST /api/v1/messages/batch"
                    if throughput.batch_endpoint
                    else "POST /api/v1/messages"
                ),
                "window_s": round(throughput.window_s, 3),
                "warmup_s": throughput.warmup_s,
                "receipts_in_window": throughput.receipts_in_window,
                "accepted_in_window": throughput.accepted_in_window,
                "accepted_per_s": round(throughput.accepted_per_s, 1),
                "accepted_total": throughput.accepted_total,
                "waiting_for_receipts_at_end": throughput.outstanding_at_end,
                "threads": throughput.threads,
                "messages_per_request": throughput.batch,
                "high_water": throughput.high_water,
            }

    with stage("backlog"):
        with terminals.two_terminals(workdir / "backlog", proxy=True, say=out.say) as (
            sender,
            _,
            proxy,
        ):
            assert proxy is not None
            backlog = terminals.measure_backlog(
                sender, proxy, settings.backlog_messages, say=out.say
            )
        result["backlog_drain_s"] = round(backlog.drain_s, 3)
        result["backlog"] = {
            "method": (
                "the sender's only link runs through parley.testing.FaultProxy; after a "
                "warm-up the proxy is cut, the messages are queued (ROUTINE, through the batch "
                "endpoint when there is one), the proxy is restored, and the drain time is the "
                "sender's last receipts.stored_at minus the moment of the restore"
            ),
            "messages": backlog.messages,
            "queue_s": round(backlog.queue_s, 2),
            "first_receipt_after_restore_s": round(backlog.first_receipt_s, 3),
            "failed_attempts_total": backlog.attempts_total,
            "failed_attempts_max": backlog.attempts_max,
            "receipts_held_each_second": backlog.timeline,
        }
        if backlog.attempts_max >= 3:
            notes.append(
                f"Backlog: while the link was cut, messages were tried up to "
                f"{backlog.attempts_max} times ({backlog.attempts_total} failed attempts in "
                "all), each failure scheduling its retry with exponential backoff and full "
                "jitter (ROUTINE capped at 60 s); the terminal probes an unreachable peer "
                "every 2 s and brings every waiting retry forward when it answers."
            )

    transcript_dir = workdir / "transcript"
    generated = None
    with stage("generate"):
        shutil.rmtree(transcript_dir, ignore_errors=True)
        with out.bar("generating the transcript", settings.transcript_entries) as bar:
            generated = generate_transcript(
                transcript_dir, settings.transcript_entries, batch=_bulk_batch(), progress=bar
            )
        out.say(
            f"generated {generated.entries:,} entries ({generated.database_bytes / 2**20:,.0f} "
            f"MiB) in {generated.seconds:.1f} s"
        )

    if generated is not None:
        with stage("verify"):
            verified = _run_verify(transcript_dir)
            result["verify_s"] = round(verified[0], 3)
            result.setdefault("verify", {}).update(
                {
                    "command": "python -m parley.cli --data DIR verify --json (a subprocess)",
                    "audit": verified[1],
                    "entries": generated.entries,
                    "messages": generated.messages,
                    "generated_as": (
                        f"US-EUCOM sent {generated.messages:,} ROUTINE text messages to RU-GS, "
                        f"delivered and receipted in batches of {generated.batch} (the delivery "
                        f"worker's bulk batch), a witnessing round both ways every "
                        f"{generated.witness_every:,} messages and at the end"
                    ),
                    "checkpoints": generated.checkpoints,
                    "cosignatures": generated.cosignatures,
                    "database_mb": round(generated.database_bytes / 2**20, 1),
                    "generation_s": round(generated.seconds, 1),
                }
            )
        with stage("verify_bare"):
            url, own, peers = _cards(transcript_dir)
            with out.bar("bare signature verifications", generated.entries) as bar:
                bare = floors.measure_bare_signatures(
                    url,
                    own,
                    peers,
                    progress=lambda done: bar(done, generated.entries),
                )
            result["verify_bare_s"] = round(bare.seconds, 3)
            result.setdefault("verify", {}).update(
                {
                    "bare_method": (
                        "every distinct signature parley verify checks (each entry's Ed25519 "
                        "signature; the Ed25519 and ML-DSA-65 signatures of each distinct "
                        "checkpoint a receipt carries; checkpoints and cosignatures) verified "
                        "once with the cryptography primitives, in this process; only the "
                        "verify calls are timed, reading and parsing are not"
                    ),
                    "bare_ed25519": bare.ed25519,
                    "bare_mldsa65": bare.mldsa65,
                    "repeated_signatures_not_counted": bare.repeated_skipped,
                }
            )
        with stage("memory"):
            memory = terminals.measure_serve_memory(
                transcript_dir,
                "US-EUCOM",
                timeout=max(120.0, generated.entries / 200),
                say=out.say,
            )
            result["rss_mb"] = round(memory.peak_rss_mb, 1)
            result["memory"] = {
                "method": (
                    "parley serve started on the generated data directory; once it is up and "
                    "has answered GET /api/v1/status and accepted one message, VmHWM (peak "
                    "resident set) from /proc/PID/status"
                ),
                "vm_rss_mb_after": round(memory.rss_mb, 1) if memory.rss_mb else None,
                "startup_s": round(memory.startup_s, 2),
                "log_size": memory.log_size,
                "floor_method": (
                    "peak RSS of the latency floor's server process (Python, uvicorn, TLS, "
                    f"SQLite, the core's keys) + {LEAF_BYTES} bytes per log entry (its leaf "
                    "hash in the Merkle log, which a terminal needs to answer proofs)"
                ),
            }

    # Floors and ratios -----------------------------------------------------------
    lat = result.get("latency_ms")
    flo = result.get("floor_ms")
    for q in ("p50", "p95", "p99"):
        result[f"latency_ratio_{q}"] = (
            _ratio(lat[q], flo[q]) if lat is not None and flo is not None else None
        )
    floor_rate = result.get("throughput_floor_msgs_per_s")
    measured_rate = result.get("throughput_msgs_per_s")
    result["throughput_ratio"] = _ratio(floor_rate, measured_rate)
    result["backlog_floor_s"] = (
        round(settings.backlog_messages / floor_rate, 3) if floor_rate else None
    )
    result.setdefault("backlog_drain_s", None)
    result["backlog_ratio"] = _ratio(result["backlog_drain_s"], result["backlog_floor_s"])
    result.setdefault("verify_s", None)
    result.setdefault("verify_bare_s", None)
    result["verify_ratio"] = _ratio(result["verify_s"], result["verify_bare_s"])
    if result["verify_bare_s"] is not None and "verify" in result:
        # parley verify checks long logs in one worker process per core (up to 8);
        # the bare time above is one core's.
        cores = min(os.cpu_count() or 1, 8)
        spread = result["verify_bare_s"] / cores
        result["verify"]["bare_spread_over_cores_s"] = round(spread, 3)
        result["verify"]["ratio_to_bare_spread_over_cores"] = _ratio(result["verify_s"], spread)
        result["verify"]["cores"] = cores
    result.setdefault("rss_mb", None)
    server_rss = tls_floor.server_peak_rss_mb if tls_floor is not None else None
    result["rss_floor_mb"] = (
        round(server_rss + settings.transcript_entries * LEAF_BYTES / 2**20, 1)
        if server_rss is not None
        else None
    )
    result["rss_ratio"] = _ratio(result["rss_mb"], result["rss_floor_mb"])
    for key in ("latency_ms", "floor_ms", "throughput_msgs_per_s", "throughput_floor_msgs_per_s"):
        result.setdefault(key, None)
    result["targets"] = report.check_targets(result)
    result["ratios"] = (
        "Parley / floor for durations and sizes, floor / Parley for the rate: 1.0 is the "
        "floor and more is worse on every row"
    )
    timings["total"] = round(time.perf_counter() - started, 2)
    result["timings_s"] = timings
    result["errors"] = errors
    result["notes"] = notes
    result["_latency_samples"] = latency.samples_ms if latency is not None else []
    result["_floor_samples"] = tls_floor.samples_ms if tls_floor is not None else []
    return result


def _bulk_batch() -> int:
    """Envelopes per bulk delivery request, as the delivery worker sends them."""
    from parley.service import delivery

    return int(getattr(delivery, "BULK_BATCH", 32))


def _cards(path: Path) -> tuple[str, IdentityCard, list[IdentityCard]]:
    """A data directory's database URL, its own card and its pinned peers' cards."""
    from sqlalchemy import select

    from parley.config import DataDir
    from parley.service.terminal import CardBundle
    from parley.store import models as m
    from parley.store.db import engine_for

    data = DataDir(path)
    url = data.load_config().database
    own = CardBundle.from_json(data.card_file.read_bytes()).card
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            peers = [IdentityCard.from_bytes(row.card) for row in conn.execute(select(m.peers))]
    finally:
        engine.dispose()
    return url, own, peers


def _run_verify(path: Path) -> tuple[float, dict[str, Any]]:
    """Time the real ``parley verify`` on ``path`` as a subprocess; fail if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "PARLEY_DATA"}
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own CLI, run by this interpreter
        [sys.executable, "-m", "parley.cli", "--data", str(path), "verify", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"parley verify exited {done.returncode}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
        )
    summary: dict[str, Any] = json.loads(done.stdout)
    return seconds, summary


# --------------------------------------------------------------------------
# The command


def main(
    *,
    quick: bool = False,
    json_path: Path | None = None,
    plot_path: Path | None = None,
    out_dir: Path | None = None,
    settings: Settings | None = None,
) -> int:
    """Run the benchmark; print the table; write the JSON and the plot. 0 unless a stage failed."""
    from parley.logs import configure_logging

    configure_logging(None, stderr=False)  # the terminals' set-up logs nothing on the console
    settings = settings or Settings.for_mode(quick)
    output = Output()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if json_path is None:
            json_path = out_dir / "bench.json"
    if plot_path is None:
        base = json_path.parent if json_path is not None else (out_dir or Path("."))
        plot_path = base / "bench-latency.png"
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            workdir = out_dir / "work"
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parley-bench-")))
        output.say(f"parley bench ({settings.mode}): working in {workdir}")
        result = run(settings, workdir, output=output)
    return finish(result, json_path=json_path, plot_path=plot_path, output=output)


def finish(
    result: dict[str, Any], *, json_path: Path | None, plot_path: Path, output: Output
) -> int:
    """Draw the plot, write the JSON, print the table; 0 unless a stage failed."""
    latency_samples = result.pop("_latency_samples")
    floor_samples = result.pop("_floor_samples")
    if latency_samples and floor_samples:
        try:
            report.plot_latency(latency_samples, floor_samples, plot_path)
            result["plot"] = str(plot_path)
        except ImportError:
            output.console.print(
                "matplotlib is not installed: install parley[bench] "
                "(pip install 'parley[bench]') for the latency plot.",
                style="yellow",
                markup=False,
            )
            result["plot"] = None
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(report.table(result))
    for note in result["notes"]:
        console.print(f"* {note}", highlight=False, markup=False)
    console.print(
        f"* whole run {result['timings_s']['total']:.0f} s; transcript generation "
        f"{result['timings_s'].get('generate', 0):.0f} s (not part of any figure)",
        highlight=False,
    )
    if json_path is not None:
        console.print(
            f"* results: {json_path}" + (f", plot: {plot_path}" if result.get("plot") else "")
        )
    for name, error in result["errors"].items():
        console.print(f"stage {name} failed: {error}", style="red", highlight=False, markup=False)
    return 1 if result["errors"] else 0
