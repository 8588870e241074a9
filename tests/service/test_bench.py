"""``parley bench`` on tiny sizes: every stage runs on real terminals and the results agree.

One run of the whole harness (20 latency messages, 2 s of throughput, a
backlog of 200, a generated transcript of 2,000 entries that the real
``parley verify`` must pass), then checks that the JSON holds every figure,
that each ratio is the figure over its floor, that each target verdict
follows from its value, and that the table and plot are made from it.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from parley.bench import report
from parley.bench.run import Output, Settings, finish, run
from parley.bench.terminals import OperatorClient
from parley.testing.network import TerminalProcess

# `parley bench` starts real terminals and runs for minutes.
pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

REQUIRED = (
    "latency_ms",
    "floor_ms",
    "latency_ratio_p50",
    "throughput_msgs_per_s",
    "throughput_floor_msgs_per_s",
    "backlog_drain_s",
    "backlog_floor_s",
    "verify_s",
    "verify_bare_s",
    "verify_ratio",
    "rss_mb",
    "machine",
    "mode",
    "targets",
)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.01, abs_tol=0.002)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    work = tmp_path_factory.mktemp("bench")
    output = Output(Console(file=io.StringIO(), width=120))
    result = run(Settings.tiny(), work / "work", output=output)
    json_path, plot_path = work / "bench.json", work / "bench-latency.png"
    code = finish(result, json_path=json_path, plot_path=plot_path, output=output)
    assert code == 0, result["errors"]
    return json.loads(json_path.read_text()), plot_path, output.console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.timeout(300)
def test_every_stage_measures_something(tiny: tuple[dict[str, Any], Path, str]) -> None:
    result, _, _ = tiny
    assert result["errors"] == {}
    for key in REQUIRED:
        assert result.get(key) is not None, key
    for key in ("cpu", "cores", "python", "cryptography", "date"):
        assert result["machine"][key], key
    assert result["mode"] == "tiny"
    assert result["latency_ms"]["n"] == 20
    assert result["floor_ms"]["n"] == 20
    for summary in (result["latency_ms"], result["floor_ms"]):
        assert 0 < summary["min"] <= summary["p50"] <= summary["p95"] <= summary["p99"]
    assert result["throughput"]["receipts_in_window"] > 0
    assert result["backlog"]["messages"] == 200
    assert result["backlog_drain_s"] > 0
    assert result["rss_mb"] > 10
    assert result["memory"]["log_size"] >= 2000
    # The generated transcript is whole and the real `parley verify` passed it.
    audit = result["verify"]["audit"]
    assert audit["ok"] is True
    assert audit["entries"] == result["verify"]["entries"] == 2000
    assert audit["receipts"] == audit["envelopes"] == 1000
    assert audit["checkpoints"] >= 1
    assert audit["cosignatures"] >= 2
    # Every envelope and receipt carries a signature; every receipt a checkpoint.
    assert result["verify"]["bare_ed25519"] >= 2000
    assert result["verify"]["bare_mldsa65"] >= audit["checkpoints"]


@pytest.mark.timeout(300)
def test_ratios_are_figures_over_floors(tiny: tuple[dict[str, Any], Path, str]) -> None:
    result, _, _ = tiny
    for q in ("p50", "p95", "p99"):
        assert _close(result[f"latency_ratio_{q}"], result["latency_ms"][q] / result["floor_ms"][q])
    assert _close(result["verify_ratio"], result["verify_s"] / result["verify_bare_s"])
    assert _close(
        result["throughput_ratio"],
        result["throughput_floor_msgs_per_s"] / result["throughput_msgs_per_s"],
    )
    floor = result["throughput_floor"]
    assert _close(
        result["throughput_floor_msgs_per_s"], min(floor["seal_per_s"], floor["receive_per_s"])
    )
    assert floor["one_core_combined_msgs_per_s"] < result["throughput_floor_msgs_per_s"]
    assert _close(result["backlog_floor_s"], 200 / result["throughput_floor_msgs_per_s"])
    assert _close(result["backlog_ratio"], result["backlog_drain_s"] / result["backlog_floor_s"])
    assert _close(result["rss_ratio"], result["rss_mb"] / result["rss_floor_mb"])


@pytest.mark.timeout(300)
def test_targets_follow_from_values(tiny: tuple[dict[str, Any], Path, str]) -> None:
    result, _, _ = tiny
    assert set(result["targets"]) == {t.key for t in report.TARGETS}
    for target in report.TARGETS:
        item = result["targets"][target.key]
        value = result[target.key]
        assert item["value"] == value
        expected = {"<=": value <= target.limit, ">=": value >= target.limit}.get(
            target.op, value < target.limit
        )
        assert item["met"] is expected, target.key


@pytest.mark.timeout(300)
def test_table_and_plot(tiny: tuple[dict[str, Any], Path, str]) -> None:
    result, plot, _ = tiny
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["plot"] == str(plot)
    text = io.StringIO()
    Console(file=text, width=160).print(report.table(result))
    rendered = text.getvalue()
    for label in ("FLASH latency p50", "throughput", "backlog drain", "parley verify", "RSS"):
        assert label in rendered
    assert rendered.count("met") + rendered.count("missed") >= len(report.TARGETS)
    assert f"{result['verify_ratio']:,.2f}x" in rendered


def test_target_verdicts() -> None:
    values: dict[str, Any] = {
        "latency_ratio_p50": 2.5,
        "throughput_msgs_per_s": 2000.0,
        "backlog_drain_s": 10.0,
        "verify_ratio": 1.2,
        "rss_mb": 200.0,
    }
    verdicts = {key: item["met"] for key, item in report.check_targets(values).items()}
    assert verdicts == {
        "latency_ratio_p50": False,
        "throughput_msgs_per_s": True,
        "backlog_drain_s": True,
        "verify_ratio": True,
        "rss_mb": False,
    }
    assert report.check_targets({})["rss_mb"]["met"] is None


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    summary = report.summary_ms(values)
    assert summary["p50"] == 50.5
    assert summary["p95"] == 95.0
    assert summary["p99"] == 99.0
    assert summary["n"] == 100


@pytest.mark.parametrize("status", [404, 405])
def test_batch_endpoint_falls_back_to_single_messages(tmp_path: Path, status: int) -> None:
    """A terminal without POST /api/v1/messages/batch gets one POST /api/v1/messages each."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/messages/batch"):
            return httpx.Response(status, json={"detail": "Method Not Allowed"})
        return httpx.Response(200, json={"id": f"id-{len(seen)}"})

    (tmp_path / "console.token").write_text("token\n")
    terminal = TerminalProcess("US-EUCOM", tmp_path, 1, 2)
    saved = OperatorClient.batch_supported
    OperatorClient.batch_supported = None
    try:
        client = OperatorClient(terminal, transport=httpx.MockTransport(answer))
        messages = [{"to": ["RU-GS"], "precedence": "ROUTINE", "text": str(i)} for i in range(3)]
        assert client.send_many(messages) == ["id-2", "id-3", "id-4"]
        assert OperatorClient.batch_supported is False
        assert client.send_many(messages[:1]) == ["id-5"]  # not asked again
        assert seen == ["/api/v1/messages/batch"] + ["/api/v1/messages"] * 4
    finally:
        OperatorClient.batch_supported = saved
