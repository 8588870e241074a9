"""Fixtures for tests over real terminals: databases (SQLite and PostgreSQL) and networks.

Every test that takes ``network`` runs twice: once with SQLite files and once
with PostgreSQL databases (created fresh on ``PARLEY_TEST_POSTGRES``, by
default the server on 127.0.0.1:5432, and dropped afterwards); the PostgreSQL
run carries the ``postgres`` marker. A module whose tests start terminals with
``network`` is marked ``subprocess``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from parley.service.loopguard import watch
from parley.testing.network import TerminalProcess, make_network, postgres_database

POSTGRES_ADMIN = os.environ.get("PARLEY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

US = ("US-EUCOM", "US European Command")
RU = ("RU-GS", "General Staff of the Armed Forces of the Russian Federation")
UA = ("UA-GS", "General Staff of the Armed Forces of Ukraine")
MEDIATOR = ("AE-MEDIATOR", "Mediator")

NetworkFactory = Callable[..., dict[str, TerminalProcess]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def network(backend: str, tmp_path: Path) -> Iterator[NetworkFactory]:
    """Make (and afterwards stop) terminals that have pinned each other."""
    made: list[TerminalProcess] = []
    with contextlib.ExitStack() as stack:

        def factory(
            parties: Sequence[tuple[str, str]] = (US, RU), *, start: bool = True, **kwargs: object
        ) -> dict[str, TerminalProcess]:
            databases = None
            if backend == "postgresql":
                databases = {
                    party: stack.enter_context(postgres_database(POSTGRES_ADMIN))
                    for party, _ in parties
                }
            terminals = make_network(tmp_path, parties, databases=databases, **kwargs)  # type: ignore[arg-type]
            made.extend(terminals.values())
            if start:
                for terminal in terminals.values():
                    terminal.start(wait=False)
                for terminal in terminals.values():
                    terminal.wait_ready()
            return terminals

        try:
            yield factory
        finally:
            for terminal in made:
                terminal.kill()
    blocked = [line for terminal in made for line in terminal.loop_violations()]
    assert not blocked, "parley serve made database calls on its event loop:\n" + "\n".join(
        dict.fromkeys(blocked)
    )


@pytest.fixture
def no_db_on_loop() -> Iterator[list[str]]:
    """Fail the test if any database call ran on an event loop's thread (in this process)."""
    found: list[str] = []
    unwatch = watch(found.append)
    try:
        yield found
    finally:
        unwatch()
    assert not found, "database calls on the event loop:\n" + "\n".join(dict.fromkeys(found))
