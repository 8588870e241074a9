"""Shared fixtures: a fixed clock reading and three terminal identities.

Identities are generated once per test session (generation is cheap, but
three ML-DSA and ML-KEM key pairs per test add up) and are valid from one
day before ``NOW`` for two years.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings

from parley.core.identity import Identity, IdentityCard

# Speed belongs in benchmarks, not in tests: no per-example deadline, so a
# loaded CI machine cannot turn a correct property into a flaky failure.
settings.register_profile("parley", deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
