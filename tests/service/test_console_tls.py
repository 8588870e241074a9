"""The console listener over TLS: its options, its certificates, and what it answers.

The rules (``parley.config.check_console_listen``): plain HTTP on loopback only,
TLS anywhere else, names for a wildcard address. The certificates
(``parley.service.console_tls``): the terminal's own, made, kept and renewed in
its data directory, or the operator's. The listener itself is ``parley serve``
run in a thread of this process and reached over real TLS on loopback: TLS 1.3
only, HSTS on every answer, a ``__Host-`` session cookie, the same Host and
Origin checks, the console token for the API and /metrics. The last test runs
``parley serve`` and the CLI as processes, as an officer would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parley.config import Config, DataDir, check_console_listen, console_hosts
from parley.errors import UsageError
from parley.server import serve
from parley.service import console_tls, users
from parley.service.console_guard import HSTS
from parley.service.doctor import console_certificate_checks
from parley.service.setup import init_terminal
from parley.service.terminal import Terminal, utc_now
from parley.service.users import add_user
from parley.testing.network import (
    PASSPHRASE,
    TEST_SCRYPT_N,
    TerminalProcess,
    make_network,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

PASSWORD = "console-tls-test"
CONFIG = """
party = "RU-GS"
name = "General Staff"
database = "sqlite:///x.db"
"""


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


# Options --------------------------------------------------------------------------------


def test_the_console_options_are_read_and_written() -> None:
    config = Config.from_toml(
        CONFIG
        + """
[console]
listen = "0.0.0.0:7080"
tls = true
names = ["Parley-RU.example.", "10.20.0.5", "[fd00::5]"]
tls_cert = "/etc/parley/console.pem"
tls_key = "/etc/parley/console.key"
""",
        "parley.toml",
    )
    assert config.console_tls
    assert config.console_names == ["parley-ru.example", "10.20.0.5", "fd00::5"]
    assert (config.console_tls_cert, config.console_tls_key) == (
        "/etc/parley/console.pem",
        "/etc/parley/console.key",
    )
    again = Config.from_toml(config.to_toml(), "again")
    assert (again.console_tls, again.console_names, again.console_tls_cert) == (
        True,
        config.console_names,
        config.console_tls_cert,
    )
    plain = Config.from_toml(CONFIG, "parley.toml")
    assert (plain.console_tls, plain.console_names, plain.console_tls_cert) == (False, [], "")


@pytest.mark.parametrize(
    ("console", "message"),
    [
        ('tls = "yes"', "console.tls in parley.toml must be true or false"),
        ('tls = true\nnames = ["parley.example:443"]', "neither a host name"),
        ('tls = true\nnames = ["bad name"]', "neither a host name"),
        ('tls = true\nnames = ["0.0.0.0"]', "names no host"),
        ('tls = true\ntls_cert = "c.pem"', "go together"),
        ('tls_cert = "c.pem"\ntls_key = "k.pem"', "console.tls is off"),
    ],
)
def test_bad_console_options_are_refused(console: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Config.from_toml(CONFIG + "[console]\n" + console + "\n", "parley.toml")


def test_tls_lets_the_console_listen_off_loopback() -> None:
    assert check_console_listen("10.20.0.5:7443", tls=True) == ("10.20.0.5", 7443)
    with pytest.raises(UsageError, match="list in --console-name the names") as refused:
        check_console_listen(
            "0.0.0.0:7443", tls=True, what="--console-listen", names_option="--console-name"
        )
    assert "wildcard" in str(refused.value)
    assert check_console_listen("[::]:7443", tls=True, names=["parley-ru.example"]) == (
        "::",
        7443,
    )


def test_a_wildcard_console_answers_its_names_and_this_host_only() -> None:
    assert console_hosts("0.0.0.0", 7443, ["parley-ru.example", "fd00::5"]) == {
        "parley-ru.example:7443",
        "[fd00::5]:7443",
        "127.0.0.1:7443",
        "localhost:7443",
        "[::1]:7443",
    }
    assert console_hosts("10.20.0.5", 7443, ["parley-ru.example"]) == {
        "10.20.0.5:7443",
        "parley-ru.example:7443",
    }


# The terminal's own certificate ------------------------------------------------------------


def _init(path: Path, **console: Any) -> DataDir:
    init_terminal(
        path,
        party="RU-GS",
        name="General Staff",
        passphrase=PASSPHRASE,
        scrypt_n=TEST_SCRYPT_N,
        **console,
    )
    return DataDir(path)


def test_init_with_console_tls_makes_the_certificate(tmp_path: Path) -> None:
    data = _init(
        tmp_path / "ru",
        console_listen="0.0.0.0:7443",
        console_tls=True,
        console_names=["parley-ru.example", "10.20.0.5"],
    )
    assert stat.S_IMODE(data.console_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.console_cert_file.stat().st_mode) == 0o644
    config = data.load_config()
    assert config.console_tls
    shown = console_tls.console_certificate(data, config)
    assert shown is not None
    assert shown.own
    certificate = shown.certificate
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert certificate.issuer == certificate.subject  # self-signed
    certificate.verify_directly_issued_by(certificate)
    assert shown.subject == "O=General Staff,CN=RU-GS console"
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert shown.names == ["parley-ru.example", "localhost", "10.20.0.5", "127.0.0.1", "::1"]
    assert shown.not_after - shown.not_before == console_tls.VALIDITY + timedelta(hours=1)
    assert shown.fingerprint == hashlib.sha256(shown.der).digest().hex(":").upper()


def test_init_without_tls_makes_no_certificate(tmp_path: Path) -> None:
    data = _init(tmp_path / "ru")
    assert not data.console_cert_file.exists()
    assert not data.console_key_file.exists()


def test_the_own_certificate_is_kept_then_renewed(tmp_path: Path) -> None:
    data = _init(tmp_path / "ru", console_tls=True)
    config = data.load_config()
    first = console_tls.console_certificate(data, config)
    assert first is not None
    now = utc_now()
    kept, why = console_tls.ensure_certificate(data, config, now)
    assert (kept.fingerprint, why) == (first.fingerprint, None)

    due = first.not_after - console_tls.RENEW_BEFORE + timedelta(minutes=1)
    renewed, why = console_tls.ensure_certificate(data, config, due)
    assert why == f"it ends on {first.not_after:%Y-%m-%d}"
    assert renewed.fingerprint != first.fingerprint
    assert renewed.spki_sha256 != first.spki_sha256  # a new key, not only a new date
    assert console_tls.status(data, config, due)["state"] == "valid"
    assert console_tls.status(data, config, renewed.not_after)["state"] == "expired"

    config.console_names = ["parley-ru.example"]
    named, why = console_tls.ensure_certificate(data, config, now)
    assert why == "it does not name parley-ru.example"
    assert "parley-ru.example" in named.names

    data.console_key_file.chmod(0o604)
    with pytest.raises(UsageError, match="may be read or written by any user"):
        console_tls.ensure_certificate(data, config, now)


def _operator_pair(folder: Path, names: list[str]) -> tuple[Path, Path, x509.Certificate]:
    """A certificate "from the ministry's CA": a CA and a leaf it signs, chain in the file."""
    now = utc_now()
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ministry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "console.pem", folder / "console.key"
    cert_file.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_file, key_file, leaf


def test_init_checks_the_operators_certificate_before_making_anything(tmp_path: Path) -> None:
    cert_file, key_file, leaf = _operator_pair(tmp_path / "pki", ["parley-ru.example"])
    _, other_key, _ = _operator_pair(tmp_path / "other", ["parley-ru.example"])
    with pytest.raises(UsageError, match="cannot serve the console with"):
        _init(
            tmp_path / "mismatched",
            console_tls=True,
            console_tls_cert=str(cert_file),
            console_tls_key=str(other_key),
        )
    assert not (tmp_path / "mismatched" / "identity.key").exists()
    key_file.chmod(0o644)
    with pytest.raises(UsageError, match=r"console\.tls_key .* may be read or written by any"):
        _init(
            tmp_path / "open",
            console_tls=True,
            console_tls_cert=str(cert_file),
            console_tls_key=str(key_file),
        )
    key_file.chmod(0o640)
    data = _init(
        tmp_path / "ru",
        console_tls=True,
        console_tls_cert=str(cert_file),
        console_tls_key=str(key_file),
    )
    assert not data.console_cert_file.exists()  # the operator's is used, none is made
    shown = console_tls.status(data, data.load_config(), utc_now())
    assert shown["own"] is False
    assert shown["file"] == str(cert_file)
    assert (
        shown["fingerprint"]
        == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest().hex(":").upper()
    )


# Served over TLS ---------------------------------------------------------------------------


@dataclass
class Served:
    terminal: Terminal
    info: dict[str, Any]
    token: str

    @property
    def url(self) -> str:
        return str(self.info["console_url"])

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kwargs: Any) -> httpx.Client:
        verify = console_tls.client_context(self.info["console_certificate_pem"].encode())
        return httpx.Client(base_url=self.url, verify=verify, timeout=30, **kwargs)

    def served_certificate(self) -> bytes:
        return served_certificate(self.port)


def served_certificate(port: int) -> bytes:
    """The DER of the certificate a listener presents, taken without checking it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


@contextmanager
def serving(terminal: Terminal) -> Iterator[Served]:
    """``parley serve`` (the coroutine) in a thread of its own, until the block ends."""
    loop: list[asyncio.AbstractEventLoop] = []
    stop: list[asyncio.Event] = []
    failed: list[BaseException] = []

    async def main() -> None:
        loop.append(asyncio.get_running_loop())
        stop.append(asyncio.Event())
        await serve(terminal, stop=stop[0])

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failed.append(exc)

    serve_json = terminal.data.path / "serve.json"
    serve_json.unlink(missing_ok=True)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def started() -> dict[str, Any] | None:
        if failed:
            raise failed[0]
        try:
            info: dict[str, Any] = json.loads(serve_json.read_text())
        except (OSError, ValueError):
            return None
        return info

    info = wait_until(started, timeout=60, what="the terminal to start")
    try:
        yield Served(terminal, info, terminal.data.read_token())
    finally:
        loop[0].call_soon_threadsafe(stop[0].set)
        thread.join(60)
        assert not thread.is_alive(), "serve did not stop"
        assert not failed, failed


@pytest.fixture
def tls_terminal(tmp_path: Path) -> Iterator[Terminal]:
    made = make_network(tmp_path, [("RU-GS", "General Staff")], console_tls=True)
    terminal = Terminal.open(made["RU-GS"].data, PASSPHRASE)
    add_user(terminal.engine, "duty", "duty_officer", PASSWORD, now=terminal.clock())
    yield terminal
    terminal.engine.dispose()


def test_the_console_serves_its_own_certificate_over_tls_1_3_only(
    tls_terminal: Terminal,
) -> None:
    with serving(tls_terminal) as served:
        assert served.url.startswith("https://127.0.0.1:")
        own = console_tls.console_certificate(tls_terminal.data, tls_terminal.config)
        assert own is not None
        der = served.served_certificate()
        assert der == own.der
        assert served.info["console_fingerprint"] == own.fingerprint
        assert hashlib.sha256(der).digest().hex(":").upper() == own.fingerprint

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw,
            pytest.raises(ssl.SSLError),
        ):
            old.wrap_socket(raw)

        with served.client() as client:
            page = client.get("/login")
            assert page.status_code == 200
            assert page.http_version == "HTTP/1.1"
            stream = page.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object").version() == "TLSv1.3"


def test_plain_http_to_the_tls_port_gets_no_answer(tls_terminal: Terminal) -> None:
    with serving(tls_terminal) as served:
        plain = served.url.replace("https:", "http:")
        with pytest.raises(httpx.HTTPError):
            httpx.get(plain + "/login", timeout=30)
        with pytest.raises(httpx.HTTPError):
            httpx.get(
                plain + "/api/v1/status",
                headers={"authorization": f"Bearer {served.token}"},
                timeout=30,
            )


def test_every_answer_over_tls_carries_hsts(tls_terminal: Terminal) -> None:
    with serving(tls_terminal) as served, served.client() as client:
        answers = {
            "login": client.get("/login"),
            "redirect": client.get("/inbox", follow_redirects=False),
            "static": client.get("/static/htmx.min.js"),
            "api": client.get(
                "/api/v1/status", headers={"authorization": f"Bearer {served.token}"}
            ),
            "api refused": client.get("/api/v1/status"),
            "metrics": client.get("/metrics", headers={"authorization": f"Bearer {served.token}"}),
            "wrong host": client.get("/login", headers={"host": f"evil.example:{served.port}"}),
        }
        assert {what: a.status_code for what, a in answers.items()} == {
            "login": 200,
            "redirect": 303,
            "static": 200,
            "api": 200,
            "api refused": 401,
            "metrics": 200,
            "wrong host": 400,
        }
        for what, answer in answers.items():
            assert answer.headers.get("strict-transport-security") == HSTS, what
        assert HSTS == "max-age=31536000"
        assert answers["api"].json()["party"] == "RU-GS"
        assert "parley_" in answers["metrics"].text


def test_the_session_cookie_over_tls_is_a_host_cookie(tls_terminal: Terminal) -> None:
    with serving(tls_terminal) as served, served.client() as client:
        logged_in = client.post(
            "/login",
            data={"name": "duty", "password": PASSWORD},
            headers={"origin": served.url, "sec-fetch-site": "same-origin"},
            follow_redirects=False,
        )
        assert logged_in.status_code == 303
        cookie = next(
            c
            for c in logged_in.headers.get_list("set-cookie")
            if c.startswith("__Host-parley_session=")
        )
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "path", "samesite"} <= attributes
        assert "domain" not in attributes
        assert "path=/" in cookie.lower().replace(" ", "")
        assert "samesite=strict" in cookie.lower()
        assert "parley_session" not in {
            c.split("=")[0] for c in logged_in.headers.get_list("set-cookie")
        }
        assert client.get("/inbox", follow_redirects=False).status_code == 200

        # The same Origin and Sec-Fetch-Site checks as over plain HTTP.
        for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
            refused = client.post("/logout", headers=headers, follow_redirects=False)
            assert refused.status_code == 403
        assert client.get("/inbox", follow_redirects=False).status_code == 200

        # A cookie of the plain HTTP name is not a session here.
        token = client.cookies["__Host-parley_session"]
        with served.client(cookies={"parley_session": token}) as other:
            assert other.get("/inbox", follow_redirects=False).status_code == 303

        inbox = client.get("/inbox")
        csrf = inbox.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        logged_out = client.post(
            "/logout",
            data={"csrf_token": csrf},
            headers={"origin": served.url},
            follow_redirects=False,
        )
        assert logged_out.status_code == 303
        deleted = logged_out.headers["set-cookie"]
        assert deleted.startswith('__Host-parley_session=""') or deleted.startswith(
            "__Host-parley_session=;"
        )
        assert "secure" in deleted.lower()  # or a browser ignores the deletion


def test_the_console_serves_the_operators_certificate(
    tls_terminal: Terminal, tmp_path: Path
) -> None:
    cert_file, key_file, leaf = _operator_pair(tmp_path / "pki", ["parley-ru.example"])
    tls_terminal.config.console_tls_cert = str(cert_file)
    tls_terminal.config.console_tls_key = str(key_file)
    tls_terminal.config.console_names = ["parley-ru.example"]
    with serving(tls_terminal) as served:
        assert served.served_certificate() == leaf.public_bytes(serialization.Encoding.DER)
        with served.client() as client:  # the leaf alone is trusted, as the CLI does
            page = client.get("/login", headers={"host": f"parley-ru.example:{served.port}"})
            assert page.status_code == 200
            assert page.headers["strict-transport-security"] == HSTS


@pytest.mark.subprocess
def test_tls_and_the_cli_as_an_officer_uses_them(tmp_path: Path) -> None:
    """``parley serve`` and the CLI as processes: the fingerprint printed is the one served,
    the CLI reaches the running terminal over TLS, ``keys status`` shows the certificate."""
    made = make_network(tmp_path, [("RU-GS", "General Staff")], console_tls=True)
    terminal: TerminalProcess = made["RU-GS"]
    printed = terminal.cli("console", "cert")
    line = next(x for x in printed.stdout.splitlines() if x.startswith("SHA-256 fingerprint: "))
    fingerprint = line.removeprefix("SHA-256 fingerprint: ")
    assert f"Console certificate (the terminal's own): {terminal.data}" in printed.stdout
    assert "console-tls.pem" in printed.stdout
    terminal.start()
    try:
        der = served_certificate(terminal.console_port)
        assert hashlib.sha256(der).digest().hex(":").upper() == fingerprint
        status = json.loads(terminal.cli("status", "--json").stdout)
        assert status["party"] == "RU-GS"
        keys = json.loads(terminal.cli("keys", "status", "--json").stdout)
        assert keys["console_certificate"]["fingerprint"] == fingerprint
        assert keys["console_certificate"]["state"] == "valid"
        assert "console certificate (own) valid" in terminal.cli("keys", "status").stdout
        assert terminal.api("GET", "/status")["party"] == "RU-GS"

        # A new certificate while serving: the CLI still trusts the one being served.
        renewed = terminal.cli("console", "cert", "--renew", "--json")
        assert json.loads(renewed.stdout)["fingerprint"] != fingerprint
        assert json.loads(terminal.cli("status", "--json").stdout)["party"] == "RU-GS"
    finally:
        assert terminal.stop() == 0
    terminal.start()
    try:
        info = json.loads((terminal.data / "serve.json").read_text())
        assert info["console_fingerprint"] == json.loads(renewed.stdout)["fingerprint"]
    finally:
        terminal.stop()


def test_doctor_checks_the_console_certificate(tmp_path: Path) -> None:
    data = _init(tmp_path / "ru", console_tls=True)
    config = data.load_config()
    now = utc_now()

    def found(at: Any = now) -> list[tuple[str, str]]:
        checks = console_certificate_checks(data, config, os.geteuid(), at)
        return [(c.name, c.status) for c in checks]

    assert found() == [("console key", "ok"), ("console certificate", "ok")]
    own = console_tls.console_certificate(data, config)
    assert own is not None
    assert found(own.not_after - timedelta(days=10)) == [
        ("console key", "ok"),
        ("console certificate", "warn"),
    ]
    data.console_key_file.chmod(0o640)
    assert found()[0] == ("console key", "fail")

    cert_file, key_file, _ = _operator_pair(tmp_path / "pki", ["parley-ru.example"])
    config.console_tls_cert, config.console_tls_key = str(cert_file), str(key_file)
    assert found() == [("console certificate", "warn")]  # ends within 90 days
    key_file.chmod(0o644)
    assert found() == [("console key", "fail"), ("console certificate", "warn")]

    config.console_tls = False
    assert found() == []


def test_a_fingerprint_is_printed_as_it_is(tmp_path: Path) -> None:
    """Regression: rich printed the ":AB:" of a fingerprint as the emoji 🆎."""
    from io import StringIO

    from rich.console import Console

    from parley.cli import _print_console_certificate

    data = _init(tmp_path / "ru", console_tls=True)
    shown = console_tls.status(data, data.load_config(), utc_now())
    shown["fingerprint"] = ":".join(["AB", "CD", "[b]", "10"] * 8)
    captured = StringIO()
    _print_console_certificate(shown, to=Console(file=captured, width=400))
    assert f"SHA-256 fingerprint: {shown['fingerprint']}\n" in captured.getvalue()
