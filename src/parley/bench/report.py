"""The results of ``parley bench``: targets, machine, table and latency plot.

The JSON document written by ``parley bench --json`` is the one source: the
table is rendered from it, so the two always agree. Ratios are "times the
floor": Parley / floor for durations and sizes, floor / Parley for the rate,
so that 1.0 is the floor and more is worse on every row.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = [
    "TARGETS",
    "Target",
    "check_targets",
    "cpu_model",
    "machine_info",
    "percentile",
    "plot_latency",
    "summary_ms",
    "table",
]


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    op: str  # "<=", ">=" or "<"
    limit: float
    text: str

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        if self.op == "<=":
            return value <= self.limit
        if self.op == ">=":
            return value >= self.limit
        return value < self.limit


TARGETS = (
    Target("latency_ratio_p50", "<=", 2.0, "p50 ratio <= 2"),
    Target("throughput_msgs_per_s", ">=", 2000.0, ">= 2,000 msg/s"),
    Target("backlog_drain_s", "<=", 10.0, "<= 10 s"),
    Target("verify_ratio", "<=", 1.5, "ratio <= 1.5"),
    Target("rss_mb", "<", 200.0, "< 200 MB"),
)


def check_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the value it applies to and whether it is met."""
    return {
        t.key: {
            "target": f"{t.op} {t.limit:g}",
            "value": result.get(t.key),
            "met": t.met(result.get(t.key)),
        }
        for t in TARGETS
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(statistics.fmean(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import sqlite3

    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    try:
        sqlalchemy = importlib.metadata.version("SQLAlchemy")
    except importlib.metadata.PackageNotFoundError:
        sqlalchemy = "unknown"

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": f"{cryptography.__version__} ({backend.openssl_version_text()})",
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------
# The table


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.2f}"
    return f"{text} {unit}".rstrip()


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}x"


def _verdict(met: bool | None) -> str:
    if met is None:
        return "-"
    return "[green]met[/]" if met else "[red]missed[/]"


def table(result: dict[str, Any]) -> Table:
    """Each figure beside its floor, the ratio and the target (met / missed)."""
    targets = result.get("targets", {})
    latency = result.get("latency_ms") or {}
    floor = result.get("floor_ms") or {}
    out = Table(title=f"parley bench ({result.get('mode', '?')})", title_justify="left")
    for name, justify in (
        ("figure", "left"),
        ("Parley", "right"),
        ("floor", "right"),
        ("ratio", "right"),
        ("target", "left"),
        ("result", "left"),
    ):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]

    def target(key: str) -> tuple[str, str]:
        item = targets.get(key)
        if item is None:
            return "", ""
        text = next(t.text for t in TARGETS if t.key == key)
        return text, _verdict(item.get("met"))

    for q in ("p50", "p95", "p99"):
        ratio_key = f"latency_ratio_{q}"
        text, verdict = target(ratio_key) if q == "p50" else ("", "")
        out.add_row(
            f"FLASH latency {q}",
            _number(latency.get(q), "ms"),
            _number(floor.get(q), "ms"),
            _ratio(result.get(ratio_key)),
            text,
            verdict,
        )
    rows = (
        ("throughput", "throughput_msgs_per_s", "throughput_floor_msgs_per_s", "throughput_ratio",
         "msg/s"),
        ("backlog drain", "backlog_drain_s", "backlog_floor_s", "backlog_ratio", "s"),
        ("parley verify", "verify_s", "verify_bare_s", "verify_ratio", "s"),
        ("peak RSS (serve)", "rss_mb", "rss_floor_mb", "rss_ratio", "MB"),
    )  # fmt: skip
    for label, key, floor_key, ratio_key, unit in rows:
        text, verdict = target(key if key != "verify_s" else "verify_ratio")
        out.add_row(
            label,
            _number(result.get(key), unit),
            _number(result.get(floor_key), unit),
            _ratio(result.get(ratio_key)),
            text,
            verdict,
        )
    return out


# --------------------------------------------------------------------------
# The plot


def plot_latency(latency_ms: Sequence[float], floor_ms: Sequence[float], path: Path) -> None:
    """Histogram and CDF of the FLASH latencies beside the floor's; the floor's p50 marked.

    Needs matplotlib (``pip install parley[bench]``); raises ``ImportError`` without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import ticker

    lat = np.sort(np.asarray(latency_ms, dtype=float))
    flo = np.sort(np.asarray(floor_ms, dtype=float))
    floor_p50 = float(np.median(flo))
    parley_p50 = float(np.median(lat))
    low = max(min(float(lat[0]), float(flo[0])) * 0.8, 0.01)
    high = max(float(lat[-1]), float(flo[-1])) * 1.25
    bins = np.geomspace(low, high, 60)

    figure, (hist, cdf) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    hist.hist(flo, bins=bins, alpha=0.6, label=f"floor: mTLS POST + 2 commits (n={len(flo)})")
    hist.hist(lat, bins=bins, alpha=0.6, label=f"Parley FLASH end to end (n={len(lat)})")
    cdf.step(flo, np.arange(1, len(flo) + 1) / len(flo), where="post", label="floor")
    cdf.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post", label="Parley FLASH")
    for axis in (hist, cdf):
        axis.set_xscale("log")
        # Plain numbers at 1-2-5 steps; no labels on the minor ticks (they overlap).
        axis.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.axvline(
            floor_p50, color="black", linestyle="--", label=f"floor p50 {floor_p50:.2f} ms"
        )
        axis.axvline(
            parley_p50, color="red", linestyle=":", label=f"Parley p50 {parley_p50:.2f} ms"
        )
        axis.set_xlabel("milliseconds (log scale)")
        axis.grid(True, which="both", alpha=0.3)
    hist.set_ylabel("messages")
    hist.set_title("Latency distribution")
    cdf.set_ylabel("fraction of messages at or below")
    cdf.set_title("Cumulative distribution")
    hist.legend(fontsize=8)
    cdf.legend(fontsize=8, loc="lower right")
    figure.savefig(path, dpi=110)
    plt.close(figure)
