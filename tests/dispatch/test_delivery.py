"""Delivery to an API lab through RQ: idempotency, signing, retries, failure, a killed worker, Redis down."""
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.dispatch import services, signing
from portal.dispatch.models import Dispatch, DispatchState
from portal.extensions import db
from tests import factories
from tests.dispatch.conftest import SECRET, drain, free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]


def _due():
    day = dt.date.today() + dt.timedelta(days=14)
    while day.weekday() > 4:
        day += dt.timedelta(days=1)
    return day


def _send(world, lab) -> Dispatch:
    case = factories.case(world, lab=lab, due=_due())
    dispatch = services.approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False)
    db.session.commit()
    return dispatch


def _actions(dispatch):
    return [r.action for r in db.session.scalars(
        select(AuditEvent).where(AuditEvent.entity_id == dispatch.id).order_by(AuditEvent.seq))]


def test_happy_path_posts_a_signed_work_order_once(world, api_lab, stub, queue):
    dispatch = _send(world, api_lab)
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED and dispatch.attempts == 1
    assert dispatch.lab_reference == "LAB-00001" and dispatch.last_status_code == 201
    [request] = stub.requests
    headers = request["headers"]
    assert headers["idempotency-key"] == dispatch.id and headers["webhook-id"] == dispatch.webhook_id
    signing.verify([SECRET], headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"],
                   request["raw"])
    body = json.loads(request["raw"])
    case = dispatch.case
    assert body["schema"] == "labmanager.work_order/1" and body["order_id"] == dispatch.id
    assert body["case_number"] == case.number and body["items"][0]["teeth"] == ["11"]
    assert body["callback_url"] == f"http://localhost/api/labs/{api_lab.id}/events"
    assert _actions(dispatch) == ["dispatch.delivered"]


def test_500_500_201_makes_exactly_one_order(world, api_lab, stub, queue):
    stub.script = [(500, "store"), 500, 201]  # the lab saved the order, then fell over
    dispatch = _send(world, api_lab)
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED and dispatch.attempts == 3
    assert len(stub.requests) == 3 and len(stub.orders) == 1
    keys = {r["headers"]["idempotency-key"] for r in stub.requests}
    msg_ids = {r["headers"]["webhook-id"] for r in stub.requests}
    assert keys == {dispatch.id} and msg_ids == {dispatch.webhook_id}
    assert {r["raw"] for r in stub.requests} == {stub.requests[0]["raw"]}
    assert _actions(dispatch) == ["dispatch.retry_scheduled", "dispatch.retry_scheduled", "dispatch.delivered"]


def test_429_and_network_errors_are_transient_until_attempts_run_out(world, api_lab, stub, queue, fast):
    stub.script = [429]
    dispatch = _send(world, api_lab)
    api_lab.api_url = "http://127.0.0.1:9"  # nothing listens: connection refused from now on
    db.session.commit()
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.FAILED and dispatch.attempts == len(fast["DISPATCH_RETRY_SCHEDULE"]) + 1
    assert "gave up after 4 attempts" in dispatch.last_error and "Could not reach" in dispatch.last_error
    assert dispatch.case.dispatch_error


def test_400_fails_at_once_shows_on_the_board_and_retry_resends_same_key(client, login, world, api_lab,
                                                                         stub, queue):
    stub.script = [400]
    dispatch = _send(world, api_lab)
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.FAILED and dispatch.attempts == 1 and dispatch.last_status_code == 400
    assert "refused the work order (HTTP 400)" in dispatch.last_error
    assert _actions(dispatch) == ["dispatch.failed"]
    login()
    board = client.get("/").get_data(as_text=True)
    assert "Dispatch failed" in board and f"/cases/{dispatch.case_id}/dispatch/retry" in board
    page = client.get(f"/cases/{dispatch.case_id}").get_data(as_text=True)
    assert "Retry sending" in page and "HTTP 400" in page
    response = client.post(f"/cases/{dispatch.case_id}/dispatch/retry", {"next": "/"})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    db.session.expire_all()
    assert dispatch.state is DispatchState.PENDING and not dispatch.case.dispatch_error
    assert queue.fetch_job(f"dispatch-{dispatch.id}-2") is not None
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED and dispatch.attempts == 2
    assert len(stub.orders) == 1 and {r["headers"]["idempotency-key"] for r in stub.requests} == {dispatch.id}
    assert "Dispatch failed" not in client.get("/").get_data(as_text=True)
    # A delivered dispatch can't be retried, and another practice's dispatch is not found.
    assert client.post(f"/dispatch/{dispatch.id}/retry").status_code == 303
    login("outsider")
    assert client.post(f"/dispatch/{dispatch.id}/retry").status_code == 404


def test_409_is_permanent(world, api_lab, stub, queue):
    stub.script = [409]
    dispatch = _send(world, api_lab)
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.FAILED and dispatch.last_status_code == 409


def test_job_does_nothing_for_a_delivered_or_superseded_dispatch(world, api_lab, stub, queue):
    from jobs.dispatch import deliver

    dispatch = _send(world, api_lab)
    drain(queue)
    assert deliver(dispatch.id) == "nothing to do"
    dispatch.state = DispatchState.SUPERSEDED
    db.session.commit()
    assert deliver(dispatch.id) == "nothing to do"
    assert len(stub.requests) == 1


def test_the_retry_schedule_spans_more_than_a_day_with_jitter(app):
    from portal import retries

    config = {"DISPATCH_RETRY_SCHEDULE": retries.parse(retries.DEFAULT)}
    assert config["DISPATCH_RETRY_SCHEDULE"] == (10, 60, 300, 1800, 7200, 18000, 36000, 36000)
    assert retries.span(config) >= 24 * 3600 and retries.attempts(config) == 9
    for attempt, step in enumerate(config["DISPATCH_RETRY_SCHEDULE"], start=1):
        delays = {retries.delay(attempt, config=config) for _ in range(50)}
        assert all(0.9 * step <= d <= 1.1 * step for d in delays) and len(delays) > 1  # jittered
    assert retries.delay(9, config=config) is None  # spent
    assert retries.delay(1, retry_after=120, config=config) >= 120  # the lab asked for more time
    assert retries.delay(1, retry_after=10 ** 9, config=config) <= 36000  # ...up to the longest step
    assert retries.in_round(10, 9 + 9, config) == 1  # a person's Retry starts the schedule again
    assert retries.parse("30s, 5m,2h,1d") == (30, 300, 7200, 86400)
    with pytest.raises(ValueError, match="soon"):
        retries.parse("10s,soon")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _worker_env(app, redis_url: str) -> dict:
    env = os.environ.copy()
    env.update(DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=redis_url,
               SECRET_KEY="test-secret-key", LM_ENV="development", LAB_API_TIMEOUT="0.5",
               RQ_QUEUE=app.config["RQ_QUEUE"], PUBLIC_BASE_URL="http://localhost")
    return env


@pytest.mark.slow
def test_worker_killed_mid_dispatch_then_sweep_completes_it_once(app, world, api_lab, stub, queue, fast, tmp_path):
    fast["LAB_API_TIMEOUT"] = 0.5  # as the killed worker had it: its lease is job_timeout + 1 s
    stub.hang_next = 1  # the lab stores the order, then does not answer
    dispatch = _send(world, api_lab)
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "rq"), "worker", "--url", app.config["REDIS_URL"], "--path", str(ROOT),
         "--name", f"doomed-{os.getpid()}-{time.time_ns()}", app.config["RQ_QUEUE"]],
        env=_worker_env(app, app.config["REDIS_URL"]), cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert stub.in_flight.wait(30), "the worker never reached the lab"
        # The work horse runs in its own process group (RQ calls setpgrp): kill it and the worker.
        for pid in _children(worker.pid) + [worker.pid]:
            os.kill(pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    stub.release.set()
    db.session.expire_all()
    assert dispatch.state is DispatchState.SENDING and dispatch.attempts == 1
    assert services.sweep() == 0  # the lease still holds: nobody else may send yet
    deadline = time.monotonic() + services.lease_seconds() + 10
    while not services.sweep():
        assert time.monotonic() < deadline, "the sweep never picked the dispatch up again"
        time.sleep(0.2)
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED and dispatch.attempts == 2
    assert len(stub.orders) == 1 and len(stub.requests) == 2


@pytest.mark.slow
def test_case_sent_while_redis_is_down_is_dispatched_after_it_is_back(client, login, app, world, api_lab,
                                                                        stub, fast):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    fast["REDIS_URL"] = url
    server = start_redis(port)
    server.terminate()
    server.wait(10)
    try:
        case = factories.case(world, lab=api_lab, due=_due())
        login()
        assert client.post(f"/cases/{case.id}/send").status_code == 303  # the coordinator sees no error
        db.session.expire_all()
        dispatch = db.session.scalar(select(Dispatch))
        assert case.status is Status.SENT and dispatch.state is DispatchState.PENDING
        assert services.sweep() == 0  # still down: nothing handed over, nothing lost
        server = start_redis(port)
        from portal.queue import get_queue

        queue = get_queue()
        assert queue.count == 0
        assert services.sweep() == 1 and queue.count == 1
        assert services.sweep() == 1 and queue.count == 1  # the same job id: not queued twice
        drain(queue)
        db.session.refresh(dispatch)
        assert dispatch.state is DispatchState.DELIVERED and len(stub.orders) == 1
    finally:
        server.terminate()
        server.wait(10)


def test_sweep_job_runs_the_dispatch_sweep(world, api_lab, stub, queue):
    from jobs.sweep import run

    dispatch = _send(world, api_lab)
    queue.empty()  # as if Redis had lost the job
    result = run()
    assert result["dispatch"] == 1 and queue.fetch_job(f"dispatch-{dispatch.id}-1") is not None
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED
