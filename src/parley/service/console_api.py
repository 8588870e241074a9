"""The console listener's JSON operator API (``/api/v1``), used by the CLI.

Bound to a loopback address only (``parley.config.require_loopback_console``);
``parley.service.console_guard`` refuses other ``Host`` names and cross-site
changes before any route runs. Every request must carry the bearer token
kept in ``DIR/console.token`` (mode 0600): whoever can read the data
directory is an operator of this terminal. The operator's name travels in
the ``X-Parley-Operator`` header and is recorded with each message sent.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Collection
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from parley.config import console_hosts, require_loopback_console
from parley.core.canonical import JSONValue
from parley.errors import LocalError, ParleyError, UsageError
from parley.service.audit import audit
from parley.service.console_guard import ConsoleGuard
from parley.service.terminal import CardBundle, Draft, Terminal
from parley.service.users import AuthenticationFailed, authenticate

__all__ = ["create_console_app"]


#: The most messages one batch request may carry (one transaction on disk).
MAX_BATCH = 5000


class SendRequest(BaseModel):
    to: list[str] = Field(min_length=1)
    channel: str | None = None
    precedence: Literal["FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE"] = "ROUTINE"
    exercise: bool = False
    text: str | None = None
    form: str | None = None
    data: dict[str, Any] | None = None
    form_version: int | None = None
    lang: str = "en"


class TranslationRequest(BaseModel):
    lang: str = Field(min_length=2, max_length=35)
    text: str = Field(min_length=1, max_length=256 * 1024)


class BatchRequest(BaseModel):
    messages: list[SendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class PeerRequest(BaseModel):
    card: dict[str, Any]
    fingerprint: str
    links: list[tuple[str, str]] = Field(default_factory=list)


class ChannelRequest(BaseModel):
    name: str
    members: list[str] = Field(min_length=1)


def build_body(
    text: str | None,
    form: str | None,
    data: dict[str, Any] | None,
    version: int | None = None,
) -> tuple[str, dict[str, JSONValue]]:
    """The envelope kind and content body for free text or a form.

    A form is validated here, against the definition the receiver will use
    (the latest version unless one is named).
    """
    from parley.core.forms import FormRejected, InvalidFormData
    from parley.errors import UsageError
    from parley.forms import default_registry

    if (text is None) == (form is None):
        raise UsageError("give either a text or a form (with its data), not both")
    if text is not None:
        if not text.strip():
            raise UsageError("the message text is empty")
        return "text", {"text": text}
    if data is None:
        raise UsageError(f"form {form} needs its data")
    try:
        return "form", {"form": default_registry().body(str(form), data, version)}
    except FormRejected as exc:
        raise InvalidFormData(exc.code, f"the form is not valid: {exc.reason}") from None


def _operator(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_parley_operator: Annotated[str | None, Header()] = None,
) -> str:
    """Authenticate the caller; return the operator's name.

    Either the console token (``Bearer``; the CLI, acting for whoever can read
    the data directory, named by ``X-Parley-Operator``) or an operator
    account (``Basic``; Argon2id, locked after repeated failures).
    """
    terminal: Terminal = request.app.state.terminal
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            name, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            account = authenticate(terminal.engine, name, password, now=terminal.clock())
        except (ValueError, UnicodeDecodeError, AuthenticationFailed) as exc:
            structlog.get_logger("parley.console").warning("login_failed", reason=str(exc))
            raise HTTPException(
                401, {"error": "unauthorized", "message": "wrong name or password, or locked"}
            ) from None
        request.state.role = account.role
        return account.name
    token: str = request.app.state.token
    supplied = credentials.strip() if scheme.lower() == "bearer" else ""
    if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
        raise HTTPException(401, {"error": "unauthorized", "message": "bad or missing token"})
    request.state.role = "admin"
    return (x_parley_operator or "operator")[:100]


def _may_send(request: Request) -> None:
    if getattr(request.state, "role", None) == "auditor":
        raise HTTPException(
            403, {"error": "forbidden", "message": "an auditor reads and verifies; it cannot send"}
        )


Operator = Annotated[str, Depends(_operator)]


def create_console_app(
    terminal: Terminal, token: str, *, hosts: Collection[str] | None = None
) -> FastAPI:
    """The operator API and the console, answering only as one of ``hosts``.

    ``hosts`` are the ``Host`` headers accepted (``127.0.0.1:7080``…); by
    default those of the configured ``console.listen`` address, which must be
    a loopback address.
    """
    if hosts is None:
        hosts = console_hosts(*require_loopback_console(terminal.config.console_listen))
    app = FastAPI(
        title=f"Parley operator API ({terminal.me})",
        version="v1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )

    app.state.token = token
    app.state.terminal = terminal
    app.add_middleware(ConsoleGuard, hosts=hosts)

    @app.exception_handler(ParleyError)
    async def parley_error(request: Request, exc: ParleyError) -> JSONResponse:
        status = 400 if isinstance(exc, LocalError) else 422
        return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=status)

    @app.get("/api/v1/status")
    async def status(op: Operator) -> dict[str, Any]:
        return await run_in_threadpool(terminal.status)

    @app.post("/api/v1/messages")
    async def send(op: Operator, req: SendRequest, request: Request) -> dict[str, Any]:
        _may_send(request)
        kind, body = build_body(req.text, req.form, req.data, req.form_version)
        return await run_in_threadpool(
            lambda: terminal.send(
                req.to,
                kind=kind,
                body=body,
                operator=op,
                channel=req.channel,
                precedence=req.precedence,
                exercise=req.exercise,
                lang=req.lang,
            )
        )

    @app.post("/api/v1/messages/batch")
    async def send_batch(op: Operator, req: BatchRequest, request: Request) -> dict[str, Any]:
        """Queue several messages in one transaction: all are accepted, or none."""
        _may_send(request)
        drafts = []
        for n, item in enumerate(req.messages):
            try:
                kind, body = build_body(item.text, item.form, item.data, item.form_version)
            except UsageError as exc:
                raise UsageError(f"message {n + 1} of {len(req.messages)}: {exc}") from exc
            drafts.append(
                Draft(
                    tuple(item.to),
                    kind=kind,
                    body=body,
                    operator=op,
                    channel=item.channel,
                    precedence=item.precedence,
                    exercise=item.exercise,
                    lang=item.lang,
                )
            )
        results = await run_in_threadpool(terminal.send_many, drafts)
        return {"messages": results}

    @app.get("/api/v1/inbox")
    async def inbox(op: Operator, all: bool = False) -> list[dict[str, Any]]:
        return await run_in_threadpool(lambda: terminal.messages("in", all_kinds=all))

    @app.get("/api/v1/outbox")
    async def outbox(op: Operator, all: bool = False) -> list[dict[str, Any]]:
        return await run_in_threadpool(lambda: terminal.messages("out", all_kinds=all))

    @app.get("/api/v1/messages/{envelope_id}")
    async def show(op: Operator, envelope_id: str) -> dict[str, Any]:
        return await run_in_threadpool(terminal.show, envelope_id)

    @app.post("/api/v1/messages/{envelope_id}/ack")
    async def ack(op: Operator, envelope_id: str, request: Request) -> dict[str, Any]:
        _may_send(request)
        return await run_in_threadpool(lambda: terminal.acknowledge(envelope_id, operator=op))

    @app.post("/api/v1/messages/{envelope_id}/translations")
    async def certify(
        op: Operator, envelope_id: str, req: TranslationRequest, request: Request
    ) -> dict[str, Any]:
        """Attach a certified translation, signed for this operator."""
        _may_send(request)
        return await run_in_threadpool(
            lambda: terminal.certify_translation(
                envelope_id, target_lang=req.lang, text=req.text, operator=op
            )
        )

    @app.post("/api/v1/translations/{digest}/countersign")
    async def countersign(op: Operator, digest: str, request: Request) -> dict[str, Any]:
        """A second operator's check of a certified translation."""
        _may_send(request)
        return await run_in_threadpool(
            lambda: terminal.countersign_translation(digest, operator=op)
        )

    @app.get("/api/v1/links")
    async def links(op: Operator) -> list[dict[str, Any]]:
        return await run_in_threadpool(terminal.links)

    @app.post("/api/v1/links/test")
    async def test_links(op: Operator, request: Request) -> dict[str, Any]:
        worker = getattr(request.app.state, "worker", None)
        if worker is None:
            raise HTTPException(409, {"error": "not_serving", "message": "no delivery worker"})
        await worker.test_links()
        return {"queued": len(terminal.links())}

    @app.get("/api/v1/alarms")
    async def alarms(op: Operator) -> list[dict[str, Any]]:
        return await run_in_threadpool(terminal.alarms)

    @app.get("/api/v1/security-events")
    async def security_events(op: Operator) -> list[dict[str, Any]]:
        return await run_in_threadpool(terminal.security_events)

    @app.get("/api/v1/peers")
    async def peers(op: Operator) -> list[dict[str, Any]]:
        return await run_in_threadpool(terminal.peers)

    @app.post("/api/v1/peers")
    async def add_peer(op: Operator, req: PeerRequest, request: Request) -> dict[str, Any]:
        import json

        bundle = CardBundle.from_json(json.dumps(req.card).encode())
        card = await run_in_threadpool(
            lambda: terminal.add_peer(bundle, req.fingerprint, req.links)
        )
        hook = getattr(request.app.state, "on_peer_added", None)
        if hook is not None:
            hook(card.party)
        return {"party": card.party, "fingerprint": card.fingerprint}

    @app.get("/api/v1/channels")
    async def channels(op: Operator) -> list[dict[str, Any]]:
        return await run_in_threadpool(terminal.channels)

    @app.post("/api/v1/channels")
    async def create_channel(op: Operator, req: ChannelRequest, request: Request) -> dict[str, Any]:
        _may_send(request)
        return await run_in_threadpool(
            lambda: terminal.create_channel(req.name, req.members, operator=op)
        )

    @app.post("/api/v1/channels/{name}/agree")
    async def agree_channel(op: Operator, name: str, request: Request) -> dict[str, Any]:
        _may_send(request)
        return await run_in_threadpool(lambda: terminal.agree_channel(name, operator=op))

    @app.get("/api/v1/exchanges")
    async def exchanges(op: Operator) -> list[dict[str, Any]]:
        from parley.service.exchanges import exchange_summaries

        return await run_in_threadpool(exchange_summaries, terminal)

    @app.get("/api/v1/exchanges/{exchange_id}")
    async def exchange(op: Operator, exchange_id: str) -> dict[str, Any]:
        from parley.service.exchanges import exchange_view

        return await run_in_threadpool(exchange_view, terminal, exchange_id)

    @app.post("/api/v1/verify")
    async def verify(op: Operator) -> dict[str, Any]:
        report = await run_in_threadpool(lambda: audit(terminal.engine, terminal.identity.card))
        return report.summary()

    from parley.console.web import install_console

    install_console(app, terminal)
    return app
