"""The guard of ``tests/conftest.py``: an unmarked test can neither start a process
nor connect to PostgreSQL, so ``make check`` cannot run one by accident.

Each refusal is checked on a test without the marker, and the marker is checked
to let the same call through (the marked tests start a real, short process).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys

import psycopg
import pytest

from tests.service.conftest import POSTGRES_ADMIN

Refused = pytest.fail.Exception


def test_an_unmarked_test_cannot_run_a_process() -> None:
    with pytest.raises(Refused, match=r"started a process .*@pytest\.mark\.subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(Refused, match="started a process"):
        subprocess.Popen([sys.executable, "-c", "pass"])
    with pytest.raises(Refused, match="started a process"):
        os.system("true")


def test_an_unmarked_test_cannot_start_an_asyncio_subprocess() -> None:
    async def start() -> None:
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")

    with pytest.raises(Refused, match="started a process"):
        asyncio.run(start())


def test_an_unmarked_test_cannot_start_a_process_pool_worker() -> None:
    process = multiprocessing.get_context("spawn").Process(target=print)
    with pytest.raises(Refused, match="started a process"):
        process.start()


def test_an_unmarked_test_cannot_connect_to_postgresql() -> None:
    with pytest.raises(Refused, match=r"connected to PostgreSQL .*@pytest\.mark\.postgres"):
        psycopg.connect(POSTGRES_ADMIN)
    with pytest.raises(Refused, match="connected to PostgreSQL"):
        psycopg.Connection.connect(POSTGRES_ADMIN)


def test_the_refusal_is_not_an_exception_a_test_could_swallow() -> None:
    # ``except Exception`` around the call (as a retry loop might have) does not hide it.
    assert not issubclass(Refused, Exception)


@pytest.mark.subprocess
def test_a_marked_test_runs_processes() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True
    )
    assert result.stdout == "42\n"

    async def start() -> bytes:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('a')", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return out

    assert asyncio.run(start()) == b"a\n"


@pytest.mark.postgres
def test_a_marked_test_connects_to_postgresql() -> None:
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        row = conn.execute("SELECT 6 * 7").fetchone()
    assert row == (42,)
