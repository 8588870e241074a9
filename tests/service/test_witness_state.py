"""Witness state that survives a restart, and one alarm per incident (docs/recovery.md §1).

Two terminals (US-EUCOM and RU-GS, SQLite) are made with ``make_network`` and
opened in this process; envelopes, receipts and witness rounds are carried
between them by hand, so each test decides exactly what each side holds and
when a terminal restarts (it is opened again from its data directory).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from parley.errors import Equivocation
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

US, RU = "US-EUCOM", "RU-GS"


@dataclass
class World:
    tmp: Path
    us: Terminal
    ru: Terminal
    hooked: list[dict[str, Any]]

    def restart(self, which: str) -> Terminal:
        """Close the terminal and open it again from its data directory."""
        old = self.us if which == US else self.ru
        old.engine.dispose()
        fresh = Terminal.open(old.data.path, PASSPHRASE)
        fresh.on_alarm = self.hooked.append
        if which == US:
            self.us = fresh
        else:
            self.ru = fresh
        return fresh


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    hooked: list[dict[str, Any]] = []
    us = Terminal.open(made[US].data, PASSPHRASE)
    ru = Terminal.open(made[RU].data, PASSPHRASE)
    us.on_alarm = ru.on_alarm = hooked.append
    w = World(tmp_path, us, ru, hooked)
    yield w
    w.us.engine.dispose()
    w.ru.engine.dispose()


def rows(terminal: Terminal, table: Any) -> int:
    with terminal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_repeated_evidence_of_one_incident_is_one_alarm_with_a_count(world: World) -> None:
    ru = world.ru
    evidence = {"earlier": "note of size 20", "later": "note of size 6"}
    for _ in range(5):
        ru._alarms.record_equivocation(
            Equivocation("US-EUCOM signed two logs", evidence=evidence), US
        )
    ru._alarms.record_equivocation(
        Equivocation("US-EUCOM signed two logs", evidence={**evidence, "later": "size 8"}), US
    )
    (alarm,) = ru.alarms()
    assert (alarm["kind"], alarm["subject"], alarm["count"]) == ("equivocation", US, 6)
    assert alarm["last_at"] >= alarm["at"]
    assert len(world.hooked) == 1  # the hook ran for the first only
    assert rows(ru, m.evidence) == 2  # one row per distinct pair of notes
    # Cleared, the next evidence is a new incident: a new alarm.
    ru.clear_alarms("equivocation", US)
    ru._alarms.record_equivocation(Equivocation("again", evidence=evidence), US)
    assert [a["count"] for a in ru.alarms()] == [1, 6]
    assert rows(ru, m.evidence) == 2
