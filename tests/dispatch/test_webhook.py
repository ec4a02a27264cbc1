"""POST /api/labs/<lab_id>/events: signature, freshness, idempotency, rotation, ordering, 422s."""
import datetime as dt
import json
import time
import uuid

import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.clock import utcnow
from portal.dispatch import services, signing
from portal.dispatch.models import Dispatch, DispatchState, LabEvent
from portal.extensions import db
from portal.labs.models import LabSecret
from tests import factories
from portal.queue import get_queue
from tests.dispatch.conftest import SECRET, run_jobs

NEW_SECRET = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ="


@pytest.fixture()
def sent(world, queue):
    lab = world.labs["api"]
    case = factories.case(world, lab=lab, due=dt.date.today() + dt.timedelta(days=20))
    dispatch = services.approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False)
    db.session.commit()
    queue.empty()
    return case, dispatch, lab


def _event(dispatch, kind, data=None, at=None, event_id=None, **extra):
    body = {"event_id": event_id or f"evt_{uuid.uuid4().hex}", "order_id": dispatch.id,
            "case_number": dispatch.case.number, "type": kind,
            "occurred_at": (at or utcnow()).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "data": data or {}}
    body.update(extra)
    return body


def post(client, lab_id, body, secrets=(SECRET,), ts=None, msg_id=None, raw=None, signature=None, run=True):
    """POST one signed event; then (run=True) run the job that applies it, as the worker would."""
    raw = raw if raw is not None else json.dumps(body).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    headers = signing.headers(list(secrets), msg_id, raw, timestamp=ts)
    if signature is not None:
        headers["webhook-signature"] = signature
    response = client.raw.post(f"/api/labs/{lab_id}/events", data=raw, headers=headers,
                               content_type="application/json")
    if run:
        run_jobs(get_queue())
    return response


def _count(model, *where):
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def _audit_count():
    return _count(AuditEvent)


def test_events_move_the_case_along(client, sent):
    case, dispatch, lab = sent
    assert post(client, lab.id, _event(dispatch, "acknowledged")).status_code == 204
    assert post(client, lab.id, _event(dispatch, "in_production", {"eta": "2030-01-07"})).status_code == 204
    response = post(client, lab.id, _event(dispatch, "dispatched",
                                           {"carrier": "UPS", "tracking_number": "1Z999", "eta": "2030-01-08"}))
    assert response.status_code == 204 and response.data == b""
    db.session.expire_all()
    assert case.status is Status.DISPATCHED and case.tracking_number == "1Z999" and case.carrier == "UPS"
    assert case.lab_eta == dt.date(2030, 1, 8)
    rows = db.session.scalars(select(AuditEvent).where(AuditEvent.action.like("case.%"),
                                                       AuditEvent.actor_type == "lab")).all()
    assert [r.action for r in rows] == ["case.acknowledge", "case.start_production", "case.dispatch"]
    assert {r.actor_id for r in rows} == {str(lab.id)}
    # The lab evidently has the order: a dispatch still pending is now delivered.
    assert dispatch.state is DispatchState.DELIVERED


def test_bad_signature_is_401_and_writes_nothing(client, sent):
    case, dispatch, lab = sent
    before = _audit_count()
    body = _event(dispatch, "acknowledged")
    wrong = post(client, lab.id, body, secrets=("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==",))
    assert wrong.status_code == 401 and wrong.json == {"error": "no valid signature"}
    raw = json.dumps(body).encode()
    tampered = post(client, lab.id, body, raw=raw + b" ",
                    signature=signing.headers([SECRET], "msg_x", raw, timestamp=int(time.time()))["webhook-signature"],
                    msg_id="msg_x")
    assert tampered.status_code == 401
    missing = client.raw.post(f"/api/labs/{lab.id}/events", data=raw, content_type="application/json")
    assert missing.status_code == 401 and "missing" in missing.json["error"]
    db.session.expire_all()
    assert case.status is Status.SENT and _count(LabEvent) == 0 and _audit_count() == before


@pytest.mark.parametrize("skew", [-301, 301])
def test_timestamp_more_than_300s_away_is_401(client, sent, skew):
    case, dispatch, lab = sent
    response = post(client, lab.id, _event(dispatch, "acknowledged"), ts=int(time.time()) + skew)
    assert response.status_code == 401 and "300 seconds" in response.json["error"]
    assert _count(LabEvent) == 0


@pytest.mark.parametrize("lab_id", ["99999", "2147483647", "2147483648", "9223372036854775808", "0", "007",
                                    "abc", "-1", "1e3", "%20"])
def test_an_id_that_is_not_a_lab_answers_as_a_bad_signature_does(client, sent, lab_id):
    """No probing which labs exist: the same status, body and headers as a real lab with a
    wrong signature, for every header problem, and nothing written (on PostgreSQL an id past
    the integer range answered 500)."""
    case, dispatch, lab = sent
    body = _event(dispatch, "acknowledged")
    before = _audit_count()
    wrong = ("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==",)
    for kwargs in ({"secrets": (SECRET,)}, {"secrets": wrong}, {"ts": int(time.time()) - 999}):
        real = post(client, lab.id, body, secrets=wrong, ts=kwargs.get("ts"), run=False)
        probe = post(client, lab_id, body, **kwargs, run=False)
        assert probe.status_code == real.status_code == 401, (lab_id, kwargs)
        assert probe.json == real.json and probe.headers["Content-Type"] == real.headers["Content-Type"]
        assert sorted(probe.headers.keys()) == sorted(real.headers.keys())
    raw = json.dumps(body).encode()
    unsigned = client.raw.post(f"/api/labs/{lab_id}/events", data=raw, content_type="application/json")
    unsigned_real = client.raw.post(f"/api/labs/{lab.id}/events", data=raw, content_type="application/json")
    assert unsigned.status_code == 401 and unsigned.json == unsigned_real.json
    db.session.expire_all()
    assert _count(LabEvent) == 0 and _audit_count() == before and case.status is Status.SENT


def test_every_api_answer_is_json_in_the_error_shape(app, client, sent):
    """404 (no such route), 405 (with Allow), 413 (a body over 64 KiB, or over the app's limit)
    and a 500 under /api/ answer {"error": ...} as JSON, never an HTML page."""
    _, _, lab = sent
    missing = client.raw.post("/api/labs/1/nothing-here", data=b"{}")
    assert missing.status_code == 404 and missing.is_json and set(missing.json) == {"error"}
    also_missing = client.raw.get("/api/nothing")
    assert also_missing.status_code == 404 and also_missing.is_json
    for method in ("get", "put", "delete", "patch"):
        wrong_method = getattr(client.raw, method)(f"/api/labs/{lab.id}/events")
        assert wrong_method.status_code == 405 and wrong_method.is_json, method
        assert wrong_method.json == {"error": "method not allowed"}
        assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) == {"OPTIONS", "POST"}
    big = client.raw.post(f"/api/labs/{lab.id}/events", data=b"x" * (64 * 1024 + 1), content_type="application/json")
    assert big.status_code == 413 and big.is_json and set(big.json) == {"error"}
    app.config["MAX_CONTENT_LENGTH"], limit = 1024, app.config["MAX_CONTENT_LENGTH"]
    try:
        hook = client.raw.post("/api/scanners/hooks/" + "k" * 43, data={"x": "y" * 4096})
    finally:
        app.config["MAX_CONTENT_LENGTH"] = limit
    assert hook.status_code == 413 and hook.is_json, hook.get_data(as_text=True)[:200]
    # Pages keep their HTML error pages.
    page = client.raw.get("/no-such-page")
    assert page.status_code == 404 and "text/html" in page.headers["Content-Type"]


def test_an_api_server_error_is_json(app, client, sent, monkeypatch):
    _, dispatch, lab = sent
    from portal.labapi import services as labapi_services

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(labapi_services, "inbound", broken)
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    response = post(client, lab.id, _event(dispatch, "acknowledged"), run=False)
    assert response.status_code == 500 and response.json == {"error": "internal error: nothing was changed"}


def test_repeated_webhook_id_or_event_id_is_204_without_effect(client, sent):
    case, dispatch, lab = sent
    body = _event(dispatch, "on_hold", {"reason": "Missing bite"})
    assert post(client, lab.id, body, msg_id="msg_1").status_code == 204
    audits = _audit_count()
    assert post(client, lab.id, body, msg_id="msg_1").status_code == 204  # the same delivery again
    assert post(client, lab.id, body, msg_id="msg_2").status_code == 204  # same event, new message id
    other = _event(dispatch, "resumed")
    assert post(client, lab.id, other, msg_id="msg_1").status_code == 204  # an old message id: handled
    db.session.expire_all()
    assert case.status is Status.ON_HOLD and _count(LabEvent) == 1 and _audit_count() == audits


def test_secret_rotation_accepts_old_and_new(client, sent):
    case, dispatch, lab = sent
    lab.secrets.append(LabSecret(secret=NEW_SECRET))
    db.session.commit()
    assert post(client, lab.id, _event(dispatch, "acknowledged"), secrets=(SECRET,)).status_code == 204
    assert post(client, lab.id, _event(dispatch, "in_production"), secrets=(NEW_SECRET,)).status_code == 204
    # During the rotation the lab may sign with both; after it, the old one is revoked.
    lab.secrets[0].revoked_at = utcnow()
    db.session.commit()
    old = post(client, lab.id, _event(dispatch, "dispatched", {"carrier": "UPS", "tracking_number": "1"}),
               secrets=(SECRET,))
    assert old.status_code == 401
    both = post(client, lab.id, _event(dispatch, "dispatched", {"carrier": "UPS", "tracking_number": "1"}),
                secrets=(SECRET, NEW_SECRET))
    assert both.status_code == 204
    db.session.expire_all()
    assert case.status is Status.DISPATCHED


def test_backwards_and_stale_events_are_ignored_with_an_audit_row(client, sent):
    case, dispatch, lab = sent
    t0 = utcnow()
    post(client, lab.id, _event(dispatch, "dispatched", {"carrier": "DHL", "tracking_number": "9"},
                                at=t0 + dt.timedelta(minutes=5)))
    late = post(client, lab.id, _event(dispatch, "in_production", at=t0 + dt.timedelta(minutes=10)))
    older = post(client, lab.id, _event(dispatch, "acknowledged", at=t0))
    assert late.status_code == 204 and older.status_code == 204
    db.session.expire_all()
    assert case.status is Status.DISPATCHED
    ignored = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "lab_event.ignored")).all()
    assert len(ignored) == 2 and "does not move back" in ignored[0].after
    assert "older than an event already applied" in ignored[1].after


def test_hold_and_resume_out_of_order_end_right(client, sent):
    case, dispatch, lab = sent
    t0 = utcnow()
    post(client, lab.id, _event(dispatch, "acknowledged", at=t0))
    # The lab held the case, then resumed it; the resume arrives first.
    assert post(client, lab.id, _event(dispatch, "resumed", at=t0 + dt.timedelta(minutes=2))).status_code == 204
    assert post(client, lab.id, _event(dispatch, "on_hold", {"reason": "x"},
                                       at=t0 + dt.timedelta(minutes=1))).status_code == 204
    db.session.expire_all()
    assert case.status is Status.ACKNOWLEDGED


def test_rejected_puts_the_case_on_hold_with_the_reason(client, sent):
    case, dispatch, lab = sent
    assert post(client, lab.id, _event(dispatch, "rejected", {"reason": "Prep too shallow"})).status_code == 204
    db.session.expire_all()
    assert case.status is Status.ON_HOLD and case.status_reason == "Rejected by lab: Prep too shallow"
    assert post(client, lab.id, _event(dispatch, "resumed")).status_code == 204
    db.session.expire_all()
    assert case.status is Status.SENT


@pytest.mark.parametrize("change, message", [
    ({"order_id": "00000000-0000-0000-0000-000000000000"}, "unknown order"),
    ({"type": "exploded"}, "unknown type"),
    ({"event_id": ""}, "event_id is required"),
    ({"type": "dispatched", "data": {"carrier": "UPS"}}, "needs data.tracking_number"),
    ({"type": "on_hold", "data": {}}, "needs data.reason"),
    ({"type": "message", "data": {}}, "needs data.text"),
    ({"type": "dispatched", "data": {"carrier": "UPS", "tracking_number": "1", "eta": "soon"}}, "data.eta"),
    ({"occurred_at": "yesterday"}, "occurred_at"),
    ({"case_number": "LC-1999-000001"}, "not LC-1999-000001"),
    # PostgreSQL cannot store a NUL in text: the fuzzer's event_id "\u0000" was a 500 there
    ({"event_id": "\x00"}, "NUL"),
    ({"type": "message", "data": {"text": "a\x00b"}}, "NUL"),
    ({"case_number": "\x00"}, "NUL"),
])
def test_bad_bodies_are_422_with_a_json_error(client, sent, change, message):
    case, dispatch, lab = sent
    body = _event(dispatch, "acknowledged")
    body.update(change)
    response = post(client, lab.id, body)
    assert response.status_code == 422 and message in response.json["error"]
    assert _count(LabEvent) == 0


def test_a_move_the_case_cannot_make_is_422(client, sent, world):
    case, dispatch, lab = sent
    from portal.cases import lifecycle

    lifecycle.move(case, Status.CANCELLED, actor=Actor.user(world.users["coordinator"]), reason="patient moved")
    db.session.commit()
    response = post(client, lab.id, _event(dispatch, "acknowledged"))
    assert response.status_code == 422 and "closed case" in response.json["error"]
    assert _count(LabEvent) == 0
    assert post(client, lab.id, "not an object").status_code == 422
    assert post(client, lab.id, None, raw=b"{not json").status_code == 422


def test_another_labs_order_is_unknown(client, sent, world):
    case, dispatch, lab = sent
    other = factories.lab(world.org, lab.channel, name="Other API Lab")
    db.session.commit()
    response = post(client, other.id, _event(dispatch, "acknowledged"))
    assert response.status_code == 422 and "unknown order" in response.json["error"]


def test_message_event_records_a_lab_message(client, sent):
    messages = pytest.importorskip("portal.messages.models")
    case, dispatch, lab = sent
    response = post(client, lab.id, _event(dispatch, "message", {"text": "Can you send a bite scan?"}))
    assert response.status_code == 204
    rows = db.session.scalars(select(messages.LabMessage)).all()
    assert [r.text for r in rows] == ["Can you send a bite scan?"]
    db.session.expire_all()
    assert case.status is Status.SENT


def test_the_request_stores_the_event_and_a_job_applies_it(client, sent, queue):
    case, dispatch, lab = sent
    audits = _audit_count()
    response = post(client, lab.id, _event(dispatch, "acknowledged"), run=False)
    assert response.status_code == 204
    db.session.expire_all()
    row = db.session.scalars(select(LabEvent)).one()
    # Stored and handed to RQ; the case has not moved yet and nothing was audited.
    assert row.outcome == "pending" and case.status is Status.SENT and _audit_count() == audits
    [job_id] = queue.job_ids  # the lab's drain job
    assert job_id.startswith(f"lab-events-{lab.id}-")
    from jobs.labapi import apply_event

    assert run_jobs(queue) == [["applied"]]
    db.session.expire_all()
    assert row.outcome == "applied" and case.status is Status.ACKNOWLEDGED
    assert apply_event(row.id) == "nothing to do"  # a repeat of the job has no second effect
    assert _count(AuditEvent, AuditEvent.action == "case.acknowledge") == 1


def test_a_move_that_became_impossible_before_the_job_is_ignored_with_an_audit_row(client, sent, world, queue):
    case, dispatch, lab = sent
    assert post(client, lab.id, _event(dispatch, "acknowledged"), run=False).status_code == 204
    from portal.cases import lifecycle

    lifecycle.move(case, Status.CANCELLED, actor=Actor.user(world.users["coordinator"]), reason="patient moved")
    db.session.commit()
    assert run_jobs(queue) == [["ignored"]]
    db.session.expire_all()
    assert case.status is Status.CANCELLED
    assert db.session.scalars(select(LabEvent.outcome)).one() == "ignored"
    ignored = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "lab_event.ignored")).one()
    assert "could no longer make this move" in ignored.after and ignored.actor_type == "lab"
    assert db.session.get(Dispatch, dispatch.id).state is DispatchState.PENDING


def test_the_sweep_enqueues_events_still_pending(client, sent, queue):
    from jobs.sweep import run

    case, dispatch, lab = sent
    assert post(client, lab.id, _event(dispatch, "acknowledged"), run=False).status_code == 204
    queue.empty()  # as if Redis had lost the job (its claim is still there)
    dispatch.next_attempt_at = utcnow() + dt.timedelta(hours=1)  # keep the dispatch sweep out of this
    db.session.commit()
    assert run()["lab_events"] == 0  # stored a moment ago: its job is presumably still waiting
    row = db.session.scalars(select(LabEvent)).one()
    row.received_at -= dt.timedelta(minutes=1)
    db.session.commit()
    result = run()
    assert result["lab_events"] == 1 and queue.job_ids == [f"lab-events-{lab.id}-sweep"]
    assert run()["lab_events"] == 1 and queue.count == 1  # the same job id: not queued twice
    run_jobs(queue)
    assert case.status is Status.ACKNOWLEDGED
    assert run()["lab_events"] == 0  # applied: nothing left to hand over


def test_a_burst_of_events_shares_one_job_that_applies_them_in_order(client, sent, world, queue):
    case, dispatch, lab = sent
    other = factories.case(world, lab=lab, due=dt.date.today() + dt.timedelta(days=20))
    other_dispatch = services.approve_and_send(other, Actor.user(world.users["coordinator"]), confirm_risk=False)
    db.session.commit()
    queue.empty()
    for body in (_event(dispatch, "acknowledged"), _event(other_dispatch, "acknowledged"),
                 _event(dispatch, "in_production"), _event(other_dispatch, "on_hold", {"reason": "no shade"})):
        assert post(client, lab.id, body, run=False).status_code == 204
    assert queue.count == 1  # the first claimed the lab's job; the others found it waiting
    assert run_jobs(queue) == [["applied", "applied", "applied", "applied"]]
    db.session.expire_all()
    assert case.status is Status.IN_PRODUCTION and other.status is Status.ON_HOLD
    # The job let go of its claim before reading: the next event gets a job of its own.
    assert post(client, lab.id, _event(dispatch, "dispatched", {"carrier": "UPS", "tracking_number": "1Z"}),
                run=False).status_code == 204
    assert queue.count == 1 and run_jobs(queue) == [["applied"]]


def test_an_event_that_fails_to_apply_stays_pending_and_the_others_go_on(client, sent, world, queue):
    from jobs.labapi import apply_pending

    case, dispatch, lab = sent
    assert post(client, lab.id, _event(dispatch, "message", {"text": "first"}), run=False).status_code == 204
    assert post(client, lab.id, _event(dispatch, "acknowledged"), run=False).status_code == 204
    broken = db.session.scalars(select(LabEvent).order_by(LabEvent.id)).first()
    broken.payload = "{not json"  # as if the stored row had been damaged
    db.session.commit()
    with pytest.raises(RuntimeError, match="could not be applied"):
        apply_pending(lab.id)
    db.session.expire_all()
    assert case.status is Status.ACKNOWLEDGED
    assert dict(db.session.execute(select(LabEvent.id, LabEvent.outcome)).all()) == {
        broken.id: "pending", broken.id + 1: "applied"}


def test_deeply_nested_json_is_refused_not_a_server_error(client, sent):
    case, dispatch, lab = sent
    raw = b"[" * 60_000  # json.loads gives up with RecursionError, not ValueError
    with pytest.raises(RecursionError):
        json.loads(raw)
    response = post(client, lab.id, None, raw=raw, run=False)
    assert response.status_code == 422 and response.json == {"error": "the body is not JSON"}
    unsigned = client.raw.post(f"/api/labs/{lab.id}/events", data=raw, content_type="application/json")
    assert unsigned.status_code == 401


@pytest.mark.slow
def test_an_event_posted_while_redis_is_down_is_stored_and_applied_once_it_is_back(client, sent, fast):
    from jobs.sweep import run
    from tests.dispatch.conftest import free_port, start_redis

    case, dispatch, lab = sent
    port = free_port()
    fast["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port)
    server.terminate()
    server.wait(10)
    try:
        assert post(client, lab.id, _event(dispatch, "acknowledged"), run=False).status_code == 204  # docs/reliability.md W5 still
        row = db.session.scalars(select(LabEvent)).one()
        assert row.outcome == "pending"
        row.received_at -= dt.timedelta(minutes=1)
        dispatch.next_attempt_at = utcnow() + dt.timedelta(hours=1)  # keep the dispatch sweep out of this
        db.session.commit()
        server = start_redis(port)
        queue = get_queue()
        assert queue.count == 0  # the request's enqueue was lost with Redis
        assert run()["lab_events"] == 1 and queue.count == 1
        assert run_jobs(queue) == [["applied"]]
        assert case.status is Status.ACKNOWLEDGED
    finally:
        server.terminate()
        server.wait(10)
