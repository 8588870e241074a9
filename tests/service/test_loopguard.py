"""The guard that finds database calls blocking an event loop (``parley.service.loopguard``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import create_engine, text

from parley.service.loopguard import on_event_loop, watch


def test_a_call_on_the_event_loop_is_reported_one_in_a_thread_is_not(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'guard.db'}")

    def query() -> int:
        with engine.begin() as conn:
            return int(conn.execute(text("SELECT 41 + 1")).scalar_one())

    async def handler() -> None:
        assert on_event_loop()
        await asyncio.to_thread(query)  # the right way: nothing reported
        assert not found
        query()  # blocks the loop

    found: list[str] = []
    unwatch = watch(found.append)
    try:
        assert query() == 42  # no loop on this thread
        assert not on_event_loop()
        assert not found
        asyncio.run(handler())
    finally:
        unwatch()
    assert any(f.startswith("SELECT 41 + 1 at ") for f in found), found
    assert any(f.startswith("COMMIT at ") for f in found), found
    found.clear()
    asyncio.run(handler())  # unwatched: nothing more is reported
    assert not found
    engine.dispose()
