"""The scan inbox: matching, joining or creating cases, and every iTero flow of docs/sources.md source 001 by order id,
status and history (docs/vendors/itero.md "Flows the adapter must get right"), with the vendor-neutral
VendorOrder an adapter produces. The adapters' own tests drive the same code over HTTP."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.cases.services import timeline
from portal.dispatch.services import work_order
from portal.dispatch.validation import check_case
from portal.extensions import db
from portal.integrations.itero.models import RxState, ScanRequest
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.people.models import AppointmentKind
from portal.scans import services
from portal.scans.models import FileState, InboxState
from tests import factories

T0 = dt.datetime(2026, 11, 30, 9, 0)


def order(patient, *, order_id="ORD-1", status="Completed", stage=OrderStage.READY, at=T0, assets=None,
          rx_id="", lab_name="", procedure="Crown", teeth=("36",), items=None, **kw) -> VendorOrder:
    ref = patient if isinstance(patient, PatientRef) else PatientRef(
        patient.first_name, patient.last_name, patient.chart_number, patient.date_of_birth)
    assets = assets if assets is not None else (
        Asset("a-upper", "upper.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor", url="https://x.test/a-upper"),
        Asset("a-lower", "lower.stl", "STL", jaw=Jaw.LOWER, jaw_source="vendor"),
        Asset("a-bite", "bite.stl", "STL", jaw=Jaw.BITE, jaw_source="vendor"),
    )
    items = items if items is not None else (RxItem(tuple(teeth), "crown", "zirconia", "A2"),)
    return VendorOrder(Vendor.ITERO, order_id, status, stage, ref, updated_at=at, rx_id=rx_id,
                       doctor_name="Dr. Test", procedure=procedure, items=items, lab_name=lab_name,
                       assets=tuple(assets), history=((status, at),), **kw)


@pytest.fixture()
def scanner(world):
    i = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]])
    db.session.commit()
    return i


def ingest(world, scanner, o, source="poll"):
    result = services.ingest(world.practice.id, o, actor=Actor.vendor(scanner, "test"), source=source,
                             integration=scanner)
    db.session.commit()
    return result


def audit_actions(entity_type=None) -> list[str]:
    stmt = select(AuditEvent.action).order_by(AuditEvent.seq)
    if entity_type:
        stmt = stmt.where(AuditEvent.entity_type == entity_type)
    return list(db.session.scalars(stmt))


def cases_of(patient) -> list[LabCase]:
    return list(db.session.scalars(select(LabCase).where(LabCase.patient_id == patient.id)))


# -- flow 1: direct to lab -------------------------------------------------------------------------

def test_a_new_scan_of_a_known_chart_number_creates_a_draft_case_with_everything_it_knows(world, scanner):
    patient = factories.patient(world.practice, "Ana", "Silva")
    seat = factories.appointment(patient, dt.date.today() + dt.timedelta(days=20), AppointmentKind.SEAT)
    db.session.commit()

    result = ingest(world, scanner, order(patient))

    assert (result.outcome, result.case_action) == ("new", "created")
    scan = result.scan
    case = scan.case
    assert scan.inbox is InboxState.LINKED and scan.matched_by == "chart" and scan.patient_id == patient.id
    assert case.status is Status.DRAFT
    assert (case.origin, case.origin_order_id) == ("itero", "ORD-1")
    assert case.lab_id == world.labs["email"].id  # the scanner's only allowed lab
    assert case.provider_id == world.provider.id  # "Dr. Test"
    assert case.seat_appointment_id == seat.id
    assert [(i.teeth, i.restoration, i.material, i.shade) for i in case.items] == [("36", "crown", "zirconia", "A2")]
    assert case.due_date is not None  # from the lab's turnaround
    assert [f.file_name for f in scan.current_files] == ["upper.stl", "lower.stl", "bite.stl"]
    assert all(f.state is FileState.REFERENCE for f in scan.files)
    actions = audit_actions()
    assert actions[-4:] == ["scan.received", "scan.matched", "case.create", "case.scan_linked"]
    row = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "scan.received"))
    assert (row.actor_type, row.actor_label) == ("vendor", "iTero: Front desk")


def test_the_same_report_again_changes_nothing_and_writes_nothing(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    ingest(world, scanner, order(patient))
    rows = db.session.scalar(select(func.count(AuditEvent.id)))

    again = ingest(world, scanner, order(patient), source="callback")

    assert again.outcome == "unchanged"
    assert db.session.scalar(select(func.count(AuditEvent.id))) == rows
    assert len(cases_of(patient)) == 1


def test_the_content_key_is_the_digest_of_the_whole_report_as_it_always_was():
    """Scans keep the key of their last report: working it out faster must not change it, or every
    order would look changed (and be written again) on the first poll after an upgrade."""
    import dataclasses
    import hashlib

    report = order(PatientRef("Ana", "Silva", "C-7", dt.date(1990, 2, 9)), rx_id="RX-9", lab_name="Keystone",
                   scanned_at=T0, due_date=dt.date(2026, 12, 9), notes="margin 0.5", lab_ref="LAB-1",
                   doctor_ref="DR-1", extra={"raw": {"ignored": True}},
                   items=(RxItem(("11", "12"), "bridge", "zirconia", "A2", "check the bite"),))
    data = dataclasses.asdict(report)
    data.pop("extra")
    before = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    assert report.content_key() == before
    assert report.content_key() == before  # kept on the report after the first time
    assert dataclasses.replace(report, status="Ready").content_key() != before  # a changed copy is worked out anew
    assert dataclasses.replace(report, extra={"other": 1}).content_key() == before


def test_a_patient_matches_by_name_and_birth_date_when_the_chart_number_is_unknown(world, scanner):
    patient = factories.patient(world.practice, "Zoë", "Okafor", dob=dt.date(1990, 2, 3))
    db.session.commit()

    scan = ingest(world, scanner, order(PatientRef(" zoë ", "OKAFOR", "NOT-A-CHART", dt.date(1990, 2, 3)))).scan

    assert (scan.patient_id, scan.matched_by) == (patient.id, "name_dob")


def test_an_unmatched_scan_waits_for_a_person_who_matches_it(world, scanner, login):
    ref = PatientRef("Nobody", "Known", "X-999", dt.date(1970, 1, 1))
    scan = ingest(world, scanner, order(ref)).scan
    assert scan.inbox is InboxState.PENDING and scan.case_id is None
    assert "chart number X-999" in scan.problem

    # Added after the scan came in (the chart number was typed wrong at the scanner): same name and birth date.
    patient = factories.patient(world.practice, "Nobody", "Known", dob=dt.date(1970, 1, 1))
    result = services.assign_patient(scan, patient, Actor.user(world.users["coordinator"]))
    db.session.commit()

    assert result.case_action == "created"
    assert scan.inbox is InboxState.LINKED and scan.matched_by == "person" and scan.case.patient_id == patient.id


def test_two_patients_with_the_same_name_and_birth_date_are_not_guessed(world, scanner):
    for _ in range(2):
        factories.patient(world.practice, "Sam", "Lee", dob=dt.date(1985, 1, 1))
    db.session.commit()

    scan = ingest(world, scanner, order(PatientRef("Sam", "Lee", "", dt.date(1985, 1, 1)))).scan

    assert scan.patient_id is None and scan.inbox is InboxState.PENDING


def test_another_practices_patient_is_never_matched(world, scanner):
    stranger = factories.patient(world.other_practice, chart="SHARED-1")
    db.session.commit()

    scan = ingest(world, scanner, order(stranger)).scan

    assert scan.patient_id is None


# -- joining an open case ----------------------------------------------------------------------------

def test_a_scan_joins_the_patients_draft_that_waits_for_it_and_the_draft_takes_the_scanner_as_origin(world, scanner):
    draft = factories.case(world)
    result = ingest(world, scanner, order(draft.patient))

    assert result.case_action == "joined" and result.scan.case_id == draft.id
    db.session.refresh(draft)
    assert (draft.origin, draft.origin_order_id) == ("itero", "ORD-1")
    assert len(cases_of(draft.patient)) == 1


def test_a_case_entered_by_hand_with_the_order_id_is_joined_whatever_its_status(world, scanner):
    sent = factories.case(world, Status.SENT, commit=False)
    sent.origin, sent.origin_order_id = "itero", "ORD-77"
    db.session.commit()

    result = ingest(world, scanner, order(sent.patient, order_id="ORD-77"))

    assert result.scan.case_id == sent.id and result.case_action == "joined"


def test_two_waiting_drafts_leave_the_choice_to_a_person(world, scanner):
    first = factories.case(world)
    second = factories.case(world, patient_obj=first.patient)

    scan = ingest(world, scanner, order(first.patient)).scan

    assert scan.case_id is None and scan.inbox is InboxState.PENDING
    assert first.number in scan.problem and second.number in scan.problem
    services.assign_case(scan, second, Actor.user(world.users["coordinator"]))
    db.session.commit()
    assert scan.case_id == second.id and scan.inbox is InboxState.LINKED


def test_a_scan_of_an_rx_sent_from_a_case_comes_back_to_that_case(world, scanner):
    case = factories.case(world, commit=False)
    other_draft = factories.case(world, patient_obj=case.patient, commit=False)
    request = ScanRequest(practice_id=world.practice.id, case_id=case.id, integration_id=scanner.id,
                          rx_id="RX-5", state=RxState.CREATED)
    db.session.add(request)
    db.session.commit()

    scan = ingest(world, scanner, order(case.patient, rx_id="RX-5")).scan

    assert scan.case_id == case.id and other_draft.id != case.id
    assert request.state is RxState.SCANNED


def test_a_person_cannot_put_a_scan_on_another_patients_case(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    scan = ingest(world, scanner, order(patient)).scan
    scan_case = scan.case
    other = factories.case(world)

    scan.case_id = None  # as if it had not been placed
    with pytest.raises(services.ScanError, match="another patient"):
        services.link(scan, other, Actor.user(world.users["coordinator"]))
    db.session.rollback()
    assert scan_case is not None


# -- flows 2-5 -----------------------------------------------------------------------------------------

def test_flow_2_back_from_modelling_updates_the_scan_and_never_makes_a_second_case(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    case = ingest(world, scanner, order(patient)).scan.case

    result = ingest(world, scanner, order(patient, status="Lab Review", stage=OrderStage.REVIEW,
                                          at=T0 + dt.timedelta(hours=3)))

    assert result.outcome == "updated" and result.scan.case_id == case.id
    assert result.scan.stage is OrderStage.REVIEW and result.scan.status == "Lab Review"
    assert len(cases_of(patient)) == 1
    assert "scan.updated" in [row.action for row in timeline(case)]


def test_flow_3_rescan_returns_the_case_then_the_new_scan_brings_it_back_to_draft(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    scan = ingest(world, scanner, order(patient)).scan
    case = scan.case
    lifecycle.move(case, Status.SENT, actor=Actor.user(world.users["coordinator"]))
    db.session.commit()

    ingest(world, scanner, order(patient, status="Scanning", stage=OrderStage.RESCAN, at=T0 + dt.timedelta(days=1)))
    assert case.status is Status.RESCAN and "rescan" in case.status_reason

    new_files = (Asset("b-upper", "upper-2.stl", "STL", jaw=Jaw.UPPER), Asset("b-lower", "lower-2.stl", "STL",
                                                                                jaw=Jaw.LOWER))
    result = ingest(world, scanner, order(patient, at=T0 + dt.timedelta(days=2), assets=new_files))

    assert case.status is Status.DRAFT
    assert result.scan.id == scan.id and len(cases_of(patient)) == 1
    assert sorted(f.file_name for f in scan.current_files) == ["lower-2.stl", "upper-2.stl"]
    replaced = [f.file_name for f in scan.files if f.replaced_at is not None]
    assert sorted(replaced) == ["bite.stl", "lower.stl", "upper.stl"]
    moves = [row.action for row in timeline(case) if row.action.startswith("case.")]
    assert moves[:2] == ["case.rework", "case.request_rescan"]
    rescan_row = next(r for r in timeline(case) if r.action == "case.request_rescan")
    assert rescan_row.actor_type == "vendor"


@pytest.mark.parametrize("steps", [
    [("iTero Milling", OrderStage.MILLING), ("Ready to Ship", OrderStage.READY_TO_SHIP),
     ("Downloaded", OrderStage.DOWNLOADED)],
    # flow 5: interpretation 2 back to Lab Review, then on to milling
    [("Lab Review", OrderStage.REVIEW), ("iTero Milling", OrderStage.MILLING), ("Ready to Ship", OrderStage.READY_TO_SHIP)],
])
def test_flows_4_and_5_milling_steps_are_timeline_entries_and_never_move_the_case(world, scanner, steps):
    patient = factories.patient(world.practice)
    db.session.commit()
    case = ingest(world, scanner, order(patient, status="Lab Review", stage=OrderStage.REVIEW)).scan.case
    lifecycle.move(case, Status.SENT, actor=Actor.user(world.users["coordinator"]))
    db.session.commit()

    for n, (status, stage) in enumerate(steps, start=1):
        ingest(world, scanner, order(patient, status=status, stage=stage, at=T0 + dt.timedelta(hours=n)))

    assert case.status is Status.SENT
    reported = [json.loads(row.after)["status"] for row in timeline(case) if row.action == "scan.updated"]
    assert reported == [status for status, _ in reversed(steps)]  # newest first, one entry a step
    assert len(cases_of(patient)) == 1


def test_an_older_report_arriving_late_never_moves_anything_back(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    scan = ingest(world, scanner, order(patient, status="iTero Milling", stage=OrderStage.MILLING,
                                        at=T0 + dt.timedelta(hours=5))).scan
    rows = db.session.scalar(select(func.count(AuditEvent.id)))

    late = ingest(world, scanner, order(patient, status="Lab Review", stage=OrderStage.REVIEW, at=T0))

    assert late.outcome == "stale" and scan.stage is OrderStage.MILLING
    assert db.session.scalar(select(func.count(AuditEvent.id))) == rows


def test_a_bite_scan_is_linked_to_both_arches(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    scan = ingest(world, scanner, order(patient)).scan

    by_jaw = {f.jaw: f for f in scan.current_files}
    assert by_jaw[Jaw.BITE].upper_file_id == by_jaw[Jaw.UPPER].id
    assert by_jaw[Jaw.BITE].lower_file_id == by_jaw[Jaw.LOWER].id


def test_a_refused_file_is_kept_with_its_reason_and_left_out_of_the_work_order(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    assets = (Asset("ok", "upper.stl", "STL", jaw=Jaw.UPPER, url="https://x.test/ok", triangle_count=10,
                    vertex_count=7),
              Asset("bad", "lower.stl", "STL", jaw=Jaw.LOWER, error="the file is 3 bytes short"))
    case = ingest(world, scanner, order(patient, assets=assets)).scan.case

    files = {f.ref: f for f in case_files(case)}
    assert files["ok"].state is FileState.OK and files["bad"].state is FileState.REFUSED
    scans = work_order(case, "x")["scans"]
    assert scans == [{"vendor": "itero", "order_id": "ORD-1", "kind": "scan", "file_name": "upper.stl",
                      "format": "STL", "jaw": "upper", "url": "https://x.test/ok"}]


def case_files(case):
    return [f for s in services.scans_of_case(case.id) for f in s.current_files]


# -- labs the scanner may send to ----------------------------------------------------------------------

def test_the_lab_the_vendor_names_is_chosen_when_the_scanner_may_send_to_it(world):
    scanner = factories.integration(world.practice, labs=[world.labs["email"], world.labs["api"]])
    patient = factories.patient(world.practice)
    db.session.commit()

    case = ingest(world, scanner, order(patient, lab_name="api lab")).scan.case

    assert case.lab_id == world.labs["api"].id


def test_a_lab_the_scanner_may_not_send_to_is_not_chosen_and_sending_there_is_refused(world):
    scanner = factories.integration(world.practice, labs=[world.labs["email"], world.labs["api"]])
    patient = factories.patient(world.practice)
    db.session.commit()

    scan = ingest(world, scanner, order(patient, lab_name="Manual Lab")).scan

    assert scan.case.lab_id is None and "Manual Lab" in scan.problem
    scan.case.lab_id = world.labs["manual"].id
    db.session.flush()
    db.session.expire(scan.case, ["lab"])
    problems = check_case(scan.case).on("lab")
    assert problems and "may send to Api Lab, Email Lab" in problems[0]
    db.session.rollback()


def test_dismissed_scans_stay_dismissed_when_the_vendor_reports_them_again(world, scanner):
    ref = PatientRef("Test", "Scan", "", None)
    scan = ingest(world, scanner, order(ref)).scan
    with pytest.raises(services.ScanError, match="why"):
        services.dismiss(scan, " ", Actor.user(world.users["coordinator"]))
    services.dismiss(scan, "a test scan", Actor.user(world.users["coordinator"]))
    db.session.commit()

    ingest(world, scanner, order(ref, status="Lab Review", stage=OrderStage.REVIEW, at=T0 + dt.timedelta(hours=1)))

    assert scan.inbox is InboxState.DISMISSED
    services.restore(scan, Actor.user(world.users["coordinator"]))
    db.session.commit()
    assert scan.inbox is InboxState.PENDING
    assert audit_actions("scan") == ["scan.received", "scan.dismissed", "scan.updated", "scan.restored"]


def test_the_procedure_name_gives_the_restoration_when_the_scanner_sends_no_items(world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()

    case = ingest(world, scanner, order(patient, procedure="Implant Crown", items=())).scan.case

    assert [i.restoration for i in case.items] == ["implant_crown"]
    assert services.restoration_for("Invisalign aligners") == "aligner"
    assert services.restoration_for("Study model") == "other"


def test_a_scan_still_being_taken_waits_at_the_vendor_then_joins_its_draft_when_complete(world, scanner):
    draft = factories.case(world)
    scanning = order(draft.patient, status="SCAN", stage=OrderStage.IN_PROGRESS, assets=())

    scan = ingest(world, scanner, scanning).scan

    assert (scan.inbox, scan.case_id, scan.patient_id) == (InboxState.WAITING, None, draft.patient_id)
    assert "Still being scanned at iTero" in scan.problem
    assert services.inbox_counts(world.practice.id) == {InboxState.WAITING: 1}

    done = ingest(world, scanner, order(draft.patient, at=T0 + dt.timedelta(hours=1))).scan

    assert (done.inbox, done.case_id, done.problem) == (InboxState.LINKED, draft.id, "")
