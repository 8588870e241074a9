"""Console pages for administrators: operator accounts and pinned peers.

Accounts are listed, added and unlocked here; pinning a new peer stays a CLI
step (``parley peer add``), because it needs the card file and the
fingerprint read aloud over another channel: the page shows the pinned peers,
their fingerprints and links.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from parley.errors import NotPermitted, UsageError
from parley.service.users import ROLES, list_users

from .web import CurrentPage, Page, render

router = APIRouter()


def _users_page(page: Page, *, error: str | None = None, status: int = 200) -> HTMLResponse:
    terminal = page.terminal
    response = render(
        page,
        page.request,
        "users.html",
        active="users",
        users=list_users(terminal.engine, now=terminal.clock()),
        peers=terminal.peers(),
        roles=ROLES,
        error=error,
    )
    response.status_code = status
    return response


@router.get("/users", response_class=HTMLResponse)
async def users_page(page: CurrentPage) -> HTMLResponse:
    page.require("users")
    return await run_in_threadpool(_users_page, page)


@router.post("/users", response_model=None)
async def create_user(
    page: CurrentPage,
    name: Annotated[str, Form(max_length=64)],
    role: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    page.require("users")
    ops = page.ops
    try:
        await run_in_threadpool(lambda: ops.add_user(name, role, password))
    except NotPermitted:
        raise
    except UsageError as exc:
        message = str(exc)
        return await run_in_threadpool(lambda: _users_page(page, error=message, status=400))
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{name}/unlock")
async def unlock(page: CurrentPage, name: str) -> RedirectResponse:
    page.require("users")
    await run_in_threadpool(page.ops.unlock_user, name)
    return RedirectResponse("/users", status_code=303)
