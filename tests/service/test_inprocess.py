"""Two terminals in one process (parley.testing.inprocess): the protocol end to end
through the delivery worker and the peer API, with no socket, process or real wait."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from parley.service.delivery import Timings
from parley.testing.inprocess import FAST, TerminalSet

US, RU = "US-EUCOM", "RU-GS"
PARTIES = [(US, "US European Command"), (RU, "General Staff")]


def test_a_flash_is_delivered_receipted_acknowledged_and_cosigned(
    tmp_path: Path, no_db_on_loop: list[str]
) -> None:
    net = TerminalSet.open(tmp_path, PARTIES)
    us, ru = net[US], net[RU]

    async def conversation() -> None:
        async with net:
            sent = await net.run(
                us.send,
                [RU],
                kind="text",
                body={"text": "one"},
                operator="duty",
                precedence="FLASH",
            )
            mid = sent["id"]
            await net.until(lambda: RU in us.show(mid)["receipts"])
            received = await net.run(ru.show, mid)
            assert received["verified"] is True
            assert received["body"] == {"text": "one"}
            assert received["sender"] == US
            await net.run(ru.acknowledge, mid, operator="ru.duty")
            assert (await net.run(ru.show, mid))["acknowledged_by"] == "ru.duty"
            acks = await net.until(lambda: us.show(mid)["acks"])
            assert list(acks) == [RU]
            assert acks[RU]["operator"] == "ru.duty"
            # US's log holds the message and RU's receipt for it; RU cosigns all of it.
            size = (await net.run(us.status))["log_size"]
            await net.until(lambda: us.status()["cosigned_by"].get(RU, 0) >= size)

    try:
        anyio.run(conversation)
    finally:
        net.close()


def test_timings_are_the_workers_own(tmp_path: Path) -> None:
    """A set's workers use its timings, not the module's defaults (a set with the
    defaults would wait up to ten seconds for a first witness round)."""

    net = TerminalSet.open(tmp_path, PARTIES)

    async def run() -> tuple[Timings, Timings]:
        async with net:
            return net.workers[US].timings, net.workers[RU].timings

    try:
        got = anyio.run(run)
    finally:
        net.close()
    assert got == (FAST, FAST)
    assert Timings() != FAST
    assert Timings().witness_idle == pytest.approx(10.0)
