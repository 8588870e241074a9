"""The console in Chromium over HTTPS: TLS 1.3, HSTS, a ``__Host-`` session cookie, and
only the pinned console keys trusted."""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.sync_api import Error

from parley.service.console_guard import HSTS
from parley.service.terminal import utc_now
from tests.browser.conftest import Network, OpenConsole

pytestmark = pytest.mark.timeout(300)


def test_the_console_is_served_over_https_with_hsts(
    network: Network, open_console: OpenConsole
) -> None:
    console = open_console(network.ru, "ru.sup", login=False)
    assert console.base.startswith("https://127.0.0.1:")
    response = console.page.goto(console.base + "/login")
    assert response is not None
    assert response.ok
    assert response.url == console.base + "/login"
    assert response.headers["strict-transport-security"] == HSTS
    details = response.security_details()
    assert details is not None
    assert details.get("protocol") == "TLS 1.3"
    assert details.get("subjectName") == "RU-GS console"
    assert console.page.evaluate("location.protocol") == "https:"
    assert console.page.evaluate("window.isSecureContext") is True

    console.login()
    cookies = {c["name"]: c for c in console.context.cookies()}
    assert "parley_session" not in cookies
    session = cookies["__Host-parley_session"]
    assert session["secure"]
    assert session["httpOnly"]
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/"
    inbox = console.page.goto(console.base + "/inbox")
    assert inbox is not None
    assert inbox.headers["strict-transport-security"] == HSTS


@pytest.fixture
def unpinned_https(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on loopback whose self-signed certificate nobody pinned."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a console")])
    now = utc_now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "other.pem", tmp_path / "other.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


def test_only_the_pinned_console_keys_are_trusted(
    network: Network, open_console: OpenConsole, unpinned_https: str
) -> None:
    console = open_console(network.us, "us.sup", login=False)
    elsewhere = console.context.new_page()
    with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
        elsewhere.goto(unpinned_https)
    with pytest.raises(Error, match="self-signed certificate"):
        console.page.request.get(unpinned_https)  # nor by Playwright's own client
    console.goto("/login")  # while both consoles' own keys are
    assert console.page.evaluate("location.protocol") == "https:"
    assert console.page.request.get(console.base + "/login").ok
