"""Scans brought in as files: a person's upload (the upload page) and 3Shape TRIOS exports (an
uploaded .zip, or the watched import folder in portal/integrations/threeshape/adapter.py).

:func:`receive` takes the files of one upload and, in the caller's transaction:

1. copies each into the document store (portal/scans/store.py), a chunk at a time;
2. reads every mesh of at most SCAN_BACKGROUND_MB at once (portal/scans/mesh/__init__.py): one that is
   broken or not a mesh refuses the whole upload, with the file's name and the reader's message, and
   nothing is kept of it (no row, no file). 3Shape's .dcm and .3ml are kept as references, never
   read. A larger file is only sniffed (its first megabyte and its size: a PDF renamed .stl or a cut
   off binary STL is refused at once), stored, and left PROCESSING for a job (`jobs.scanners.
   inspect_file`) that reads it with progress and sets it OK with its counts or REFUSED with why;
3. tells upper, lower and bite (mesh.detect_jaws: vendor metadata, none for an upload, then names,
   then geometry), and builds one VendorOrder (vendor UPLOAD, the upload's id as order id, stage
   READY) for `services.ingest`, which matches the patient, links the bite to both arches and
   joins or creates the case. A chosen case is linked with `services.assign_case`.

A 3Shape export .zip goes through threeshape.read_export instead, and its files are stored under
a folder named after their content (store.export_id), so the same export brought twice lands on
the same refs and ingest finds nothing new (the watched folder relies on that after a crash).

Services flush; the request or job commits. When the commit fails, the caller calls
`Received.discard()` so no files are left without rows.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import os
import shutil
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from flask import current_app
from sqlalchemy import select, update

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations.models import ScannerIntegration
from portal.integrations.threeshape import export as threeshape
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, Vendor, VendorOrder
from portal.people.models import Patient
from portal.practices.models import utcnow
from portal.queue import INSPECT_SCAN_FILE, enqueue_after_commit, enqueue_now, get_queue
from portal.scans import mesh, services, store
from portal.scans.mesh import MeshError, MeshInfo
from portal.scans.models import FileState, Scan, ScanFile
from portal.scans.services import ScanError

SOURCE = "upload"
MESH_EXTENSIONS = frozenset({".stl", ".ply", ".obj"})
REFERENCE_EXTENSIONS = frozenset({".dcm", ".3ml"})
ACCEPT = ".stl,.ply,.obj,.dcm,.3ml,.zip"
MAX_FILES = 40
PROGRESS_STEP = 5  # percent between two progress writes
STALE_PROCESSING = dt.timedelta(minutes=2)  # a PROCESSING file older than this gets its job again
ORPHAN_AGE = 24 * 3600  # store folders no row refers to are removed after this many seconds
MB = 1024 * 1024


class UploadRefused(ValueError):
    """The upload can't be taken; str() says why, `field` is the form field it belongs beside and
    `file_name` the file it is about."""

    def __init__(self, message: str, field: str = "files", file_name: str = ""):
        super().__init__(message)
        self.field = field
        self.file_name = file_name


@dataclass
class Incoming:
    """One file of an upload as the request has it (werkzeug spooled it to a temporary file)."""

    name: str
    stream: BinaryIO


@dataclass
class Received:
    scan: Scan
    outcome: str  # new, updated, unchanged
    case_action: str  # created, joined, linked or ""
    files: list[dict] = field(default_factory=list)  # name, size, state
    staging: store.Staging | None = None

    @property
    def processing(self) -> int:
        return sum(1 for f in self.files if f["state"] == FileState.PROCESSING.value)

    def discard(self) -> None:
        """The transaction did not commit: remove what this upload wrote to the store."""
        if self.staging is not None:
            self.staging.discard()


# -- limits ------------------------------------------------------------------------------------------

def upload_limit() -> int:
    return int(current_app.config["SCAN_UPLOAD_MAX_MB"]) * MB


def background_threshold() -> int:
    return int(float(current_app.config["SCAN_BACKGROUND_MB"]) * MB)


def inspect_timeout(size: int | None) -> int:
    """RQ job_timeout for reading a file of `size` bytes: a minute plus a second a megabyte, about
    thirty times what bench/mesh.py measures for an ASCII PLY (33 ms a megabyte, the slowest format)."""
    return 60 + math.ceil((size or 0) / MB)


def display_name(name: str) -> str:
    """The name people see: the last component of what the browser sent, without control characters."""
    base = unicodedata.normalize("NFC", name or "").replace("\\", "/").split("/")[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return base[:255] or "file"


# -- receiving an upload -------------------------------------------------------------------------------

def receive(practice_id: int, files: Sequence[Incoming], *, actor: Actor, patient: Patient | None = None,
            case: LabCase | None = None) -> Received:
    """Store, check and ingest one upload (see the module's docstring). Raises UploadRefused, having
    removed whatever it wrote; the caller rolls back."""
    files = [f for f in files if f.name]
    _check_choice(practice_id, patient, case)
    if case is not None:
        patient = case.patient
    if not files:
        raise UploadRefused("Choose the scan files to upload: STL, PLY or OBJ meshes, or one 3Shape export .zip.")
    if len(files) > MAX_FILES:
        raise UploadRefused(f"That is {len(files)} files; upload at most {MAX_FILES} at a time.")
    extensions = [os.path.splitext(display_name(f.name))[1].lower() for f in files]
    for f, ext in zip(files, extensions):
        if ext not in MESH_EXTENSIONS | REFERENCE_EXTENSIONS | {".zip"}:
            name = display_name(f.name)
            raise UploadRefused(f"“{name}” is not a scan file. Upload STL, PLY or OBJ meshes (3Shape .dcm and "
                                ".3ml are kept as references), or one 3Shape export .zip.", file_name=name)
    if ".zip" in extensions and len(files) > 1:
        raise UploadRefused("Upload a 3Shape export .zip on its own, not together with other files.")
    staging = store.Staging(practice_id)
    try:
        if extensions == [".zip"]:
            received = _receive_export(practice_id, files[0], staging, actor, patient, case)
        else:
            received = _receive_meshes(practice_id, files, staging, actor, patient, case)
    except BaseException:
        staging.discard()
        raise
    return received


def _check_choice(practice_id: int, patient: Patient | None, case: LabCase | None) -> None:
    if patient is not None and patient.practice_id != practice_id:
        raise UploadRefused("Choose a patient of this practice.", field="patient_id")
    if case is None:
        return
    if case.practice_id != practice_id:
        raise UploadRefused("Choose one of the patient's open cases.", field="case_id")
    if patient is not None and case.patient_id != patient.id:
        raise UploadRefused(f"{case.number} is a case of another patient.", field="case_id")
    if case.status not in Status.open():
        raise UploadRefused(f"{case.number} is {case.status.label.lower()}; a scan can't join it.", field="case_id")


@dataclass
class _Stored:
    name: str  # as people see it
    stored: str  # path inside the upload folder
    size: int
    format: str
    info: MeshInfo | None = None
    processing: bool = False


def _receive_meshes(practice_id, files, staging, actor, patient, case) -> Received:
    limit, threshold = upload_limit(), background_threshold()
    taken: set[str] = set()
    stored: list[_Stored] = []
    for f in files:
        name = display_name(f.name)
        relative = store.unique(store.safe_name(name), taken)
        target = staging.file(relative)
        try:
            size = store.copy_stream(f.stream, target, limit=limit)
        except store.TooLarge:
            raise UploadRefused(f"“{name}” is larger than the {limit // MB} MB an upload may be.", file_name=name) from None
        ext = os.path.splitext(name)[1].lower()
        if ext in REFERENCE_EXTENSIONS:
            stored.append(_Stored(name, relative, size, ext[1:].upper()))
            continue
        try:
            if size <= threshold:
                info = mesh.inspect(target, name=name)
                store.write_info(target, info)
                stored.append(_Stored(name, relative, size, info.format, info))
            else:
                with open(target, "rb") as head:
                    fmt = mesh.check_head(head.read(mesh.CHUNK_SIZE), size, name)
                stored.append(_Stored(name, relative, size, fmt, processing=True))
        except MeshError as exc:
            raise UploadRefused(f"“{name}” was refused: {exc}", file_name=name) from None
    jaws = mesh.detect_jaws([(s.name, None, s.info) for s in stored])
    upload_id = _new_upload_id()
    folder = staging.publish(upload_id)
    now = utcnow()
    assets = tuple(Asset(
        ref=store.ref(f"{folder}/{s.stored}"), file_name=s.name, format=s.format, kind="scan", size_bytes=s.size,
        jaw=guess.jaw, jaw_source=guess.source, jaw_note=guess.note,
        vertex_count=s.info.vertex_count if s.info else None, triangle_count=s.info.triangle_count if s.info else None,
    ) for s, guess in zip(stored, jaws))
    order = VendorOrder(vendor=Vendor.UPLOAD, order_id=upload_id, status="Uploaded", stage=OrderStage.READY,
                        patient=_patient_ref(patient, case), updated_at=now, assets=assets,
                        history=(("Uploaded", now),))
    processing = {a.ref for a, s in zip(assets, stored) if s.processing}
    return _ingest(practice_id, order, staging, actor, patient, case, None, processing, folder)


def _new_upload_id() -> str:
    return uuid.uuid4().hex


def _patient_ref(patient: Patient | None, case: LabCase | None, fallback: PatientRef | None = None) -> PatientRef:
    """The patient the order carries. With a chosen case, only the name: the case decides, and a
    chart number would let ingest place the scan on a case of its own choosing first."""
    if patient is None:
        return fallback or PatientRef()
    if case is not None:
        return PatientRef(patient.first_name, patient.last_name)
    return PatientRef(patient.first_name, patient.last_name, patient.chart_number, patient.date_of_birth)


def _receive_export(practice_id, incoming: Incoming, staging, actor, patient, case) -> Received:
    """An uploaded 3Shape export zip. The same export brought again (the same entries: names, sizes,
    CRC-32s) is told apart from its zip's directory before anything is unpacked: "unchanged". One whose
    meshes together exceed SCAN_BACKGROUND_MB has them only sniffed here and read by the same job,
    with the same progress on the scan page, as a large single file."""
    name = display_name(incoming.name)
    source = staging.file(f"{SOURCE_DIR}/{store.safe_name(name)}")
    try:
        store.copy_stream(incoming.stream, source, limit=upload_limit())
    except store.TooLarge:
        raise UploadRefused(f"“{name}” is larger than the {upload_limit() // MB} MB an upload may be.",
                            file_name=name) from None
    digest = threeshape.export_digest(source)
    known = _known_export(practice_id, digest)
    if known is not None and patient in (None, known.patient) and case in (None, known.case):
        staging.discard()
        return Received(known, "unchanged", "", _file_summary(known), None)
    background = threeshape.mesh_bytes(source) > background_threshold()
    try:
        staged = stage_export(staging, source, read_meshes=not background)
    except threeshape.ExportError as exc:
        raise UploadRefused(f"“{name}” was refused: {exc}", file_name=name) from None
    order = staged.order()
    order = dataclasses.replace(order, patient=_patient_ref(patient, case, order.patient))
    processing = {a.ref for a in order.assets if background and a.kind == "scan" and not a.error
                  and a.format in mesh.MESH_FORMATS.values()}
    received = _ingest(practice_id, order, staging, actor, patient, case, threeshape_integration(practice_id),
                       processing, staged.folder)
    if digest and received.scan.source_digest != digest:
        received.scan.source_digest = digest
    return received


def _known_export(practice_id: int, digest: str) -> Scan | None:
    if not digest:
        return None
    return db.session.scalar(select(Scan).where(
        Scan.practice_id == practice_id, Scan.vendor == Vendor.THREESHAPE, Scan.source_digest == digest)
        .order_by(Scan.id).limit(1))


def threeshape_integration(practice_id: int) -> ScannerIntegration | None:
    """The practice's active 3Shape integration, if it has one: its allowed labs apply to exports."""
    return db.session.scalar(select(ScannerIntegration).where(
        ScannerIntegration.practice_id == practice_id, ScannerIntegration.vendor == Vendor.THREESHAPE,
        ScannerIntegration.active.is_(True)).order_by(ScannerIntegration.id).limit(1))


def _ingest(practice_id, order: VendorOrder, staging, actor, patient, case, integration, processing: set[str],
            folder: str) -> Received:
    result = services.ingest(practice_id, order, actor=actor, source=SOURCE, integration=integration)
    scan = result.scan
    if patient is not None and scan.patient_id not in (None, patient.id):
        raise UploadRefused(f"This export was brought in before for another patient ({scan.patient.full_name}).",
                            field="patient_id")
    if case is not None and scan.case_id not in (None, case.id):
        raise UploadRefused(f"This export was brought in before and is on {scan.case.number}; it can't join "
                            f"{case.number} as well.", field="case_id")
    needs_case = case is not None and scan.case_id is None
    needs_patient = patient is not None and case is None and scan.patient_id is None and scan.case_id is None
    if result.outcome == "unchanged" and not (needs_case or needs_patient):
        return Received(scan, "unchanged", "", _file_summary(scan), staging)
    action = result.case_action
    try:
        if needs_case:
            services.assign_case(scan, case, actor)
            scan.patient_chart_number, scan.patient_dob = patient.chart_number[:40], patient.date_of_birth
            action = "linked"
        elif needs_patient:
            action = services.assign_patient(scan, patient, actor).case_action
    except ScanError as exc:
        raise UploadRefused(str(exc), field="case_id" if case is not None else "patient_id") from None
    for row in scan.current_files:
        if row.ref in processing and row.state is not FileState.PROCESSING and row.triangle_count is None:
            row.state, row.progress, row.error = FileState.PROCESSING, 0, ""
    if processing:
        services._link_bites(scan)  # a mesh being read is an arch before a reference to the same scan
    db.session.flush()
    for row in scan.current_files:
        if row.state is FileState.PROCESSING:
            enqueue_after_commit(INSPECT_SCAN_FILE, row.id, job_id=inspect_job_id(row.id),
                                 job_timeout=inspect_timeout(row.size_bytes))
    files = _file_summary(scan)
    record("scan.uploaded", "scan", scan.id, after={
        "folder": folder, "files": [{k: f[k] for k in ("name", "size", "state")} for f in files],
        "patient_id": scan.patient_id, "case_id": scan.case_id, "vendor": order.vendor.value,
    }, actor=actor, practice_id=practice_id)
    return Received(scan, result.outcome, action, files, staging)


def _file_summary(scan: Scan) -> list[dict]:
    return [{"id": f.id, "name": f.file_name, "size": f.size_bytes, "state": f.state.value, "jaw": f.jaw.value,
             "triangles": f.triangle_count} for f in scan.current_files]


# -- 3Shape exports, uploaded or found in the watched folder -----------------------------------------

SOURCE_DIR = ".source"  # inside a staging folder: the export as it came, removed before publishing


@dataclass(frozen=True)
class StagedExport:
    export: threeshape.ThreeShapeExport
    folder: str  # the store folder, "<practice id>/<export id>"
    paths: dict[str, str]  # path inside the export -> path inside the store folder

    def order(self) -> VendorOrder:
        """The export as a VendorOrder whose file refs name where each file was stored."""
        prefix = "\0"
        order = self.export.to_vendor_order(prefix)
        assets = tuple(dataclasses.replace(a, ref=store.ref(f"{self.folder}/{self.paths[a.ref[len(prefix):]]}"))
                       for a in order.assets)
        extra = dict(order.extra)
        extra.pop("bite_links", None)  # ingest links the bite to both arches from the jaws
        extra["order_xml"] = store.ref(f"{self.folder}/{self.paths.get(self.export.xml_path, '')}")
        return dataclasses.replace(order, assets=assets, extra=extra)


def stage_export(staging: store.Staging, source: Path, *, read_meshes: bool = True) -> StagedExport:
    """Read the export at `source` (a folder or zip inside `staging`), copy its files to their safe
    paths in `staging` and publish them under the export's content id (the same export read twice
    gets the same folder). With `read_meshes` False the meshes are only sniffed (a job reads them).
    Raises threeshape.ExportError."""
    export = threeshape.read_export(source, read_meshes=read_meshes)
    top = _single_top(export)
    paths: dict[str, str] = {}
    taken: set[str] = set()
    entries: list[tuple[str, str]] = []
    opener, closer = _opener(source)
    try:
        for f in export.files:
            relative = store.unique(store.safe_path(f.path[len(top):]), taken)
            paths[f.path] = relative
            if f.error:
                continue  # a refused file of the export is listed with why, and not kept
            digest = hashlib.sha256()
            target = staging.file(relative)
            try:
                with opener(f.path) as member:
                    store.copy_stream(member, target, digest=digest)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise threeshape.ExportError(f"{f.path} is damaged inside the export and cannot be "
                                             f"copied ({exc}).") from None
            entries.append((relative, digest.hexdigest()))
            if f.mesh is not None:
                store.write_info(target, f.mesh)
    finally:
        closer()
    shutil.rmtree(staging.path / SOURCE_DIR, ignore_errors=True)
    return StagedExport(export, staging.publish(store.export_id(entries)), paths)


def _single_top(export: threeshape.ThreeShapeExport) -> str:
    """"<folder>/" when every file of a zip sits in one top folder (as TRIOS zips an export), so the
    zip and the folder it was made from are stored alike."""
    tops = {f.path.split("/", 1)[0] for f in export.files}
    if len(tops) == 1 and all("/" in f.path for f in export.files):
        return next(iter(tops)) + "/"
    return ""


def _opener(source: Path):
    if source.is_dir():
        return (lambda path: open(source.joinpath(*path.split("/")), "rb")), (lambda: None)
    archive = zipfile.ZipFile(source)
    names = {info.filename.replace("\\", "/"): info for info in archive.infolist()}
    return (lambda path: archive.open(names[path])), archive.close


# -- the background read of a large file ----------------------------------------------------------

def inspect_job_id(file_id: int) -> str:
    return f"scan-file-inspect-{file_id}"


@dataclass(frozen=True)
class Target:
    file_id: int
    path: Path | None
    name: str
    size: int | None


def claim(file_id: int) -> Target | None:
    """What a job is to read, or None when the file is not PROCESSING (read already: a rerun)."""
    row = db.session.get(ScanFile, file_id)
    if row is None or row.state is not FileState.PROCESSING:
        return None
    return Target(row.id, store.resolve(row.ref), row.file_name, row.size_bytes)


def read(target: Target, progress=None) -> tuple[MeshInfo | None, str]:
    """(info, "") or (None, why it was refused). Only MeshError and a missing file are answers; any
    other error is the job's to raise."""
    if target.path is None or not target.path.is_file():
        return None, "The stored copy of the file is missing; upload it again."
    try:
        return mesh.inspect(target.path, name=target.name, progress=progress), ""
    except MeshError as exc:
        return None, str(exc)


def set_progress(file_id: int, percent: int) -> None:
    db.session.execute(update(ScanFile).where(ScanFile.id == file_id, ScanFile.state == FileState.PROCESSING)
                       .values(progress=max(0, min(99, percent))), execution_options={"synchronize_session": False})


def finish(file_id: int, info: MeshInfo | None, error: str, actor: Actor) -> str:
    """Write what the job found, once: the row changes only while it is PROCESSING. When it was the
    last file of its scan being read, the jaws are told again with every file's shape known."""
    row = db.session.get(ScanFile, file_id)
    if row is None:
        return "nothing to do"
    scan = db.session.scalar(select(Scan).where(Scan.id == row.scan_id).with_for_update())
    if info is not None:
        values = {"state": FileState.OK, "vertex_count": info.vertex_count, "triangle_count": info.triangle_count,
                  "format": info.format, "error": "", "progress": 100}
    else:
        values = {"state": FileState.REFUSED, "error": error[:300], "progress": 100}
    done = db.session.execute(update(ScanFile).where(ScanFile.id == file_id, ScanFile.state == FileState.PROCESSING)
                              .values(**values), execution_options={"synchronize_session": False})
    if done.rowcount != 1:
        return "nothing to do"
    db.session.refresh(row)
    path = store.resolve(row.ref)
    if info is not None and path is not None:
        store.write_info(path, info)
    elif info is None:
        store.discard_file(path)  # a refused file is not kept: the row says why
    after = {"file_id": row.id, "file": row.file_name, "state": row.state.value, "vertices": row.vertex_count,
             "triangles": row.triangle_count, "error": row.error}
    if not any(f.state is FileState.PROCESSING for f in scan.current_files if f.id != row.id):
        changed = redetect_jaws(scan)
        if changed:
            after["jaws"] = changed
    record("scan.file_checked", "scan", scan.id, after=after, actor=actor, practice_id=scan.practice_id,
           outcome="ok" if info is not None else "refused")
    return row.state.value


class ProgressWriter:
    """mesh.inspect's progress callback: the percentage read, written in its own short transaction
    each time it moved on by at least `step` percent (nothing else is open while the file is read)."""

    def __init__(self, file_id: int, step: int = PROGRESS_STEP):
        self.file_id, self.step, self.last = file_id, step, 0

    def __call__(self, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 0
        if percent - self.last < self.step or percent >= 100:
            return
        self.last = percent
        set_progress(self.file_id, percent)
        db.session.commit()


def inspect_in_background(file_id: int) -> str:
    """The INSPECT_SCAN_FILE job: read one PROCESSING file of the document store and set it OK with
    its counts, or REFUSED with the reader's message. State-guarded: a rerun (the sweep, a second
    enqueue) finds the file no longer PROCESSING and does nothing; the outcome is written once (an
    UPDATE ... WHERE state = 'processing'). Deterministic job id: inspect_job_id."""
    target = claim(file_id)
    db.session.rollback()  # no transaction stays open while the file is read
    if target is None:
        return "nothing to do"
    info, error = read(target, ProgressWriter(file_id))
    outcome = finish(file_id, info, error, Actor.job(INSPECT_SCAN_FILE.func))
    db.session.commit()
    return outcome


def background_failed(file_id: int, exc_type, time_limit: int | None) -> None:
    """The job raised (a bug, the time limit, a worker that died): refuse the file with why, so it
    does not look busy for ever. If the database is away too, the file stays PROCESSING and the
    sweep gives it its job again."""
    from rq.timeouts import JobTimeoutException

    if issubclass(exc_type, JobTimeoutException):
        message = (f"Reading this file took longer than {time_limit} seconds and was stopped. Check that it is "
                   "a scan, and upload it again.")
    else:
        message = f"Lab Manager could not finish checking this file ({exc_type.__name__}); upload it again."
    fail(file_id, message, Actor.job(INSPECT_SCAN_FILE.func))
    db.session.commit()


def fail(file_id: int, message: str, actor: Actor) -> bool:
    """A job that raised (a bug, a timeout): the file is refused with why, once."""
    row = db.session.get(ScanFile, file_id)
    if row is None:
        return False
    done = db.session.execute(update(ScanFile).where(ScanFile.id == file_id, ScanFile.state == FileState.PROCESSING)
                              .values(state=FileState.REFUSED, error=message[:300]),
                              execution_options={"synchronize_session": False})
    if done.rowcount != 1:
        return False
    store.discard_file(store.resolve(row.ref))
    record("scan.file_checked", "scan", row.scan_id, after={"file_id": row.id, "file": row.file_name,
           "state": FileState.REFUSED.value, "error": message[:300]}, actor=actor,
           practice_id=row.scan.practice_id, outcome="error")
    return True


def redetect_jaws(scan: Scan) -> dict[str, str]:
    """Tell the jaws of the scan's stored files again, now that every file's shape is known (vendor
    metadata stays as it was); relink the bite. Returns {file name: new jaw} for what changed."""
    files = [f for f in scan.current_files if f.kind == "scan" and store.is_store_ref(f.ref)
             and f.jaw_source != services.SOURCE_PERSON]  # a person's jaw stays
    if not files:
        return {}
    infos = []
    for f in files:
        path = store.resolve(f.ref) if f.state is FileState.OK else None
        infos.append(store.read_info(path) if path is not None else None)
    found = mesh.detect_jaws([(f.file_name, f.jaw if f.jaw_source == mesh.SOURCE_VENDOR else None, info)
                              for f, info in zip(files, infos)])
    changed = {}
    for f, guess in zip(files, found):
        (jaw, how), note = guess, guess.note
        if f.jaw_source == mesh.SOURCE_VENDOR or (f.jaw, f.jaw_source, f.jaw_note) == (jaw, how, note):
            continue
        if jaw is Jaw.UNKNOWN and f.jaw is not Jaw.UNKNOWN:
            continue  # a refused neighbour took the geometry away: keep what was known
        if (f.jaw, f.jaw_source) != (jaw, how):
            changed[f.file_name] = jaw.value
        f.jaw, f.jaw_source, f.jaw_note = jaw, how, note[:200]
    db.session.flush()
    services._link_bites(scan)  # a file refused by its job is no arch to link any more
    return changed


# -- the sweep -----------------------------------------------------------------------------------------

def sweep(now: dt.datetime | None = None, tidy: bool | None = None) -> dict:
    """Give every file PROCESSING for a while its job again (the deterministic job id makes a
    queued or running one stay as it is), and, at most once an hour (a claim in Redis), remove store
    folders no row refers to: a crash between writing an upload's files and its commit, or an
    export read but never ingested."""
    import redis

    now = now or utcnow()
    queue = get_queue()
    stale = db.session.execute(select(ScanFile.id, ScanFile.size_bytes).where(
        ScanFile.state == FileState.PROCESSING, ScanFile.created_at <= now - STALE_PROCESSING)).all()
    for file_id, size in stale:
        enqueue_now(queue, INSPECT_SCAN_FILE, file_id, job_id=inspect_job_id(file_id), job_timeout=inspect_timeout(size))
    if tidy is None:
        try:
            tidy = bool(queue.connection.set(TIDY_CLAIM, 1, nx=True, ex=3600))
        except redis.RedisError:
            tidy = False
    removed = tidy_store() if tidy else []
    return {"requeued": len(stale), "tidied": len(removed)}


TIDY_CLAIM = "labmanager:scan-store-tidy"


def tidy_store() -> list[Path]:
    referenced = {"/".join(r[len(store.PREFIX):].split("/")[:2]) for r in db.session.scalars(
        select(ScanFile.ref).where(ScanFile.ref.like(store.PREFIX + "%")))}
    removed = store.orphans(referenced, ORPHAN_AGE)
    for folder in removed:
        store.remove(folder)
    return removed
