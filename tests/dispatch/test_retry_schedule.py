"""A lab's API down for hours is normal: work orders and order events retry on a schedule longer
than a day (portal/retries.py), the board and the case page say "retrying, next attempt at ..."
from the second failure on, and "dispatch failed" with Retry only once the schedule is spent."""
import pytest

from portal import retries
from portal.dispatch import delivery
from portal.dispatch.models import DispatchState, OrderNotice
from portal.extensions import db
from portal.messages.services import send_to_lab
from portal.practices.models import utcnow
from tests.dispatch.test_delivery import _send
from tests.dispatch.test_notices import _actor, _delivered


@pytest.fixture()
def real_schedule(fast):
    fast["DISPATCH_RETRY_SCHEDULE"] = retries.parse(retries.DEFAULT)
    return fast


def _attempt(dispatch) -> None:
    """One attempt now, whatever the schedule says (as its scheduled job would make it when due)."""
    assert delivery.deliver(dispatch.id) in ("retry scheduled", "failed", "delivered")
    db.session.refresh(dispatch)


def test_a_lab_down_for_a_few_minutes_does_not_fail_the_work_order(client, login, world, api_lab, stub, queue,
                                                                   real_schedule):
    stub.script = [503] * 20
    dispatch = _send(world, api_lab)
    queue.empty()  # the attempts are made by hand below, not by the drain job
    login()

    _attempt(dispatch)
    assert dispatch.state is DispatchState.PENDING and dispatch.attempts == 1
    card = client.get("/").get_data(as_text=True)
    assert "dispatch-retrying" not in card  # one failure is routine: the next try is ten seconds away

    _attempt(dispatch)
    wait = (dispatch.next_attempt_at - utcnow()).total_seconds()
    assert 54 <= wait <= 66  # the second step, one minute with jitter
    card = client.get("/").get_data(as_text=True)
    shown = dispatch.next_attempt_at.strftime("%H:%M UTC")
    assert f"Retrying, next attempt at {shown}" in card and "Dispatch failed" not in card
    assert f"/cases/{dispatch.case_id}/dispatch/retry" not in card  # nothing for a person to do yet
    page = client.get(f"/cases/{dispatch.case_id}").get_data(as_text=True)
    assert f"Retrying, next attempt at {shown}" in page and "Retry sending" not in page

    for _ in range(4):  # six failed attempts: what used to fail the dispatch after ~90 s
        _attempt(dispatch)
    assert dispatch.state is DispatchState.PENDING and dispatch.attempts == 6
    assert 0.9 * 5 * 3600 <= (dispatch.next_attempt_at - utcnow()).total_seconds() <= 1.1 * 5 * 3600
    assert "Retrying, next attempt at" in client.get("/").get_data(as_text=True)

    for _ in range(3):  # the ninth attempt is the schedule's last
        _attempt(dispatch)
    assert dispatch.state is DispatchState.FAILED and dispatch.attempts == 9
    assert "gave up after 9 attempts" in dispatch.last_error
    card = client.get("/").get_data(as_text=True)
    assert "Dispatch failed" in card and "dispatch-retrying" not in card
    assert f"/cases/{dispatch.case_id}/dispatch/retry" in card
    assert "Retry sending" in client.get(f"/cases/{dispatch.case_id}").get_data(as_text=True)
    assert len(stub.requests) == 9


def test_a_refusal_fails_at_once_whatever_the_schedule(world, api_lab, stub, queue, real_schedule):
    stub.script = [422]
    dispatch = _send(world, api_lab)
    queue.empty()
    _attempt(dispatch)
    assert dispatch.state is DispatchState.FAILED and dispatch.attempts == 1


def test_order_events_follow_the_same_schedule(client, login, world, api_lab, stub, queue, real_schedule):
    dispatch = _delivered(world, api_lab, queue)
    stub.script = [503] * 20
    send_to_lab(dispatch.case, "Please call us", _actor(world))  # a message to the lab: an order event
    db.session.commit()
    notice = db.session.query(OrderNotice).one()
    queue.empty()
    for _ in range(6):
        assert delivery.deliver_notice(notice.id) == "retry scheduled"
        db.session.refresh(notice)
    assert notice.state is DispatchState.PENDING and notice.attempts == 6 and notice.max_attempts == 9
    login()
    page = client.get(f"/cases/{dispatch.case_id}").get_data(as_text=True)
    assert f"Retrying, next attempt at {notice.next_attempt_at.strftime('%H:%M')}" in page \
        or "Retrying, next attempt at " + notice.next_attempt_at.strftime("%a %d %b %H:%M") in page
