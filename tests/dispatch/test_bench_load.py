"""bench/load.py seeds its sent cases in bulk (copies of one case sent and delivered by the product):
the copies must be what approve_and_send and the delivery job would have left, or the load run's
lab events would hit cases no coordinator could have made."""
from __future__ import annotations

import json

from sqlalchemy import select

from bench.load import bulk_sent_cases, make_cases
from portal.audit.models import AuditEvent
from portal.audit.record import verify_chain
from portal.cases.lifecycle import Status
from portal.cases.models import CaseItem, LabCase
from portal.dispatch import delivery
from portal.dispatch.models import Dispatch, DispatchState
from portal.extensions import db
from portal.people.models import Patient
from tests.dispatch.conftest import run_jobs
from tests.dispatch.test_webhook import _event, post

# Columns that differ between any two cases, however they were made.
OWN = {"id", "number", "patient_id", "case_id", "chart_number", "last_name", "webhook_id", "lab_reference",
       "payload", "created_at", "updated_at", "sent_at", "delivered_at", "next_attempt_at"}


def _columns(table, *where) -> list[dict]:
    rows = db.session.execute(select(table).where(*where)).mappings().all()
    return [{k: v for k, v in r.items() if k not in OWN} for r in rows]


def _rows_of(case_id: int) -> dict:
    case = db.session.get(LabCase, case_id)
    order = db.session.scalar(select(Dispatch).where(Dispatch.case_id == case_id))
    audits = db.session.execute(select(AuditEvent.action, AuditEvent.entity_id, AuditEvent.before, AuditEvent.after)
                                .where(((AuditEvent.entity_type == "lab_case") & (AuditEvent.entity_id == str(case_id)))
                                       | ((AuditEvent.entity_type == "dispatch") & (AuditEvent.entity_id == order.id)))
                                .order_by(AuditEvent.seq)).all()
    return {
        "case": _columns(LabCase.__table__, LabCase.id == case_id),
        "patient": _columns(Patient.__table__, Patient.id == case.patient_id),
        "items": _columns(CaseItem.__table__, CaseItem.case_id == case_id),
        "dispatch": _columns(Dispatch.__table__, Dispatch.id == order.id),
        "audit": [(a.action, json.loads(a.before), {k: v for k, v in json.loads(a.after).items()
                                                    if k not in ("patient_id", "dispatch_id", "case_id", "lab_reference")})
                  for a in audits],
        "ids": (order, case, audits),
    }


def test_bulk_sent_cases_leave_the_rows_a_real_send_and_delivery_leave(world, api_lab, queue):
    seeded = bulk_sent_cases(world, api_lab, 4)
    queue.empty()
    # One more case sent and delivered by the product itself, after the copies: what they must look like.
    real = make_cases(world, api_lab, 1)[0]
    delivery.deliver_due(api_lab.id)
    db.session.commit()
    queue.empty()
    expected = _rows_of(real.case_id)

    assert len(seeded) == 4 and len({number for _, number, _ in seeded}) == 4
    for order_id, number, case_id in seeded[1:]:
        copy = _rows_of(case_id)
        assert {k: v for k, v in copy.items() if k != "ids"} == {k: v for k, v in expected.items() if k != "ids"}
        order, case, audits = copy["ids"]
        assert (order.id, case.number, case.status, order.state) == (order_id, number, Status.SENT, DispatchState.DELIVERED)
        work_order = json.loads(order.payload)
        assert (work_order["order_id"], work_order["case_number"], work_order["patient"]["reference"]) == \
            (order.id, case.number, case.patient.chart_number)
        assert [a.entity_id for a in audits] == [str(case.id), str(case.id), order.id]
        assert json.loads(audits[0].after)["patient_id"] == case.patient_id
        assert json.loads(audits[1].after)["dispatch_id"] == order.id
        assert json.loads(audits[2].after)["case_id"] == case.id
    assert list(verify_chain()) == []  # the copies' audit rows are chained and signed as record() does


def test_a_lab_event_moves_a_bulk_sent_case(client, world, api_lab, queue):
    order_id, number, case_id = bulk_sent_cases(world, api_lab, 3)[-1]
    queue.empty()
    order = db.session.get(Dispatch, order_id)

    answer = post(client, api_lab.id, _event(order, "acknowledged"), run=False)
    run_jobs(queue)

    assert answer.status_code == 204
    db.session.expire_all()
    assert db.session.get(LabCase, case_id).status is Status.ACKNOWLEDGED
    assert list(verify_chain()) == []


def test_a_coordinator_counts_a_timeout_and_carries_on(app, world):
    """A request that times out is an error in the results, not the silent end of the coordinator's
    thread: the coordinator reloads the board and makes the rest of its moves."""
    import threading
    import time

    from werkzeug.serving import make_server

    from bench.load import coordinator_proc
    from tests import factories

    card = factories.case(world, Status.DISPATCHED, lab=world.labs["manual"])
    slowed, moved, done = [], [], threading.Event()

    def slow_first_poll(environ, start_response):
        if "since=" in environ.get("QUERY_STRING", "") and not slowed:
            slowed.append(True)
            time.sleep(6)  # longer than the coordinator waits
        answer = app(environ, start_response)
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"].endswith("/move"):
            moved.append(True)
            if len(moved) == 2:
                done.set()  # both moves made: the coordinator may stop
        return answer

    server = make_server("127.0.0.1", 0, slow_first_poll, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    class Out:
        def send(self, value):
            self.value = value

    out = Out()
    try:
        coordinator_proc(f"http://127.0.0.1:{server.server_port}",
                         [{"email": world.users["coordinator"].email, "cases": [card.id]}],
                         until=time.time() + 60, poll=0.2, out=out, timeout=5, done=done)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    assert slowed and out.value["codes"].get("poll ReadTimeout") == 1 and out.value["exceptions"] >= 1
    assert out.value["moves"] == 2  # received, then fitted: it carried on after the timeout
    db.session.expire_all()
    assert db.session.get(LabCase, card.id).status is Status.FITTED
