"""Fixtures for the browser tests of the operator console.

Two real terminals (US-EUCOM and RU-GS, SQLite, real mutual TLS on loopback)
run for the whole session, each with its operator accounts and its console
over HTTPS (``console.tls``, the certificate each terminal makes); Debian's
Chromium (``/usr/bin/chromium``, installed by ``scripts/install-system-deps``,
never downloaded) is driven through Playwright's sync API, one browser per
session and a new context per operator. The browser trusts exactly the two
consoles' keys (``--ignore-certificate-errors-spki-list``, their SPKI
hashes), as a workstation trusts a console's certificate after comparing its
fingerprint: any other certificate is still an error. Playwright's own HTTP
client (``page.request``, in its Node.js driver) trusts the two certificates
themselves (``NODE_EXTRA_CA_CERTS``), and nothing else is added.

Every page a test opens reports the browser's console errors, uncaught
exceptions and Content-Security-Policy violations; a test fails if any
appears (a test that expects an error status, such as the 401 of a refused
login, says so with ``BrowserErrors.allow_status``).

Screenshots go to ``$PARLEY_SCREENSHOTS`` when it is set (``make`` never sets
it; ``PARLEY_SCREENSHOTS=docs/screenshots`` refreshes the committed set) and
otherwise to the test's ``tmp_path``: nothing is written into the repository
by default.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)
from sqlalchemy import Engine, insert

from parley.config import DataDir
from parley.service.console_tls import ConsoleCertificate, console_certificate
from parley.service.terminal import utc_now
from parley.service.users import add_user
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import TerminalProcess, free_port, make_network, wait_until

US = ("US-EUCOM", "US European Command")
RU = ("RU-GS", "General Staff")

CHROMIUM = os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium")
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
PASSWORD = "browser-test-" + secrets.token_hex(8)

#: Operator accounts made on each terminal before it starts: name -> role.
#: Tests that change an account (lockout, language) have one of their own.
ACCOUNTS: dict[str, dict[str, str]] = {
    "US-EUCOM": {
        "us.sup": "supervisor",
        "us.duty": "duty_officer",
        "us.uk": "supervisor",
    },
    "RU-GS": {
        "ru.sup": "supervisor",
        "ru.audit": "auditor",
        "ru.lockout": "supervisor",
        "ru.blocked": "supervisor",
        "ru.lang": "supervisor",
    },
}

# Recorded in the page before anything of ours runs: a CSP violation is also
# reported as a console error by Chromium, but this names the directive.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline")
    + " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


@dataclass
class BrowserErrors:
    """Console errors, page errors and CSP violations seen by the test's pages."""

    seen: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)

    def allow_status(self, *statuses: int) -> None:
        """This test expects responses with these error statuses (e.g. 401, 403)."""
        self.allowed_statuses.update(statuses)

    def on_console(self, where: str, msg: ConsoleMessage) -> None:
        if msg.type not in ("error", "assert"):
            return
        text = msg.text
        url = str(msg.location.get("url", ""))
        status = re.search(r"status of (\d{3})", text)
        if (
            status
            and "Failed to load resource" in text
            and int(status.group(1)) in self.allowed_statuses
        ):
            return
        self.seen.append(f"console error on {where}: {text} ({url})")

    def on_page_error(self, where: str, error: Error) -> None:
        self.seen.append(f"uncaught exception on {where}: {error}")

    def problems(self) -> list[str]:
        return list(self.seen)


_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here drives Chromium against running terminals: ``browser`` and ``subprocess``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.subprocess)


@pytest.fixture
def browser_errors() -> BrowserErrors:
    return BrowserErrors()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test whose pages logged a console error or a CSP violation."""

    def problems() -> list[str]:
        errors = getattr(item, "funcargs", {}).get("browser_errors")
        return errors.problems() if isinstance(errors, BrowserErrors) else []

    try:
        result = yield
    except BaseException:
        if problems():  # failed anyway: show what the browser said beside the failure
            item.add_report_section("call", "browser", "\n".join(problems()))
        raise
    if problems():
        pytest.fail("the browser reported:\n" + "\n".join(problems()), pytrace=False)
    return result


# Terminals -------------------------------------------------------------------------


@dataclass
class Network:
    us: TerminalProcess
    ru: TerminalProcess


@pytest.fixture(scope="package")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """US-EUCOM and RU-GS, running, with the accounts of ``ACCOUNTS``.

    Shared by every browser test (starting two terminals takes seconds): each
    test finds its own messages by their ids or texts, and a test that changes
    an account (lockout, language) has an account of its own.
    """
    root = tmp_path_factory.mktemp("browser-network")
    dead = f"https://127.0.0.1:{free_port()}"  # nothing listens here

    def links(owner: str, peer: str, peer_terminal: TerminalProcess) -> list[tuple[str, str]]:
        # US-EUCOM also has a backup link to RU-GS that is down: the links page
        # then shows a failing link and the alarms page the failed link test.
        primary = [("primary", peer_terminal.peer_url)]
        return [*primary, ("backup", dead)] if owner == US[0] else primary

    terminals = make_network(root, [US, RU], links=links, console_tls=True)
    try:
        for party, terminal in terminals.items():
            engine = engine_for(DataDir(terminal.data).load_config().database)
            try:
                for name, role in ACCOUNTS[party].items():
                    add_user(engine, name, role, PASSWORD, now=utc_now())
                if party == US[0]:
                    _seed_round_trips(engine, RU[0], "primary")
            finally:
                engine.dispose()
        for terminal in terminals.values():
            terminal.start(wait=False)
        for terminal in terminals.values():
            terminal.wait_ready()
        yield Network(terminals["US-EUCOM"], terminals["RU-GS"])
    finally:
        for terminal in terminals.values():
            terminal.kill()


def _seed_round_trips(engine: Engine, peer: str, link: str) -> None:
    """A day of round-trip samples (every 20 minutes, two failed), as a long watch leaves.

    The terminals have only just met: without these the links page's 24-hour
    chart would be one point at its right edge.
    """
    now = utc_now()
    rows = [
        {
            "peer": peer,
            "link": link,
            "at": now - timedelta(minutes=20 * n),
            "ok": n not in (17, 40),
            "rtt_ms": None if n in (17, 40) else 60 + 25 * math.sin(n / 6) + 7 * (n % 5),
        }
        for n in range(1, 72)
    ]
    with engine.begin() as conn:
        conn.execute(insert(m.link_samples), rows)


def send(sender: TerminalProcess, to: str, *, operator: str = "api", **body: Any) -> dict[str, Any]:
    """Send through the JSON operator API (console token); returns the API's answer."""
    body["to"] = [to]
    result: dict[str, Any] = sender.api("POST", "/messages", body, operator=operator)
    return result


def wait_received(receiver: TerminalProcess, message_id: str, timeout: float = 30) -> None:
    wait_until(
        lambda: any(msg["id"] == message_id for msg in receiver.api("GET", "/inbox")),
        timeout=timeout,
        what=f"{message_id} at {receiver.party}",
    )


# Browser ---------------------------------------------------------------------------


@pytest.fixture(scope="package")
def playwright(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Playwright]:
    # Package scope: Playwright's sync API keeps an event loop running in this thread
    # while it is open, and the tests after this package call asyncio.run().
    bundle = tmp_path_factory.mktemp("console-certificates") / "consoles.pem"
    bundle.write_text("".join(console_certificate_of(t).pem for t in (network.us, network.ru)))
    # Read by the Node.js driver when it starts, for page.request.
    before = os.environ.get("NODE_EXTRA_CA_CERTS")
    os.environ["NODE_EXTRA_CA_CERTS"] = str(bundle)
    try:
        with sync_playwright() as pw:
            yield pw
    finally:
        if before is None:
            del os.environ["NODE_EXTRA_CA_CERTS"]
        else:
            os.environ["NODE_EXTRA_CA_CERTS"] = before


def console_certificate_of(terminal: TerminalProcess) -> ConsoleCertificate:
    data = DataDir(terminal.data)
    certificate = console_certificate(data, data.load_config())
    assert certificate is not None, f"{terminal.party} has no console certificate"
    return certificate


@pytest.fixture(scope="package")
def browser(playwright: Playwright, network: Network) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/install-system-deps (Debian's chromium)",
            pytrace=False,
        )
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    # The consoles' own keys, and no other certificate, pass without a warning.
    pins = [console_certificate_of(t).spki_sha256 for t in (network.us, network.ru)]
    args.append("--ignore-certificate-errors-spki-list=" + ",".join(pins))
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class Console:
    """One operator's browser context on one terminal's console."""

    terminal: TerminalProcess
    context: BrowserContext
    page: Page
    name: str

    @property
    def base(self) -> str:
        return self.terminal.console_url

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)

    def path(self) -> str:
        return re.sub(r"^https?://[^/]+", "", self.page.url).split("?")[0]

    def login(self, password: str = PASSWORD, *, expect_inbox: bool = True) -> None:
        self.goto("/login")
        self.page.locator("input[name=name]").fill(self.name)
        self.page.locator("input[name=password]").fill(password)
        self.page.locator('form[action="/login"] [type=submit]').click()
        if expect_inbox:
            expect(self.page).to_have_url(self.base + "/inbox")
            expect(self.page.get_by_test_id("operator")).to_contain_text(self.name)

    def logout(self) -> None:
        self.page.locator('form[action="/logout"] [type=submit]').click()
        expect(self.page).to_have_url(self.base + "/login")

    def mark(self) -> None:
        """Set a marker in the window: gone if the page is reloaded or left."""
        self.page.evaluate("window.__parleyMarker = 'still-here'")

    def marked(self) -> bool:
        return bool(self.page.evaluate("window.__parleyMarker === 'still-here'"))


OpenConsole = Callable[..., Console]


@pytest.fixture
def open_console(browser: Browser, browser_errors: BrowserErrors) -> Iterator[OpenConsole]:
    """``open_console(terminal, name, login=True)``: a fresh context for one operator."""
    contexts: list[BrowserContext] = []

    def factory(terminal: TerminalProcess, name: str, *, login: bool = True) -> Console:
        context = browser.new_context(viewport=VIEWPORT, locale="en-GB", timezone_id="UTC")
        context.set_default_timeout(15_000)
        context.add_init_script(_CSP_LISTENER)
        contexts.append(context)
        where = f"{terminal.party}/{name}"

        def watch(page: Page) -> None:  # every page of the context, popups included
            page.on("console", lambda msg: browser_errors.on_console(where, msg))
            page.on("pageerror", lambda error: browser_errors.on_page_error(where, error))

        context.on("page", watch)
        console = Console(terminal, context, context.new_page(), name)
        if login:
            console.login()
        return console

    try:
        yield factory
    finally:
        for context in contexts:
            with contextlib.suppress(Error):
                context.close()


Screenshot = Callable[..., Path]


@pytest.fixture
def screenshot(tmp_path: Path) -> Screenshot:
    """``screenshot(page, "inbox-flash", top=None)``: a PNG of the viewport (1280×800).

    ``top``, a locator, is scrolled to the top of the viewport first (for what
    lies below the fold, such as a message's evidence).
    """
    folder = Path(os.environ.get("PARLEY_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str, top: Locator | None = None) -> Path:
        if top is not None:
            top.evaluate("e => window.scrollTo(0, e.getBoundingClientRect().top + scrollY - 16)")
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="hide")
        return path

    return take


def make_exchange(network: Network, exchange_id: str) -> None:
    """A small prisoner exchange between US-EUCOM and RU-GS on their bilateral channel.

    Both lists, both agreements of the manifest and one status report, each sent
    as an ordinary form message through the JSON API (no mediator: two sides).
    """
    us, ru = network.us, network.ru

    def persons(prefix: str, names: list[str], script: str) -> list[dict[str, Any]]:
        return [
            {
                "ref": f"{prefix}-{n:04d}",
                "name": {"full_name": name, "script": script},
                "rank": "sergeant",
                "status": "prisoner_of_war",
            }
            for n, name in enumerate(names, 1)
        ]

    for sender, to, listed in (
        (us, "RU-GS", persons("US", ["John Smith", "Mark Brown"], "en")),
        (ru, "US-EUCOM", persons("RU", ["Иванов Сергей Петрович"], "ru")),
    ):
        send(
            sender,
            to,
            precedence="PRIORITY",
            form="PRISONER_EXCHANGE_LIST",
            data={"exchange_id": exchange_id, "revision": 1, "persons": listed},
        )

    def both_lists(terminal: TerminalProcess) -> dict[str, Any] | None:
        known = {x["exchange_id"] for x in terminal.api("GET", "/exchanges")}
        if exchange_id not in known:
            return None
        view: dict[str, Any] = terminal.api("GET", f"/exchanges/{exchange_id}")
        return view if len(view["lists"]) == 2 else None

    views: dict[str, dict[str, Any]] = {}
    for terminal in (us, ru):
        views[terminal.party] = wait_until(
            functools.partial(both_lists, terminal),
            timeout=30,
            what=f"both lists at {terminal.party}",
        )
    for sender, to in ((us, "RU-GS"), (ru, "US-EUCOM")):
        send(
            sender,
            to,
            precedence="PRIORITY",
            form="EXCHANGE_AGREEMENT",
            data=views[sender.party]["agreement"],
        )
    wait_until(
        lambda: all(t.api("GET", f"/exchanges/{exchange_id}")["agreed"] for t in (us, ru)),
        timeout=30,
        what="the manifest agreed by both sides",
    )
    send(
        us,
        "RU-GS",
        precedence="IMMEDIATE",
        form="EXCHANGE_STATUS",
        data={
            "exchange_id": exchange_id,
            "manifest": views["US-EUCOM"]["manifest"],
            "updates": [{"party": "US-EUCOM", "ref": "US-0001", "status": "handed_over"}],
        },
    )
