"""What a poll of iTero orders writes (bench/ingest.py times it at 1,000 orders): scans, draft cases
and the audit rows in their order, pinned for a fixed input, so that making ingest faster cannot
change them unnoticed."""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations import sync as scanner_sync
from portal.integrations.models import ScannerIntegration
from portal.scans.models import InboxState, Scan
from tests import factories
from tests.integrations.itero_support import connect, new_integration, patient_body


def _itero(world, sandbox):
    sandbox.configure(callbacks=False)
    integration = new_integration(world, sandbox)
    connect(integration)
    return integration


def test_a_poll_writes_the_same_scans_cases_and_audit_rows_for_a_fixed_input(world, sandbox):
    integration = _itero(world, sandbox)
    with_seat = factories.patient(world.practice)
    plain = factories.patient(world.practice)
    db.session.commit()
    factories.appointment(with_seat, dt.date.today() + dt.timedelta(days=9))
    db.session.commit()
    stranger = {"first_name": "Nobody", "last_name": "Known", "chart_number": "ZZ-404", "date_of_birth": None}
    orders = [sandbox.add_itero_order(patient=patient_body(with_seat), teeth=["36"], procedure="Crown"),
              sandbox.add_itero_order(patient=patient_body(plain), teeth=["11", "12"], procedure="Bridge"),
              sandbox.add_itero_order(patient=stranger)]
    start = db.session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0

    assert scanner_sync.run_sync(integration.id, source="test") == {"new": 3}
    db.session.expire_all()

    rows = list(db.session.scalars(select(AuditEvent).where(AuditEvent.seq > start).order_by(AuditEvent.seq)))
    scans = {s.order_id: s for s in db.session.scalars(select(Scan))}
    a, b, c = (scans[o["order_id"]] for o in orders)
    assert [(r.action, r.entity_type, r.entity_id) for r in rows] == [
        ("scan.received", "scan", str(a.id)), ("scan.matched", "scan", str(a.id)),
        ("case.create", "lab_case", str(a.case_id)), ("case.scan_linked", "lab_case", str(a.case_id)),
        ("scan.received", "scan", str(b.id)), ("scan.matched", "scan", str(b.id)),
        ("case.create", "lab_case", str(b.case_id)), ("case.scan_linked", "lab_case", str(b.case_id)),
        ("scan.received", "scan", str(c.id)),
    ]
    assert all(r.actor_type == "vendor" and r.practice_id == world.practice.id for r in rows)
    assert [r.seq for r in rows] == list(range(start + 1, start + 10))
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(rows, rows[1:]))
    created = json.loads(rows[2].after)
    case_a, case_b = db.session.get(LabCase, a.case_id), db.session.get(LabCase, b.case_id)
    assert created["origin"] == "itero" and created["origin_order_id"] == a.order_id
    assert case_a.seat_appointment_id is not None and case_b.seat_appointment_id is None
    assert case_a.lab_id == world.labs["email"].id and case_a.due_date is not None
    assert [(i.teeth, i.restoration) for i in case_b.items] == [("11 12", "bridge")]
    assert json.loads(rows[7].after)["created_from_scan"] is True
    assert (a.inbox, b.inbox, c.inbox) == (InboxState.LINKED, InboxState.LINKED, InboxState.PENDING)
    assert c.case_id is None and c.patient_id is None

    # The same orders again: nothing is written.
    integration = db.session.get(ScannerIntegration, integration.id)
    integration.sync_cursor = ""
    db.session.commit()
    assert scanner_sync.run_sync(integration.id, source="test") == {"unchanged": 3}
    assert db.session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) == start + 9


def test_each_order_takes_and_puts_back_the_audit_chain_head_once(world, sandbox):
    from sqlalchemy import event

    integration = _itero(world, sandbox)
    patients = [factories.patient(world.practice) for _ in range(3)]
    db.session.commit()
    for patient in patients:
        sandbox.add_itero_order(patient=patient_body(patient), teeth=["36"], procedure="Crown")
    heads = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE AUDIT_HEAD"):
            heads.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert scanner_sync.run_sync(integration.id, source="test") == {"new": 3}
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    # Four audit rows an order, the head taken and put back once for them (it was two per row).
    assert len(heads) == 2 * 3
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.actor_type == "vendor")) == 4 * 3
