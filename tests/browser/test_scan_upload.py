"""Scan files through the upload page in a real Chromium: choose the patient by searching, drop three
meshes, land on the scan's page with each file checked and the bite tied to both arches; a broken
file is refused beside the field; a large file's progress is followed live until the job has read it."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from portal.audit.actor import Actor
from portal.queue import get_queue
from portal.scans import uploads
from portal.scans.models import FileState, Scan
from tests import factories
from tests.jobs import drain
from tests.scans import meshes

pytestmark = pytest.mark.browser


def shot(page, tmp_path: Path, name: str) -> None:
    """A screenshot in the test's folder, and in SCREENSHOT_DIR when it is set (to look at them)."""
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("SCREENSHOT_DIR"):
        Path(os.environ["SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(os.environ["SCREENSHOT_DIR"]) / name), full_page=True)


def mesh_files(folder: Path) -> list[Path]:
    return [meshes.write(folder / "UpperJaw.stl", meshes.binary_stl(meshes.corners(*meshes.arch("upper")))),
            meshes.write(folder / "LowerJaw.ply", meshes.ply(*meshes.arch("lower"), encoding="binary_little_endian")),
            meshes.write(folder / "BiteScan.obj", meshes.obj(*meshes.bite()))]


def test_a_coordinator_uploads_meshes_for_a_patient(page, signed_in, world, db, tmp_path):
    patient = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    signed_in(page, world.users["coordinator"], "/scans/")

    page.get_by_role("link", name="Upload scan files").click()
    expect(page.get_by_role("heading", name="Upload scan files")).to_be_visible()
    page.fill("#patient_q", "silva")
    choice = page.locator(f'#upload-patients input[value="{patient.id}"]')
    expect(choice).to_be_visible()
    choice.check()
    expect(page.locator("#upload-cases")).to_contain_text("has no open case: the scan starts a draft case")

    page.set_input_files("#files", str(meshes.write(tmp_path / "broken.stl", b"%PDF-1.7 not a mesh" * 10)))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#files-error")).to_contain_text("“broken.stl” was refused: This is not a mesh: it looks like "
                                                         "a PDF document.")
    expect(page.locator(f'#upload-patients input[value="{patient.id}"]')).to_be_checked()  # the choice is kept

    page.set_input_files("#files", [str(p) for p in mesh_files(tmp_path)])
    shot(page, tmp_path, "upload-page.png")
    page.get_by_role("button", name="Upload").click()

    expect(page).to_have_url(re.compile(r"/scans/\d+$"))
    expect(page.locator(".toast")).to_contain_text("3 files uploaded. The scan is on a new draft case")
    table = page.locator("table.files").first
    rows = table.locator("tbody tr")
    for i, (name, jaw) in enumerate((("UpperJaw.stl", "upper"), ("LowerJaw.ply", "lower"), ("BiteScan.obj", "bite"))):
        expect(rows.nth(i)).to_contain_text(name)
        expect(rows.nth(i)).to_contain_text("Checked")
        expect(rows.nth(i).locator(f".chip.jaw-{jaw}")).to_be_visible()
    expect(rows.nth(2)).to_contain_text("bite of UpperJaw.stl and LowerJaw.ply")
    shot(page, tmp_path, "scan-page-uploaded.png")


def test_a_large_files_progress_is_followed_live_until_it_is_read(page, signed_in, world, db, app, live_server,
                                                                   tmp_path, monkeypatch):
    # The live server keeps its store in its own instance folder; this process writes the upload
    # there and runs the job, as a worker beside it would.
    monkeypatch.setitem(app.config, "SCAN_STORE_DIR", str(Path(live_server.log).parent / "scan-store"))
    monkeypatch.setitem(app.config, "SCAN_BACKGROUND_MB", 1)
    queue = get_queue()
    queue.empty()
    patient = factories.patient(world.practice, "Ben", "Okafor")
    big = meshes.big_binary_stl(tmp_path / "UpperJaw.stl", 60_000)  # 3 MB: read by the job
    lower = meshes.write(tmp_path / "LowerJaw.stl", meshes.binary_stl(meshes.corners(*meshes.arch("lower"))))
    with open(big, "rb") as a, open(lower, "rb") as b:
        received = uploads.receive(world.practice.id, [uploads.Incoming("UpperJaw.stl", a),
                                                       uploads.Incoming("LowerJaw.stl", b)],
                                   actor=Actor.user(world.users["coordinator"]), patient=patient)
    busy = next(f for f in received.scan.current_files if f.state is FileState.PROCESSING)
    uploads.set_progress(busy.id, 40)
    db.session.commit()
    scan_id = received.scan.id

    signed_in(page, world.users["coordinator"], f"/scans/{scan_id}")
    panel = page.locator("#scan-processing")
    expect(panel).to_contain_text("Checking 1 large file")
    expect(panel.locator("progress")).to_have_attribute("value", "40")
    shot(page, tmp_path, "scan-page-processing.png")

    drain(queue)  # the job reads it; the page's poll sees it done and reloads once

    expect(page.locator("#scan-processing")).to_have_count(0, timeout=8000)
    row = page.locator("table.files tbody tr").first
    expect(row).to_contain_text("Checked")
    expect(row).to_contain_text("60,000")
    assert db.session.get(Scan, scan_id).current_files[0].state is FileState.OK
    shot(page, tmp_path, "scan-page-processed.png")


def test_a_large_exports_progress_and_a_jaw_set_by_hand(page, signed_in, world, db, app, live_server, tmp_path,
                                                         monkeypatch):
    monkeypatch.setitem(app.config, "SCAN_STORE_DIR", str(Path(live_server.log).parent / "scan-store"))
    monkeypatch.setitem(app.config, "SCAN_BACKGROUND_MB", 1)
    get_queue().empty()
    patient = factories.patient(world.practice, "Jane", "Doe", chart="CH-1042")
    order = "20240611_1432_Tech01_Doe"
    big = meshes.big_binary_stl(tmp_path / "big.stl", 40_000).read_bytes()  # 2 MB of meshes: read by the job
    files = meshes.export_files(order, meshes={**meshes.arch_files(order), f"{order}_Scan2.stl": big})
    with open(meshes.write_export_zip(tmp_path / f"{order}.zip", order, files), "rb") as z:
        received = uploads.receive(world.practice.id, [uploads.Incoming(f"{order}.zip", z)],
                                   actor=Actor.user(world.users["coordinator"]), patient=patient)
    busy = [f for f in received.scan.current_files if f.state is FileState.PROCESSING]
    uploads.set_progress(busy[0].id, 35)
    db.session.commit()

    signed_in(page, world.users["coordinator"], f"/scans/{received.scan.id}")
    panel = page.locator("#scan-processing")
    expect(panel).to_contain_text(f"Checking {len(busy)} large files")
    expect(panel.locator("progress").first).to_have_attribute("value", "35")
    shot(page, tmp_path, "scan-page-export-processing.png")

    # Two arches as wide as each other, one above the other: the shape is not sure, a person says.
    same = [meshes.write(tmp_path / "scan-1.stl", meshes.binary_stl(meshes.corners(*meshes.arch("upper")))),
            meshes.write(tmp_path / "scan-2.stl", meshes.binary_stl(meshes.corners(*meshes.arch("lower", scale=1.0))))]
    with open(same[0], "rb") as a, open(same[1], "rb") as b:
        second = uploads.receive(world.practice.id, [uploads.Incoming("scan-1.stl", a), uploads.Incoming("scan-2.stl", b)],
                                 actor=Actor.user(world.users["coordinator"]), patient=patient)
    db.session.commit()
    page.goto(f"{live_server.url}/scans/{second.scan.id}")
    first_row = page.locator("table.files tbody tr").first
    expect(first_row).to_contain_text("not sure: one arch lies above the other along +z but both are as wide")
    first_row.get_by_label("Jaw of scan-1.stl").select_option("upper")
    shot(page, tmp_path, "scan-page-jaw-control.png")
    first_row.get_by_role("button", name="Set jaw").click()
    expect(page.locator(".toast")).to_contain_text("scan-1.stl is set to upper.")
    first_row = page.locator("table.files tbody tr").first
    expect(first_row).to_contain_text("set by hand")
    expect(first_row.locator(".chip.jaw-upper")).to_be_visible()
    shot(page, tmp_path, "scan-page-jaw-set.png")


def test_the_upload_button_is_disabled_while_uploading_and_a_fixed_field_loses_its_error(page, signed_in, world, db,
                                                                                        tmp_path):
    """hx-disabled-elt found the first submit button of the form, the patient search's Find."""
    patient = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    signed_in(page, world.users["coordinator"], "/scans/upload")
    page.fill("#patient_q", "silva")
    page.locator(f'#upload-patients input[value="{patient.id}"]').check()
    page.set_input_files("#files", str(meshes.write(tmp_path / "broken.stl", b"%PDF-1.7 not a mesh" * 10)))
    upload = page.get_by_role("button", name="Upload", exact=True)
    page.evaluate("""(button) => { window.uploadDisabled = false;
        new MutationObserver(() => { if (button.disabled) window.uploadDisabled = true; })
            .observe(button, {attributes: true}); }""", upload.element_handle())
    upload.click()
    error = page.locator("#files-error")
    expect(error).to_contain_text("was refused")
    assert page.evaluate("window.uploadDisabled") is True
    page.set_input_files("#files", [str(p) for p in mesh_files(tmp_path)])  # the field is fixed
    expect(error).to_be_hidden()
