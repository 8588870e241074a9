"""The console for a tired officer at 3 a.m., in a real browser (Chromium).

What needs action comes first, the message page follows its receipts and
acknowledgements live, service messages read as words, handover rows name
their subject, the links chart fits the data it has, the transcript is paged,
a form speaks only of what was touched and says what it expects, and error
pages, alarms and refusals are in the operator's language. The terminals and
the browser are the package's (``conftest.py``).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import and_, func, select

from parley.config import DataDir
from parley.console import i18n
from parley.console.pages_admin import CHART_SHORTEST
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import TerminalProcess, wait_until
from tests.browser.conftest import (
    PASSWORD,
    BrowserErrors,
    Console,
    Network,
    OpenConsole,
    send,
    wait_received,
)
from tests.browser.test_console import inbox_row, outbox_row, reload_until, unique

pytestmark = pytest.mark.timeout(300)


def new_operator(
    open_console: OpenConsole, terminal: TerminalProcess, role: str = "supervisor"
) -> Console:
    """A console for an account of its own, made now: its language is the test's to change."""
    name = f"watch.{secrets.token_hex(3)}"
    terminal.api("POST", "/users", {"name": name, "role": role, "password": PASSWORD})
    return open_console(terminal, name)


def choose_language(console: Console, lang: str) -> None:
    console.page.locator('select[name="lang"]').select_option(lang)
    expect(console.page.locator("html")).to_have_attribute("lang", lang)


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


def test_a_service_message_reads_as_words_in_every_language_and_awaits_no_acknowledgement(
    network: Network, open_console: OpenConsole
) -> None:
    name = f"WATCH-{secrets.token_hex(3).upper()}"
    proposal = network.us.api("POST", "/channels", {"name": name, "members": ["RU-GS"]})
    wait_until(
        lambda: any(c["name"] == name for c in network.ru.api("GET", "/channels")),
        timeout=30,
        what=f"the proposal of {name} at RU-GS",
    )
    network.ru.api("POST", f"/channels/{name}/agree")

    us = new_operator(open_console, network.us)
    us.goto("/outbox")
    row = outbox_row(us, proposal["proposal"])
    state = row.locator('li[data-party="RU-GS"]')
    expect(state).to_have_attribute("data-state", "delivered", timeout=20_000)
    for lang in ("en", "ru", "uk"):
        choose_language(us, lang)
        words = i18n.translations(lang).gettext("Channel %(name)s proposed, with %(members)s") % {
            "name": name,
            "members": "RU-GS, US-EUCOM",
        }
        expect(row).to_contain_text(words)
        expect(row).not_to_contain_text("channel_proposal")
        expect(state).to_contain_text(
            i18n.translations(lang).gettext("Service message: no acknowledgement")
        )
        expect(state).not_to_contain_text(i18n.translations(lang).gettext("not yet acknowledged"))
        expect(row.locator(".countdown")).to_have_count(0)

    # The agreement, received: in words on the inbox, never highlighted as waiting.
    agreed = i18n.translations("uk").gettext("Channel %(name)s agreed") % {"name": name}
    us.goto("/inbox")
    received = us.page.locator('[data-testid="inbox-row"]', has_text=agreed)
    expect(received).to_be_visible(timeout=20_000)
    expect(received).not_to_have_class("unacked")
    received.get_by_role("link").click()
    expect(us.page.get_by_test_id("service-notices")).to_have_text(agreed)
    expect(us.page.get_by_test_id("ack-button")).to_have_count(0)


def test_the_message_page_follows_its_receipt_and_acknowledgement_live(
    network: Network, open_console: OpenConsole
) -> None:
    text = unique("Request: confirm the ceasefire line at 06:00 UTC")
    sent = send(network.us, "RU-GS", operator="us.sup", precedence="IMMEDIATE", text=text)["id"]
    us = open_console(network.us, "us.sup")
    us.goto(f"/messages/{sent}")
    state = us.page.locator('[data-testid="message-status"] li[data-party="RU-GS"]')
    expect(state).to_have_attribute("data-state", "receipted", timeout=20_000)
    us.mark()

    # RU-GS's officer has it open too, and another RU-GS officer acknowledges it.
    ru = open_console(network.ru, "ru.sup")
    ru.goto(f"/messages/{sent}")
    expect(ru.page.get_by_test_id("ack-button")).to_be_visible()
    ru.mark()
    network.ru.api("POST", f"/messages/{sent}/ack", operator="col.orlov")
    expect(ru.page.get_by_test_id("acknowledged-by")).to_contain_text("col.orlov", timeout=5000)
    expect(ru.page.get_by_test_id("ack-button")).to_have_count(0)
    assert ru.marked(), "the receiver's page was reloaded: it must update live"

    # The sender's page, open all along: the state and the evidence's receipt list.
    expect(state).to_have_attribute("data-state", "acknowledged", timeout=20_000)
    expect(state).to_contain_text("Acknowledged by col.orlov")
    expect(us.page.get_by_test_id("evidence-receipts")).to_contain_text(
        "RU-GS: receipt", timeout=5000
    )
    expect(us.page.get_by_test_id("evidence-receipts")).to_contain_text("col.orlov")
    assert us.marked(), "the sender's page was reloaded: it must update live"


def test_handover_rows_carry_the_subject(network: Network, open_console: OpenConsole) -> None:
    text = unique("Patrol boats leaving Sevastopol at dawn")
    waiting = send(network.ru, "US-EUCOM", operator="ru.sup", precedence="PRIORITY", text=text)
    wait_received(network.us, waiting["id"])
    us = open_console(network.us, "us.sup")
    us.goto("/handover")
    row = us.page.locator(f'[data-testid="open-item"][data-id="{waiting["id"]}"]')
    subject = row.get_by_test_id("open-subject")
    expect(subject).to_have_text(text)
    subject.get_by_role("link").click()
    expect(us.page.get_by_test_id("original-text")).to_have_text(text)
    network.us.api("POST", f"/messages/{waiting['id']}/ack", operator="us.sup")


def test_the_transcript_page_is_paged(network: Network, open_console: OpenConsole) -> None:
    us = open_console(network.us, "us.sup")
    page = us.page
    pager = page.get_by_test_id("pager-cosignatures")
    deadline = time.monotonic() + 120
    us.goto("/transcript")
    while int(pager.get_attribute("data-total") or 0) <= 10:  # traffic makes cosignatures
        assert time.monotonic() < deadline, "fewer than 11 cosignatures after two minutes"
        send(network.ru, "US-EUCOM", operator="ru.sup", text=unique("Traffic for the witnesses"))
        time.sleep(2)
        us.goto("/transcript")
    expect(page.get_by_test_id("cosignature-row")).to_have_count(10)
    expect(pager).to_have_attribute("data-page", "1")
    expect(pager.get_by_test_id("pager-newer")).to_have_count(0)
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 2000, f"the transcript page is {height} px high"

    pager.get_by_test_id("pager-older").click()
    expect(pager).to_have_attribute("data-page", "2")
    expect(page.get_by_test_id("cosignature-row").first).to_be_visible()
    expect(pager.get_by_test_id("pager-newer")).to_be_visible()
    # The checkpoints keep their own page.
    expect(page.get_by_test_id("pager-checkpoints")).to_have_attribute("data-page", "1")


def _oldest_sample(terminal: TerminalProcess, peer: str, link: str) -> datetime:
    engine = engine_for(DataDir(terminal.data).load_config().database)
    try:
        with engine.connect() as conn:
            cols = m.link_samples.c
            oldest: datetime | None = conn.execute(
                select(func.min(cols.at)).where(and_(cols.peer == peer, cols.link == link))
            ).scalar()
    finally:
        engine.dispose()
    assert oldest is not None, f"no sample of {peer}/{link} at {terminal.party}"
    return oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)


def test_the_links_chart_scales_to_the_data_it_has(
    network: Network, open_console: OpenConsole
) -> None:
    # RU-GS met US-EUCOM when the session began: minutes of samples, not a day.
    ru = open_console(network.ru, "ru.sup")
    ru.goto("/links")
    ru.page.get_by_test_id("test-links-button").click()
    ru.goto("/links")
    chart = ru.page.locator('[data-testid="rtt-chart"][data-peer="US-EUCOM"][data-link="primary"]')
    expect(chart.locator("polyline")).not_to_have_count(0)
    start = datetime.fromisoformat(str(chart.get_attribute("data-start")))
    end = datetime.fromisoformat(str(chart.get_attribute("data-end")))
    oldest = _oldest_sample(network.ru, "US-EUCOM", "primary")
    assert abs((start - min(oldest, end - CHART_SHORTEST)).total_seconds()) < 2, (start, oldest)
    assert end - start < timedelta(hours=1)
    ticks = chart.locator("text[text-anchor=middle]").all_inner_texts()
    assert len(ticks) >= 4, ticks  # minutes on the axis, not the hours of a day

    # US-EUCOM has a day of samples: 24 hours by default, or the last hour when chosen.
    us = open_console(network.us, "us.sup")
    us.goto("/links")
    day = us.page.locator('[data-testid="rtt-chart"][data-peer="RU-GS"][data-link="primary"]')
    start = datetime.fromisoformat(str(day.get_attribute("data-start")))
    assert timedelta(hours=23) < datetime.now(UTC) - start <= timedelta(hours=24, minutes=1)
    us.page.get_by_test_id("span-choice").locator('a[data-span="1h"]').click()
    expect(us.page).to_have_url(re.compile(r"/links\?span=1h$"))
    expect(us.page.locator('a[data-span="1h"]')).to_have_attribute("aria-current", "page")
    start = datetime.fromisoformat(str(day.get_attribute("data-start")))
    assert datetime.now(UTC) - start <= timedelta(hours=1, minutes=1)
    caption = us.page.locator(
        '[data-testid="rtt-figure"][data-peer="RU-GS"][data-link="primary"] figcaption'
    )
    samples = re.search(r"samples: (\d+)", caption.inner_text())
    assert samples is not None
    assert 1 <= int(samples[1]) < 71  # not the day's


def test_error_pages_alarms_and_refusals_are_in_the_operators_language(
    network: Network, open_console: OpenConsole, browser_errors: BrowserErrors
) -> None:
    browser_errors.allow_status(403, 404)
    uk = i18n.translations("uk").gettext
    officer = new_operator(open_console, network.us)
    choose_language(officer, "uk")
    page = officer.page

    officer.goto("/messages/no-such-message")
    expect(page.locator("h1")).to_have_text(uk("Not found"))
    expect(page.get_by_test_id("error")).to_have_text(
        uk("There is no such message on this terminal.")
    )
    detail = page.get_by_test_id("error-detail")
    expect(detail.locator("summary")).to_have_text(
        uk("Technical detail, as the terminal recorded it (in English)")
    )
    expect(detail.locator('p[lang="en"]')).to_be_hidden()  # the English record, folded away
    officer.goto("/no/such/page")
    expect(page.get_by_test_id("error")).to_have_text(uk("There is no such page on this terminal."))

    # The dead backup link's failed test, as an alarm in Ukrainian.
    officer.goto("/links")
    page.get_by_test_id("test-links-button").click()
    officer.goto("/alarms")
    alarm = page.locator('[data-testid="alarm-row"][data-kind="link_test_failed"]')
    reload_until(page, alarm, "the failed link test's alarm", timeout=30)
    words = uk("Link %(subject)s failed its test.") % {"subject": "RU-GS/backup"}
    expect(alarm.first.get_by_test_id("alarm-text")).to_contain_text(words)
    expect(alarm.first.locator('p[lang="en"]')).to_be_hidden()  # the record, folded away

    # A role's refusal names what it may not do, in Ukrainian.
    auditor = new_operator(open_console, network.us, "auditor")
    choose_language(auditor, "uk")
    auditor.goto("/compose")
    expect(auditor.page.get_by_test_id("forbidden")).to_have_text(
        uk("Your role does not allow you to %(action)s.") % {"action": uk("send messages")}
    )
