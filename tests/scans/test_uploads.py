"""Scan files uploaded through the page (docs/sources.md source 002): each format read with its
counts, broken and non-mesh files refused with the reader's message and nothing kept, 3Shape's
.dcm kept as a reference, large files read by a job with progress, jaws and the bite's arches, the
patient and case the scan lands on, a 3Shape export .zip, the size limit, CSRF, roles and other
practices' ids; and the signed links labs fetch stored files with."""
from __future__ import annotations

import datetime as dt
import io
import logging
import re
import zipfile

import pytest
import time_machine
from sqlalchemy import event, func, select

from jobs import scanners as scanner_jobs
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.dispatch.services import work_order
from portal.extensions import db
from portal.integrations.vendor import Jaw, Vendor
from portal.scans import links, store, uploads
from portal.scans.models import FileState, InboxState, Scan, ScanFile
from portal.scans.queries import work_order_scans
from tests import factories
from tests.jobs import drain
from tests.scans import meshes
from tests.integrations.conftest import counts, post_upload, stored_files

CUBE_STL = meshes.binary_stl(meshes.corners(meshes.CUBE_VERTICES, meshes.CUBE_QUADS))
UPPER = meshes.binary_stl(meshes.corners(*meshes.arch("upper")))
LOWER = meshes.binary_stl(meshes.corners(*meshes.arch("lower")))
BITE = meshes.binary_stl(meshes.corners(*meshes.bite()))


def the_scan() -> Scan:
    scans = list(db.session.scalars(select(Scan)))
    assert len(scans) == 1, scans
    return scans[0]


def by_name(scan: Scan) -> dict[str, ScanFile]:
    return {f.file_name: f for f in scan.current_files}


def fetch(client, url: str):
    """GET a download and close it (a file response holds the file open until closed)."""
    response = client.get(url)
    response.get_data()
    response.close()
    return response


def flash_of(client) -> str:
    page = client.get("/scans/").get_data(as_text=True)
    return " ".join(re.findall(r'class="toast[^"]*"[^>]*>\s*<span>([^<]*)</span>', page))


# -- every format, with its counts ---------------------------------------------------------------------

FORMATS = {
    "binary STL": ("upper.stl", CUBE_STL, "STL", 36, 12),
    "ASCII STL": ("upper.stl", meshes.ascii_stl(meshes.corners(meshes.CUBE_VERTICES, meshes.CUBE_QUADS)), "STL", 36, 12),
    "ASCII PLY": ("upper.ply", meshes.ply(meshes.CUBE_VERTICES, meshes.CUBE_QUADS), "PLY", 8, 12),
    "binary PLY (little endian)": ("upper.ply", meshes.ply(meshes.CUBE_VERTICES, meshes.CUBE_QUADS,
                                                           "binary_little_endian"), "PLY", 8, 12),
    "binary PLY (big endian)": ("upper.ply", meshes.ply(meshes.CUBE_VERTICES, meshes.CUBE_QUADS, "binary_big_endian"),
                                "PLY", 8, 12),
    "OBJ": ("upper.obj", meshes.obj(meshes.CUBE_VERTICES, meshes.CUBE_QUADS, "full"), "OBJ", 8, 12),
}


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_is_read_with_its_counts_and_kept_in_the_store(client, login, world, store_dir, kind):
    name, body, fmt, vertices, triangles = FORMATS[kind]
    patient = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    login("coordinator")

    response = post_upload(client, {name: body}, patient=patient)

    assert response.status_code == 303, response.get_data(as_text=True)
    scan = the_scan()
    assert response.headers["Location"].endswith(f"/scans/{scan.id}")
    f = scan.current_files[0]
    assert (f.state, f.format, f.vertex_count, f.triangle_count, f.size_bytes) == (
        FileState.OK, fmt, vertices, triangles, len(body))
    assert (f.jaw, f.jaw_source) == (Jaw.UPPER, "file name")
    assert re.fullmatch(rf"store:{world.practice.id}/[0-9a-f]{{32}}/{re.escape(name)}", f.ref)
    assert store.resolve(f.ref).read_bytes() == body  # the store holds the bytes; the row only the path
    assert (scan.vendor, scan.source, scan.status) == (Vendor.UPLOAD, "upload", "Uploaded")
    assert scan.patient_id == patient.id and scan.case is not None


# -- refusals: the whole upload, with the file's name and the reader's message, and nothing kept ------------

truncated = CUBE_STL[:-30]
REFUSALS = {
    "empty": ("lower.stl", b"", "The file is empty."),
    "truncated binary STL": ("lower.stl", truncated, "it was cut off"),
    "a PDF named .stl": ("lower.stl", b"%PDF-1.7\n" + b"x" * 200, "it looks like a PDF document"),
    "text that is no mesh": ("lower.ply", b"hello, this is not a mesh\n" * 5, "does not start with a PLY header"),
    "a cut-off OBJ": ("lower.obj", meshes.obj(meshes.CUBE_VERTICES, meshes.CUBE_QUADS)[:-9], "cut off"),
    "an OBJ that is a point cloud": ("lower.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
    "a PLY whose faces name no vertex": ("lower.ply", meshes.ply(meshes.CUBE_VERTICES, [[0, 1, 99]]), "99"),
}


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
@pytest.mark.parametrize("kind", REFUSALS)
def test_a_broken_or_non_mesh_file_refuses_the_whole_upload_and_keeps_nothing(client, login, world, store_dir,
                                                                               kind, htmx):
    name, body, message = REFUSALS[kind]
    login("coordinator")
    before = counts()

    response = post_upload(client, {"upper.stl": CUBE_STL, name: body}, htmx=htmx)

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert ("<html" in html) is not htmx  # the form alone for htmx, the page otherwise
    error = re.search(r'<p class="error" id="files-error" role="alert">([^<]*)</p>', html).group(1)
    assert f"“{name}” was refused" in error and message in error.replace("&#39;", "'"), error
    assert counts() == before  # no scan, no file row, no audit row
    assert stored_files(store_dir) == []  # and no file: not even the good one uploaded with it


def test_a_file_that_is_not_a_scan_format_is_refused_by_name(client, login, store_dir):
    login("coordinator")
    before = counts()

    response = post_upload(client, {"upper.stl": CUBE_STL, "x-ray.jpg": b"\xff\xd8\xff\xe0 jpeg"})

    assert response.status_code == 422
    assert "“x-ray.jpg” is not a scan file" in response.get_data(as_text=True)
    assert counts() == before and stored_files(store_dir) == []


def test_an_upload_without_files_says_so(client, login, store_dir):
    login("coordinator")
    response = post_upload(client, {})
    assert response.status_code == 422
    assert "Choose the scan files to upload" in response.get_data(as_text=True)


def test_3shape_dcm_and_3ml_are_kept_as_references_beside_the_meshes(client, login, world, store_dir):
    login("coordinator")
    dcm = b'<HPS version="1.0"><Binary_data/></HPS>'

    response = post_upload(client, {"upper.stl": UPPER, "lower.stl": LOWER, "PreparationScan.dcm": dcm,
                                    "model.3ml": b"PK\x03\x04 locked"})

    assert response.status_code == 303
    files = by_name(the_scan())
    for name, fmt in (("PreparationScan.dcm", "DCM"), ("model.3ml", "3ML")):
        f = files[name]
        assert (f.state, f.format, f.triangle_count, f.kind) == (FileState.REFERENCE, fmt, None, "scan")
        assert store.resolve(f.ref).is_file()
    assert dcm == store.resolve(files["PreparationScan.dcm"].ref).read_bytes()


def test_unsafe_file_names_are_stored_under_safe_ones(client, login, world, store_dir):
    login("coordinator")

    response = post_upload(client, [("../../etc/upper.stl", UPPER), ("lower.stl", LOWER),
                                    ("a\x00b<script>.stl", BITE), ("upper.stl", UPPER)])

    assert response.status_code == 303
    files = the_scan().current_files
    stored = [store.resolve(f.ref) for f in files]
    assert all(p is not None and store_dir.resolve() in p.parents for p in stored)
    assert sorted(p.name for p in stored) == ["ab_script_.stl", "lower.stl", "upper (2).stl", "upper.stl"]
    assert sorted(f.file_name for f in files) == ["ab<script>.stl", "lower.stl", "upper.stl", "upper.stl"]
    assert "ab&lt;script&gt;.stl" in client.get(f"/scans/{the_scan().id}").get_data(as_text=True)
    assert store.resolve("store:../outside") is None and store.resolve("store:/etc/passwd") is None


@pytest.mark.parametrize("given, safe", [
    ("C:\\Users\\scan\\UpperJaw.stl", "UpperJaw.stl"), ("../../x.stl", "x.stl"), ("..", "file"),
    (".hidden.stl", "hidden.stl"), ("a/b/c:d?.ply", "c_d_.ply"), ("Zoë Ørsted.obj", "Zoë Ørsted.obj"),
    ("x" * 300 + ".stl", "x" * 116 + ".stl"), ("", "file"), ("CON\x07.stl", "CON.stl"),
])
def test_safe_names(given, safe):
    assert store.safe_name(given) == safe
    assert store.safe_path("../a/./b/../c.stl") == "_/a/b/_/c.stl" or ".." not in store.safe_path("../a/b/../c.stl")


# -- large files: read by a job, with progress ------------------------------------------------------------

@pytest.fixture()
def small_threshold(app, monkeypatch):
    monkeypatch.setitem(app.config, "SCAN_BACKGROUND_MB", 0.05)  # 52 KB: anything larger goes to the job


def progress_writes(app):
    """Every progress value the job writes, as the database sees the UPDATE statements."""
    seen: list[int] = []

    def listen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE SCAN_FILE SET PROGRESS"):
            params = parameters if isinstance(parameters, (list, tuple)) else list(parameters.values())
            seen.append(int(params[0]))

    return seen, listen


def test_a_large_file_is_read_by_a_job_with_progress_and_a_rerun_does_nothing(
        client, login, world, store_dir, scan_queue, small_threshold, tmp_path, app):
    big = meshes.big_binary_stl(tmp_path / "UpperJaw.stl", 120_000).read_bytes()  # 6 MB: six chunks
    login("coordinator")

    response = post_upload(client, {"UpperJaw.stl": big, "lower.stl": LOWER})

    assert response.status_code == 303
    scan = the_scan()
    f = by_name(scan)["UpperJaw.stl"]
    assert (f.state, f.progress, f.triangle_count, f.jaw) == (FileState.PROCESSING, 0, None, Jaw.UPPER)
    assert by_name(scan)["lower.stl"].state is FileState.OK  # small: read in the request
    assert uploads.inspect_job_id(f.id) in scan_queue.get_job_ids()
    job = scan_queue.fetch_job(uploads.inspect_job_id(f.id))
    assert job.timeout == 60 + 6  # a minute and a second a megabyte
    assert "being checked in the background" in flash_of(client)

    page = client.get(f"/scans/{scan.id}").get_data(as_text=True)
    assert 'id="scan-processing"' in page and 'hx-trigger="every 1s"' in page
    poll = client.hx(f"/scans/{scan.id}/processing")
    assert poll.status_code == 200 and "HX-Refresh" not in poll.headers
    assert '<progress max="100" value="0"' in poll.get_data(as_text=True)

    seen, listen = progress_writes(app)
    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        drain(scan_queue)
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)

    f = db.session.get(ScanFile, f.id)
    assert (f.state, f.triangle_count, f.vertex_count, f.progress, f.error) == (FileState.OK, 120_000, 360_000, 100, "")
    assert seen and seen == sorted(seen) and all(0 < p < 100 for p in seen)  # written as it went, in steps
    assert all(b - a >= uploads.PROGRESS_STEP for a, b in zip(seen, seen[1:]))
    checked = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "scan.file_checked")).all()
    assert len(checked) == 1 and '"triangles":120000' in checked[0].after

    done = client.hx(f"/scans/{scan.id}/processing")
    assert done.headers["HX-Refresh"] == "true" and "every 1s" not in done.get_data(as_text=True)
    assert 'id="scan-processing"' not in client.get(f"/scans/{scan.id}").get_data(as_text=True)

    audit_rows = counts()[2]
    assert scanner_jobs.inspect_file(f.id) == "nothing to do"  # a rerun (the sweep, a second enqueue)
    assert counts()[2] == audit_rows and db.session.get(ScanFile, f.id).state is FileState.OK


@pytest.mark.parametrize("damage, message", [
    ("a vertex that is not a number", "has a vertex coordinate that is not a number"),
    ("cut off", "stops in the middle after facet 1,685 (no “endsolid”): it was cut off"),
])
def test_a_broken_large_file_ends_refused_with_the_readers_message(client, login, world, store_dir, scan_queue,
                                                                    small_threshold, damage, message):
    good = meshes.ascii_stl(meshes.corners(*meshes.arch("upper", segments=200)))
    if damage == "cut off":
        broken = good[:int(len(good) * 0.7)]
    else:
        lines = good.split(b"\n")
        mid = next(i for i in range(len(lines) // 2, len(lines)) if lines[i].strip().startswith(b"vertex"))
        broken = b"\n".join([*lines[:mid], b"      vertex 1.0 banana 2.0", *lines[mid + 1:]])
    patient = factories.patient(world.practice)
    db.session.commit()
    login("coordinator")

    assert post_upload(client, {"upper.stl": broken, "lower.stl": LOWER}, patient=patient).status_code == 303

    f = by_name(the_scan())["upper.stl"]
    assert f.state is FileState.PROCESSING  # it starts like an ASCII STL
    drain(scan_queue)
    f = db.session.get(ScanFile, f.id)
    assert f.state is FileState.REFUSED and f.triangle_count is None
    assert message in f.error, f.error
    row = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "scan.file_checked")).one()
    assert row.outcome == "refused"
    assert [s["file_name"] for s in work_order_scans(f.scan.case_id)] == ["lower.stl"]  # refused: not sent
    kept = [p.name for p in stored_files(store_dir)]
    assert not any("upper" in name for name in kept) and "lower.stl" in kept  # the refused copy is not kept


def test_a_large_file_that_is_plainly_not_a_mesh_is_refused_at_once(client, login, store_dir, small_threshold):
    login("coordinator")
    before = counts()

    response = post_upload(client, {"upper.stl": b"%PDF-1.7\n" + b"x" * 200_000,
                                    "lower.stl": meshes.binary_stl(meshes.corners(*meshes.arch("lower")), count=99_999)})

    assert response.status_code == 422
    assert "it looks like a PDF document" in response.get_data(as_text=True)
    assert counts() == before and stored_files(store_dir) == []


def test_a_job_that_fails_refuses_its_file_once(world, store_dir, scan_queue, small_threshold, client, login,
                                                 monkeypatch):
    login("coordinator")
    post_upload(client, {"upper.stl": meshes.binary_stl(meshes.corners(*meshes.arch("upper", segments=400)))})
    f = the_scan().current_files[0]

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(uploads.mesh, "inspect", boom)
    drain(scan_queue)

    f = db.session.get(ScanFile, f.id)
    assert f.state is FileState.REFUSED and "could not finish checking this file (RuntimeError)" in f.error
    assert stored_files(store_dir) == []  # nothing of the refused upload is kept
    assert uploads.inspect_job_id(f.id) in scan_queue.failed_job_registry.get_job_ids()  # not swallowed: RQ saw it


def test_the_sweep_gives_a_stuck_file_its_job_again_and_tidies_orphan_folders(client, login, world, store_dir,
                                                                               scan_queue, small_threshold):
    login("coordinator")
    post_upload(client, {"upper.stl": meshes.binary_stl(meshes.corners(*meshes.arch("upper", segments=400)))})
    f = the_scan().current_files[0]
    scan_queue.empty()  # Redis lost the job
    orphan = store_dir / str(world.practice.id) / "deadbeef"
    orphan.mkdir(parents=True)
    (orphan / "left.stl").write_bytes(b"x")
    import os
    import time

    os.utime(orphan, (time.time() - 3 * 86400,) * 2)

    scan_queue.connection.delete(uploads.TIDY_CLAIM)
    result = uploads.sweep(now=f.created_at + dt.timedelta(minutes=5))

    assert result == {"requeued": 1, "tidied": 1}
    assert uploads.sweep(now=f.created_at + dt.timedelta(minutes=5))["tidied"] == 0  # once an hour
    assert not orphan.exists() and store.resolve(f.ref).is_file()
    drain(scan_queue)
    assert db.session.get(ScanFile, f.id).state is FileState.OK


# -- jaws and the bite --------------------------------------------------------------------------------------

def test_a_bite_is_linked_to_both_arches_by_name(client, login, world, store_dir):
    login("coordinator")
    assert post_upload(client, {"upper.stl": UPPER, "lower.stl": LOWER, "bite.stl": BITE}).status_code == 303
    files = by_name(the_scan())
    bite = files["bite.stl"]
    assert [files[n].jaw for n in ("upper.stl", "lower.stl", "bite.stl")] == [Jaw.UPPER, Jaw.LOWER, Jaw.BITE]
    assert (bite.upper_file_id, bite.lower_file_id) == (files["upper.stl"].id, files["lower.stl"].id)


def test_jaws_fall_back_to_geometry_when_the_names_say_nothing(client, login, world, store_dir):
    login("coordinator")
    assert post_upload(client, {"scan-1.stl": LOWER, "scan-2.stl": BITE, "scan-3.stl": UPPER}).status_code == 303
    files = by_name(the_scan())
    assert [(files[n].jaw, files[n].jaw_source) for n in ("scan-1.stl", "scan-2.stl", "scan-3.stl")] == [
        (Jaw.LOWER, "geometry"), (Jaw.BITE, "geometry"), (Jaw.UPPER, "geometry")]
    assert (files["scan-2.stl"].upper_file_id, files["scan-2.stl"].lower_file_id) == (
        files["scan-3.stl"].id, files["scan-1.stl"].id)


def test_geometry_is_told_again_once_a_large_arch_is_read(client, login, world, store_dir, scan_queue, small_threshold):
    big_upper = meshes.binary_stl(meshes.corners(*meshes.arch("upper", segments=400)))
    small_lower = meshes.binary_stl(meshes.corners(*meshes.arch("lower", segments=20, across=2)))
    small_bite = meshes.binary_stl(meshes.corners(*meshes.bite(segments=4, tall=2)))
    assert len(small_lower) < 50_000 < len(big_upper)
    login("coordinator")
    post_upload(client, {"a.stl": big_upper, "b.stl": small_lower, "c.stl": small_bite})
    files = by_name(the_scan())
    assert files["a.stl"].jaw is Jaw.UNKNOWN  # its shape is not known yet

    drain(scan_queue)

    files = by_name(db.session.get(Scan, the_scan().id))
    assert [files[n].jaw for n in ("a.stl", "b.stl", "c.stl")] == [Jaw.UPPER, Jaw.LOWER, Jaw.BITE]
    assert (files["c.stl"].upper_file_id, files["c.stl"].lower_file_id) == (files["a.stl"].id, files["b.stl"].id)


# -- where the scan lands ---------------------------------------------------------------------------------

def test_a_chosen_patient_without_a_case_gets_a_new_draft_case(client, login, world, store_dir):
    patient = factories.patient(world.practice)
    db.session.commit()
    login("coordinator")

    post_upload(client, {"upper.stl": UPPER, "lower.stl": LOWER}, patient=patient)

    scan = the_scan()
    case = scan.case
    assert (scan.inbox, scan.matched_by, case.patient_id, case.status) == (
        InboxState.LINKED, "chart", patient.id, Status.DRAFT)
    assert (case.origin, case.origin_order_id) == ("upload", scan.order_id)
    assert "is on a new draft case" in flash_of(client)
    actions = list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions[-5:] == ["scan.received", "scan.matched", "case.create", "case.scan_linked", "scan.uploaded"]


def test_a_chosen_patient_joins_their_open_draft(client, login, world, store_dir):
    patient = factories.patient(world.practice)
    draft = factories.case(world, patient_obj=patient)
    login("coordinator")

    post_upload(client, {"upper.stl": UPPER}, patient=patient)

    assert the_scan().case_id == draft.id
    assert db.session.scalar(select(func.count()).select_from(LabCase)) == 1


def test_a_chosen_case_takes_the_scan_even_when_the_patient_has_others(client, login, world, store_dir):
    patient = factories.patient(world.practice)
    first = factories.case(world, patient_obj=patient)
    sent = factories.case(world, Status.SENT, patient_obj=patient)
    login("coordinator")

    response = post_upload(client, {"upper.stl": UPPER}, case=sent)

    assert response.status_code == 303
    scan = the_scan()
    assert (scan.case_id, scan.patient_id, scan.matched_by) == (sent.id, patient.id, "person")
    assert (scan.patient_chart_number, db.session.get(LabCase, first.id).status) == (patient.chart_number, Status.DRAFT)
    assert db.session.scalar(select(func.count()).select_from(LabCase)) == 2  # no case of its own


def test_a_case_of_another_patient_or_a_closed_case_is_refused_beside_the_case(client, login, world, store_dir):
    patient, other = factories.patient(world.practice), factories.patient(world.practice)
    theirs = factories.case(world, patient_obj=other)
    cancelled = factories.case(world, Status.CANCELLED, patient_obj=patient)
    login("coordinator")
    before = counts()

    wrong = post_upload(client, {"upper.stl": UPPER}, patient=patient, case=theirs, htmx=True)
    closed = post_upload(client, {"upper.stl": UPPER}, case=cancelled)

    assert wrong.status_code == closed.status_code == 422
    assert f"{theirs.number} is a case of another patient." in wrong.get_data(as_text=True)
    assert 'id="case-error"' in closed.get_data(as_text=True) and "cancelled" in closed.get_data(as_text=True)
    assert counts() == before and stored_files(store_dir) == []


def test_without_a_patient_the_scan_waits_in_the_inbox(client, login, world, store_dir):
    login("coordinator")

    post_upload(client, {"upper.stl": UPPER})

    scan = the_scan()
    assert (scan.inbox, scan.patient_id, scan.case_id) == (InboxState.PENDING, None, None)
    assert "match the patient" in scan.problem
    assert "It waits in the inbox" in flash_of(client)


# -- a 3Shape export .zip --------------------------------------------------------------------------------------

ORDER = "20240611_1432_Tech01_Doe"


def export_zip(tmp_path, files=None, name=f"{ORDER}.zip", **kw) -> bytes:
    return meshes.write_export_zip(tmp_path / name, ORDER, files, **kw).read_bytes()


def test_a_3shape_export_zip_is_read_stored_and_matched(client, login, world, store_dir, tmp_path):
    patient = factories.patient(world.practice, "Jane", "Doe", chart="CH-1042")
    factories.integration(world.practice, Vendor.THREESHAPE, labs=[world.labs["email"]], name="TRIOS")
    db.session.commit()
    login("coordinator")

    response = post_upload(client, {f"{ORDER}.zip": export_zip(tmp_path)})

    assert response.status_code == 303, response.get_data(as_text=True)
    scan = the_scan()
    assert (scan.vendor, scan.order_id, scan.patient_id, scan.source) == (Vendor.THREESHAPE, ORDER, patient.id, "upload")
    assert scan.case.lab_id == world.labs["email"].id  # the 3Shape integration's only lab
    files = by_name(scan)
    prep, antagonist, bite = (files[f"{ORDER}_{k}Scan.stl"] for k in ("Preparation", "Antagonist", "Bite"))
    assert [(f.jaw, f.jaw_source, f.state) for f in (prep, antagonist, bite)] == [
        (Jaw.UPPER, "vendor", FileState.OK), (Jaw.LOWER, "vendor", FileState.OK), (Jaw.BITE, "vendor", FileState.OK)]
    assert (bite.upper_file_id, bite.lower_file_id) == (prep.id, antagonist.id)
    folder = prep.ref.rsplit("/", 1)[0]
    assert re.fullmatch(rf"store:{world.practice.id}/export-[0-9a-f]{{32}}", folder)  # the zip's top folder dropped
    assert files[f"{ORDER}_PreparationScan.dcm"].state is FileState.REFERENCE
    assert files[f"{ORDER} 0.dcm"].ref == f"{folder}/CAD/{ORDER} 0.dcm"
    assert not any(p.suffix == ".zip" for p in stored_files(store_dir))  # the zip itself is not kept
    assert all(store.resolve(f.ref).is_file() for f in scan.current_files)


def test_the_same_export_brought_again_changes_nothing(client, login, world, store_dir, tmp_path):
    factories.patient(world.practice, "Jane", "Doe", chart="CH-1042")
    db.session.commit()
    login("coordinator")
    body = export_zip(tmp_path)
    post_upload(client, {f"{ORDER}.zip": body})
    before, files = counts(), stored_files(store_dir)

    again = post_upload(client, {f"{ORDER}.zip": body})

    assert again.status_code == 303
    assert counts() == before and stored_files(store_dir) == files
    assert "brought in before with the same files; nothing changed" in flash_of(client)


def test_the_same_export_again_is_known_before_its_meshes_are_read(client, login, world, store_dir, tmp_path,
                                                                    monkeypatch):
    factories.patient(world.practice, "Jane", "Doe", chart="CH-1042")
    db.session.commit()
    login("coordinator")
    post_upload(client, {f"{ORDER}.zip": export_zip(tmp_path)})
    scan = the_scan()
    assert len(scan.source_digest) == 64
    before, files = counts(), stored_files(store_dir)
    read: list[str] = []
    real_inspect, real_head = uploads.mesh.inspect, uploads.mesh.check_head
    monkeypatch.setattr(uploads.mesh, "inspect", lambda *a, **k: read.append("inspect") or real_inspect(*a, **k))
    monkeypatch.setattr(uploads.mesh, "check_head", lambda *a, **k: read.append("head") or real_head(*a, **k))

    # zipped anew (stored, not deflated; entries at the root): the same entries, the same export
    again = post_upload(client, {"copy.zip": export_zip(tmp_path, name="copy.zip", top_folder=False,
                                                        compression=zipfile.ZIP_STORED)})

    assert again.status_code == 303 and read == []  # not one mesh opened
    assert counts() == before and stored_files(store_dir) == files
    assert "brought in before with the same files; nothing changed" in flash_of(client)
    assert not any(store_dir.rglob(".source"))  # the staged zip is gone too


def test_the_refused_files_of_an_export_are_listed_and_not_kept(client, login, world, store_dir, tmp_path):
    login("coordinator")
    files = meshes.export_files(ORDER, meshes={**meshes.arch_files(ORDER),
                                               f"{ORDER}_Scan2.stl": meshes.binary_stl(meshes.corners(*meshes.bite()))[:-7]})
    post_upload(client, {f"{ORDER}.zip": export_zip(tmp_path, files=files)})
    broken = by_name(the_scan())[f"{ORDER}_Scan2.stl"]
    assert broken.state is FileState.REFUSED and "7 bytes short" in broken.error
    assert not store.resolve(broken.ref).exists()
    assert f"{ORDER}_Scan2.stl" not in [p.name for p in stored_files(store_dir)]
    assert all(store.resolve(f.ref).is_file() for f in the_scan().current_files if f.state is not FileState.REFUSED)


def test_a_large_export_is_read_by_jobs_with_progress_on_the_scan_page(client, login, world, store_dir, scan_queue,
                                                                       small_threshold, tmp_path, app):
    factories.patient(world.practice, "Jane", "Doe", chart="CH-1042")
    db.session.commit()
    login("coordinator")
    big = meshes.big_binary_stl(tmp_path / "big.stl", 20_000).read_bytes()  # 1 MB of meshes: over 52 KB
    files = meshes.export_files(ORDER, meshes={**meshes.arch_files(ORDER), f"{ORDER}_Scan2.stl": big,
                                               f"{ORDER}_broken_PreparationScan2.stl": b"%PDF-1.7 not a mesh"})

    response = post_upload(client, {f"{ORDER}.zip": export_zip(tmp_path, files=files)})

    assert response.status_code == 303, response.get_data(as_text=True)
    scan = the_scan()
    rows = by_name(scan)
    meshes_ = [f for f in scan.current_files if f.format == "STL"]
    assert {f.file_name: f.state for f in meshes_} == {
        f"{ORDER}_PreparationScan.stl": FileState.PROCESSING, f"{ORDER}_AntagonistScan.stl": FileState.PROCESSING,
        f"{ORDER}_BiteScan.stl": FileState.PROCESSING, f"{ORDER}_Scan2.stl": FileState.PROCESSING,
        f"{ORDER}_broken_PreparationScan2.stl": FileState.REFUSED}  # plainly no mesh: refused at once
    assert "it looks like a PDF document" in rows[f"{ORDER}_broken_PreparationScan2.stl"].error
    assert store.resolve(rows[f"{ORDER}_broken_PreparationScan2.stl"].ref).exists() is False  # refused: not kept
    assert all(f.triangle_count is None for f in meshes_)  # nothing was read in the request
    prep = rows[f"{ORDER}_PreparationScan.stl"]
    assert (prep.jaw, prep.jaw_source) == (Jaw.UPPER, "vendor")  # the order still tells the jaws
    assert rows[f"{ORDER}_BiteScan.stl"].upper_file_id == prep.id  # the mesh being read, not the .dcm
    assert all(uploads.inspect_job_id(f.id) in scan_queue.get_job_ids() for f in meshes_
               if f.state is FileState.PROCESSING)
    assert "being checked in the background" in flash_of(client)
    page = client.get(f"/scans/{scan.id}").get_data(as_text=True)
    assert 'id="scan-processing"' in page and "Checking 4 large files" in page

    drain(scan_queue)

    rows = by_name(db.session.get(Scan, scan.id))
    assert rows[f"{ORDER}_Scan2.stl"].triangle_count == 20_000 and rows[f"{ORDER}_Scan2.stl"].state is FileState.OK
    assert rows[f"{ORDER}_PreparationScan.stl"].triangle_count == 480
    bite = rows[f"{ORDER}_BiteScan.stl"]
    assert (bite.jaw, bite.upper_file_id, bite.lower_file_id) == (
        Jaw.BITE, rows[f"{ORDER}_PreparationScan.stl"].id, rows[f"{ORDER}_AntagonistScan.stl"].id)
    assert 'id="scan-processing"' not in client.get(f"/scans/{scan.id}").get_data(as_text=True)


@pytest.mark.parametrize("case", ["zip slip", "absolute path", "no order XML", "damaged zip", "XXE"])
def test_a_bad_export_zip_is_refused_with_the_readers_message(client, login, world, store_dir, tmp_path, case):
    good = meshes.export_files(ORDER)
    if case == "zip slip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for rel, data in good.items():
                z.writestr(f"{ORDER}/{rel}", data)
            z.writestr("../../evil.stl", CUBE_STL)
        body, message = buffer.getvalue(), "zip slip"
    elif case == "absolute path":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("/etc/cron.d/evil", b"* * * * * root sh")
        body, message = buffer.getvalue(), "absolute path"
    elif case == "no order XML":
        body = export_zip(tmp_path, {k: v for k, v in good.items() if not k.endswith(f"{ORDER}.xml")})
        message = "no order XML"
    elif case == "damaged zip":
        body, message = export_zip(tmp_path)[:-200], "damaged zip"
    else:
        xml = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
               b'<DentalContainer>&x;</DentalContainer>')
        body, message = export_zip(tmp_path, {**good, f"{ORDER}.xml": xml}), "entities"
    login("coordinator")
    before = counts()

    response = post_upload(client, {f"{ORDER}.zip": body})

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f"“{ORDER}.zip” was refused" in html and message in html
    assert counts() == before and stored_files(store_dir) == []


def test_a_zip_goes_alone(client, login, store_dir, tmp_path):
    login("coordinator")
    response = post_upload(client, {f"{ORDER}.zip": export_zip(tmp_path), "upper.stl": UPPER})
    assert response.status_code == 422 and "on its own" in response.get_data(as_text=True)
    assert stored_files(store_dir) == []


# -- limits, CSRF, roles, other practices -------------------------------------------------------------------

def test_an_upload_over_the_limit_is_refused_with_413_and_nothing_kept(client, login, store_dir, app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 200_000)
    login("coordinator")
    before = counts()
    body = meshes.binary_stl(meshes.corners(*meshes.arch("upper", segments=400)))
    assert len(body) > 200_000

    page = post_upload(client, {"upper.stl": body})
    fragment = post_upload(client, {"upper.stl": body}, htmx=True)

    assert page.status_code == fragment.status_code == 413
    assert "more than the 500 MB one upload may be; nothing was uploaded" in page.get_data(as_text=True)
    assert fragment.headers["HX-Retarget"] == "#toasts" and "nothing was uploaded" in fragment.get_data(as_text=True)
    assert counts() == before and stored_files(store_dir) == []


def test_a_file_over_the_upload_limit_is_refused_by_name(client, login, store_dir, app, monkeypatch):
    monkeypatch.setitem(app.config, "SCAN_UPLOAD_MAX_MB", 0)
    login("coordinator")
    response = post_upload(client, {"upper.stl": UPPER})
    assert response.status_code == 422 and "“upper.stl” is larger than the 0 MB" in response.get_data(as_text=True)
    assert stored_files(store_dir) == []


def test_an_upload_without_the_csrf_token_is_refused_and_keeps_nothing(client, login, store_dir):
    login("coordinator")
    before = counts()
    response = post_upload(client, {"upper.stl": UPPER}, csrf=False)
    assert response.status_code == 400
    assert counts() == before and stored_files(store_dir) == []


@pytest.mark.parametrize("role, allowed", [("coordinator", True), ("admin", True), ("manager", False)])
def test_coordinators_and_admins_upload_managers_do_not(client, login, world, store_dir, role, allowed):
    login(role)
    page = client.get("/scans/upload")
    response = post_upload(client, {"upper.stl": UPPER})
    inbox = client.get("/scans/").get_data(as_text=True)
    if allowed:
        assert page.status_code == 200 and response.status_code == 303
        assert 'href="/scans/upload"' in inbox
    else:
        assert page.status_code == response.status_code == 403
        assert 'href="/scans/upload"' not in inbox and stored_files(store_dir) == []


def test_signed_out_people_are_sent_to_sign_in(client, world, store_dir):
    response = client.get("/scans/upload")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def other_practice_rows(world):
    patient = factories.patient(world.other_practice)
    case = factories.case(world, practice=world.other_practice, patient_obj=patient, lab=world.labs["email"])
    scan = Scan(practice_id=world.other_practice.id, vendor=Vendor.UPLOAD, order_id="theirs", stage="ready")
    scan.files = [ScanFile(ref=f"store:{world.other_practice.id}/x/upper.stl", file_name="upper.stl", format="STL",
                           state=FileState.PROCESSING)]
    db.session.add(scan)
    db.session.commit()
    return patient, case, scan


def test_another_practices_ids_are_not_found(client, login, world, store_dir):
    patient, case, scan = other_practice_rows(world)
    login("coordinator")
    before = counts()

    assert client.get(f"/scans/upload?patient_id={patient.id}").status_code == 404
    assert client.get(f"/scans/upload?case_id={case.id}").status_code == 404
    assert client.hx(f"/scans/upload/cases?patient_id={patient.id}").status_code == 404
    assert post_upload(client, {"upper.stl": UPPER}, patient=patient).status_code == 404
    assert post_upload(client, {"upper.stl": UPPER}, case=case).status_code == 404
    assert client.hx(f"/scans/{scan.id}/processing").status_code == 404
    assert client.get(f"/scans/files/{scan.files[0].id}").status_code == 404
    assert counts() == before and stored_files(store_dir) == []
    assert patient.last_name not in client.hx("/scans/upload/patients?patient_q=" + patient.last_name).get_data(
        as_text=True)


def test_the_patient_search_and_the_case_choice_answer_htmx(client, login, world, store_dir):
    patient = factories.patient(world.practice, "Zoë", "Okafor")
    draft = factories.case(world, patient_obj=patient)
    login("coordinator")

    options = client.hx("/scans/upload/patients?patient_q=okaf").get_data(as_text=True)
    cases = client.hx(f"/scans/upload/cases?patient_id={patient.id}").get_data(as_text=True)
    page = client.get(f"/scans/upload?case_id={draft.id}").get_data(as_text=True)

    assert f'value="{patient.id}"' in options and "Okafor, Zoë" in options and "<html" not in options
    assert f'value="{draft.id}"' in cases and draft.number in cases
    assert re.search(rf'value="{draft.id}" checked', page) and re.search(rf'value="{patient.id}" checked', page)
    found = client.post("/scans/upload", {"patient_q": "okaf", "find_patient": "1"}).get_data(as_text=True)
    assert "Okafor, Zoë" in found  # the search without htmx: the page again with the matches


def test_the_case_page_links_to_the_upload(client, login, world):
    case = factories.case(world)
    login("coordinator")
    assert f'href="/scans/upload?case_id={case.id}"' in client.get(f"/cases/{case.id}").get_data(as_text=True)
    login("manager")
    assert "/scans/upload" not in client.get(f"/cases/{case.id}").get_data(as_text=True)


# -- signed links for labs ----------------------------------------------------------------------------------

@pytest.fixture()
def uploaded_case(client, login, world, store_dir):
    patient = factories.patient(world.practice)
    case = factories.case(world, patient_obj=patient, lab=world.labs["email"])
    login("coordinator")
    assert post_upload(client, {"upper.stl": UPPER, "lower.stl": LOWER}, case=case).status_code == 303
    client.post("/logout")
    return db.session.get(LabCase, case.id)


def test_the_work_order_carries_a_signed_link_a_lab_downloads_without_signing_in(client, uploaded_case):
    scans = work_order(uploaded_case, "dispatch-1")["scans"]
    upper = next(s for s in scans if s["jaw"] == "upper")
    assert upper["url"].startswith("http://localhost/scan-files/") and upper["vendor"] == "upload"

    response = fetch(client, upper["url"].removeprefix("http://localhost"))

    assert response.status_code == 200 and response.data == UPPER
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f"attachment; filename={uploaded_case.number}-upper-" \
        f"{the_scan().current_files[0].id}.stl"


def test_a_signed_link_expires_with_the_lab_link_ttl(client, uploaded_case, app):
    url = work_order(uploaded_case, "d")["scans"][0]["url"].removeprefix("http://localhost")
    ttl = app.config["LAB_LINK_TTL_DAYS"]
    with time_machine.travel(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=ttl - 1), tick=False):
        assert fetch(client, url).status_code == 200
    with time_machine.travel(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=ttl, hours=1), tick=False):
        expired = client.get(url)
    assert expired.status_code == 410 and "This download link has expired" in expired.get_data(as_text=True)
    assert expired.headers["Cache-Control"] == "no-store" and expired.headers["Referrer-Policy"] == "no-referrer"


def test_a_tampered_or_forged_link_is_not_found(client, uploaded_case, app):
    url = work_order(uploaded_case, "d")["scans"][0]["url"].removeprefix("http://localhost")
    token = url.rsplit("/", 1)[1]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    from itsdangerous import URLSafeTimedSerializer

    other_file = URLSafeTimedSerializer("not-our-key", salt=links.SALT).dumps([1, "0" * 16])
    payload = token.split(".")[0]
    for bad in (flipped, other_file, payload, "x" * 300, f"{payload}.{token.split('.', 1)[1][::-1]}"):
        response = client.get(f"/scan-files/{bad}")
        assert response.status_code == 404, bad
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_guessing_links_is_rate_limited(client, uploaded_case):
    codes = [client.get(f"/scan-files/guess{i}.abc.def").status_code for i in range(12)]
    assert codes[:10] == [404] * 10 and codes[-1] == 429


def test_a_link_to_a_file_whose_row_was_replaced_by_another_is_not_found(client, uploaded_case):
    f = the_scan().current_files[0]
    token = links.token_for(f)
    f.ref = f.ref.replace("upper", "other")  # the same id now names another file
    db.session.commit()
    assert client.get(f"/scan-files/{token}").status_code == 404


def test_the_token_never_reaches_a_log_line(client, uploaded_case, caplog):
    token = links.token_for(the_scan().current_files[0])
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        logging.getLogger("werkzeug").info('127.0.0.1 - - "GET /scan-files/%s HTTP/1.1" 200 -', token)
    assert token not in caplog.text and "/scan-files/[redacted]" in caplog.text


def test_the_email_labs_page_lists_the_scan_files_with_their_links(client, world, uploaded_case):
    from tests.ack.conftest import send_to_email_lab

    sent = send_to_email_lab(world, case=uploaded_case)

    page = client.get(sent.url).get_data(as_text=True)

    assert "Scan files" in page
    hrefs = re.findall(r'<a href="(http://localhost/scan-files/[^"]+)" rel="noreferrer nofollow">(Upper arch|Lower arch)</a>',
                       page)
    assert sorted(label for _, label in hrefs) == ["Lower arch", "Upper arch"]
    assert "upper.stl" not in page  # docs/reliability.md M5: the lab sees what each file is, not the practice's file names
    assert fetch(client, hrefs[0][0].removeprefix("http://localhost")).status_code == 200


def test_staff_download_their_stored_files(client, login, uploaded_case):
    f = the_scan().current_files[0]
    login("manager")
    response = fetch(client, f"/scans/files/{f.id}")
    assert response.status_code == 200 and response.data == UPPER
    assert response.headers["Content-Disposition"] == "attachment; filename=upper.stl"
