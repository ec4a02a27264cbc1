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


def _statements(db):
    """Every SQL statement the engine runs until stop() (upper case, one line)."""
    from sqlalchemy import event

    seen = []

    def note(conn, cursor, statement, *args):
        seen.append(" ".join(statement.split()).upper())

    event.listen(db.engine, "before_cursor_execute", note)
    return seen, lambda: event.remove(db.engine, "before_cursor_execute", note)


def _reading(statements, table):
    return [s for s in statements if s.startswith("SELECT") and f" FROM {table.upper()} " in f"{s} "]


def _orders_of_new_patients(world, sandbox, count, **spec):
    """`count` new patients of the practice, an iTero order each in the sandbox."""
    patients = [factories.patient(world.practice) for _ in range(count)]
    db.session.commit()
    for patient in patients:
        sandbox.add_itero_order(patient=patient_body(patient), teeth=["36"], procedure="Crown", **spec)
    return patients


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


def test_each_order_takes_and_puts_back_the_audit_chain_head_once_and_inserts_its_rows_at_once(world, sandbox):
    integration = _itero(world, sandbox)
    _orders_of_new_patients(world, sandbox, 3)
    statements, stop = _statements(db)
    try:
        assert scanner_sync.run_sync(integration.id, source="test") == {"new": 3}
    finally:
        stop()
    # Four audit rows an order, the head taken and put back once for them (it was two per row),
    # and the four rows in one INSERT (it was one each).
    assert len([s for s in statements if s.startswith("UPDATE AUDIT_HEAD")]) == 2 * 3
    assert len([s for s in statements if s.startswith("INSERT INTO AUDIT_EVENT")]) == 3
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.actor_type == "vendor")) == 4 * 3


def test_a_sync_reads_its_integration_labs_services_and_providers_once_not_per_order(world, sandbox):
    integration = _itero(world, sandbox)
    _orders_of_new_patients(world, sandbox, 3, doctor={"doctor_id": "DR-1001", "name": "Dr. Maya Chen"})
    statements, stop = _statements(db)
    try:
        assert scanner_sync.run_sync(integration.id, source="test") == {"new": 3}
    finally:
        stop()
    # Once for the sync (portal/scans/lookups.py), not once an order after every commit.
    assert len(_reading(statements, "lab_service")) == 1
    assert len(_reading(statements, "provider")) == 1
    assert len(_reading(statements, "practice")) == 1
    cases = list(db.session.scalars(select(LabCase).where(LabCase.origin == "itero")))
    assert len(cases) == 3 and all(c.lab_id == world.labs["email"].id and c.due_date for c in cases)


def test_what_one_sync_read_once_the_next_sync_reads_again(world, sandbox):
    from portal.cases.duedates import add_business_days
    from portal.cases.risk import closed_days
    from portal.labs.models import LabService

    integration = _itero(world, sandbox)
    first, second = factories.patient(world.practice), factories.patient(world.practice)
    db.session.commit()
    chen = {"doctor_id": "DR-1001", "name": "Dr. Maya Chen"}
    sandbox.add_itero_order(patient=patient_body(first), teeth=["36"], procedure="Crown", doctor=chen)
    assert scanner_sync.run_sync(integration.id, source="test") == {"new": 1}
    case_1 = db.session.scalar(select(LabCase).where(LabCase.patient_id == first.id))
    assert case_1.provider_id is None  # no provider of the practice is Dr. Maya Chen yet
    today = dt.date.today()
    assert case_1.due_date == add_business_days(today, 5, closed_days(world.practice.id))

    # Between the syncs: the lab's crowns take longer, and Dr. Chen joins the practice.
    crown = db.session.scalar(select(LabService).where(LabService.lab_id == world.labs["email"].id,
                                                       LabService.restoration == "crown"))
    crown.turnaround_days = 9
    chen_id = factories.provider(world.practice, name="Dr. Maya Chen").id
    db.session.commit()
    sandbox.add_itero_order(patient=patient_body(second), teeth=["36"], procedure="Crown", doctor=chen)
    assert scanner_sync.run_sync(integration.id, source="test")["new"] == 1
    case_2 = db.session.scalar(select(LabCase).where(LabCase.patient_id == second.id))
    assert case_2.due_date == add_business_days(today, 9, closed_days(world.practice.id))
    assert case_2.provider_id == chen_id


def test_unchanged_orders_are_found_with_one_select_a_page_and_open_no_transaction_each(world, sandbox):
    integration = _itero(world, sandbox)
    _orders_of_new_patients(world, sandbox, 5)
    assert scanner_sync.run_sync(integration.id, source="test") == {"new": 5}
    integration = db.session.get(ScannerIntegration, integration.id)
    integration.sync_cursor = ""
    db.session.commit()
    statements, stop = _statements(db)
    try:
        assert scanner_sync.run_sync(integration.id, source="test") == {"unchanged": 5}
    finally:
        stop()
    by_order = [s for s in _reading(statements, "scan") if "SCAN.ORDER_ID IN" in s]
    assert len(by_order) == 1  # the page's five orders in one SELECT (it was one each)
    assert not [s for s in statements if s.startswith(("INSERT", "UPDATE", "DELETE"))
                and "SCANNER_INTEGRATION" not in s]  # only the integration's last sync is written


def test_orders_read_before_the_vendor_fails_are_ingested_and_the_cursor_stays(world, sandbox):
    integration = _itero(world, sandbox)
    sandbox.configure(page_size=2)
    _orders_of_new_patients(world, sandbox, 3)
    served = sandbox.core.log_request

    def fail_the_second_page(endpoint, request):  # the first page is answered, the next one is a 500
        entry = served(endpoint, request)
        if endpoint == "itero.orders" and request.args.get("page") == "2":  # this sandbox counts from 1
            sandbox.fault(endpoint, 500)
        return entry

    sandbox.core.log_request = fail_the_second_page
    try:
        outcome = scanner_sync.run_sync(integration.id, source="test")
    finally:
        sandbox.core.log_request = served
    assert "HTTP 500" in outcome["error"] and outcome["new"] == 2
    assert db.session.scalar(select(func.count()).select_from(Scan)) == 2
    assert db.session.get(ScannerIntegration, integration.id).sync_cursor == ""
    assert scanner_sync.run_sync(integration.id, source="test") == {"new": 1, "unchanged": 2}


def test_an_order_twice_in_one_page_is_looked_up_again_the_second_time(world, sandbox):
    from portal.audit.actor import Actor
    from portal.integrations.vendor import OrderStage, PatientRef, RxItem, Vendor, VendorOrder
    from portal.scans.lookups import Lookups

    integration = _itero(world, sandbox)
    patient = factories.patient(world.practice)
    db.session.commit()
    at = dt.datetime(2026, 11, 30, 9, 0)

    def report(minutes, status):
        return VendorOrder(Vendor.ITERO, "ORD-TWICE", status, OrderStage.READY,
                           PatientRef(patient.first_name, patient.last_name, patient.chart_number,
                                      patient.date_of_birth),
                           updated_at=at + dt.timedelta(minutes=minutes), procedure="Crown",
                           items=(RxItem(("36",), "crown", "zirconia", "A2"),), history=((status, at),))

    actor = Actor.vendor(integration, "test")
    old, new = report(0, "Completed"), report(5, "Ready for Download")
    assert scanner_sync.ingest_page(Lookups(integration.id), [old], "poll", actor) == {"new": 1}
    # The page's one SELECT saw the old report's content; after the new report is applied, the old
    # one again is older than the scan (stale), not "unchanged" by the key read before.
    assert scanner_sync.ingest_page(Lookups(integration.id), [new, old], "poll", actor) == {
        "updated": 1, "stale": 1}
    scan = db.session.scalar(select(Scan).where(Scan.order_id == "ORD-TWICE"))
    assert scan.status == "Ready for Download"
