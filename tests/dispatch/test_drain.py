"""A lab's drain job (jobs.dispatch.deliver_due): one RQ job makes the first attempt of every work
order waiting for that lab, each with its own claim, lease, outcome, audit row and retry job."""
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq.job import Job
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.dispatch import services
from portal.dispatch.models import Dispatch, DispatchState
from portal.extensions import db
from portal.queue import DELIVER_DUE
from tests import factories
from tests.dispatch.conftest import drain, run_jobs

ROOT = Path(__file__).resolve().parents[2]


def _due():
    day = dt.date.today() + dt.timedelta(days=14)
    while day.weekday() > 4:
        day += dt.timedelta(days=1)
    return day


def _send(world, lab, n: int) -> list[Dispatch]:
    """`n` cases approved one after another, each in its own transaction, as a coordinator would."""
    dispatches = []
    for _ in range(n):
        case = factories.case(world, lab=lab, due=_due())
        dispatches.append(services.approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False))
        db.session.commit()
    return dispatches


def _actions(dispatch):
    return [r.action for r in db.session.scalars(
        select(AuditEvent).where(AuditEvent.entity_id == dispatch.id).order_by(AuditEvent.seq))]


def _order_keys(stub):
    return [r["headers"]["idempotency-key"] for r in stub.requests]


def test_a_burst_of_sends_shares_one_job_and_each_order_gets_its_own_outcome(world, api_lab, stub, queue):
    stub.script = [201, 500, 400]  # second: the lab falls over; third: it refuses the order
    ok, flaky, refused = _send(world, api_lab, 3)
    [job] = queue.jobs
    assert job.func_name == DELIVER_DUE.func and job.args == (api_lab.id,)
    assert run_jobs(queue) == [{"delivered": 1, "retry scheduled": 1, "failed": 1}]
    assert _order_keys(stub) == [ok.id, flaky.id, refused.id]  # oldest first, one request each
    db.session.expire_all()
    assert ok.state is DispatchState.DELIVERED and _actions(ok) == ["dispatch.delivered"]
    assert flaky.state is DispatchState.PENDING and flaky.attempts == 1 and flaky.last_status_code == 500
    assert _actions(flaky) == ["dispatch.retry_scheduled"]
    assert refused.state is DispatchState.FAILED and refused.case.dispatch_error
    assert _actions(refused) == ["dispatch.failed"]
    # The flaky one's retry is its own job, with its deterministic id, scheduled after its backoff.
    assert queue.scheduled_job_registry.get_job_ids() == [f"dispatch-{flaky.id}-2"]
    drain(queue)
    db.session.refresh(flaky)
    assert flaky.state is DispatchState.DELIVERED and flaky.attempts == 2
    assert _actions(flaky) == ["dispatch.retry_scheduled", "dispatch.delivered"]
    assert sorted(stub.orders) == sorted([ok.id, flaky.id])  # one order each; the refused one none
    assert refused.state is DispatchState.FAILED  # a permanent refusal waits for a person's Retry


def test_500_500_201_in_a_batch_makes_exactly_one_order(world, api_lab, stub, queue):
    stub.script = [(500, "store"), 201, 500, 201]  # the first: stored by the lab, then it fell over
    first, second = _send(world, api_lab, 2)
    drain(queue)
    db.session.expire_all()
    assert first.state is DispatchState.DELIVERED and first.attempts == 3
    assert second.state is DispatchState.DELIVERED and second.attempts == 1
    assert len(stub.orders) == 2 and _order_keys(stub).count(first.id) == 3
    assert _actions(first) == ["dispatch.retry_scheduled", "dispatch.retry_scheduled", "dispatch.delivered"]


def test_the_drain_job_leaves_a_dispatch_waiting_for_its_retry_alone(world, api_lab, stub, queue, fast):
    fast.update(DISPATCH_RETRY_SCHEDULE=(60, 60, 60))
    stub.script = [503]
    [waiting] = _send(world, api_lab, 1)
    run_jobs(queue)
    db.session.refresh(waiting)
    assert waiting.state is DispatchState.PENDING and waiting.attempts == 1
    # Its backoff is over (as far as the database goes), but its retry belongs to its own job.
    waiting.next_attempt_at = waiting.next_attempt_at - dt.timedelta(minutes=5)
    db.session.commit()
    [later] = _send(world, api_lab, 1)
    assert run_jobs(queue) == [{"delivered": 1}]
    assert _order_keys(stub) == [waiting.id, later.id]
    db.session.refresh(waiting)
    assert waiting.attempts == 1 and waiting.state is DispatchState.PENDING


def test_a_bounded_batch_hands_the_rest_to_a_new_job(world, api_lab, stub, queue, fast):
    fast["DISPATCH_BATCH_SIZE"] = 2
    dispatches = _send(world, api_lab, 5)
    assert queue.count == 1
    results = []
    while queue.count:
        assert queue.count == 1  # one drain job for the lab at a time, never a pile
        job = Job.fetch(queue.pop_job_id(), connection=queue.connection)
        results.append(job.perform())
        job.delete()
    assert results == [{"delivered": 2}, {"delivered": 2}, {"delivered": 1}]
    assert _order_keys(stub) == [d.id for d in dispatches]
    # With no time to spare, each job makes one attempt and queues the next behind other work.
    fast["DISPATCH_BATCH_SECONDS"] = 0
    more = _send(world, api_lab, 3)
    assert run_jobs(queue) == [{"delivered": 1}] * 3
    assert _order_keys(stub)[-3:] == [d.id for d in more]


def test_the_batch_job_timeout_covers_its_time_budget_and_one_more_attempt(app, fast):
    fast.update(LAB_API_TIMEOUT=10.0, DISPATCH_BATCH_SECONDS=10)
    with app.app_context():
        from portal.queue import DELIVER_DUE

        options = DELIVER_DUE.options()
        # No attempt starts after the budget, and one attempt's four HTTP timeouts end it.
        assert options["job_timeout"] > services.batch_seconds() + 4 * services.http_timeout()
        assert services.lease_seconds() > 4 * services.http_timeout()


def test_an_error_in_the_middle_is_recorded_on_that_dispatch_and_not_swallowed(world, api_lab, stub, queue,
                                                                                monkeypatch):
    real = services.mark_delivered
    calls = []

    def breaks_on_the_second(dispatch, *args):
        calls.append(dispatch.id)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(dispatch, *args)

    monkeypatch.setattr(services, "mark_delivered", breaks_on_the_second)
    first, second, third = _send(world, api_lab, 3)
    [job_id] = queue.job_ids
    drain(queue, wait_for_scheduled=False)
    job = Job.fetch(job_id, connection=queue.connection)
    assert job.is_failed and "the database went away" in job.latest_result().exc_string
    db.session.expire_all()
    assert first.state is DispatchState.DELIVERED
    assert second.state is DispatchState.PENDING and second.attempts == 1
    assert "The delivery job failed: RuntimeError: the database went away" in second.last_error
    assert _actions(second) == ["dispatch.retry_scheduled"]
    assert third.state is DispatchState.PENDING and third.attempts == 0  # the sweep hands it over
    monkeypatch.setattr(services, "mark_delivered", real)
    second.next_attempt_at = third.next_attempt_at
    db.session.commit()
    assert services.sweep() == 2
    drain(queue)
    db.session.expire_all()
    assert {d.state for d in (first, second, third)} == {DispatchState.DELIVERED}
    assert sorted(stub.orders) == sorted(d.id for d in (first, second, third))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_worker_killed_in_the_middle_of_a_batch_then_resumed_makes_one_order_each(app, world, api_lab, stub,
                                                                                  queue, fast):
    """The production command (jobs.worker.Worker: forking, the app loaded before the fork) is
    SIGKILLed while the second of three work orders is at the lab."""
    fast["LAB_API_TIMEOUT"] = 0.5  # as the killed worker has it: its leases are job_timeout + 1 s
    stub.hang_after, stub.hang_next = 1, 1  # the first is answered; the lab stores the second, then hangs
    first, second, third = _send(world, api_lab, 3)
    env = os.environ.copy()
    env.update(DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=app.config["REDIS_URL"],
               SECRET_KEY="test-secret-key", LM_ENV="development", LAB_API_TIMEOUT="0.5",
               RQ_QUEUE=app.config["RQ_QUEUE"], PUBLIC_BASE_URL="http://localhost")
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "rq"), "worker", "--worker-class", "jobs.worker.Worker",
         "--with-scheduler", "--url", app.config["REDIS_URL"], "--path", str(ROOT),
         "--name", f"doomed-{os.getpid()}-{time.time_ns()}", app.config["RQ_QUEUE"]],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert stub.in_flight.wait(30), "the worker never reached the lab"
        for pid in _children(worker.pid) + [worker.pid]:  # the work horse, the scheduler, the worker
            os.kill(pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    stub.release.set()
    db.session.expire_all()
    assert first.state is DispatchState.DELIVERED  # committed with the claim of the second
    assert second.state is DispatchState.SENDING and second.attempts == 1  # leased
    assert third.state is DispatchState.PENDING and third.attempts == 0  # never started
    assert services.sweep() == 1  # the third at once; the second once its lease has run out
    drain(queue)
    db.session.expire_all()
    assert third.state is DispatchState.DELIVERED and second.state is DispatchState.SENDING
    deadline = time.monotonic() + services.lease_seconds() + 10
    while not services.sweep():
        assert time.monotonic() < deadline, "the sweep never picked the second up again"
        time.sleep(0.2)
    drain(queue)
    db.session.expire_all()
    assert {d.state for d in (first, second, third)} == {DispatchState.DELIVERED}
    assert second.attempts == 2 and third.attempts == 1
    assert sorted(stub.orders) == sorted(d.id for d in (first, second, third))  # one order each
    assert _order_keys(stub).count(second.id) == 2  # the repeat carried the same Idempotency-Key
    assert _actions(second) == ["dispatch.delivered"]
