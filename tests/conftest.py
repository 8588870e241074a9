"""Shared fixtures, and the guard that keeps the fast tests fast.

Fixtures: a fixed clock reading and three terminal identities. Identities are
generated once per test session (generation is cheap, but three ML-DSA and
ML-KEM key pairs per test add up) and are valid from one day before ``NOW``
for two years.

The guard: ``make check`` runs only the tests marked neither ``slow`` nor
``subprocess`` nor ``postgres`` nor ``browser`` (markers registered in
``pyproject.toml``). So that a test cannot slip into that set by accident, a
test that starts a process (``subprocess``, ``asyncio``'s subprocesses,
``multiprocessing``, ``os.system``) without the ``subprocess`` (or
``browser``) marker, or connects to PostgreSQL with ``psycopg`` without the
``postgres`` marker, fails and is told which marker it lacks. The guard covers
the test's fixtures too (set-up and tear-down), including fixtures shared by a
module or the session: they run inside the first and last test that uses them.
"""

from __future__ import annotations

import asyncio
import multiprocessing.process
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from parley.core.identity import Identity, IdentityCard
from tests.scale import scaled

# Speed belongs in benchmarks, not in tests: no per-example deadline, so a
# loaded CI machine cannot turn a correct property into a flaky failure.
# Examples per property: 100 (Hypothesis's default) times PARLEY_FUZZ_SCALE (tests/scale.py).
settings.register_profile(
    "parley",
    max_examples=scaled(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("parley")

NOW = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
"""The fixed time every test runs at unless it moves its own clock."""

CardLookup = Callable[[str], IdentityCard | None]


def _generate(party: str, name: str) -> Identity:
    return Identity.generate(party, name, now=NOW - timedelta(days=1))


@pytest.fixture(scope="session")
def now() -> datetime:
    """A fixed, timezone-aware UTC ``now`` (2026-02-05T12:00:00Z)."""
    return NOW


@pytest.fixture(scope="session")
def us_eucom() -> Identity:
    return _generate("US-EUCOM", "US European Command")


@pytest.fixture(scope="session")
def ru_gs() -> Identity:
    return _generate("RU-GS", "General Staff of the Armed Forces")


@pytest.fixture(scope="session")
def ua_gs() -> Identity:
    return _generate("UA-GS", "General Staff of the Armed Forces of Ukraine")


@pytest.fixture(scope="session")
def identities(us_eucom: Identity, ru_gs: Identity, ua_gs: Identity) -> dict[str, Identity]:
    """The three identities by party id."""
    return {i.party: i for i in (us_eucom, ru_gs, ua_gs)}


@pytest.fixture(scope="session")
def lookup(identities: dict[str, Identity]) -> CardLookup:
    """A card lookup that knows (has pinned) all three parties."""
    cards = {party: identity.card for party, identity in identities.items()}
    return cards.get


# The guard ---------------------------------------------------------------------------

#: The markers that let a test start processes, or connect to PostgreSQL.
PROCESS_MARKERS = ("subprocess", "browser")
POSTGRES_MARKERS = ("postgres",)

_running: list[pytest.Item] = []  # the test being set up, run or torn down (at most one)


def _require(markers: tuple[str, ...], what: str) -> None:
    """Fail the running test unless it carries one of ``markers``."""
    if not _running:  # collection, session start or end: not a test's doing
        return
    item = _running[-1]
    if any(item.get_closest_marker(name) for name in markers):
        return
    pytest.fail(
        f"{item.nodeid} {what} without @pytest.mark.{markers[0]}: mark the test (or its module "
        f"with pytestmark) so that `make check`, which leaves out such tests, leaves it out",
        pytrace=False,
    )


class _GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        _require(PROCESS_MARKERS, f"started a process ({args!r})")
        super().__init__(args, *rest, **kwargs)


def _install_guard() -> None:
    # subprocess.run, check_output and asyncio's subprocesses all go through subprocess.Popen.
    subprocess.Popen = _GuardedPopen  # type: ignore[misc]

    def wrap(owner: Any, name: str, markers: tuple[str, ...], what: str) -> None:
        original = getattr(owner, name)

        def guarded(*args: Any, **kwargs: Any) -> Any:
            _require(markers, what)
            return original(*args, **kwargs)

        setattr(owner, name, guarded)

    wrap(asyncio, "create_subprocess_exec", PROCESS_MARKERS, "started a process (asyncio)")
    wrap(asyncio, "create_subprocess_shell", PROCESS_MARKERS, "started a process (asyncio)")
    wrap(os, "system", PROCESS_MARKERS, "started a process (os.system)")
    wrap(
        multiprocessing.process.BaseProcess,
        "start",
        PROCESS_MARKERS,
        "started a process (multiprocessing)",
    )
    wrap(psycopg, "connect", POSTGRES_MARKERS, "connected to PostgreSQL")
    for cls in (psycopg.Connection, psycopg.AsyncConnection):
        original = cls.connect

        def guarded_connect(_cls: Any, /, *args: Any, _original: Any = original, **kw: Any) -> Any:
            _require(POSTGRES_MARKERS, "connected to PostgreSQL")
            return _original(*args, **kw)

        cls.connect = classmethod(guarded_connect)  # type: ignore[method-assign,assignment]


def pytest_configure(config: pytest.Config) -> None:
    _install_guard()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.remove(item)
