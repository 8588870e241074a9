"""docs/ops: the Grafana dashboard and the alerting rules name only what a terminal exposes.

The names come from a real scrape: a terminal runs in process, is given a
record of every kind (a link test, a queued message, an alarm, a security
event, an encryption key) so that every family of its ``/metrics`` holds a
sample, and its exposition is parsed back. Every expression of every panel
and every rule must name only those series, ``up`` (which Prometheus adds to
each scrape) and the rules' own recording rules. Whether the expressions parse
and evaluate is checked by ``promtool`` and a real Prometheus
(tests/service/test_prometheus.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from parley.console.api import create_console_app
from parley.errors import InvalidSignature
from parley.service.kernel import utc_now
from parley.service.metrics import METRICS
from parley.service.terminal import Terminal
from parley.testing import ManualClock
from parley.testing.network import PASSPHRASE, make_network

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

US, RU = "US-EUCOM", "RU-GS"
TOKEN = "monitoring-console-token-" + "q" * 20
OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
DASHBOARD = OPS / "grafana.json"
RULES = OPS / "alerts.yml"

#: Series Prometheus makes for every scrape, beside what the target exposes.
SCRAPE_SERIES = frozenset({"up"})
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's ``$variables`` allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text):
        if re.match(r"\s*\(", text[match.end() :]):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_metric_names_finds_every_selector_and_nothing_else() -> None:
    expr = (
        'sum by (instance, code) (increase(parley_x_total{code="a{b}"}[10m])) > 0 '
        "or (parley:rec unless parley_y offset 10m) and on(job, instance) "
        '(up offset 10m == 1) > on(job) group_left 3 * parley_z{instance=~"$instance"} - time() '
        "+ 1e3 + Inf"
    )
    assert metric_names(expr) == {"parley_x_total", "parley:rec", "parley_y", "up", "parley_z"}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names of the series a terminal's ``/metrics`` holds, every family filled."""
    made = make_network(
        tmp_path_factory.mktemp("net"), [(US, "US European Command"), (RU, "General Staff")]
    )
    clock = ManualClock(utc_now())
    us = Terminal.open(made[US].data, PASSPHRASE, clock=clock)
    try:
        us.check_encryption_keys()
        us.record_link(RU, "primary", ok=True, rtt_ms=12.0, test=True)
        us.send([RU], kind="text", body={"text": "queued"}, operator="duty")
        us.raise_alarm("equivocation", "critical", RU, "two checkpoints of one size")
        us.record_security_event(
            endpoint="/v1/envelopes", remote="192.0.2.7", tls_party=RU, error=InvalidSignature("x")
        )
        client = TestClient(
            create_console_app(us, TOKEN), base_url=f"https://127.0.0.1:{made[US].console_port}"
        )
        response = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.text
    finally:
        us.engine.dispose()
    families = list(text_string_to_metric_families(response.text))
    empty = [family.name for family in families if not family.samples]
    assert not empty, f"fill these families in the fixture so their names are known: {empty}"
    names = {sample.name for family in families for sample in family.samples}
    assert names >= set(METRICS)
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_the_dashboard_names_only_what_a_terminal_exposes(scraped: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))

    shown: set[str] = set()
    graphs = [panel for panel in panels(dashboard) if panel["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", title
            names = metric_names(target["expr"])
            assert names, (title, target["expr"])
            unknown = names - scraped - SCRAPE_SERIES
            assert not unknown, f"panel {title!r} names {sorted(unknown)}, which /metrics lacks"
            shown |= names
    # And every figure a terminal exposes has its panel.
    assert scraped - shown == set()


def rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        yield from group["rules"]


def test_the_rules_name_only_what_a_terminal_exposes(scraped: set[str]) -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    alerts = [rule for rule in rules() if "alert" in rule]
    for rule in alerts + [rule for rule in rules() if "record" in rule]:
        name = rule.get("alert") or rule["record"]
        unknown = metric_names(rule["expr"]) - scraped - SCRAPE_SERIES - recorded
        assert not unknown, f"rule {name} names {sorted(unknown)}, which /metrics lacks"
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "action"} <= set(rule["annotations"]), rule["alert"]
        # The live test shortens every `for:` (a duration only) to 1s.
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
