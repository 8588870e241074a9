"""What the console listener checks before any page or API route sees a request.

* **Host**: the request must name this listener (``127.0.0.1:PORT``,
  ``localhost:PORT`` or ``[::1]:PORT`` for a loopback listener); any other
  name is answered ``400``. A page of ``evil.example`` whose name an attacker
  re-points at 127.0.0.1 (DNS rebinding) therefore never reaches the console.
* **Cross-site requests**: a request that changes something (any method but
  ``GET``, ``HEAD`` and ``OPTIONS``) is refused with ``403`` when the browser
  says it comes from another site (``Sec-Fetch-Site: cross-site`` or
  ``same-site``) or from another origin (an ``Origin`` that is not this
  console's). ``POST /login`` also refuses the opaque origin ``null``: it has
  no session, so no CSRF token, to protect it. The refusal comes before the
  password is checked, so another site cannot lock an account out by posting
  wrong passwords from an operator's browser.

Clients that are not browsers (the CLI) send neither header and are judged by
their token or password alone.

On a TLS listener (``console.tls``) every answer, refusals included, carries
``Strict-Transport-Security``: a browser that has seen it once reaches the
console's name over HTTPS only, and never lets its operator click through a
certificate warning there.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HSTS", "ConsoleGuard"]

log = structlog.get_logger("parley.console")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

HSTS = "max-age=31536000"
"""One year; no ``includeSubDomains``: the console's name may share a domain with
hosts that are not Parley's."""


class ConsoleGuard:
    """ASGI middleware: the Host, Origin and ``Sec-Fetch-Site`` checks above, and HSTS
    on every answer of a TLS listener (``tls``)."""

    def __init__(self, app: ASGIApp, hosts: Collection[str], *, tls: bool = False) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tls:
            send = _with_hsts(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            log.warning("console_bad_host", host=host[:200])
            await _refuse(
                send, 400, "This console answers only as " + " or ".join(sorted(self.hosts)) + "."
            )
            return
        if scope["method"] not in SAFE_METHODS:
            refusal = cross_site(headers, host, login=scope["path"] == "/login")
            if refusal is not None:
                log.warning(
                    "console_cross_site_refused",
                    path=scope["path"][:200],
                    origin=headers.get("origin", "")[:200],
                    fetch_site=headers.get("sec-fetch-site", ""),
                )
                await _refuse(send, 403, refusal)
                return
        await self.app(scope, receive, send)


def cross_site(headers: dict[str, str], host: str, *, login: bool) -> str | None:
    """Why a state-changing request with these headers is refused, or None."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return "Refused: this request comes from another site."
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin == "null":
        return "Refused: this request comes from an unknown origin." if login else None
    if urlsplit(origin).netloc.lower() != host:
        return "Refused: this request comes from another origin."
    return None


def _with_hsts(send: Send) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v)
                for k, v in message.get("headers", [])
                if k.lower() != b"strict-transport-security"
            ]
            headers.append((b"strict-transport-security", HSTS.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return sender


async def _refuse(send: Send, status: int, message: str) -> None:
    body = message.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
