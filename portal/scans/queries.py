"""Reading scans, for the inbox's pages and for other features: the tabs, the badge in the top
bar, the open cases a scan may join, a scan's own audit rows, the case page's Scans panel and the
work order's scan references. What a person does to a scan is in services.py."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations.vendor import Vendor
from portal.scans import links
from portal.scans.models import FileState, InboxState, Scan, ScanFile

PAGE_SIZE = 50


@dataclass
class Page:
    scans: list[Scan]
    page: int
    has_more: bool


def pending_count(practice_id: int) -> int:
    """The top bar's badge: one COUNT over ix_scan_practice_inbox (practice_id, inbox, ...)."""
    return db.session.scalar(select(func.count()).select_from(Scan).where(
        Scan.practice_id == practice_id, Scan.inbox == InboxState.PENDING)) or 0


def list_scans(practice_id: int, state: InboxState, vendor: Vendor | None = None, page: int = 1,
               size: int = PAGE_SIZE) -> Page:
    """One tab of the inbox, newest first, a page at a time (one more row is read to know if there
    is a next page). Files, patient and case come in three more statements, whatever the count."""
    stmt = select(Scan).where(Scan.practice_id == practice_id, Scan.inbox == state)
    if vendor is not None:
        stmt = stmt.where(Scan.vendor == vendor)
    page = max(page, 1)
    rows = list(db.session.scalars(
        stmt.options(selectinload(Scan.files), selectinload(Scan.patient), selectinload(Scan.case))
        .order_by(Scan.received_at.desc(), Scan.id.desc()).offset((page - 1) * size).limit(size + 1)))
    return Page(rows[:size], page, len(rows) > size)


def counts(practice_id: int, vendor: Vendor | None = None) -> dict[InboxState, int]:
    stmt = select(Scan.inbox, func.count()).where(Scan.practice_id == practice_id)
    if vendor is not None:
        stmt = stmt.where(Scan.vendor == vendor)
    found = dict(db.session.execute(stmt.group_by(Scan.inbox)).tuples().all())
    return {state: found.get(state, 0) for state in InboxState}


def open_cases(practice_id: int, patient_ids: list[int]) -> dict[int, list[LabCase]]:
    """The open cases of each patient (newest first), for the "put it on a case" choice, in one query."""
    if not patient_ids:
        return {}
    found: dict[int, list[LabCase]] = {}
    for case in db.session.scalars(select(LabCase).where(
            LabCase.practice_id == practice_id, LabCase.patient_id.in_(set(patient_ids)),
            LabCase.status.in_(Status.open())).options(selectinload(LabCase.items)).order_by(LabCase.id.desc())):
        found.setdefault(case.patient_id, []).append(case)
    return found


def scan_events(scan: Scan) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "scan", AuditEvent.entity_id == str(scan.id)).order_by(AuditEvent.seq.desc())))


def scans_with_files(case_id: int) -> list[Scan]:
    """The scans on a case with their files, for the case page's Scans panel."""
    return list(db.session.scalars(select(Scan).where(Scan.case_id == case_id)
                                   .options(selectinload(Scan.files)).order_by(Scan.received_at)))


def bite_partners(scan: Scan) -> dict[int, ScanFile]:
    """The scan's files by id, so a bite's upper and lower arch can be named."""
    return {f.id: f for f in scan.files}


def work_order_scans(case_id: int) -> list[dict]:
    """The `scans` of the work order (docs/lab-api.md): a reference to every current file of
    the case's scans that was not refused. A file kept in the document store (an upload, a 3Shape
    export) has no vendor URL: its `url` is a signed download link to Lab Manager (links.py), good
    for LAB_LINK_TTL_DAYS, so a lab can fetch it for as long as its work order is current."""
    rows = db.session.execute(
        select(Scan.vendor, Scan.order_id, ScanFile).join(ScanFile, ScanFile.scan_id == Scan.id)
        .where(Scan.case_id == case_id, ScanFile.replaced_at.is_(None), ScanFile.state != FileState.REFUSED)
        .order_by(Scan.id, ScanFile.id))
    return [{"vendor": vendor.value, "order_id": order_id, "kind": f.kind, "file_name": f.file_name,
             "format": f.format, "jaw": f.jaw.value, "url": f.url or links.file_url(f)}
            for vendor, order_id, f in rows.tuples()]
