"""The operator console in a real browser (Chromium), against two running terminals.

Each test drives the console as operators would: logging in, composing,
watching the inbox update live, acknowledging, reading the evidence, and the
watch pages (links, transcript, exchanges, alarms, handover). The fixtures
(``conftest.py``) fail a test whose pages logged a console error or a
Content-Security-Policy violation, and keep screenshots of the main pages.
"""

from __future__ import annotations

import re
import secrets
import time

import pytest
from playwright.sync_api import Locator, Page, expect

from parley.console import i18n
from tests.browser.conftest import (
    PASSWORD,
    BrowserErrors,
    Console,
    Network,
    OpenConsole,
    Screenshot,
    make_exchange,
    send,
    wait_received,
)

pytestmark = pytest.mark.timeout(300)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TIME = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC"
#: Every page of the console an operator reaches from the navigation.
PAGES = (
    "/inbox",
    "/outbox",
    "/compose",
    "/channels",
    "/links",
    "/transcript",
    "/exchanges",
    "/alarms",
    "/handover",
)


def unique(text: str) -> str:
    return f"{text} [{secrets.token_hex(3)}]"


def inbox_row(console: Console, message_id: str) -> Locator:
    return console.page.locator(f'[data-testid="inbox-row"][data-id="{message_id}"]')


def outbox_row(console: Console, message_id: str) -> Locator:
    return console.page.locator(f'[data-testid="outbox-row"][data-id="{message_id}"]')


def nav_link(page: Page, path: str) -> Locator:
    return page.locator(f'header nav a[href="{path}"]')


def compose_text(console: Console, text: str, *, precedence: str, to: str) -> str:
    """Write and send a free-text message on the compose page; its id once sent."""
    console.goto("/compose")
    page = console.page
    page.get_by_test_id("compose-precedence").select_option(precedence)
    page.get_by_test_id(f"compose-recipient-{to}").check()
    page.get_by_test_id("compose-text").fill(text)
    page.get_by_test_id("compose-send").click()
    # Sent: the terminal shows the new message's own page.
    expect(page).to_have_url(re.compile(rf"/messages/{UUID}$"))
    message = page.get_by_test_id("message")
    expect(message).to_have_attribute("data-precedence", precedence)
    return str(message.get_attribute("data-id"))


def reload_until(page: Page, locator: Locator, what: str, timeout: float = 60) -> None:
    """Reload ``page`` until ``locator`` is there (for pages that do not refresh)."""
    deadline = time.monotonic() + timeout
    while locator.count() == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not shown after {timeout} s")
        time.sleep(1)
        page.reload()


# 1 ----------------------------------------------------------------------------------


def test_supervisors_log_in_on_each_terminal(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    for terminal, name in ((network.us, "us.sup"), (network.ru, "ru.sup")):
        console = open_console(terminal, name, login=False)
        console.goto("/login")
        expect(console.page.locator("h1")).to_contain_text(terminal.party)
        if terminal is network.us:
            screenshot(console.page, "login")
        console.login()
        operator = console.page.get_by_test_id("operator")
        expect(operator).to_have_text(f"{name} (Supervisor)")
        expect(console.page.locator("header .brand")).to_contain_text(terminal.party)
        expect(console.page.locator("h1")).to_have_text("Inbox")
        for path in PAGES:
            expect(nav_link(console.page, path)).to_be_visible()


# 2 ----------------------------------------------------------------------------------


def test_flash_appears_on_the_receivers_inbox_within_two_seconds(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    ru = open_console(network.ru, "ru.sup")
    expect(ru.page.locator("h1")).to_have_text("Inbox")
    ru.mark()
    us = open_console(network.us, "us.sup")
    text = unique("Unidentified aircraft crossing the Baltic air boundary at FL350")

    message_id = compose_text(us, text, precedence="FLASH", to="RU-GS")
    expect(us.page.get_by_test_id("original-text")).to_have_text(text)

    row = inbox_row(ru, message_id)
    expect(row).to_be_visible(timeout=2000)
    expect(row).to_have_attribute("data-precedence", "FLASH")
    expect(row).to_contain_text(text)
    expect(row).to_contain_text("US-EUCOM")
    banner = ru.page.locator(f'[data-testid="flash-banner"][data-flash-id="{message_id}"]')
    expect(banner).to_be_visible(timeout=2000)
    expect(banner).to_contain_text("FLASH from US-EUCOM")
    assert ru.marked(), "the inbox was reloaded or left: the FLASH must arrive live"
    assert ru.path() == "/inbox"
    screenshot(ru.page, "inbox-flash")


# 3 ----------------------------------------------------------------------------------


def test_acknowledgement_reaches_the_senders_outbox_live(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    text = unique("Request confirmation that the flight near Kaliningrad is a training flight")
    message_id = send(network.us, "RU-GS", operator="us.sup", precedence="FLASH", text=text)["id"]
    us = open_console(network.us, "us.sup")
    us.goto("/outbox")
    state = outbox_row(us, message_id).locator('li[data-party="RU-GS"]')
    expect(state).to_have_attribute("data-state", "receipted", timeout=20_000)
    us.mark()

    # RU-GS opens it from its FLASH banner and acknowledges it.
    ru = open_console(network.ru, "ru.sup")
    banner = ru.page.locator(f'[data-testid="flash-banner"][data-flash-id="{message_id}"]')
    expect(banner).to_be_visible()
    expect(inbox_row(ru, message_id)).to_have_class(re.compile(r"\bunacked\b"))
    banner.get_by_role("link").click()
    expect(ru.page).to_have_url(f"{ru.base}/messages/{message_id}")
    ru.page.get_by_test_id("ack-button").click()
    expect(ru.page).to_have_url(f"{ru.base}/messages/{message_id}")
    acknowledged = ru.page.get_by_test_id("acknowledged-by")
    expect(acknowledged).to_have_text(re.compile(rf"Acknowledged by ru\.sup at {TIME}"))
    expect(ru.page.get_by_test_id("ack-button")).to_have_count(0)
    expect(banner).to_have_count(0, timeout=3000)  # an acknowledged FLASH alarms no more
    ru.goto("/inbox")
    expect(inbox_row(ru, message_id).get_by_test_id("acknowledged-by")).to_contain_text("ru.sup")

    # The sender's outbox, open all along, shows it without a reload.
    expect(state).to_have_attribute("data-state", "acknowledged", timeout=15_000)
    expect(state.get_by_test_id("acknowledged-by")).to_have_text(
        re.compile(rf"Acknowledged by ru\.sup at {TIME}")
    )
    assert us.marked(), "the outbox was reloaded or left: it must update live"
    screenshot(us.page, "outbox")


def test_the_sound_switch_is_remembered(network: Network, open_console: OpenConsole) -> None:
    console = open_console(network.us, "us.sup")
    switch = console.page.locator("[data-sound-toggle]")
    expect(switch).to_have_attribute("aria-pressed", "true")
    expect(switch).to_have_text("Sound on")
    switch.click()
    expect(switch).to_have_attribute("aria-pressed", "false")
    expect(switch).to_have_text("Sound off")
    console.goto("/outbox")
    expect(switch).to_have_attribute("aria-pressed", "false")
    switch.click()
    expect(switch).to_have_attribute("aria-pressed", "true")


# 4 ----------------------------------------------------------------------------------


def test_an_invalid_form_shows_field_errors_and_sends_nothing(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    before = len(network.us.api("GET", "/outbox", operator="check"))
    us = open_console(network.us, "us.sup")
    us.goto("/compose")
    page = us.page
    page.get_by_test_id("compose-form-select").select_option("INCIDENT_REPORT")
    latitude = page.locator('[name="/position/latitude"]')
    expect(latitude).to_be_visible()
    error = page.locator('[data-pointer="/position/latitude"] [data-testid="field-error"]')
    # Checked as it is typed: the latitude's error shows, and nothing about the
    # required fields (recipients, time, narrative…) nobody has reached yet.
    latitude.fill("91")
    expect(error).to_be_visible()
    expect(error).to_contain_text("−90 to 90")  # what is expected, not "wrong format"
    expect(page.get_by_test_id("field-error")).to_have_count(1)
    page.get_by_test_id("compose-precedence").select_option("IMMEDIATE")
    page.get_by_test_id("compose-recipient-RU-GS").check()
    page.locator('[name="/domain"]').select_option("sea")
    page.locator('[name="/time"]').fill("2026-02-05T11:40:00Z")
    page.locator('[name="/position/longitude"]').fill("20.5")
    page.locator('[name="/narrative"]').fill("A vessel approached within 200 m of our frigate.")

    us.mark()
    expect(error).to_be_visible()
    expect(page.get_by_test_id("field-error")).to_have_count(1)
    assert us.marked()
    page.get_by_test_id("compose-send").click()
    page.wait_for_function("window.__parleyMarker === undefined")  # the page was sent

    # Refused on the page itself: still the compose page, the values kept,
    # the error next to the latitude and nowhere else.
    expect(page).to_have_url(f"{us.base}/compose")
    expect(error).to_be_visible()
    expect(error).to_have_text(re.compile(r"\S"))
    expect(error).to_have_attribute("data-field", "/position/latitude")
    # The field's help, beside the error, says what is allowed.
    expect(page.locator('label[data-pointer="/position/latitude"]')).to_contain_text("−90 to 90")
    expect(page.get_by_test_id("field-error")).to_have_count(1)
    # A summary above the form names the field and links to its error.
    summary = page.get_by_test_id("error-summary")
    expect(summary).to_contain_text("Latitude")
    expect(summary.locator("a")).to_have_count(1)
    expect(page.locator('[name="/position/latitude"]')).to_have_value("91")
    label_box = page.locator('label[data-pointer="/position/latitude"]').bounding_box()
    error_box = error.bounding_box()
    assert label_box is not None
    assert error_box is not None
    assert label_box["y"] <= error_box["y"] <= label_box["y"] + label_box["height"]
    screenshot(page, "compose-field-errors")

    time.sleep(1)
    assert len(network.us.api("GET", "/outbox", operator="check")) == before
    us.goto("/outbox")
    expect(page.get_by_test_id("held-row")).to_have_count(0)

    # Corrected, the same form goes.
    us.goto("/compose")
    page.get_by_test_id("compose-form-select").select_option("INCIDENT_REPORT")
    page.get_by_test_id("compose-recipient-RU-GS").check()
    page.locator('[name="/domain"]').select_option("sea")
    page.locator('[name="/time"]').fill("2026-02-05T11:40:00Z")
    page.locator('[name="/position/latitude"]').fill("54.5")
    page.locator('[name="/position/longitude"]').fill("20.5")
    page.locator('[name="/narrative"]').fill("A vessel approached within 200 m of our frigate.")
    page.get_by_test_id("compose-send").click()
    expect(page).to_have_url(re.compile(rf"/messages/{UUID}$"))
    expect(page.get_by_test_id("form-render")).to_contain_text("54.5")


# 5 ----------------------------------------------------------------------------------


def test_three_wrong_passwords_lock_the_account(
    network: Network, open_console: OpenConsole, browser_errors: BrowserErrors
) -> None:
    browser_errors.allow_status(401)
    console = open_console(network.ru, "ru.lockout", login=False)
    error = console.page.get_by_test_id("login-error")
    for attempt in range(3):
        console.login(f"wrong-password-{attempt}", expect_inbox=False)
        expect(error).to_have_text("Wrong name or password.")
        expect(console.page).to_have_url(f"{console.base}/login")
    console.login(PASSWORD, expect_inbox=False)
    expect(error).to_contain_text("This account is locked after repeated failed logins")
    expect(console.page).to_have_url(f"{console.base}/login")
    assert not any(c["name"].endswith("parley_session") for c in console.context.cookies())
    console.goto("/inbox")
    expect(console.page).to_have_url(f"{console.base}/login")


def test_a_wrong_password_for_an_operator_named_blocked_is_not_a_lockout(
    network: Network, open_console: OpenConsole, browser_errors: BrowserErrors
) -> None:
    browser_errors.allow_status(401)
    console = open_console(network.ru, "ru.blocked", login=False)
    console.login("wrong-password-once", expect_inbox=False)
    expect(console.page.get_by_test_id("login-error")).to_have_text(
        "Wrong name or password.", timeout=2000
    )


# 6 ----------------------------------------------------------------------------------


def test_russian_changes_the_interface_and_stays_after_logging_in_again(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    ru = i18n.translations("ru").gettext
    for english in ("Inbox", "Outbox", "Compose", "Transcript", "Log out"):
        assert ru(english) != english, f"no Russian for {english!r}"
    console = open_console(network.ru, "ru.lang")
    page = console.page
    expect(page.locator("html")).to_have_attribute("lang", "en")
    console.goto("/outbox")
    page.locator('select[name="lang"]').select_option("ru")

    def russian(heading: str) -> None:
        expect(page.locator("html")).to_have_attribute("lang", "ru")
        expect(page.locator("h1")).to_have_text(ru(heading))
        expect(nav_link(page, "/inbox")).to_have_text(ru("Inbox"))
        expect(nav_link(page, "/outbox")).to_have_text(ru("Outbox"))
        expect(nav_link(page, "/compose")).to_have_text(ru("Compose"))
        expect(nav_link(page, "/transcript")).to_have_text(ru("Transcript"))
        expect(page.locator('form[action="/logout"] [type=submit]')).to_have_text(ru("Log out"))
        expect(page.locator('select[name="lang"]')).to_have_value("ru")

    # The page chosen from stays: the outbox, now in Russian.
    expect(page).to_have_url(f"{console.base}/outbox")
    russian("Outbox")
    console.goto("/inbox")
    russian("Inbox")
    screenshot(page, "inbox-ru")

    console.logout()
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    console.login()
    russian("Inbox")

    # Another browser (no cookie of the first): the account keeps the choice.
    again = open_console(network.ru, "ru.lang")
    expect(again.page.locator("html")).to_have_attribute("lang", "ru")
    expect(again.page.locator("h1")).to_have_text(ru("Inbox"))


def test_ukrainian_pages(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    uk = i18n.translations("uk").gettext
    text = unique("Запит на підтвердження району навчань")
    message_id = send(network.ru, "US-EUCOM", operator="ru.sup", precedence="PRIORITY", text=text)[
        "id"
    ]
    wait_received(network.us, message_id)
    console = open_console(network.us, "us.uk")
    page = console.page
    page.locator('select[name="lang"]').select_option("uk")
    expect(page.locator("html")).to_have_attribute("lang", "uk")
    expect(page.locator("h1")).to_have_text(uk("Inbox"))
    expect(nav_link(page, "/handover")).to_have_text(uk("Handover"))
    console.goto(f"/messages/{message_id}")
    expect(page.get_by_test_id("original-text")).to_have_text(text)
    expect(page.get_by_test_id("evidence-signature")).to_have_attribute("data-state", "ok")
    screenshot(page, "message-uk")
    console.goto("/handover")
    expect(page.locator("h1")).to_have_text(uk("Shift handover"))
    screenshot(page, "handover-uk")


# 7 ----------------------------------------------------------------------------------


def test_an_auditor_cannot_send_or_acknowledge(
    network: Network,
    open_console: OpenConsole,
    screenshot: Screenshot,
    browser_errors: BrowserErrors,
) -> None:
    browser_errors.allow_status(403)
    text = unique("Notification of a scheduled missile test")
    message_id = send(network.us, "RU-GS", operator="us.sup", precedence="PRIORITY", text=text)[
        "id"
    ]
    wait_received(network.ru, message_id)
    auditor = open_console(network.ru, "ru.audit")
    page = auditor.page
    expect(page.get_by_test_id("operator")).to_have_text("ru.audit (Auditor)")
    expect(nav_link(page, "/inbox")).to_be_visible()
    expect(nav_link(page, "/compose")).to_have_count(0)

    response = page.goto(auditor.base + "/compose")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_test_id("forbidden")).to_be_visible()
    expect(page.get_by_test_id("compose-send")).to_have_count(0)
    screenshot(page, "forbidden")

    auditor.goto(f"/messages/{message_id}")
    expect(page.get_by_test_id("evidence-signature")).to_have_attribute("data-state", "ok")
    expect(page.get_by_test_id("acknowledgement")).to_contain_text("Not acknowledged yet.")
    expect(page.get_by_test_id("ack-button")).to_have_count(0)
    # Posting anyway (with the session's own CSRF token) is refused too.
    csrf = page.locator('form[action="/logout"] input[name="csrf_token"]').input_value()
    refused = page.request.post(
        f"{auditor.base}/messages/{message_id}/ack", form={"csrf_token": csrf}
    )
    assert refused.status == 403
    assert network.ru.api("GET", f"/messages/{message_id}")["acknowledged_by"] is None

    # Reading and verifying stay open to the auditor.
    auditor.goto("/transcript")
    page.get_by_test_id("verify-button").click()
    expect(page.get_by_test_id("verify-result")).to_have_attribute("data-ok", "true")
    expect(page.get_by_test_id("export-link")).to_be_visible()


# 8 ----------------------------------------------------------------------------------


def test_message_page_shows_the_evidence_and_the_receipt_and_ack_times(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    text = unique("Proposal: a hotline test every day at 09:00 UTC")
    message_id = send(network.us, "RU-GS", operator="us.sup", precedence="PRIORITY", text=text)[
        "id"
    ]
    wait_received(network.ru, message_id)
    network.ru.api("POST", f"/messages/{message_id}/ack", operator="col.orlov")

    # The receiver's page: its own receipt time and the acknowledgement.
    ru = open_console(network.ru, "ru.sup")
    ru.goto(f"/messages/{message_id}")
    page = ru.page
    expect(page.get_by_test_id("original-text")).to_have_text(text)
    signature = page.get_by_test_id("evidence-signature")
    expect(signature).to_have_attribute("data-state", "ok")
    expect(signature).to_contain_text("valid")
    expect(signature).to_contain_text("Signed by US-EUCOM")
    receipts = page.get_by_test_id("evidence-receipts")
    expect(receipts).to_contain_text(
        re.compile(rf"Received, logged and receipted by RU-GS at {TIME}")
    )
    expect(receipts).to_contain_text(re.compile(rf"Acknowledged by col\.orlov at {TIME}"))
    expect(page.get_by_test_id("acknowledged-by")).to_contain_text("col.orlov")

    # The sender's page: receipt and acknowledgement by RU-GS, with their times.
    us = open_console(network.us, "us.sup")
    us.goto(f"/messages/{message_id}")
    page = us.page
    expect(page.get_by_test_id("evidence-signature")).to_have_attribute("data-state", "ok")
    reload_until(
        page,
        page.locator('[data-testid="evidence-receipts"]', has_text="col.orlov"),
        "RU-GS's acknowledgement on the sender's page",
    )
    expect(page.get_by_test_id("evidence-receipts")).to_contain_text(
        re.compile(rf"RU-GS: receipt {TIME}; acknowledgement col\.orlov, {TIME}")
    )
    # Inclusion under a signed checkpoint, then the other side's cosignature:
    # witnessing runs every few seconds; the page is reloaded until it shows.
    for console in (us, ru):
        page = console.page
        console.goto(f"/messages/{message_id}")
        reload_until(
            page,
            page.locator('[data-testid="evidence-inclusion"][data-state="ok"]'),
            f"inclusion at {console.terminal.party}",
        )
        expect(page.get_by_test_id("evidence-inclusion")).to_contain_text("included")
        reload_until(
            page,
            page.locator('[data-testid="evidence-cosigned"][data-state="ok"]'),
            f"the cosignature at {console.terminal.party}",
        )
        cosigned = page.get_by_test_id("evidence-cosigned")
        other = "RU-GS" if console is us else "US-EUCOM"
        expect(cosigned.locator(f'li[data-party="{other}"]')).to_have_attribute("data-state", "ok")
        expect(cosigned).to_contain_text(f"{other} cosigned this terminal's log")
    screenshot(us.page, "message-evidence", top=us.page.locator("h2", has_text="Recipients"))


# 9 ----------------------------------------------------------------------------------


def test_every_page_needs_a_login(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    message_id = send(network.us, "RU-GS", operator="us.sup", text=unique("Routine"))["id"]
    anonymous = open_console(network.us, "nobody", login=False)
    for path in (
        "/",
        *PAGES,
        f"/messages/{message_id}",
        "/exchanges/PX-NONE",
        "/transcript/export",
        "/fragments/flash",
        "/fragments/inbox",
    ):
        anonymous.goto(path)
        expect(anonymous.page).to_have_url(f"{anonymous.base}/login")
        expect(anonymous.page.locator("input[name=name]")).to_be_visible()
        expect(anonymous.page.get_by_test_id("operator")).to_have_count(0)

    # Logging out in one tab closes the others: the inbox open in a second tab
    # goes to /login by itself at its next poll.
    console = open_console(network.us, "us.sup")
    other = console.context.new_page()
    other.goto(console.base + "/inbox")
    expect(other.get_by_test_id("operator")).to_contain_text("us.sup")
    console.logout()
    expect(other).to_have_url(f"{console.base}/login", timeout=5000)
    console.goto("/outbox")
    expect(console.page).to_have_url(f"{console.base}/login")


def test_changes_need_the_sessions_csrf_token_and_our_origin(
    network: Network, open_console: OpenConsole, browser_errors: BrowserErrors
) -> None:
    browser_errors.allow_status(403)
    console = open_console(network.us, "us.sup")
    csrf = console.page.locator('form[action="/logout"] input[name="csrf_token"]').input_value()
    request = console.page.request
    url = console.base + "/language"
    assert request.post(url, form={"lang": "uk"}, max_redirects=0).status == 403
    wrong: dict[str, str | float | bool] = {"lang": "uk", "csrf_token": csrf[::-1]}
    assert request.post(url, form=wrong, max_redirects=0).status == 403
    foreign = request.post(
        url,
        form={"lang": "uk", "csrf_token": csrf},
        headers={"Origin": "http://evil.example"},
        max_redirects=0,
    )
    assert foreign.status == 403
    console.goto("/inbox")
    expect(console.page.locator("html")).to_have_attribute("lang", "en")
    # With the token, from the console itself, the same request is accepted.
    done = request.post(url, form={"lang": "en", "csrf_token": csrf}, max_redirects=0)
    assert done.status == 303


def test_the_console_has_an_icon(network: Network, open_console: OpenConsole) -> None:
    console = open_console(network.us, "us.sup")
    named = console.page.locator('head link[rel~="icon"]').count() > 0
    assert named or console.page.request.get(console.base + "/favicon.ico").ok


# The rest of the watch -----------------------------------------------------------------


def test_a_duty_officers_flash_waits_for_a_supervisor(
    network: Network, open_console: OpenConsole
) -> None:
    duty = open_console(network.us, "us.duty")
    text = unique("Missile launch detected, trajectory away from the border")
    duty.goto("/compose")
    page = duty.page
    page.get_by_test_id("compose-precedence").select_option("FLASH")
    page.get_by_test_id("compose-recipient-RU-GS").check()
    page.get_by_test_id("compose-text").fill(text)
    page.get_by_test_id("compose-send").click()
    expect(page).to_have_url(f"{duty.base}/outbox")
    held = page.locator('[data-testid="held-row"]', has_text=text)
    expect(held).to_be_visible()
    expect(held.get_by_test_id("release-button")).to_have_count(0)
    assert not any(m["body"].get("text") == text for m in network.us.api("GET", "/outbox"))

    supervisor = open_console(network.us, "us.sup")
    supervisor.goto("/outbox")
    supervisor.page.locator('[data-testid="held-row"]', has_text=text).get_by_test_id(
        "release-button"
    ).click()
    expect(supervisor.page).to_have_url(f"{supervisor.base}/outbox")
    row = supervisor.page.locator('[data-testid="outbox-row"]', has_text=text)
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-precedence", "FLASH")
    # The duty officer's outbox follows live: the held row becomes a sent one.
    expect(held).to_have_count(0, timeout=5000)
    sent = page.locator('[data-testid="outbox-row"]', has_text=text)
    expect(sent).to_be_visible()
    # Sent under the name of the duty officer who wrote it.
    expect(sent).to_contain_text("us.duty")
    message_id = str(sent.get_attribute("data-id"))
    wait_received(network.ru, message_id)
    network.ru.api("POST", f"/messages/{message_id}/ack", operator="ru.sup")


def test_links_page_shows_each_link_and_the_rtt_chart(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    us = open_console(network.us, "us.sup")
    us.goto("/links")
    page = us.page
    page.get_by_test_id("test-links-button").click()
    expect(page.get_by_test_id("notice")).to_be_visible()
    primary = page.locator('[data-testid="link-row"][data-peer="RU-GS"][data-link="primary"]')
    backup = page.locator('[data-testid="link-row"][data-peer="RU-GS"][data-link="backup"]')
    reload_until(
        page,
        page.locator(
            '[data-testid="link-row"][data-link="primary"][data-state="up"]',
            has_text=re.compile(r"\d ms"),
        ),
        "the primary link up with its round trip",
        timeout=30,
    )
    reload_until(
        page,
        page.locator('[data-testid="link-row"][data-link="backup"][data-state="down"]'),
        "the dead backup link down",
        timeout=30,
    )
    expect(primary).to_contain_text("up")
    expect(backup).to_contain_text("down")
    chart = page.locator('[data-testid="rtt-chart"][data-peer="RU-GS"][data-link="primary"]')
    reload_until(
        page,
        page.locator('[data-testid="rtt-chart"][data-link="primary"] polyline'),
        "a line in the round-trip chart",
        timeout=30,
    )
    expect(chart).to_be_visible()
    # The day of samples seeded before the start (71, two failed; conftest), and today's.
    caption = chart.locator("xpath=..").locator("figcaption")
    expect(caption).to_contain_text(re.compile(r"samples: (7[2-9]|[89]\d|\d{3,}), failed: \d+"))
    points = " ".join(p.get_attribute("points") or "" for p in chart.locator("polyline").all())
    assert len(points.split()) > 60, points
    expect(chart.locator("circle.fail")).not_to_have_count(0)
    box = chart.bounding_box()
    assert box is not None
    assert box["width"] > 200
    assert box["height"] > 80
    failures = page.locator('[data-testid="rtt-chart"][data-link="backup"] circle.fail')
    expect(failures).not_to_have_count(0)
    screenshot(page, "links", top=page.locator("#link-state"))


def test_transcript_verifies_and_exports(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    us = open_console(network.us, "us.sup")
    us.goto("/transcript")
    page = us.page
    expect(page.get_by_test_id("log-size")).to_have_text(re.compile(r"^\d+$"))
    page.get_by_test_id("verify-button").click()
    result = page.get_by_test_id("verify-result")
    expect(result).to_have_attribute("data-ok", "true")
    expect(result).to_contain_text("The record verifies.")
    with page.expect_download() as download:
        page.get_by_test_id("export-link").click()
    assert download.value.failure() is None
    assert download.value.suggested_filename
    screenshot(page, "transcript")


@pytest.fixture(scope="module")
def exchange(network: Network) -> str:
    """An agreed prisoner exchange between the two terminals (US-EUCOM lists 2, RU-GS 1)."""
    exchange_id = "PX-2026-11-A"  # once per session: the terminals are the session's
    make_exchange(network, exchange_id)
    return exchange_id


def test_exchanges_list_and_manifest(
    network: Network, exchange: str, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    us = open_console(network.us, "us.sup")
    us.goto("/exchanges")
    page = us.page
    row = page.locator(f'[data-testid="exchange-row"][data-exchange="{exchange}"]')
    reload_until(page, row, "the exchange", timeout=30)
    expect(row).to_contain_text("Prisoner exchange")
    expect(row).to_contain_text("RU-GS: 1, US-EUCOM: 2")
    expect(row).to_contain_text("agreed")
    screenshot(page, "exchanges")
    row.get_by_role("link").click()
    expect(page).to_have_url(f"{us.base}/exchanges/{exchange}")
    manifest = page.get_by_test_id("manifest")
    expect(manifest).to_have_attribute("data-agreed", "true")
    expect(page.get_by_test_id("manifest-hash")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    signed = page.locator('[data-testid="manifest-signature"][data-state="current"]')
    expect(signed).to_have_count(2)
    expect(page.locator('[data-testid="person-row"][data-ref="RU-0001"]')).to_contain_text(
        "Иванов Сергей Петрович"
    )
    expect(page.locator('[data-testid="person-row"][data-ref="US-0002"]')).to_contain_text(
        "Mark Brown"
    )
    expect(page.get_by_test_id("exchange-list-RU-GS")).to_contain_text("1 entry")
    expect(page.get_by_test_id("exchange-list-US-EUCOM")).to_contain_text("2 entries")
    screenshot(page, "exchange")


def test_alarms_show_the_failed_link_test(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    us = open_console(network.us, "us.sup")
    us.goto("/links")
    us.page.get_by_test_id("test-links-button").click()
    us.goto("/alarms")
    page = us.page
    alarm = page.locator('[data-testid="alarm-row"][data-kind="link_test_failed"]')
    reload_until(page, alarm, "the failed link test's alarm", timeout=30)
    expect(alarm.first).to_contain_text("RU-GS/backup")
    expect(alarm.first).to_contain_text("warning")
    screenshot(page, "alarms")


def test_handover_sign_off_and_accept(
    network: Network, open_console: OpenConsole, screenshot: Screenshot
) -> None:
    text = unique("Awaiting your acknowledgement at the change of watch")
    message_id = send(network.ru, "US-EUCOM", operator="ru.sup", precedence="IMMEDIATE", text=text)[
        "id"
    ]
    wait_received(network.us, message_id)
    outgoing = open_console(network.us, "us.sup")
    outgoing.goto("/handover")
    page = outgoing.page
    open_now = page.get_by_test_id("handover-open")
    expect(open_now).to_be_visible()
    expect(open_now.locator(f'[data-testid="open-item"][data-id="{message_id}"]')).to_be_visible()
    note = unique("Quiet watch; one IMMEDIATE from RU-GS awaits acknowledgement")
    page.locator('textarea[name="note"]').fill(note)
    page.get_by_test_id("sign-off-button").click()
    pending = page.locator('[data-testid="pending-handover"]', has_text=note)
    expect(pending).to_be_visible()
    expect(pending.get_by_test_id("accept-button")).to_have_count(0)

    incoming = open_console(network.us, "us.duty")
    incoming.goto("/handover")
    screenshot(incoming.page, "handover")
    incoming.page.locator('[data-testid="pending-handover"]', has_text=note).get_by_test_id(
        "accept-button"
    ).click()
    row = incoming.page.locator('[data-testid="handover-row"]', has_text=note)
    expect(row).to_have_attribute("data-accepted", "true")
    expect(row).to_contain_text("us.duty")


def test_channels_page(network: Network, open_console: OpenConsole, screenshot: Screenshot) -> None:
    us = open_console(network.us, "us.sup")
    us.goto("/channels")
    page = us.page
    expect(page.locator('[data-testid="channel-row"]').first).to_be_visible()
    bilateral = page.locator('[data-testid="channel-row"]', has_text="RU-GS")
    expect(bilateral.first).to_have_attribute("data-state", "active")
    screenshot(page, "channels")
