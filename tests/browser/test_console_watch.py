"""The console for a tired officer at 3 a.m., in a real browser (Chromium).

What needs action comes first, the message page follows its receipts and
acknowledgements live, service messages read as words, handover rows name
their subject, the links chart fits the data it has, the transcript is paged,
a form speaks only of what was touched and says what it expects, and error
pages, alarms and refusals are in the operator's language. The terminals and
the browser are the package's (``conftest.py``).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Network, OpenConsole, send, wait_received
from tests.browser.test_console import inbox_row, unique

pytestmark = pytest.mark.timeout(300)


def test_what_awaits_an_acknowledgement_comes_before_an_acknowledged_flash(
    network: Network, open_console: OpenConsole
) -> None:
    flash = send(
        network.ru, "US-EUCOM", operator="ru.sup", precedence="FLASH", text=unique("Flash")
    )
    wait_received(network.us, flash["id"])
    network.us.api("POST", f"/messages/{flash['id']}/ack", operator="us.sup")

    us = open_console(network.us, "us.sup")
    flash_row = inbox_row(us, flash["id"])
    expect(flash_row).not_to_have_class("unacked")
    us.mark()
    text = unique("Request for a call at 04:00 UTC")
    immediate = send(network.ru, "US-EUCOM", operator="ru.sup", precedence="IMMEDIATE", text=text)
    waiting = inbox_row(us, immediate["id"])
    expect(waiting).to_be_visible(timeout=15_000)
    expect(waiting).to_have_class("unacked")
    # The new IMMEDIATE arrived live above the acknowledged FLASH, and every row
    # still waiting for an acknowledgement is above every row that is not.
    order = us.page.locator('[data-testid="inbox-row"]').evaluate_all(
        "rows => rows.map(r => [r.dataset.id, r.classList.contains('unacked')])"
    )
    ids = [row_id for row_id, _ in order]
    assert ids.index(immediate["id"]) < ids.index(flash["id"])
    waits = [unacked for _, unacked in order]
    assert waits == sorted(waits, reverse=True), order
    assert us.marked(), "the inbox was reloaded: it must update live"
