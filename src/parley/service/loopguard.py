"""Find database calls made on a thread that runs an asyncio event loop.

A database call blocks the thread it runs on: on the event loop's thread it
stops every connection the process serves (peers, console, delivery) until
it returns. Each such call belongs in a worker thread
(``starlette.concurrency.run_in_threadpool``, ``asyncio.to_thread``).

``watch(report)`` calls ``report(what)`` for each SQL statement and commit
made on an event loop's thread, by any engine of the process. The tests
watch the console in process, and ``parley serve`` watches itself when
``PARLEY_LOOP_GUARD`` is set (logging ``database_call_on_event_loop``), as the
tests that start terminals do.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["on_event_loop", "watch"]


def on_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop right now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _where() -> str:
    """The innermost frames of Parley's own code that led here."""
    frames = [
        f"{f.filename.rsplit('/parley/', 1)[-1]}:{f.lineno} {f.name}"
        for f in traceback.extract_stack()[:-3]
        if "/parley/" in f.filename and "loopguard" not in f.filename
    ]
    return " <- ".join(reversed(frames[-6:])) or "outside Parley"


def watch(report: Callable[[str], None]) -> Callable[[], None]:
    """Report every statement and commit made on an event loop's thread; returns ``unwatch``."""

    def statement(
        conn: Any, cursor: Any, sql: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if on_event_loop():
            report(f"{' '.join(str(sql).split())[:120]} at {_where()}")

    def commit(conn: Any) -> None:
        if on_event_loop():
            report(f"COMMIT at {_where()}")

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Engine, "commit", commit)

    def unwatch() -> None:
        event.remove(Engine, "before_cursor_execute", statement)
        event.remove(Engine, "commit", commit)

    return unwatch
