"""Work orders and order events outside development never reach an internal address (portal/outbound.py):
the lab is shown why, and nothing is sent."""
from __future__ import annotations

import datetime as dt

import pytest

from portal import outbound
from portal.audit.actor import Actor
from portal.dispatch import services
from portal.dispatch.models import DispatchState
from portal.extensions import db
from tests import factories
from tests.dispatch.conftest import run_jobs


@pytest.fixture()
def production(app, monkeypatch):
    outbound.close_client()
    monkeypatch.setitem(app.config, "DEVELOPMENT", False)
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "")
    yield app.config
    outbound.close_client()


def _send(world, lab):
    day = dt.date.today() + dt.timedelta(days=14)
    while day.weekday() > 4:
        day += dt.timedelta(days=1)
    case = factories.case(world, lab=lab, due=day)
    dispatch = services.approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False)
    db.session.commit()
    return dispatch


def test_a_work_order_to_a_loopback_lab_fails_for_good_outside_development(world, api_lab, stub, queue,
                                                                         production):
    dispatch = _send(world, api_lab)  # the stub listens on 127.0.0.1 (set before the rule changed)
    run_jobs(queue)
    db.session.refresh(dispatch)
    assert stub.requests == []  # nothing reached it
    assert dispatch.state is DispatchState.FAILED and dispatch.attempts == 1
    assert "loopback address" in dispatch.last_error and "OUTBOUND_ALLOWED_HOSTS" in dispatch.last_error
    assert dispatch.case.dispatch_error


def test_the_allow_list_lets_the_lab_through(world, api_lab, stub, queue, production):
    production["OUTBOUND_ALLOWED_HOSTS"] = "127.0.0.1"
    dispatch = _send(world, api_lab)
    run_jobs(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED and len(stub.orders) == 1
