"""portal/integrations/threeshape/export.py: reading TRIOS exports (folder and zip), teeth, items, jaws, refusals."""
from __future__ import annotations

import datetime as dt
import stat
import warnings
import zipfile

import pytest

from portal.integrations.threeshape import export as T
from portal.integrations.threeshape.export import ExportError, Limits, read_export, read_tooth_numbers
from portal.integrations.vendor import Jaw, OrderStage, RxItem, Vendor
from tests.scans import meshes as M

ORDER = "20240611_1432_Tech01_Doe"


def refused(path, **kw) -> str:
    with pytest.raises(ExportError) as exc:
        read_export(path, **kw)
    return str(exc.value)


def by_name(export: T.ThreeShapeExport) -> dict[str, T.ExportFile]:
    return {f.file_name: f for f in export.files}


def export_with(tmp_path, xml: bytes | None = None, meshes: dict | None = None, **xml_kw) -> T.ThreeShapeExport:
    files = M.export_files(ORDER, xml=xml if xml is not None else M.order_xml(ORDER, **xml_kw), meshes=meshes)
    return read_export(M.write_export(tmp_path, ORDER, files))


# A realistic export

def test_folder_export_reads_the_order(tmp_path):
    export = read_export(M.write_export(tmp_path))
    assert export.order_id == ORDER and export.name == ORDER
    assert (export.patient.first_name, export.patient.last_name, export.patient.chart_number) == ("Jane", "Doe", "CH-1042")
    assert export.comments == "Please check the contact on 22."
    assert export.items_text == "Anatomy bridge 24-26, Anatomy crown 22"
    assert (export.customer, export.contact_person, export.manufacturer, export.operator) == \
        ("Bright Dental Clinic", "Dr. Ann Smith", "Smile Lab", "Tech 01")
    assert (export.material, export.shade) == ("Zirconia", "A2")
    assert export.scanned_at == dt.datetime(2024, 6, 11, 14, 32, tzinfo=dt.timezone.utc)
    assert export.ext_order_id == "EXT-01_Doe" and export.client_order_no == "PO-77"
    assert export.container_version == "2022-1"
    assert export.tooth_numbering == "universal"
    assert [(e.tooth_number, e.fdi, e.kind) for e in export.tooth_elements] == [
        ("12", "24", "crown"), ("13", "25", "pontic"), ("14", "26", "crown"), ("10", "22", "crown")]
    assert export.items == (RxItem(("22",), "crown", "Zirconia", "A2"), RxItem(("24", "25", "26"), "bridge", "Zirconia", "A2"))
    assert export.model_elements[0].delivery_date == dt.date(2024, 6, 20)
    assert [(s.scan_id, s.kind, s.jaw) for s in export.scans] == [
        ("S1", "preparation", Jaw.UPPER), ("S2", "antagonist", Jaw.LOWER), ("S3", "bite", Jaw.BITE)]
    assert export.warnings == ()


def test_files_meshes_references_and_jaws(tmp_path):
    files = by_name(read_export(M.write_export(tmp_path)))
    prep, antagonist, bite = (files[f"{ORDER}_{n}.stl"] for n in ("PreparationScan", "AntagonistScan", "BiteScan"))
    assert (prep.format, prep.kind, prep.jaw, prep.jaw_source, prep.scan_id) == ("STL", "scan", Jaw.UPPER, "vendor", "S1")
    assert (antagonist.jaw, antagonist.jaw_source, antagonist.scan_id) == (Jaw.LOWER, "vendor", "S2")
    assert (bite.jaw, bite.jaw_source, bite.scan_id) == (Jaw.BITE, "vendor", "S3")
    assert prep.mesh.triangle_count == 480 and prep.error == ""
    dcm = files[f"{ORDER}_PreparationScan.dcm"]
    assert (dcm.format, dcm.kind, dcm.reference_only, dcm.mesh, dcm.error, dcm.jaw) == ("DCM", "scan", True, None, "", Jaw.UPPER)
    assert (files[f"{ORDER} 0.dcm"].kind, files[f"{ORDER} 0.dcm"].jaw) == ("cad", Jaw.UNKNOWN)
    assert files["Front.jpg"].kind == "image"
    assert files["PrintableOrderForm.html"].kind == "other" and files[f"{ORDER}.xml"].kind == "other"


@pytest.mark.parametrize("top_folder", [True, False])
def test_zip_export_reads_like_the_folder(tmp_path, top_folder):
    folder = read_export(M.write_export(tmp_path / "f"))
    zipped = read_export(M.write_export_zip(tmp_path / f"{ORDER}.zip", top_folder=top_folder))
    prefix = f"{ORDER}/" if top_folder else ""
    assert [f.path for f in zipped.files] == [prefix + f.path for f in folder.files]
    assert zipped.items == folder.items and zipped.patient == folder.patient
    assert {f.file_name: f.jaw for f in zipped.files} == {f.file_name: f.jaw for f in folder.files}
    if not top_folder:
        assert zipped.to_vendor_order("x/").content_key() == folder.to_vendor_order("x/").content_key()


def test_to_vendor_order(tmp_path):
    order = read_export(M.write_export_zip(tmp_path / f"{ORDER}.zip")).to_vendor_order("exports/2024/")
    assert (order.vendor, order.order_id, order.status, order.stage) == (Vendor.THREESHAPE, ORDER, "Exported", OrderStage.READY)
    assert order.patient.chart_number == "CH-1042"
    assert order.scanned_at == order.updated_at == dt.datetime(2024, 6, 11, 14, 32, tzinfo=dt.timezone.utc)
    assert (order.lab_name, order.doctor_name, order.notes) == ("Smile Lab", "Dr. Ann Smith", "Please check the contact on 22.")
    assert order.procedure == "Anatomy bridge 24-26, Anatomy crown 22"
    assert order.due_date == dt.date(2024, 6, 20)
    assert [i.restoration for i in order.items] == ["crown", "bridge"]
    assets = {a.file_name: a for a in order.assets}
    prep = assets[f"{ORDER}_PreparationScan.stl"]
    assert prep.ref == f"exports/2024/{ORDER}/{ORDER}_PreparationScan.stl"
    assert (prep.format, prep.kind, prep.jaw, prep.jaw_source, prep.triangle_count, prep.vertex_count) == \
        ("STL", "scan", Jaw.UPPER, "vendor", 480, 1440)
    assert prep.size_bytes == 84 + 50 * 480
    bite = f"exports/2024/{ORDER}/{ORDER}_BiteScan.stl"
    assert order.extra["bite_links"] == {bite: (prep.ref, assets[f"{ORDER}_AntagonistScan.stl"].ref)}
    assert order.extra["order_xml"] == f"exports/2024/{ORDER}/{ORDER}.xml"
    assert order.extra["tooth_numbering"] == "universal"
    again = read_export(M.write_export_zip(tmp_path / "again" / f"{ORDER}.zip")).to_vendor_order("exports/2024/")
    assert again.content_key() == order.content_key()


def test_order_numbers_client_patient_guid_and_scan_source_are_read(tmp_path):
    export = export_with(tmp_path, extra_order={"PatientGuid": "7f0c2a8e-1b2d-4c55-9a0e-3d1f2e4b5a60"})
    assert (export.num_order_id, export.client_id, export.scan_source) == ("1792912845684", "17929", "ss3SE4")
    assert export.patient_guid == "7f0c2a8e-1b2d-4c55-9a0e-3d1f2e4b5a60"
    extra = export.to_vendor_order("x/").extra
    assert (extra["num_order_id"], extra["client_id"], extra["scan_source"]) == ("1792912845684", "17929", "ss3SE4")
    assert extra["patient_guid"] == export.patient_guid


@pytest.mark.parametrize("first,last,expected", [
    ("", "Doe, Jane", ("Jane", "Doe")), ("", "Jane Doe", ("Jane", "Doe")), ("", "Mary Ann van Dyke", ("Mary Ann van", "Dyke")),
    ("Jane", "Jane Doe", ("Jane", "Doe")), ("Jane", "Doe", ("Jane", "Doe")), ("", "Doe", ("", "Doe")),
    ("Jane", "Doe, Jane", ("Jane", "Doe, Jane")),
])
def test_a_full_name_in_patient_last_name_is_split(tmp_path, first, last, expected):
    export = export_with(tmp_path, first=first, last=last)
    assert (export.patient.first_name, export.patient.last_name) == expected


def test_a_3ox_order_file_beside_the_xml_adds_its_fields(tmp_path):
    files = M.export_files(ORDER)
    files[f"{ORDER}.3ox"] = M.order_3ox(ORDER, PatientGuid="guid-42", ScanSource="ssTrios5")
    export = read_export(M.write_export(tmp_path, ORDER, files))
    assert export.threeshape_order_no == ORDER and export.order_3ox_path == f"{ORDER}.3ox"
    assert export.patient_guid == "guid-42"
    assert export.scan_source == "ss3SE4"  # the order XML's own value wins
    assert by_name(export)[f"{ORDER}.3ox"].kind == "other" and export.warnings == ()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8"])  # with a byte-order mark, without, UTF-8
def test_an_export_with_only_a_3ox_order_file(tmp_path, encoding):
    files = M.export_files(ORDER)
    del files[f"{ORDER}.xml"]
    data = M.order_3ox("TS-9912", encoding=encoding, NumOrderID="555", ClientID="C-7", PatientGuid="g-1",
                       ScanSource="ssTrios5", Patient_LastName="Doe, Jane", Patient_RefNo="CH-1042",
                       Items="Anatomy crown 22")
    files[f"{ORDER}.3ox"] = data
    export = read_export(M.write_export(tmp_path, ORDER, files))
    assert export.order_id == "TS-9912" and export.threeshape_order_no == "TS-9912"
    assert (export.num_order_id, export.client_id, export.patient_guid, export.scan_source) == ("555", "C-7", "g-1", "ssTrios5")
    assert (export.patient.first_name, export.patient.last_name, export.patient.chart_number) == ("Jane", "Doe", "CH-1042")
    assert export.items_text == "Anatomy crown 22" and export.xml_path == f"{ORDER}.3ox"
    assert len([f for f in export.files if f.kind == "scan" and f.mesh is not None]) == 3


def test_a_3ox_with_entities_is_refused(tmp_path):
    files = M.export_files(ORDER)
    del files[f"{ORDER}.xml"]
    files[f"{ORDER}.3ox"] = ('<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY a "b">]>'
                             f'<ThreeShapeOrder xmlns="{M.OX_NS}"><ThreeShapeOrderNo>&a;</ThreeShapeOrderNo>'
                             "</ThreeShapeOrder>").encode("utf-16")
    assert "declares entities" in refused(M.write_export(tmp_path, ORDER, files))


def test_progress_follows_the_meshes(tmp_path):
    seen = []
    read_export(M.write_export_zip(tmp_path / f"{ORDER}.zip"), progress=lambda done, total: seen.append((done, total)))
    total = sum(len(v) for v in M.arch_files(ORDER).values())
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# Teeth: Universal or FDI

@pytest.mark.parametrize("numbers,items,system,fdi,warned", [
    (["12", "13", "14"], "Anatomy bridge 24-26", "universal", ["24", "25", "26"], False),
    (["18", "19", "20"], "Anatomy bridge 37-35", "universal", ["37", "36", "35"], False),
    (["24", "25", "26"], "Anatomy bridge 24-26", "fdi", ["24", "25", "26"], False),
    (["11"], "Crown 11", "fdi", ["11"], False),
    (["8"], "Crown 11", "universal", ["11"], False),
    (["14"], "", "universal", ["26"], False),
    (["46"], "", "fdi", ["46"], False),
    (["30"], "Crown 11", "universal", ["46"], True),
    (["46", "47"], "Crown 11", "fdi", ["46", "47"], True),
])
def test_tooth_numbers_are_checked_against_the_items_text(numbers, items, system, fdi, warned):
    got_system, mapping, warning = read_tooth_numbers(numbers, items)
    assert got_system == system
    assert [mapping[n] for n in numbers] == fdi
    assert bool(warning) == warned
    if warned:
        assert "match the teeth of its Items text" in warning


def test_export_with_fdi_tooth_numbers_and_a_mismatch_warning(tmp_path):
    fdi = export_with(tmp_path / "a", teeth=[(24, "teCrown"), (25, "tePontic"), (26, "teCrown"), (22, "teCrown")])
    assert fdi.tooth_numbering == "fdi"
    assert [i.teeth for i in fdi.items] == [("22",), ("24", "25", "26")]
    odd = export_with(tmp_path / "b", teeth=[(3, "teCrown")], items="Anatomy crown 11")
    assert odd.tooth_numbering == "universal" and odd.items[0].teeth == ("16",)
    assert "they were read as Universal" in odd.warnings[0]
    bad = export_with(tmp_path / "c", teeth=[(99, "teCrown"), (12, "teCrown")], items="")
    assert [e.fdi for e in bad.tooth_elements] == ["", "24"]
    assert any("“99” of element TE1 is neither Universal nor FDI" in w for w in bad.warnings)


# Tooth classes and items

@pytest.mark.parametrize("cls,restoration", [
    ("teCrown", "crown"), ("teCoping", "crown"), ("teInlay", "inlay_onlay"), ("teOnlay", "inlay_onlay"),
    ("teVeneer", "veneer"), ("teAbutment", "implant_crown"), ("teSplint", "night_guard"), ("teModel", "other"),
])
def test_tooth_classes_map_to_restorations(tmp_path, cls, restoration):
    export = export_with(tmp_path, teeth=[(8, cls)], items="Item 11")
    assert export.items == (RxItem(("11",), restoration, "Zirconia", "A2", "3Shape teModel" if cls == "teModel" else ""),)


def test_pontics_join_the_crowns_beside_them(tmp_path):
    # Universal 3-5 = FDI 16-14 (crown, pontic, crown); 6 = 13 crown next to the bridge but not of it;
    # 19-21 = FDI 36-34 an implant bridge; 30 = FDI 46 alone.
    teeth = [(3, "teCrown"), (4, "tePontic"), (5, "teCrown"), (6, "teCrown"),
             (19, "teAbutment"), (20, "teCrownPontic"), (21, "teAbutment"), (30, "teCrown")]
    export = export_with(tmp_path, teeth=teeth, items="Bridge 16-14, crown 13, implant bridge 36-34, crown 46")
    assert [(i.teeth, i.restoration) for i in export.items] == [  # in arch order, as portal.cases.teeth lists them
        (("16", "15", "14"), "bridge"), (("13",), "crown"), (("46",), "crown"), (("34", "35", "36"), "implant_bridge")]


def test_connectors_in_the_xml_decide_the_bridge(tmp_path):
    teeth = [(12, "teCrown"), (13, "teCrownPontic"), (14, "teCrown"), (15, "teCrown")]
    export = export_with(tmp_path, teeth=teeth, connectors=[(12, 13), (13, 14), (14, 15)], items="Bridge 24-27")
    assert [(i.teeth, i.restoration) for i in export.items] == [(("24", "25", "26", "27"), "bridge")]


def test_arch_work_is_one_item_per_arch(tmp_path):
    full = [(n, "teDenture") for n in range(1, 17)]
    export = export_with(tmp_path / "a", teeth=full + [(n, "teSplint") for n in range(17, 33)], items="Denture, splint")
    assert [(i.restoration, len(i.teeth)) for i in export.items] == [("full_denture", 16), ("night_guard", 16)]
    partial = export_with(tmp_path / "b", teeth=[(18, "teDenture"), (19, "teDenture"), (30, "teDenture")], items="")
    assert [(i.restoration, i.teeth) for i in partial.items] == [("partial_denture", ("46", "36", "37"))]
    said = export_with(tmp_path / "c", teeth=[(3, "teDenture")], items="Full denture upper")
    assert said.items[0].restoration == "full_denture"


def test_unknown_tooth_class_is_other_with_a_warning(tmp_path):
    export = export_with(tmp_path, teeth=[(8, "teTelescope")], items="")
    assert export.items == (RxItem(("11",), "other", "Zirconia", "A2", "3Shape teTelescope"),)
    assert "Unknown tooth element class “teTelescope”" in export.warnings[0]


def test_material_from_materials_xml_when_the_model_has_no_name(tmp_path):
    export = export_with(tmp_path, material="")
    assert export.items[0].material == "Zirconia HT"


# Scans and jaws

def test_lower_preparation_and_the_misspelt_scan_type(tmp_path):
    scans = [{"ScanID": "A", "ScanType": "stPreperationScan"}, {"ScanID": "B", "ScanType": "stAntagonistModel"},
             {"ScanID": "C", "ScanType": "stOcclusionBuccalLeft"}]
    export = export_with(tmp_path, teeth=[(19, "teCrown")], items="Crown 36", scans=scans)
    assert [(s.kind, s.jaw) for s in export.scans] == [("preparation", Jaw.LOWER), ("antagonist", Jaw.UPPER), ("bite", Jaw.BITE)]
    files = by_name(export)
    assert files[f"{ORDER}_PreparationScan.stl"].jaw == Jaw.LOWER  # the vendor's word beats the geometry
    assert files[f"{ORDER}_AntagonistScan.stl"].jaw == Jaw.UPPER


def test_scans_are_matched_by_file_name_and_by_scan_id(tmp_path):
    scans = [{"ScanID": "7f3a", "ScanType": "stPreparationIntraOral", "FileName": "C:\\Scans\\first.stl"},
             {"ScanID": "9b1c", "ScanType": "stAntagonistIntraOral"}]
    meshes = {"first.stl": M.binary_stl(M.corners(*M.arch("upper"))),
              "scan-9b1c.ply": M.ply(*M.arch("lower"), encoding="binary_little_endian")}
    files = by_name(export_with(tmp_path, meshes=meshes, scans=scans))
    assert (files["first.stl"].scan_id, files["first.stl"].jaw, files["first.stl"].jaw_source) == ("7f3a", Jaw.UPPER, "vendor")
    assert (files["scan-9b1c.ply"].scan_id, files["scan-9b1c.ply"].jaw, files["scan-9b1c.ply"].format) == ("9b1c", Jaw.LOWER, "PLY")


def test_without_scan_entries_the_name_then_the_geometry_decide(tmp_path):
    meshes = {"a.stl": M.binary_stl(M.corners(*M.arch("lower"))), "b.stl": M.binary_stl(M.corners(*M.arch("upper"))),
              "c.stl": M.binary_stl(M.corners(*M.bite())), "Raw PreparationScan.stl": M.binary_stl(M.corners(*M.arch("upper")))}
    files = by_name(export_with(tmp_path, meshes=meshes, scans=[]))
    assert (files["Raw PreparationScan.stl"].jaw, files["Raw PreparationScan.stl"].jaw_source) == (Jaw.UPPER, "file name")
    assert (files["c.stl"].jaw, files["c.stl"].jaw_source) == (Jaw.BITE, "geometry")
    # Three arch-sized meshes: geometry does not guess upper and lower.
    assert (files["a.stl"].jaw, files["b.stl"].jaw) == (Jaw.UNKNOWN, Jaw.UNKNOWN)
    two = by_name(export_with(tmp_path / "two", meshes={k: meshes[k] for k in ("a.stl", "b.stl", "c.stl")}, scans=[]))
    assert [(two[n].jaw, two[n].jaw_source) for n in ("a.stl", "b.stl", "c.stl")] == [
        (Jaw.LOWER, "geometry"), (Jaw.UPPER, "geometry"), (Jaw.BITE, "geometry")]


def test_prepared_teeth_on_both_arches_leave_the_preparation_arch_unknown(tmp_path):
    export = export_with(tmp_path, teeth=[(8, "teCrown"), (24, "teCrown")], items="Crown 11, crown 31",
                         meshes={"prep.stl": M.binary_stl(M.corners(*M.arch("upper")))},
                         scans=[{"ScanID": "S1", "ScanType": "stPreparationIntraOral", "FileName": "prep.stl"}])
    assert export.scans[0].jaw == Jaw.UNKNOWN
    assert by_name(export)["prep.stl"].jaw == Jaw.UNKNOWN
    assert "prepared teeth are on both arches" in export.warnings[0]


def test_a_broken_mesh_is_an_asset_with_an_error_not_a_failed_export(tmp_path):
    good = M.binary_stl(M.corners(*M.arch("upper")))
    meshes = {"upper.stl": good, "lower.stl": good[:-500], "bite.obj": b"%PDF-1.4", "empty.ply": b""}
    order = export_with(tmp_path, meshes=meshes).to_vendor_order("")
    assets = {a.file_name: a for a in order.assets}
    assert assets["upper.stl"].error == "" and assets["upper.stl"].triangle_count == 480
    assert assets["lower.stl"].error == ("The file says it holds 480 triangles but is 500 bytes short: it was cut off "
                                         "(an interrupted copy or upload?).")
    assert (assets["lower.stl"].format, assets["lower.stl"].triangle_count, assets["lower.stl"].jaw) == ("STL", None, Jaw.LOWER)
    assert assets["bite.obj"].error == "This is not a mesh: it looks like a PDF document."
    assert assets["empty.ply"].error == "The file is empty."


def test_a_member_damaged_inside_the_zip_is_that_file_s_error(tmp_path):
    path = M.write_export_zip(tmp_path / f"{ORDER}.zip", compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    stl = M.arch_files(ORDER)[f"{ORDER}_PreparationScan.stl"]
    at = bytes(data).index(stl[84:200]) + 50
    data[at] ^= 0xFF  # a flipped byte: the CRC no longer matches
    path.write_bytes(bytes(data))
    files = by_name(read_export(path))
    assert files[f"{ORDER}_PreparationScan.stl"].error.startswith("The file is damaged inside the export")
    assert files[f"{ORDER}_AntagonistScan.stl"].error == ""


# Refusals

def test_an_export_without_its_order_xml(tmp_path):
    files = M.export_files(ORDER)
    del files[f"{ORDER}.xml"]
    assert refused(M.write_export(tmp_path, ORDER, files)) == (
        f"The export has no order XML ({ORDER}.xml): it is not a 3Shape order export, or the XML was left out.")


def test_several_xml_files_and_none_named_after_the_export(tmp_path):
    files = M.export_files(ORDER)
    files["a.xml"] = files.pop(f"{ORDER}.xml")
    files["b.xml"] = files["a.xml"]
    assert "holds several XML files (a.xml, b.xml) and none is named after it" in refused(M.write_export(tmp_path, ORDER, files))
    del files["b.xml"]
    assert read_export(M.write_export(tmp_path / "one", ORDER, files)).xml_path == "a.xml"


@pytest.mark.parametrize("xml,message", [
    (b"<DentalContainer><Object", "The order XML cannot be read: it is not well-formed XML (unclosed token: line 1, column 17)."),
    (b"", "The order XML cannot be read: it is not well-formed XML (no element found: line 1, column 0)."),
    (b"<Order/>", f"{ORDER}.xml is not a 3Shape order: its root element is <Order>, not <DentalContainer>."),
    (b'<DentalContainer version="1"><Object type="TDM_Container"/></DentalContainer>',
     f"{ORDER}.xml holds no order (no TDM_Item_Order)."),
])
def test_unreadable_order_xml(tmp_path, xml, message):
    files = M.export_files(ORDER, xml=xml)
    assert refused(M.write_export(tmp_path, ORDER, files)) == message


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE DentalContainer [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<DentalContainer><Object type="TDM_Item_Order"><Property name="Patient_LastName" value="&secret;"/></Object></DentalContainer>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<DentalContainer><Object type="TDM_Item_Order"><Property name="Items" value="&lol3;"/></Object></DentalContainer>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE DentalContainer SYSTEM "http://127.0.0.1:9/evil.dtd">
<DentalContainer><Object type="TDM_Item_Order"><Property name="IntOrderID" value="X"/></Object></DentalContainer>"""


@pytest.mark.parametrize("xml", [XXE, LAUGHS])
def test_xml_entities_are_refused(tmp_path, xml):
    assert refused(M.write_export(tmp_path, ORDER, M.export_files(ORDER, xml=xml))) == (
        "The order XML declares entities, which Lab Manager refuses (they can read files on the server or "
        "expand without end).")


def test_an_external_dtd_is_never_fetched(tmp_path):
    export = read_export(M.write_export(tmp_path, ORDER, M.export_files(ORDER, xml=EXTERNAL_DTD)))
    assert export.order_id == "X"


def test_a_broken_materials_xml_is_a_warning(tmp_path):
    files = M.export_files(ORDER)
    files["Materials.xml"] = XXE
    export = read_export(M.write_export(tmp_path, ORDER, files))
    assert export.warnings == ("Materials.xml was not read: Materials.xml declares entities, which Lab Manager "
                               "refuses (they can read files on the server or expand without end).",)


def test_not_an_export(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert refused(tmp_path / "notes.txt") == "notes.txt is neither a folder nor a zip of a 3Shape order export."
    assert refused(tmp_path / "missing.zip") == "missing.zip does not exist."


def zip_with(path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], compression=zipfile.ZIP_DEFLATED):
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about a duplicate name, which one test wants
        with zipfile.ZipFile(path, "w", compression=compression) as z:
            for name, data in entries:
                z.writestr(name, data)
    return path


def good_entries() -> list[tuple[str, bytes]]:
    return list(M.export_files(ORDER).items())


@pytest.mark.parametrize("name,message", [
    ("../../etc/cron.d/evil", "holds an entry that points outside the export (../../etc/cron.d/evil); Lab Manager "
                              "refuses it (zip slip)."),
    (f"{ORDER}/..\\..\\evil.stl", "points outside the export"),
    ("/etc/passwd", "holds an entry with an absolute path (/etc/passwd); Lab Manager refuses it."),
    ("C:\\Windows\\evil.stl", "holds an entry with an absolute path"),
])
def test_zip_slip_and_absolute_paths(tmp_path, name, message):
    path = zip_with(tmp_path / f"{ORDER}.zip", good_entries() + [(name, b"x")])
    assert message in refused(path)


def test_zip_symlink(tmp_path):
    link = zipfile.ZipInfo("upper.stl")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = zip_with(tmp_path / f"{ORDER}.zip", good_entries() + [(link, b"/etc/passwd")])
    assert refused(path) == f"{ORDER}.zip holds a symbolic link (upper.stl); Lab Manager refuses it."


def test_folder_symlink(tmp_path):
    folder = M.write_export(tmp_path)
    (folder / "upper.stl").symlink_to("/etc/passwd")
    assert refused(folder) == "The export holds a symbolic link (upper.stl); Lab Manager refuses it."


def test_zip_limits(tmp_path):
    path = zip_with(tmp_path / f"{ORDER}.zip", good_entries() + [(f"shot{i}.jpg", b"x") for i in range(30)])
    assert refused(path, limits=Limits(max_entries=20)) == (
        f"{ORDER}.zip holds 39 entries, more than the 20 an export may hold.")
    assert "would unpack to" in refused(path, limits=Limits(max_total_bytes=10_000))
    assert read_export(path).order_id == ORDER
    folder = M.write_export(tmp_path / "folder")
    assert refused(folder, limits=Limits(max_entries=5)) == "The export holds more than 5 files."
    assert "more than the 10.0 KB an export may hold" in refused(folder, limits=Limits(max_total_bytes=10_000))


def test_zip_bomb(tmp_path):
    bomb = zip_with(tmp_path / "bomb" / f"{ORDER}.zip", good_entries() + [("zeros.stl", bytes(50 * 1024**2))])
    message = refused(bomb)
    assert message.startswith(f"{ORDER}.zip looks like a zip bomb: zeros.stl would grow from ")
    assert message.endswith("to 52.4 MB.")
    # Many small members that together unpack far beyond the archive trip the whole-archive check.
    many = zip_with(tmp_path / "many" / f"{ORDER}.zip", good_entries() + [(f"z{i}.bin", bytes(900_000)) for i in range(4)])
    assert "looks like a zip bomb:" in refused(many, limits=Limits(ratio_floor=1_000_000))


def test_zip_encrypted_and_duplicate_entries(tmp_path):
    name = f"{ORDER}_UpperJaw.3ml".encode()
    path = zip_with(tmp_path / "enc" / f"{ORDER}.zip", good_entries() + [(name.decode(), b"x")])
    data = bytearray(path.read_bytes())
    central = bytes(data).rindex(name) - 46  # its central directory entry: 46 fixed bytes, then the name
    assert data[central:central + 4] == b"PK\x01\x02"
    data[central + 8] |= 0x1  # the "encrypted" flag of its central directory entry, as a password would set
    path.write_bytes(bytes(data))
    assert refused(path) == f"{ORDER}.zip is password protected ({ORDER}_UpperJaw.3ml); export it without a password."
    twice = zip_with(tmp_path / "dup" / f"{ORDER}.zip", good_entries() + [(f"{ORDER}.xml", b"<x/>")])
    assert refused(twice) == f"{ORDER}.zip lists {ORDER}.xml twice; Lab Manager refuses it."


def test_a_damaged_zip(tmp_path):
    path = M.write_export_zip(tmp_path / f"{ORDER}.zip")
    path.write_bytes(path.read_bytes()[:5000])  # an interrupted upload: no central directory
    assert refused(path) == (f"{ORDER}.zip is a damaged zip archive (cut off?) and cannot be read (File is not a "
                             "zip file).")
    empty = tmp_path / "empty" / f"{ORDER}.zip"
    zip_with(empty, [])
    assert refused(empty).startswith(f"The export has no order XML ({ORDER}.xml)")


def test_an_order_xml_too_big(tmp_path):
    assert "more than the 1.0 KB an order XML may be" in refused(M.write_export(tmp_path), limits=Limits(max_xml_bytes=1000))
