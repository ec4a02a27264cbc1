"""The watched import folder for 3Shape TRIOS exports (portal/integrations/threeshape/adapter.py), driven through the
sync job's own code (portal/integrations/sync.py run_sync): exports imported and moved, a broken one
moved to failed/ with its reason, one still being written left alone, a crash between the ingest
and the move made harmless by the content key, and the settings check the admin form calls."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.extensions import db
from portal.integrations import registry, sync
from portal.integrations.http import VendorError
from portal.integrations.threeshape.adapter import FolderAdapter, validate_settings
from portal.integrations.vendor import Jaw, Vendor
from portal.scans import store
from portal.scans.models import FileState, InboxState, Scan, ScanFile
from tests import factories
from tests.integrations.conftest import counts, stored_files
from tests.scans import meshes

ORDER_A = "20240611_1432_Tech01_Doe"
ORDER_B = "20240612_0910_Tech02_Roe"


def old(path: Path, seconds: float = 600) -> Path:
    """Make an export look finished: nothing in it changed for `seconds`."""
    stamp = time.time() - seconds
    for root, dirs, files in os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]:
        for name in dirs + files:
            os.utime(os.path.join(root, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture()
def watched(tmp_path) -> Path:
    folder = tmp_path / "trios-exports"
    folder.mkdir()
    return folder


@pytest.fixture()
def trios(world, watched, store_dir):
    integration = factories.integration(world.practice, Vendor.THREESHAPE, labs=[world.labs["email"]], name="TRIOS",
                                        watch_folder=str(watched))
    integration.connected_at = None  # nothing to connect: it works without
    db.session.commit()
    return integration


def run_sync(integration) -> dict:
    result = sync.run_sync(integration.id)
    db.session.expire_all()
    return result


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_folder_adapter_is_the_3shape_integrations_and_polls_without_signing_in(trios):
    adapter = registry.adapter_for(trios)
    assert isinstance(adapter, FolderAdapter)
    assert (adapter.uses_oauth, adapter.polls) == (False, True)
    assert sync.can_sync(trios) and adapter.fetch("anything") is None


def test_two_exports_are_imported_and_moved(world, trios, watched):
    factories.patient(world.practice, "Jane", "Doe", chart="CH-1042")
    db.session.commit()
    old(meshes.write_export(watched, ORDER_A))
    xml = meshes.order_xml(ORDER_B, first="Rob", last="Roe", ref_no="CH-7")
    old(meshes.write_export_zip(watched / f"{ORDER_B}.zip", ORDER_B, meshes.export_files(ORDER_B, xml=xml)))

    result = run_sync(trios)

    assert result == {"new": 2}
    assert names(watched) == ["imported"] and names(watched / "imported") == [ORDER_A, f"{ORDER_B}.zip"]
    a, b = (db.session.scalar(select(Scan).where(Scan.order_id == o)) for o in (ORDER_A, ORDER_B))
    assert (a.vendor, a.integration_id, a.inbox, a.case.lab_id) == (
        Vendor.THREESHAPE, trios.id, InboxState.LINKED, world.labs["email"].id)
    assert (b.inbox, b.patient_chart_number) == (InboxState.PENDING, "CH-7")  # nobody has chart CH-7
    for scan in (a, b):
        files = {f.file_name: f for f in scan.current_files}
        bite = files[f"{scan.order_id}_BiteScan.stl"]
        assert bite.jaw is Jaw.BITE and bite.upper_file_id == files[f"{scan.order_id}_PreparationScan.stl"].id
        assert all(store.resolve(f.ref).is_file() for f in scan.current_files)
    assert db.session.get(type(trios), trios.id).last_error == ""


def test_a_broken_export_goes_to_failed_with_its_reason_and_the_others_are_imported(trios, watched):
    broken = meshes.write_export(watched, ORDER_A, {
        k: v for k, v in meshes.export_files(ORDER_A).items() if not k.endswith(f"{ORDER_A}.xml")})
    old(broken)
    old(meshes.write_export(watched, ORDER_B))
    before = stored_files(store.root()) if store.root().exists() else []

    result = run_sync(trios)

    assert result == {"new": 1}
    assert names(watched / "failed") == [ORDER_A, f"{ORDER_A}.error.txt"]
    reason = (watched / "failed" / f"{ORDER_A}.error.txt").read_text()
    assert "was not imported" in reason and "has no order XML" in reason
    assert names(watched / "imported") == [ORDER_B]
    assert db.session.scalar(select(func.count()).select_from(Scan)) == 1
    assert len(stored_files(store.root())) > len(before)  # B's files, nothing of A's
    assert not any(ORDER_A in p.name for p in stored_files(store.root()))


def test_an_export_still_being_written_is_left_for_the_next_poll(trios, watched):
    fresh = meshes.write_export(watched, ORDER_A)  # modified just now

    assert run_sync(trios) == {}
    assert names(watched) == [ORDER_A] and counts()[0] == 0
    assert "still being written" in registry.adapter_for(trios).test_connection()

    old(fresh)
    assert run_sync(trios) == {"new": 1}
    assert names(watched / "imported") == [ORDER_A]


def test_temporary_names_and_stray_files_are_left_alone(trios, watched):
    old(meshes.write_export_zip(watched / f"{ORDER_A}.zip.part", ORDER_A))
    old(meshes.write_export(watched, ".hidden"))
    (watched / "notes.txt").write_text("not an export")
    old(watched / "notes.txt")

    assert run_sync(trios) == {}
    assert names(watched) == [".hidden", f"{ORDER_A}.zip.part", "notes.txt"]


def test_a_crash_between_the_ingest_and_the_move_is_harmless(trios, watched, store_dir):
    old(meshes.write_export(watched, ORDER_A))
    adapter = registry.adapter_for(trios)
    polling = adapter.poll()
    order = next(polling)
    sync.ingest_one(trios.id, order, "poll", Actor.vendor(trios, "test"))  # committed...
    polling.close()  # ...and the process dies before the generator is resumed: nothing moved
    assert names(watched) == [ORDER_A]
    rows, files = counts(), stored_files(store_dir)

    result = run_sync(trios)  # the next poll reads it again

    assert result == {"unchanged": 1}  # same files, same store folder, same refs: the same content key
    assert counts() == rows and stored_files(store_dir) == files
    assert names(watched / "imported") == [ORDER_A]


def test_a_rescan_exported_again_updates_the_same_scan(world, trios, watched):
    old(meshes.write_export(watched, ORDER_A))
    run_sync(trios)
    files = meshes.export_files(ORDER_A, meshes=meshes.arch_files(ORDER_A, fmt="ply"))
    old(meshes.write_export(watched, ORDER_A, files))

    assert run_sync(trios) == {"updated": 1}
    scan = db.session.scalar(select(Scan))
    assert sorted(f.format for f in scan.current_files if f.kind == "scan" and f.state is FileState.OK) == [
        "PLY", "PLY", "PLY"]
    assert db.session.scalar(select(func.count()).select_from(ScanFile).where(ScanFile.replaced_at.is_not(None))) > 0
    assert names(watched / "imported") == [ORDER_A, f"{ORDER_A} (2)"]


def test_a_symbolic_link_in_the_folder_is_refused(trios, watched, tmp_path):
    target = meshes.write_export(tmp_path / "elsewhere", ORDER_A)
    (watched / ORDER_A).symlink_to(target, target_is_directory=True)
    old(target)
    os.utime(watched / ORDER_A, (time.time() - 600,) * 2, follow_symlinks=False)

    assert run_sync(trios) == {}
    assert "symbolic link" in (watched / "failed" / f"{ORDER_A}.error.txt").read_text()
    assert target.is_dir()  # what it pointed at is untouched


def test_a_missing_folder_is_the_integrations_last_error(trios, watched):
    watched.rmdir()
    result = run_sync(trios)
    assert "There is no such folder" in result["error"]
    assert "There is no such folder" in db.session.get(type(trios), trios.id).last_error


def test_test_connection_says_what_waits(trios, watched):
    old(meshes.write_export(watched, ORDER_A))
    old(meshes.write_export(watched, ORDER_B))
    assert registry.adapter_for(trios).test_connection() == (
        f"The folder {watched} is there, readable and writable. 2 exports waiting to be imported.")
    (watched / ORDER_B / f"{ORDER_B}.xml").write_text("<not xml")
    old(watched / ORDER_B)
    run_sync(trios)
    assert "1 export in failed/" in registry.adapter_for(trios).test_connection()


def test_validate_settings_for_the_admin_form(db, watched, store_dir, tmp_path):
    assert validate_settings({"watch_folder": str(watched)}) == []
    assert validate_settings({"folder": str(watched), "settle_seconds": "30"}) == []  # the form's key
    assert validate_settings({}) == ["Enter the watched import folder: the absolute path where TRIOS exports its "
                                     "orders."]
    assert validate_settings({"watch_folder": "exports/trios"}) == ["Give an absolute path, starting with /."]
    assert validate_settings({"watch_folder": str(tmp_path / "nope")}) == [
        "There is no such folder on the Lab Manager server."]
    (tmp_path / "file.txt").write_text("x")
    assert validate_settings({"watch_folder": str(tmp_path / "file.txt")}) == [
        "There is no such folder on the Lab Manager server."]
    store_dir.mkdir(exist_ok=True)
    assert "Lab Manager's own scan store" in validate_settings({"watch_folder": str(store_dir)})[0]
    assert validate_settings({"watch_folder": str(watched), "settle_seconds": "soon"}) == [
        "The settle time is a number of seconds from 0 to 3600."]
    with pytest.raises(VendorError, match="absolute path"):
        FolderAdapter(factories_integration_stub({"watch_folder": "relative"})).test_connection()


def factories_integration_stub(config: dict):
    from portal.integrations.models import ScannerIntegration

    i = ScannerIntegration(vendor=Vendor.THREESHAPE, name="stub", practice_id=1)
    i.set_config(**config)
    return i


def test_a_paused_integration_is_not_polled(trios, watched):
    trios.active = False
    db.session.commit()
    old(meshes.write_export(watched, ORDER_A))
    assert run_sync(trios) == {"skipped": True}
    assert names(watched) == [ORDER_A]
