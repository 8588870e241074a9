"""The administrator's page: operator accounts (list, add, unlock) and pinned peers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from parley.service.users import MAX_FAILED_LOGINS
from parley.store import models as m
from tests.service.test_console_admin import PASSWORD, World, world

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

__all__ = ["world"]  # the fixture, shared with the other console pages' tests


def _lock(w: World, name: str) -> None:
    client = TestClient(w.app, base_url="https://testserver")
    for _ in range(MAX_FAILED_LOGINS):
        refused = client.post("/login", data={"name": name, "password": "wrong password!"})
        assert refused.status_code == 401


def test_an_administrator_adds_and_unlocks_operators(world: World) -> None:
    adm = world.as_("adm")
    page = adm.get("/users")
    assert page.status_code == 200
    assert 'data-testid="user-row" data-name="sup"' in page.text
    assert 'data-testid="peer-row" data-party="UA-GS"' in page.text
    assert world.ua.identity.card.fingerprint in page.text
    assert 'href="/users"' in page.text  # in the nav, for an administrator

    added = adm.post("/users", {"name": "night.duty", "role": "duty_officer", "password": PASSWORD})
    assert added.status_code == 303
    with world.ru.engine.connect() as conn:
        role = conn.execute(select(m.users.c.role).where(m.users.c.name == "night.duty")).scalar()
        actions = [
            (r.operator, r.action, r.subject)
            for r in conn.execute(select(m.operator_actions).order_by(m.operator_actions.c.id))
        ]
    assert role == "duty_officer"
    assert ("adm", "user_add", "night.duty") in actions

    refused = adm.post("/users", {"name": "short.pw", "role": "auditor", "password": "short"})
    assert refused.status_code == 400
    assert "at least 12 characters" in refused.text

    _lock(world, "night.duty")
    assert 'data-name="night.duty" data-locked="yes"' in adm.get("/users").text
    assert adm.post("/users/night.duty/unlock").status_code == 303
    assert 'data-name="night.duty" data-locked="no"' in adm.get("/users").text
    world.as_("night.duty")  # logs in again (asserted by the helper)


def test_only_an_administrator_manages_operators(world: World) -> None:
    for name in ("duty1", "sup", "aud"):
        op = world.as_(name)
        assert op.get("/users").status_code == 403
        assert (
            op.post("/users", {"name": "x.y", "role": "admin", "password": PASSWORD}).status_code
            == 403
        )
        assert 'href="/users"' not in op.get("/inbox").text
    with world.ru.engine.connect() as conn:
        assert conn.execute(select(m.users.c.name).where(m.users.c.name == "x.y")).first() is None


def test_adding_an_operator_needs_the_csrf_token(world: World) -> None:
    adm = world.as_("adm")
    forged = adm.client.post(
        "/users",
        data={"name": "forged", "role": "admin", "password": PASSWORD},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    with world.ru.engine.connect() as conn:
        assert (
            conn.execute(select(m.users.c.name).where(m.users.c.name == "forged")).first() is None
        )
