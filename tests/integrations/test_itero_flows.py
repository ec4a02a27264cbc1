"""Every iTero flow of docs/sources.md source 001 end to end (docs/vendors/itero.md "Flows the adapter must get right"):
the sandbox moves the order, its callback reaches our real /api/scanners/hooks/<key> over HTTP, the
event job re-reads the order through the API (tests/jobs.py `drain`), or a poll brings the statuses
iTero sends no callback for; then the case is checked. No flow creates a second case."""
from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.cases.services import timeline
from portal.extensions import db
from portal.integrations import sync as scanner_sync
from portal.integrations.registry import adapter_for
from portal.integrations.vendor import OrderStage
from portal.scans.models import InboxState, Scan
from tests import factories
from tests.jobs import drain
from tests.integrations.itero_support import (
    ACCOUNT,
    connect,
    events,
    new_integration,
    patient_body,
    sync_now,
)


@pytest.fixture()
def itero(world, sandbox, live):
    factories.provider(world.practice, "Dr. Maya Chen")  # the sandbox's doctor
    integration = new_integration(world, sandbox, labs=[world.labs["email"]])
    connect(integration)
    return integration


@pytest.fixture()
def patient(world):
    p = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    return p


def notified(sandbox, queue) -> None:
    """The sandbox's callbacks delivered to our endpoint, then the event job run."""
    assert sandbox.drain(10)
    assert all(d["status"] == 204 for d in sandbox.deliveries()), sandbox.deliveries()
    drain(queue, wait_for_scheduled=False)


def cases_of(patient) -> list[LabCase]:
    db.session.expire_all()
    return list(db.session.scalars(select(LabCase).where(LabCase.patient_id == patient.id)))


def the_scan(order) -> Scan:
    db.session.expire_all()
    return db.session.scalar(select(Scan).where(Scan.order_id == order["order_id"]))


def reported(case) -> list[str]:
    """The statuses the vendor reported for the case's scan, oldest first (one timeline row each)."""
    rows = [r for r in timeline(case) if r.action in ("scan.received", "scan.updated")]
    return [json.loads(r.after)["status"] for r in reversed(rows)]


def send(case, world) -> None:
    """The coordinator approved the case and sent it to the lab."""
    lifecycle.move(case, Status.SENT, actor=Actor.user(world.users["coordinator"]))
    db.session.commit()


# -- flow 1: direct to lab --------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["ready", "ready_for_download"])
def test_flow_1_a_new_scan_creates_a_draft_case_from_the_callback(itero, sandbox, queue, patient, world, status):
    order = sandbox.add_itero_order(patient=patient_body(patient), procedure="Crown", teeth=["36"], status=status)

    notified(sandbox, queue)

    [case] = cases_of(patient)
    scan = the_scan(order)
    assert scan.case_id == case.id and scan.inbox is InboxState.LINKED and scan.source == "callback"
    assert scan.stage is OrderStage.READY
    assert case.status is Status.DRAFT and (case.origin, case.origin_order_id) == ("itero", order["order_id"])
    assert case.lab_id == world.labs["email"].id and case.provider.name == "Dr. Maya Chen"
    assert [(i.teeth, i.restoration) for i in case.items] == [("36", "crown")]
    assert len(scan.current_files) == 4


def test_flow_1_a_scan_joins_the_draft_that_waits_for_it(itero, sandbox, queue, patient, world):
    draft = factories.case(world, patient_obj=patient)

    order = sandbox.add_itero_order(patient=patient_body(patient))
    notified(sandbox, queue)

    assert [c.id for c in cases_of(patient)] == [draft.id]
    assert the_scan(order).case_id == draft.id


# -- flow 2: after modelling --------------------------------------------------------------------------------

def test_flow_2_back_from_modelling_in_lab_review_updates_the_case(itero, sandbox, queue, patient):
    order = sandbox.add_itero_order(patient=patient_body(patient))
    notified(sandbox, queue)
    sandbox.move_itero_order(order["order_id"], "modeling")  # iTero sends no callback for this one
    sandbox.move_itero_order(order["order_id"], "lab_review")

    notified(sandbox, queue)

    [case] = cases_of(patient)
    scan = the_scan(order)
    assert (scan.status, scan.stage) == ("Lab Review", OrderStage.REVIEW)
    assert [h["status"] for h in scan.history_list] == ["Completed", "iTero Modeling", "Lab Review"]
    assert reported(case) == ["Completed", "Lab Review"]
    assert case.status is Status.DRAFT


# -- flow 3: after a rescan ------------------------------------------------------------------------------------

def test_flow_3_scanning_returns_the_case_and_the_rescan_brings_it_back_to_draft_with_new_files(
        itero, sandbox, queue, patient, world):
    order = sandbox.add_itero_order(patient=patient_body(patient))
    notified(sandbox, queue)
    [case] = cases_of(patient)
    send(case, world)
    first_files = sorted(f.file_name for f in the_scan(order).current_files)

    sandbox.move_itero_order(order["order_id"], "scanning")  # no callback: the poll brings it
    sync_now(itero)

    case = cases_of(patient)[0]
    assert case.status is Status.RESCAN and "rescan" in case.status_reason

    sandbox.move_itero_order(order["order_id"], "ready")  # the doctor rescanned: same order, new files
    notified(sandbox, queue)

    [case] = cases_of(patient)
    scan = the_scan(order)
    assert case.status is Status.DRAFT
    assert all("_scan2_" in f.file_name for f in scan.current_files) and len(scan.current_files) == 4
    assert sorted(f.file_name for f in scan.files if f.replaced_at is not None) == first_files
    assert reported(case) == ["Completed", "Scanning", "Completed"]


# -- flows 4 and 5: milling, interpretation 2 --------------------------------------------------------------------

@pytest.mark.parametrize("steps", [
    ["modeling", "lab_review", "milling", "ready_to_ship", "downloaded"],
    ["modeling", "lab_review", "modeling", "lab_review", "milling", "ready_to_ship", "downloaded"],
], ids=["milling", "interpretation2"])
def test_flows_4_and_5_each_step_is_a_timeline_entry_and_the_case_stays_with_the_lab(
        itero, sandbox, queue, patient, world, steps):
    order = sandbox.add_itero_order(patient=patient_body(patient))
    notified(sandbox, queue)
    [case] = cases_of(patient)
    send(case, world)

    for step in steps:
        sandbox.move_itero_order(order["order_id"], step)
        notified(sandbox, queue)  # Lab Review calls us back
        sync_now(itero)  # the milling steps come with the poll

    [case] = cases_of(patient)
    names = {"modeling": "iTero Modeling", "lab_review": "Lab Review", "milling": "iTero Milling",
             "ready_to_ship": "Ready to Ship", "downloaded": "Downloaded"}
    assert reported(case) == ["Completed"] + [names[s] for s in steps]
    assert case.status is Status.SENT
    assert the_scan(order).stage is OrderStage.DOWNLOADED


# -- re-delivery, order --------------------------------------------------------------------------------------------

def test_an_unchanged_order_delivered_again_by_callback_or_poll_changes_nothing(itero, sandbox, queue, patient):
    order = sandbox.add_itero_order(patient=patient_body(patient))
    notified(sandbox, queue)
    rows = db.session.scalar(select(func.count(AuditEvent.id)))
    url = sandbox.itero.snapshot()["pairings"][ACCOUNT]["callback_url"]

    assert httpx.post(url, json={"rx_id": order["rx_id"], "account_number": ACCOUNT}).status_code == 204
    drain(queue, wait_for_scheduled=False)
    result = sync_now(itero)

    assert result == {"unchanged": 1}
    assert [e.outcome for e in events(itero)] == ["done", "done"]
    assert db.session.scalar(select(func.count(AuditEvent.id))) == rows
    assert len(cases_of(patient)) == 1


def test_a_report_that_arrives_late_never_moves_anything_back(itero, sandbox, queue, patient, world):
    order = sandbox.add_itero_order(patient=patient_body(patient))
    notified(sandbox, queue)
    [case] = cases_of(patient)
    send(case, world)
    sandbox.move_itero_order(order["order_id"], "lab_review")
    notified(sandbox, queue)
    snapshot = adapter_for(itero).fetch(order["rx_id"])  # read at Lab Review, held up somewhere
    sandbox.move_itero_order(order["order_id"], "milling")
    sync_now(itero)

    outcome = scanner_sync.ingest_one(itero.id, snapshot, "callback", Actor.vendor(itero, "test"))

    assert outcome == "stale"
    assert the_scan(order).stage is OrderStage.MILLING
    assert cases_of(patient)[0].status is Status.SENT


def test_callbacks_out_of_order_still_leave_the_case_right(itero, sandbox, queue, patient):
    """Two notifications handled after both moves: each re-reads the order as it is now (docs/reliability.md W6)."""
    sandbox.configure(callbacks=False)
    order = sandbox.add_itero_order(patient=patient_body(patient))
    sandbox.move_itero_order(order["order_id"], "scanning")
    sandbox.move_itero_order(order["order_id"], "ready")  # rescanned before we heard of anything
    sandbox.configure(callbacks=True)
    url = sandbox.itero.snapshot()["pairings"][ACCOUNT]["callback_url"]

    for _ in range(2):
        assert httpx.post(url, json={"rx_id": order["rx_id"], "account_number": ACCOUNT}).status_code == 204
    drain(queue, wait_for_scheduled=False)

    [case] = cases_of(patient)
    scan = the_scan(order)
    assert (scan.status, case.status) == ("Completed", Status.DRAFT)
    assert all("_scan2_" in f.file_name for f in scan.current_files)
    assert [f.file_name for f in scan.files if f.replaced_at is not None] == []  # never saw the first scan
