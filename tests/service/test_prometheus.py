"""docs/ops/alerts.yml in a real Prometheus, scraping two real terminals.

``promtool`` checks the rules and runs their unit tests (docs/ops/alerts.test.yml,
with the real ``for:`` durations). Then Debian's ``/usr/bin/prometheus``
(scripts/install-system-deps) scrapes two ``parley serve`` processes on
loopback with a scrape token each, every second, and evaluates the rules with
every ``for: <duration>`` shortened to ``for: 1s`` (the one substitution the
rules file documents): both targets are up, every rule evaluates without
error, every dashboard expression is accepted, and cutting one link (through a
``FaultProxy``) fires ``ParleyLinkDown`` for that link; stopping a terminal
fires ``ParleyTerminalScrapeDown`` for it and ``ParleyPeerUnreachable`` on the
other. Every wait is bounded; none measures speed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from parley.testing.faultproxy import FaultProxy
from parley.testing.network import TerminalProcess, free_port, make_network, wait_until
from tests.service.conftest import RU, US
from tests.service.test_monitoring_docs import DASHBOARD, OPS, RULES, panels

# Real `parley serve` processes, promtool and prometheus.
pytestmark = pytest.mark.subprocess

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
US_ID, RU_ID = US[0], RU[0]


def tool(path: Path) -> str:
    """The path of a Debian binary the test needs; fail (never skip) when it is missing."""
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: install Debian's prometheus package "
            "(scripts/install-system-deps does) to test docs/ops/alerts.yml",
            pytrace=False,
        )
    return str(path)


def shortened_rules() -> str:
    """The rules with every ``for: <duration>`` replaced by ``for: 1s`` (and nothing else)."""
    text = RULES.read_text()
    shortened, count = re.subn(r"(?m)^(\s+)for: \d+[smhd]$", r"\1for: 1s", text)
    alerts = sum("alert" in rule for g in yaml.safe_load(text)["groups"] for rule in g["rules"])
    assert count == alerts, f"{count} `for:` lines for {alerts} alerts"
    return shortened


def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    promtool = tool(PROMTOOL)
    for args in (["check", "rules", str(RULES)], ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run(
            [promtool, *args], cwd=OPS, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
        assert "SUCCESS" in result.stdout


class Prometheus:
    """A Prometheus server on a loopback port, with its HTTP API."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        root.mkdir()
        self.root = root
        self.port = free_port()
        self.config = root / "prometheus.yml"
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log = root / "prometheus.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    tool(PROMETHEUS),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/PATH``'s data; None while the server is not answering yet."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.output()}")
        try:
            response = httpx.get(
                f"http://127.0.0.1:{self.port}/api/v1/{path}", params=params, timeout=10
            )
        except httpx.TransportError:
            return None
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """The firing alerts of that name whose labels include ``labels``."""
        data = self.api("alerts")
        return [
            alert
            for alert in (data or {}).get("alerts", [])
            if alert["state"] == "firing"
            and alert["labels"]["alertname"] == alertname
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]


@pytest.fixture
def hotline(tmp_path: Path) -> Iterator[tuple[dict[str, TerminalProcess], dict[str, FaultProxy]]]:
    """US-EUCOM and RU-GS, two links each way (primary, backup) through their own proxy,
    each link tested every second."""
    proxies: dict[str, FaultProxy] = {}

    def links(owner: str, peer: str, peer_terminal: TerminalProcess) -> list[tuple[str, str]]:
        made = []
        for name in ("primary", "backup"):
            proxy = proxies[f"{owner}>{peer}/{name}"] = FaultProxy(
                ("127.0.0.1", peer_terminal.peer_port)
            )
            proxy.start()
            made.append((name, proxy.url()))
        return made

    terminals = make_network(tmp_path / "net", [US, RU], link_test_interval=1.0, links=links)
    try:
        for terminal in terminals.values():
            terminal.start(wait=False)
        for terminal in terminals.values():
            terminal.wait_ready()
        yield terminals, proxies
    finally:
        for terminal in terminals.values():
            terminal.kill()
        for proxy in proxies.values():
            proxy.close()
    blocked = [line for t in terminals.values() for line in t.loop_violations()]
    assert not blocked, "parley serve made database calls on its event loop:\n" + "\n".join(
        dict.fromkeys(blocked)
    )


def test_prometheus_scrapes_two_terminals_and_fires_the_link_alert(
    tmp_path: Path, hotline: tuple[dict[str, TerminalProcess], dict[str, FaultProxy]]
) -> None:
    terminals, proxies = hotline
    us, ru = terminals[US_ID], terminals[RU_ID]
    rules = tmp_path / "alerts-1s.yml"
    rules.write_text(shortened_rules())
    scrape_configs = []
    for terminal in (us, ru):
        token = tmp_path / f"{terminal.party}.token"
        terminal.cli("metrics", "token", "--output", str(token))
        scrape_configs.append(
            {
                # One scrape config per terminal (each has its own token), all job="parley".
                "job_name": f"parley-{terminal.party.lower()}",
                "authorization": {"credentials_file": str(token)},
                "static_configs": [{"targets": [f"127.0.0.1:{terminal.console_port}"]}],
                "relabel_configs": [{"target_label": "job", "replacement": "parley"}],
            }
        )
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": scrape_configs,
        },
    )
    instance = {t.party: f"127.0.0.1:{t.console_port}" for t in (us, ru)}
    prometheus.start()
    try:
        # Both targets up, with the scrape tokens.
        def targets_up() -> bool:
            data = prometheus.api("targets") or {"activeTargets": []}
            healthy = {
                t["labels"]["instance"]
                for t in data["activeTargets"]
                if t["health"] == "up" and t["labels"]["job"] == "parley"
            }
            return healthy == set(instance.values())

        wait_until(targets_up, timeout=120, interval=0.5, what="both targets up")
        up = prometheus.api("query", query='up{job="parley"}')["result"]
        scraped = {sample["metric"]["instance"]: sample["value"][1] for sample in up}
        assert scraped == dict.fromkeys(instance.values(), "1")

        # Every link up on both sides (each is tested every second).
        def links_up() -> bool:
            result = prometheus.api("query", query="parley_link_up == 1")["result"]
            return len(result) == 4

        wait_until(links_up, timeout=120, interval=0.5, what="the four links up")

        # Every rule evaluates without error in this Prometheus.
        def rules_ok() -> list[str] | None:
            groups = prometheus.api("rules")["groups"]
            health = {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}
            errors = [
                f"{g['name']}/{r['name']}: {r.get('lastError')}"
                for g in groups
                for r in g["rules"]
                if r["health"] == "err"
            ]
            assert not errors, errors
            return sorted(health) if set(health.values()) == {"ok"} else None

        evaluated = wait_until(rules_ok, timeout=60, interval=0.5, what="every rule evaluated")
        assert "ParleyLinkDown" in evaluated
        assert "parley:witness_cosigned_entries" in evaluated
        # Every expression of the dashboard is accepted and evaluated.
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                prometheus.api("query", query=target["expr"].replace("$instance", ".*"))
        assert prometheus.api("query", query="parley_build_info")["result"]
        assert not prometheus.firing("ParleyLinkDown")

        # Cut US-EUCOM's primary link to RU-GS: its link alert fires.
        proxies[f"{US_ID}>{RU_ID}/primary"].cut()
        alert = wait_until(
            lambda: prometheus.firing(
                "ParleyLinkDown", instance=instance[US_ID], peer=RU_ID, link="primary"
            ),
            timeout=120,
            interval=0.5,
            what="ParleyLinkDown for the cut link",
        )[0]
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] == f"Link primary to {RU_ID} is failing"

        # Stop RU-GS: its scrape fails, and US-EUCOM has no link left to it.
        ru.stop()
        wait_until(
            lambda: prometheus.firing("ParleyTerminalScrapeDown", instance=instance[RU_ID]),
            timeout=120,
            interval=0.5,
            what="ParleyTerminalScrapeDown for RU-GS",
        )
        unreachable = wait_until(
            lambda: prometheus.firing("ParleyPeerUnreachable", instance=instance[US_ID]),
            timeout=120,
            interval=0.5,
            what="ParleyPeerUnreachable on US-EUCOM",
        )
        assert unreachable[0]["labels"]["peer"] == RU_ID
        assert unreachable[0]["labels"]["severity"] == "critical"
    except (AssertionError, TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}\n--- prometheus:\n{prometheus.output()}") from exc
    finally:
        prometheus.stop()
