"""The operator console: server-rendered pages on the console listener.

Jinja2 templates, htmx 2 (vendored in ``static/``, nothing fetched from
elsewhere) for live updates, and a strict Content-Security-Policy: scripts
and styles come only from this terminal's own ``/static/``, never inline.

* **Sessions**: a random token in a ``Secure``, ``HttpOnly``,
  ``SameSite=Strict`` cookie (``__Host-`` over TLS); the session lives in the
  serve process (``sessions.py``).
* **CSRF**: every state-changing request carries the session's token, as
  the form field ``csrf_token`` or the ``X-CSRF-Token`` header (htmx sends
  it from ``<body hx-headers>``), and an ``Origin``, when the browser sends
  one, must be this console's.
* **Roles**: what each may do is the terminal's one policy
  (``parley.service.policy``); every change goes through the operations
  layer (``Page.ops``), which checks it and records it with the operator's
  name in the same transaction (``operator_actions``).
* **Languages**: each operator picks English, Russian or Ukrainian; the
  choice is kept with the account.

The page modules (``pages_*.py``) add their routes to ``router`` and use
``render`` and ``Page`` from here.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from parley.console import i18n, texts
from parley.console.i18n import N_
from parley.console.sessions import Session, SessionStore, cookie_name
from parley.errors import LocalError, NotPermitted, ParleyError, error_body
from parley.service.operations import Operations
from parley.service.policy import Actor, Decision
from parley.service.terminal import Terminal
from parley.service.users import AuthenticationFailed, authenticate, stored_language

__all__ = [
    "N_",
    "PERMISSIONS",
    "Page",
    "error_page",
    "error_status",
    "http_error_page",
    "install_console",
    "iso_utc",
    "not_found_page",
    "record_action",
    "refusal_page",
    "render",
    "router",
    "when",
]

log = structlog.get_logger("parley.console")

#: A console permission -> the policy's action it stands for (the rule itself is the policy's).
PERMISSIONS: Mapping[str, str] = {
    "compose": "send",
    "acknowledge": "acknowledge",
    "release_flash": "release_flash",
    "channels": "create_channel",
    "verify": "verify",
    "export": "export_evidence",
    "links": "test_links",
    "handover": "handover",
    "users": "manage_operators",
    "clear_alarms": "clear_alarm",
}


ROLE_NAMES: Mapping[str, str] = {
    "duty_officer": N_("Duty officer"),
    "supervisor": N_("Supervisor"),
    "auditor": N_("Auditor"),
    "admin": N_("Administrator"),
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)

_HERE = Path(str(resources.files(__package__)))
templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True),
    extensions=["jinja2.ext.i18n"],
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.install_gettext_callables(  # type: ignore[attr-defined]
    i18n.gettext, i18n.ngettext, newstyle=True
)

templates.globals.update(
    alarm_words=texts.alarm_words,
    rejection_words=texts.rejection_words,
    action_words=texts.action_words,
)

router = APIRouter()


class NotLoggedIn(Exception):
    """A page asked for by a visitor who is not logged in: go to /login."""


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def terminal_of(request: Request) -> Terminal:
    terminal: Terminal = request.app.state.terminal
    return terminal


def session_cookie(request: Request) -> str:
    """The session cookie's name here: ``__Host-parley_session`` over TLS."""
    return cookie_name(bool(getattr(request.app.state, "tls", False)))


def _sessions(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


class Page:
    """The request's operator session; ``Depends(Page.current)`` on every page."""

    def __init__(self, request: Request, session: Session) -> None:
        self.request = request
        self.session = session
        self.terminal = terminal_of(request)

    @property
    def operator(self) -> str:
        return self.session.operator

    @property
    def role(self) -> str:
        return self.session.role

    @property
    def lang(self) -> str:
        return self.session.lang

    @property
    def ops(self) -> Operations:
        """This operator's actions, checked by the policy and logged (via ``console``)."""
        return Operations(self.terminal, Actor(self.operator, self.role, "console"))

    def may(self, permission: str) -> bool:
        return self.ops.may(PERMISSIONS.get(permission, permission))

    def require(self, permission: str) -> None:
        if not self.may(permission):
            raise Forbidden(permission)

    @classmethod
    async def current(cls, request: Request) -> Page:
        terminal = terminal_of(request)
        session = _sessions(request).get(
            request.cookies.get(session_cookie(request)), terminal.clock()
        )
        if session is None:
            raise NotLoggedIn()
        if request.method not in ("GET", "HEAD"):
            await _check_csrf(request, session)
        return cls(request, session)


CurrentPage = Annotated[Page, Depends(Page.current)]


async def _check_csrf(request: Request, session: Session) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise HTTPException(403, "cross-origin request refused")
    supplied = request.headers.get("x-csrf-token")
    if supplied is None:
        form = await request.form()
        value = form.get("csrf_token")
        supplied = value if isinstance(value, str) else None
    if supplied is None or not hmac.compare_digest(supplied, session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page")


def error_status(exc: ParleyError) -> int:
    """The HTTP status of an error: 403 for a role's refusal, 400 for our own
    mistake, 422 for the other party's bad input or a record that fails."""
    if isinstance(exc, NotPermitted):
        return 403
    return 400 if isinstance(exc, LocalError) else 422


def api_error(exc: ParleyError) -> JSONResponse:
    """A ParleyError as the operator API answers it: its ``error_body`` (what the CLI
    prints, the same as when it finds the error itself) with ``error_status``."""
    return JSONResponse(error_body(exc), status_code=error_status(exc))


def when(value: str | datetime | None) -> str:
    """A stored time as operators read it, the same in every language:
    ``2026-02-05 14:03:07 UTC``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        moment = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_utc(value: datetime | None) -> str | None:
    """A stored time (naive ones are UTC) as RFC 3339 with ``Z``, for ``data-deadline``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render(page: Page | None, request: Request, template: str, **context: Any) -> HTMLResponse:
    """A template in the operator's language (``page`` None: the login page)."""
    lang = page.lang if page is not None else request.cookies.get("parley_lang", "en")
    restore = i18n.use(lang)
    try:
        html = templates.get_template(template).render(
            request=request,
            page=page,
            lang=i18n.current_lang.get(),
            langs=i18n.LANG_NAMES,
            party=terminal_of(request).me,
            frozen=terminal_of(request).frozen if page is not None else None,
            csrf=page.session.csrf if page is not None else "",
            role_name=i18n.gettext(ROLE_NAMES[page.role]) if page is not None else "",
            role_names=ROLE_NAMES,
            **context,
        )
    finally:
        restore()
    return HTMLResponse(html)


def error_page(
    page: Page | None,
    request: Request,
    *,
    status: int,
    text: str,
    code: str,
    detail: str = "",
    heading: str = N_("Refused"),
) -> HTMLResponse:
    """A refusal in the operator's language (``text``, already worded), with what the
    terminal recorded in English (``code``, ``detail``) as a technical detail."""
    response = render(
        page, request, "error.html", text=text, code=code, detail=detail, heading=heading
    )
    response.status_code = status
    return response


def _lang_of(page: Page | None, request: Request) -> str:
    return page.lang if page is not None else request.cookies.get("parley_lang", "en")


def refusal_page(page: Page | None, request: Request, exc: ParleyError, status: int) -> Response:
    """A ``ParleyError`` as an error page, worded in the operator's language."""
    text = texts.error_words(exc, _lang_of(page, request))
    return error_page(page, request, status=status, text=text, code=exc.code, detail=str(exc))


def not_found_page(page: Page, code: str, detail: str) -> HTMLResponse:
    """A page's own 404 (no such message, exchange, alarm): ``code`` names what is missing."""
    return error_page(
        page,
        page.request,
        status=404,
        text=texts.error_words(None, page.lang, code),
        code=code,
        detail=detail,
        heading=N_("Not found"),
    )


def _session_page(request: Request) -> Page | None:
    terminal = terminal_of(request)
    session = _sessions(request).get(request.cookies.get(session_cookie(request)), terminal.clock())
    return Page(request, session) if session is not None else None


def http_error_page(
    request: Request, status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    """A request the console refused (no such page, a wrong CSRF token, a bad value) as a
    page in the operator's language; the English detail is kept as a technical detail."""
    page = _session_page(request)
    response = error_page(
        page,
        request,
        status=status,
        text=texts.status_words(status, _lang_of(page, request)),
        code=f"http_{status}",
        detail=detail if isinstance(detail, str) else "",
        heading=N_("Not found") if status == 404 else N_("Refused"),
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def record_action(
    terminal: Terminal, operator: str, role: str, action: str, subject: str, detail: Any = None
) -> None:
    """Log a console event that changes nothing else (a login, a logout)."""
    Operations(terminal, Actor(operator, role, "console")).note(action, subject, detail)


# Login, logout, language -----------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return render(None, request, "login.html", error=None, name="")


@router.post("/login", response_model=None)
async def login(
    request: Request,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    terminal = terminal_of(request)
    now = terminal.clock()
    try:
        account = await run_in_threadpool(
            lambda: authenticate(terminal.engine, name, password, now=now)
        )
    except AuthenticationFailed as exc:
        log.warning("console_login_failed", name=name, reason=str(exc))
        locked = exc.locked
        refused = render(
            None, request, "login.html", error="locked" if locked else "wrong", name=name
        )
        refused.status_code = 401
        return refused
    lang = await run_in_threadpool(_stored_lang, terminal, account.name)
    token, _ = _sessions(request).create(account.name, account.role, lang, now)
    await run_in_threadpool(
        record_action,
        terminal,
        account.name,
        account.role,
        "login",
        account.name,
        {"role": account.role},
    )
    response = RedirectResponse("/inbox", status_code=303)
    response.set_cookie(
        session_cookie(request),
        token,
        httponly=True,
        secure=True,
        samesite="strict",
        path="/",
        max_age=13 * 3600,
    )
    response.set_cookie("parley_lang", lang, secure=True, samesite="strict", path="/")
    return response


def _stored_lang(terminal: Terminal, name: str) -> str:
    lang = stored_language(terminal.engine, name)
    return lang if lang in i18n.LANGS else "en"


@router.post("/logout")
async def logout(page: CurrentPage) -> RedirectResponse:
    cookie = session_cookie(page.request)
    _sessions(page.request).end(page.request.cookies.get(cookie))
    await run_in_threadpool(
        record_action, page.terminal, page.operator, page.role, "logout", page.operator
    )
    response = RedirectResponse("/login", status_code=303)
    # With the attributes it was set with: a __Host- cookie is deleted only by a Secure one.
    response.delete_cookie(cookie, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/language")
async def language(
    page: CurrentPage, lang: Annotated[str, Form()], back: Annotated[str, Form()] = "/inbox"
) -> RedirectResponse:
    if lang not in i18n.LANGS:
        raise HTTPException(400, "unknown language")
    page.session.lang = lang
    await run_in_threadpool(page.ops.set_language, lang)
    target = back if back.startswith("/") and not back.startswith("//") else "/inbox"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie("parley_lang", lang, secure=True, samesite="strict", path="/")
    return response


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/inbox", status_code=303)


# Installation ----------------------------------------------------------------------


def _security_headers(response: Response, path: str) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # Not "no-referrer": that makes browsers send "Origin: null" on the console's
    # own form posts, which the cross-site check (console_guard) must then accept.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"


def install_console(app: FastAPI, terminal: Terminal) -> None:
    """Serve the console's pages and static files beside the operator API."""
    from parley.console import pages_admin, pages_messages, pages_users

    app.state.sessions = SessionStore()
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    app.include_router(router)
    app.include_router(pages_messages.router)
    app.include_router(pages_admin.router)
    app.include_router(pages_users.router)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if not request.url.path.startswith("/api/"):
            _security_headers(response, request.url.path)
        return response

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        page = _session_page(request)
        action = PERMISSIONS.get(exc.message, exc.message)
        response = render(page, request, "forbidden.html", action=action)
        response.status_code = 403
        return response

    @app.exception_handler(ParleyError)
    async def parley_error(request: Request, exc: ParleyError) -> Response:
        if request.url.path.startswith("/api/"):
            return api_error(exc)
        page = _session_page(request)
        if isinstance(exc, NotPermitted):
            decision = exc.decision
            action = decision.action if isinstance(decision, Decision) else exc.code
            refused = render(page, request, "forbidden.html", action=action)
            refused.status_code = 403
            return refused
        return refusal_page(page, request, exc, 400)

    @app.exception_handler(StarletteHTTPException)
    async def no_such_page(request: Request, exc: StarletteHTTPException) -> Response:
        # Routes and static files a path names nothing of (404, 405); the console's
        # own refusals (HTTPException) are worded by the operator API's handler.
        if request.url.path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        return http_error_page(request, exc.status_code, exc.detail, exc.headers)
