"""The Alembic migrations build exactly the schema the code's tables describe.

Run on a fresh SQLite file and a fresh PostgreSQL database: every table,
column, type, nullability and index that ``parley.store.models`` declares
is what ``migrate()`` created, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from parley.store import models as m
from parley.store.db import engine_for, migrate, schema_is_current, sqlite_url
from parley.testing.network import postgres_database
from tests.service.conftest import POSTGRES_ADMIN


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = engine_for(sqlite_url(tmp_path / "parley.db"))
        yield made
        made.dispose()
    else:
        with postgres_database(POSTGRES_ADMIN) as url:
            made = engine_for(url)
            yield made
            made.dispose()


def test_the_migrations_build_the_models_schema(engine: Engine) -> None:
    assert not schema_is_current(engine)
    migrate(engine)
    assert schema_is_current(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": False}
        )
        differences = compare_metadata(context, m.metadata)
    assert differences == []
