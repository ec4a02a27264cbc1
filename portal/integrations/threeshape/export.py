"""3Shape TRIOS / Dental System order exports (docs/vendors/threeshape.md), read without trusting them.

An export is a folder, or a zip of it, named after the order id: `<OrderID>.xml` (a
`<DentalContainer>` of `<Object type="TDM_...">` with `<Property name= value=>` children), the scan
meshes (.stl/.ply/.obj read with portal.scans.mesh; .dcm and .3ml kept as references only), and
optionally Materials.xml, SID_UserInputData.XML, PrintableOrderForm/ and screenshots.

:func:`read_export` returns a :class:`ThreeShapeExport`; ``to_vendor_order(ref_prefix)`` turns it into
the vendor-neutral :class:`~portal.integrations.vendor.VendorOrder`. An export without a readable order
XML is refused with :class:`ExportError`; a broken mesh inside a good export is only that file's
error. XML is parsed with defusedxml (entity declarations and external references are refused);
zips are checked before anything is extracted (paths, links, entry count, total size, compression
ratio) and their members are read as streams, never written to disk.
"""
from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import hashlib
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from portal.cases import teeth as tooth_numbers
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.scans import mesh
from portal.scans.mesh import MeshError, MeshInfo


class ExportError(ValueError):
    """An export that cannot be read at all; str() is a sentence for a person."""


@dataclass(frozen=True)
class Limits:
    """What an export may hold before it is refused unread."""

    max_entries: int = 2_000
    max_total_bytes: int = 2 * 1024**3  # all files together, uncompressed
    max_ratio: float = 100.0  # uncompressed / compressed, for a member (or the whole zip) over ratio_floor
    ratio_floor: int = 1024**2
    max_xml_bytes: int = 20 * 1024**2


# CacheToothTypeClass -> what the element is: a key of portal.cases.catalog.RESTORATIONS, or "pontic"
# and "denture" which are settled from their neighbours (bridge) and the arch (full or partial).
TOOTH_CLASSES = {
    "teCrown": "crown", "teCoping": "crown", "teCrownPontic": "pontic", "tePontic": "pontic",
    "teInlay": "inlay_onlay", "teOnlay": "inlay_onlay", "teVeneer": "veneer", "teAbutment": "implant_crown",
    "teDenture": "denture", "teSplint": "night_guard", "teModel": "other",
}
ARCH_RESTORATIONS = frozenset({"full_denture", "partial_denture", "night_guard"})
BRIDGEABLE = frozenset({"crown", "pontic", "implant_crown"})

SCAN_KINDS = {"preparation": "preparation", "preperation": "preparation", "prep": "preparation",
              "antagonist": "antagonist", "occlusion": "bite", "bite": "bite"}
_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

MESH_EXTENSIONS = frozenset(mesh.MESH_FORMATS)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff"})
SIDE_XML = frozenset({"materials.xml", "sid_userinputdata.xml"})

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ToothElement:
    element_id: str
    tooth_number: str  # as the XML has it
    fdi: str  # "" when the number could not be read
    tooth_class: str  # CacheToothTypeClass as the XML has it
    kind: str  # a restoration key, "pontic" or "denture"
    model_element_id: str = ""


@dataclass(frozen=True)
class ModelElement:
    element_id: str
    element_type: str
    material: str
    shade: str
    file_name: str
    delivery_date: dt.date | None


@dataclass(frozen=True)
class Scan:
    scan_id: str
    scan_type: str  # as the XML has it
    kind: str  # preparation, antagonist, bite or "" when the type is not known
    jaw: Jaw
    scanned_at: dt.datetime | None
    file_name: str = ""


@dataclass(frozen=True)
class ExportFile:
    path: str  # inside the export, with forward slashes
    format: str  # STL, PLY, OBJ (as read), DCM, 3ML, XML, JPG...
    kind: str  # scan, cad, image, other (as Asset.kind)
    size_bytes: int
    mesh: MeshInfo | None = None
    error: str = ""
    reference_only: bool = False
    scan_id: str = ""
    jaw: Jaw = Jaw.UNKNOWN
    jaw_source: str = ""
    jaw_note: str = ""

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class ThreeShapeExport:
    name: str  # the folder or zip name, the order id by convention
    order_id: str
    ext_order_id: str
    client_order_no: str
    patient: PatientRef
    comments: str
    items_text: str
    customer: str
    contact_person: str
    manufacturer: str  # the lab
    operator: str
    material: str
    shade: str
    scanned_at: dt.datetime | None
    container_version: str
    tooth_numbering: str  # "universal" or "fdi": how this export's ToothNumber values were read
    tooth_elements: tuple[ToothElement, ...]
    model_elements: tuple[ModelElement, ...]
    scans: tuple[Scan, ...]
    files: tuple[ExportFile, ...]
    items: tuple[RxItem, ...]
    xml_path: str
    warnings: tuple[str, ...] = field(default=())
    num_order_id: str = ""  # NumOrderID: 3Shape's numeric order number
    client_id: str = ""  # ClientID: the clinic's id at the lab
    patient_guid: str = ""  # PatientGuid
    scan_source: str = ""  # ScanSource: which scanner (ss3SE4 ...)
    threeshape_order_no: str = ""  # ThreeShapeOrderNo of the .3ox order file
    order_3ox_path: str = ""  # the .3ox order file, when the export has one

    @property
    def due_date(self) -> dt.date | None:
        dates = [m.delivery_date for m in self.model_elements if m.delivery_date]
        return min(dates) if dates else None

    def bite_links(self) -> dict[str, tuple[str | None, str | None]]:
        """Path of each bite scan -> paths of the upper and the lower scan it joins (a mesh that was read
        rather than a .dcm reference to the same scan, when there are both)."""
        scans = sorted((f for f in self.files if f.kind == "scan"), key=lambda f: (f.mesh is None, f.path))
        links = mesh.bite_links([f.jaw for f in scans])
        return {scans[b].path: (scans[u].path if u is not None else None, scans[lo].path if lo is not None else None)
                for b, (u, lo) in links.items()}

    def to_vendor_order(self, ref_prefix: str) -> VendorOrder:
        assets = tuple(Asset(
            ref=ref_prefix + f.path, file_name=f.file_name, format=f.format, kind=f.kind, size_bytes=f.size_bytes,
            jaw=f.jaw, jaw_source=f.jaw_source, jaw_note=f.jaw_note,
            vertex_count=f.mesh.vertex_count if f.mesh else None,
            triangle_count=f.mesh.triangle_count if f.mesh else None, error=f.error,
        ) for f in self.files)
        links = {ref_prefix + b: tuple(ref_prefix + p if p else None for p in pair)
                 for b, pair in self.bite_links().items()}
        return VendorOrder(
            vendor=Vendor.THREESHAPE, order_id=self.order_id, status="Exported", stage=OrderStage.READY,
            patient=self.patient, updated_at=self.scanned_at, scanned_at=self.scanned_at,
            doctor_name=self.contact_person, procedure=self.items_text, items=self.items,
            lab_name=self.manufacturer, due_date=self.due_date, notes=self.comments, assets=assets,
            history=(("Exported", self.scanned_at),),
            extra={"export_name": self.name, "ext_order_id": self.ext_order_id,
                   "client_order_no": self.client_order_no, "customer": self.customer, "operator": self.operator,
                   "material": self.material, "shade": self.shade, "container_version": self.container_version,
                   "tooth_numbering": self.tooth_numbering, "order_xml": ref_prefix + self.xml_path,
                   "num_order_id": self.num_order_id, "client_id": self.client_id,
                   "patient_guid": self.patient_guid, "scan_source": self.scan_source,
                   "threeshape_order_no": self.threeshape_order_no,
                   "bite_links": links, "warnings": list(self.warnings)},
        )


# The export's files: a folder or a zip, checked before anything is read

@dataclass(frozen=True)
class _Member:
    path: str
    size: int
    key: object  # ZipInfo or filesystem path


class _Source:
    def __init__(self, name: str, members: list[_Member], opener: Callable[[_Member], BinaryIO]):
        self.name, self.members, self._opener = name, members, opener

    @contextmanager
    def open(self, member: _Member) -> Iterator[BinaryIO]:
        f = self._opener(member)
        try:
            yield f
        finally:
            f.close()

    def read(self, member: _Member, limit: int) -> bytes:
        if member.size > limit:
            raise ExportError(f"{member.path} is {mesh.human_bytes(member.size)}, more than the "
                              f"{mesh.human_bytes(limit)} an order XML may be.")
        with self.open(member) as f:
            return f.read(limit + 1)[:limit]


def _zip_source(path: Path, limits: Limits) -> tuple[_Source, zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"{path.name} is a damaged zip archive (cut off?) and cannot be read ({exc}).") from None
    try:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise ExportError(f"{path.name} holds {len(infos):,} entries, more than the {limits.max_entries:,} "
                              "an export may hold.")
        members, seen, total = [], set(), 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            if name.startswith("/") or re.match(r"[A-Za-z]:", name):
                raise ExportError(f"{path.name} holds an entry with an absolute path ({info.filename}); "
                                  "Lab Manager refuses it.")
            if ".." in name.split("/"):
                raise ExportError(f"{path.name} holds an entry that points outside the export ({info.filename}); "
                                  "Lab Manager refuses it (zip slip).")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ExportError(f"{path.name} holds a symbolic link ({info.filename}); Lab Manager refuses it.")
            if info.flag_bits & 0x1:
                raise ExportError(f"{path.name} is password protected ({info.filename}); export it without a "
                                  "password.")
            if info.is_dir():
                continue
            if name in seen:
                raise ExportError(f"{path.name} lists {info.filename} twice; Lab Manager refuses it.")
            seen.add(name)
            if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise ExportError(f"{path.name} looks like a zip bomb: {info.filename} would grow from "
                                  f"{mesh.human_bytes(info.compress_size)} to {mesh.human_bytes(info.file_size)}.")
            total += info.file_size
            members.append(_Member(name, info.file_size, info))
        if total > limits.max_total_bytes:
            raise ExportError(f"{path.name} would unpack to {mesh.human_bytes(total)}, more than the "
                              f"{mesh.human_bytes(limits.max_total_bytes)} an export may hold.")
        packed = path.stat().st_size
        if total > limits.ratio_floor and total > limits.max_ratio * max(packed, 1):
            raise ExportError(f"{path.name} looks like a zip bomb: {mesh.human_bytes(packed)} would unpack to "
                              f"{mesh.human_bytes(total)}.")
    except Exception:
        archive.close()
        raise
    # A member is read as a stream; zipfile stops at the size the directory declares and checks the CRC.
    return _Source(path.stem, members, lambda m: archive.open(m.key)), archive  # type: ignore[arg-type]


def _folder_source(path: Path, limits: Limits) -> _Source:
    members: list[_Member] = []
    total = 0

    def walk(folder: Path) -> None:
        nonlocal total
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = Path(entry.path).relative_to(path).as_posix()
                if entry.is_symlink():
                    raise ExportError(f"The export holds a symbolic link ({rel}); Lab Manager refuses it.")
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    members.append(_Member(rel, size, Path(entry.path)))
                    total += size
                if len(members) > limits.max_entries:
                    raise ExportError(f"The export holds more than {limits.max_entries:,} files.")

    walk(path)
    if total > limits.max_total_bytes:
        raise ExportError(f"The export holds {mesh.human_bytes(total)}, more than the "
                          f"{mesh.human_bytes(limits.max_total_bytes)} an export may hold.")
    return _Source(path.name, members, lambda m: open(m.key, "rb"))  # type: ignore[arg-type]


def _find_order_xml(source: _Source) -> _Member:
    names = {source.name.lower()}
    tops = {m.path.split("/", 1)[0] for m in source.members}
    if len(tops) == 1 and all("/" in m.path for m in source.members):
        names.add(next(iter(tops)).lower())
    candidates = [m for m in source.members if m.path.lower().endswith(".xml")
                  and PurePosixPath(m.path).name.lower() not in SIDE_XML
                  and "printableorderform" not in m.path.lower()]
    named = [m for m in candidates if PurePosixPath(m.path).stem.lower() in names]
    if named:
        return min(named, key=lambda m: m.path.count("/"))
    if not candidates:
        ox = _find_3ox(source)
        if ox is not None:
            return ox  # an export with only the .3ox order file
        raise ExportError(f"The export has no order XML ({source.name}.xml): it is not a 3Shape order export, "
                          "or the XML was left out.")
    shallow = min(m.path.count("/") for m in candidates)
    top = [m for m in candidates if m.path.count("/") == shallow]
    if len(top) == 1:
        return top[0]
    raise ExportError(f"The export holds several XML files ({', '.join(m.path for m in top[:4])}) and none is "
                      f"named after it ({source.name}.xml): which one is the order cannot be told.")


def _find_3ox(source: _Source) -> _Member | None:
    """The .3ox order file 3Shape writes beside (or instead of) the order XML: the shallowest one."""
    found = [m for m in source.members if m.path.lower().endswith(".3ox")]
    return min(found, key=lambda m: (m.path.count("/"), m.path)) if found else None


# The .3ox order file: UTF-16 (or UTF-8) XML in the namespace
# http://schemas.3shape.com/3OX/OrderInterface/2011/01 whose elements hold their values as text
# (<ThreeShapeOrderNo>, <ModelElement displayName=...>). Read by local name, namespace or not; the
# fields Lab Manager uses are listed in OX_FIELDS (any other is ignored).

OX_FIELDS = {
    "threeshapeorderno": "ThreeShapeOrderNo", "intorderid": "IntOrderID", "orderid": "IntOrderID",
    "extorderid": "ExtOrderID", "numorderid": "NumOrderID", "clientid": "ClientID",
    "clientorderno": "ClientOrderNo", "patientguid": "PatientGuid", "patientid": "PatientGuid",
    "scansource": "ScanSource", "patient_firstname": "Patient_FirstName", "patientfirstname": "Patient_FirstName",
    "firstname": "Patient_FirstName", "patient_lastname": "Patient_LastName", "patientlastname": "Patient_LastName",
    "lastname": "Patient_LastName", "patientname": "PatientName", "patient_refno": "Patient_RefNo",
    "patientrefno": "Patient_RefNo", "items": "Items", "ordercomments": "OrderComments", "comments": "OrderComments",
    "customer": "Customer", "clientcontactperson": "ClientContactPerson", "manufname": "ManufName",
    "operatorname": "OperatorName", "cachemaxscandate": "CacheMaxScanDate",
}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def read_3ox(data: bytes, what: str = "The .3ox order file") -> dict[str, str]:
    """The order fields of a .3ox (see OX_FIELDS), by the names of the order XML's TDM_Item_Order. The
    encoding comes from the byte-order mark or the XML declaration (3Shape writes UTF-16)."""
    root = parse_xml(data, what)
    found: dict[str, str] = {}
    for element in root.iter():
        key = OX_FIELDS.get(_local(element.tag).lower())
        if key is None or key in found:
            continue
        value = (element.text or element.get("value") or "").strip()
        if value and len(element) == 0:
            found[key] = value[:500]
    # <Property name="NumOrderID" value="..."/> in the 3OX namespace, as the order XML writes them
    for element in root.iter():
        if _local(element.tag) == "Property":
            key = OX_FIELDS.get((element.get("name") or "").lower())
            value = (element.get("value") or "").strip()
            if key and value and key not in found:
                found[key] = value[:500]
    return found


def split_patient_name(first: str, last: str) -> tuple[str, str]:
    """3Shape's Patient_LastName often holds the whole name ("Doe, Jane", "Jane Doe") with
    Patient_FirstName empty, or repeats the first name ("Jane Doe" with first name "Jane")."""
    first, last = first.strip(), " ".join(last.split())
    if first and last.lower().startswith(first.lower() + " "):
        return first, last[len(first) + 1:].strip()
    if first or not last:
        return first, last
    if "," in last:
        surname, given = (p.strip() for p in last.split(",", 1))
        return (given, surname) if given and surname else (first, last.replace(",", "").strip())
    words = last.split(" ")
    if len(words) >= 2:
        return " ".join(words[:-1]), words[-1]
    return first, last


# XML

def _xml_text(data: bytes, what: str) -> bytes | str:
    """UTF-16 XML (3Shape's .3ox) decoded here: expat reads UTF-16 only with a byte-order mark and
    refuses a declared "utf-16-le"; a str is parsed whatever its declaration says."""
    codec = ("utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
             else "utf-16-le" if data[:2] == b"<\x00" else "utf-16-be" if data[:2] == b"\x00<" else "")
    if not codec:
        return data
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        raise ExportError(f"{what} cannot be read: it is not valid UTF-16 text.") from None


def parse_xml(data: bytes, what: str = "The order XML") -> Element:
    """Parse untrusted XML: entity declarations and external references are refused."""
    try:
        return SafeET.fromstring(_xml_text(data, what))
    except defusedxml.EntitiesForbidden:
        raise ExportError(f"{what} declares entities, which Lab Manager refuses (they can read files on the "
                          "server or expand without end).") from None
    except (defusedxml.ExternalReferenceForbidden, defusedxml.DTDForbidden):
        raise ExportError(f"{what} refers to external content, which Lab Manager refuses.") from None
    except defusedxml.DefusedXmlException as exc:
        raise ExportError(f"{what} uses an XML feature Lab Manager refuses ({exc}).") from None
    except ParseError as exc:
        raise ExportError(f"{what} cannot be read: it is not well-formed XML ({exc}).") from None
    except ValueError as exc:  # an encoding expat does not know
        raise ExportError(f"{what} cannot be read: {exc}.") from None


def _props(obj: Element) -> dict[str, str]:
    return {p.get("name", ""): (p.get("value") or "").strip() for p in obj.findall("Property")}


def _objects(root: Element, type_: str) -> list[dict[str, str]]:
    return [_props(o) for o in root.iter("Object") if o.get("type") == type_]


def _unix(value: str) -> dt.datetime | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _unix_date(value: str) -> dt.date | None:
    moment = _unix(value)
    return moment.date() if moment else None


# Teeth

def _items_teeth(items_text: str) -> set[str]:
    """FDI teeth named in the order's Items text ("Anatomy bridge 24-26, Anatomy crown 36")."""
    found: set[str] = set()
    for a, b in re.findall(r"(?<!\d)([1-8][1-8])(?:\s*-\s*([1-8][1-8]))?(?!\d)", items_text):
        try:
            found.update(tooth_numbers.parse(f"{a}-{b}" if b else a, "fdi"))
        except tooth_numbers.ToothError:
            continue
    return found


def read_tooth_numbers(numbers: list[str], items_text: str) -> tuple[str, dict[str, str], str]:
    """Decide how an export numbers its teeth: (system, number -> FDI, warning or "").

    Importers report ToothNumber in Universal (1-32) while the Items text is FDI: a number set is read
    as Universal when its FDI equivalents are in the Items text, else as FDI when they are, else
    Universal when every number is 1-32, else FDI.
    """
    numbers = [n for n in numbers if n]
    as_universal = {n: tooth_numbers.UNIVERSAL_TO_FDI[n] for n in numbers if n in tooth_numbers.UNIVERSAL_TO_FDI
                    and n.isdigit()}
    as_fdi = {n: n for n in numbers if n in tooth_numbers.ALL_FDI}
    universal_ok = len(as_universal) == len(numbers)
    fdi_ok = len(as_fdi) == len(numbers)
    named = _items_teeth(items_text)
    warning = ""
    if named and universal_ok and set(as_universal.values()) <= named:
        return "universal", as_universal, ""
    if named and fdi_ok and set(as_fdi.values()) <= named:
        return "fdi", as_fdi, ""
    if named and numbers:
        warning = (f"The tooth numbers of the export ({', '.join(numbers)}) match the teeth of its Items text "
                   f"(“{items_text}”) neither in Universal nor in FDI numbering; ")
    if universal_ok or (len(as_universal) >= len(as_fdi) and as_universal):
        if warning:
            warning += "they were read as Universal."
        return "universal", as_universal, warning
    if warning:
        warning += "they were read as FDI."
    return "fdi", as_fdi, warning


def _tooth_kind(tooth_class: str) -> str:
    if tooth_class in TOOTH_CLASSES:
        return TOOTH_CLASSES[tooth_class]
    if "pontic" in tooth_class.lower():
        return "pontic"
    if tooth_class.startswith(("teCrown", "teCoping")):
        return "crown"
    return "other"


def _arch_of(fdi: str) -> str:
    return "upper" if fdi[0] in "1256" else "lower"


_ARCH_ORDER = {t: i for i, t in enumerate(t for arch in tooth_numbers.ARCHES for t in arch)}


def _neighbours(a: str, b: str) -> bool:
    for arch in tooth_numbers.ARCHES:
        if a in arch and b in arch:
            return abs(arch.index(a) - arch.index(b)) == 1
    return False


def _build_items(elements: list[ToothElement], links: list[set[str]], materials: dict[str, tuple[str, str]],
                 default: tuple[str, str], items_text: str) -> tuple[RxItem, ...]:
    """Prescription items: a pontic with the crowns beside it (or joined to it by connectors) is one bridge;
    splints and dentures one item per arch; every other element one item."""
    placed = [e for e in elements if e.fdi]
    parent = {e.element_id: e.element_id for e in placed}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    if links:
        for group in links:
            ids = [i for i in group if i in parent]
            for other in ids[1:]:
                union(ids[0], other)
    else:  # no connectors in the XML: a pontic joins the crowns and pontics beside it on the same model
        for a in placed:
            for b in placed:
                if (a.kind == "pontic" and b.kind in BRIDGEABLE and _neighbours(a.fdi, b.fdi)
                        and (a.model_element_id == b.model_element_id or not a.model_element_id
                             or not b.model_element_id)):
                    union(a.element_id, b.element_id)
    groups: dict[str, list[ToothElement]] = {}
    for e in placed:
        kind = e.kind
        if kind in ("denture", "night_guard"):
            key = f"{kind}:{_arch_of(e.fdi)}"
        else:
            key = find(e.element_id)
        groups.setdefault(key, []).append(e)
    items = []
    for group in groups.values():
        group.sort(key=lambda e: _ARCH_ORDER.get(e.fdi, 999))
        kinds = {e.kind for e in group}
        if "pontic" in kinds:
            restoration = "implant_bridge" if "implant_crown" in kinds else "bridge"
        elif kinds == {"denture"}:
            text = items_text.lower()
            full = "full" in text or "complete" in text or ("partial" not in text and len(group) >= 14)
            restoration = "full_denture" if full else "partial_denture"
        else:
            restoration = group[0].kind
        material, shade = materials.get(group[0].model_element_id, default)
        classes = sorted({e.tooth_class for e in group})
        notes = f"3Shape {', '.join(classes)}" if restoration == "other" else ""
        items.append(RxItem(teeth=tuple(dict.fromkeys(e.fdi for e in group)), restoration=restoration,
                            material=material, shade=shade, notes=notes))
    items.sort(key=lambda i: _ARCH_ORDER.get(i.teeth[0], 999))
    return tuple(items)


# Scans and files

def _scan_kind(scan_type: str) -> str:
    t = scan_type.lower()
    if "occlusion" in t or "bite" in t:
        return "bite"
    if "antagonist" in t:
        return "antagonist"
    if "prep" in t:  # stPreparationIntraOral, the misspelt stPreperation..., stGenericPrePrep
        return "preparation"
    return ""


def _name_kind(file_name: str) -> str:
    """The scan kind 3Shape writes into its file names ("…_PreparationScan.stl", "AntagonistScan")."""
    stem = os.path.splitext(PurePosixPath(file_name).name)[0]
    for word in (w.lower() for w in _NAME_WORDS.findall(stem)):
        if word in SCAN_KINDS:
            return SCAN_KINDS[word]
    return ""


def _opposite(jaw: Jaw) -> Jaw:
    return {Jaw.UPPER: Jaw.LOWER, Jaw.LOWER: Jaw.UPPER}.get(jaw, Jaw.UNKNOWN)


def _file_kind(path: str, model_files: set[str]) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    name = PurePosixPath(path).name.lower()
    parts = [p.lower() for p in PurePosixPath(path).parts[:-1]]
    if name in model_files or "cad" in parts or "cam" in parts:
        return "cam" if "cam" in parts else "cad"
    if suffix in MESH_EXTENSIONS or mesh.reference_only(path):
        return "scan"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return "other"


def _tokens(name: str) -> set[str]:
    return {w.lower() for w in re.split(r"[^A-Za-z0-9]+", os.path.splitext(PurePosixPath(name).name)[0]) if w}


# Reading an export

def read_export(path: str | os.PathLike, *, limits: Limits = Limits(), progress: Progress | None = None,
                read_meshes: bool = True) -> ThreeShapeExport:
    """Read an export folder or zip. `progress(bytes_read, total)` follows the meshes being read.
    With `read_meshes` False the meshes are only sniffed (their first megabyte: a PDF renamed .stl
    is that file's error at once) and left with ``mesh`` None for a background job to read; their
    jaws then come from the order and the names, the shape's say comes after the job."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return _read(_folder_source(path, limits), limits, progress, read_meshes)
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        source, archive = _zip_source(path, limits)
        with archive:
            return _read(source, limits, progress, read_meshes)
    if path.is_file():
        raise ExportError(f"{path.name} is neither a folder nor a zip of a 3Shape order export.")
    raise ExportError(f"{path.name} does not exist.")


def export_digest(path: str | os.PathLike) -> str:
    """A digest of a zip export's entries (name, size and CRC-32 of each, from the zip's directory:
    nothing is unpacked), so the same export uploaded again is known before its meshes are read, even
    zipped anew. "" when `path` is not a readable zip (read_export then says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = sorted((i.filename.replace("\\", "/"), i.file_size, i.CRC) for i in archive.infolist()
                             if not i.is_dir())
    except (zipfile.BadZipFile, OSError, ValueError):
        return ""
    tops = {name.split("/", 1)[0] for name, _, _ in entries}
    if len(tops) == 1 and all("/" in name for name, _, _ in entries):  # zipped with its folder or without
        entries = [(name.split("/", 1)[1], size, crc) for name, size, crc in entries]
    h = hashlib.sha256()
    for name, size, crc in entries:
        h.update(f"{name}\0{size}\0{crc:08x}\n".encode())
    return h.hexdigest()


def mesh_bytes(path: str | os.PathLike) -> int:
    """The unpacked size of a zip export's mesh files (STL, PLY, OBJ), from the zip's directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in archive.infolist()
                       if PurePosixPath(i.filename).suffix.lower() in MESH_EXTENSIONS)
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0


def _read(source: _Source, limits: Limits, progress: Progress | None, read_meshes: bool = True) -> ThreeShapeExport:
    xml_member = _find_order_xml(source)
    try:
        data = source.read(xml_member, limits.max_xml_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ExportError(f"The order XML {xml_member.path} is damaged and cannot be read ({exc}).") from None
    ox_member = xml_member if xml_member.path.lower().endswith(".3ox") else _find_3ox(source)
    ox: dict[str, str] = {}
    if ox_member is not None:
        try:
            ox = read_3ox(source.read(ox_member, limits.max_xml_bytes), ox_member.path)
        except ExportError:
            if ox_member is xml_member:
                raise
            ox = {}
    if ox_member is xml_member:  # no DentalContainer XML: the .3ox is the order
        root = Element("DentalContainer")
        order_obj = Element("Object", {"type": "TDM_Item_Order"})
        for key, value in ox.items():
            order_obj.append(Element("Property", {"name": key, "value": value}))
        root.append(order_obj)
    else:
        root = parse_xml(data)
    if root.tag != "DentalContainer":
        raise ExportError(f"{xml_member.path} is not a 3Shape order: its root element is <{root.tag}>, "
                          "not <DentalContainer>.")
    orders = _objects(root, "TDM_Item_Order")
    if not orders:
        raise ExportError(f"{xml_member.path} holds no order (no TDM_Item_Order).")
    warnings: list[str] = []
    if len(orders) > 1:
        warnings.append(f"The order XML holds {len(orders)} orders; the first was read.")
    order = {**{k: v for k, v in ox.items() if k != "IntOrderID" or not orders[0].get("IntOrderID")},
             **{k: v for k, v in orders[0].items() if v}}
    order_id = order.get("IntOrderID") or order.get("ThreeShapeOrderNo") or source.name
    if order_id.lower() != source.name.lower() and PurePosixPath(xml_member.path).stem.lower() != order_id.lower():
        warnings.append(f"The export is named {source.name} but its XML is for order {order_id}.")
    scanned_at = _unix(order.get("CacheMaxScanDate", ""))
    if order.get("CacheMaxScanDate") and scanned_at is None:
        warnings.append(f"The scan date “{order['CacheMaxScanDate']}” is not a time in unix seconds.")

    material_names = _material_names(source, warnings)
    models = tuple(ModelElement(
        element_id=m.get("ModelElementID", ""), element_type=m.get("ModelElementType", ""),
        material=m.get("CacheMaterialName") or material_names.get(m.get("MaterialID", ""), ""),
        shade=m.get("CacheColor", ""), file_name=m.get("ModelFilename", ""),
        delivery_date=_unix_date(m.get("DeliveryDate", "")),
    ) for m in _objects(root, "TDM_Item_ModelElement"))

    raw_teeth = _objects(root, "TDM_Item_ToothElement")
    items_text = order.get("Items", "")
    system, to_fdi, warning = read_tooth_numbers([t.get("ToothNumber", "") for t in raw_teeth], items_text)
    if warning:
        warnings.append(warning)
    elements = []
    for t in raw_teeth:
        number, cls = t.get("ToothNumber", ""), t.get("CacheToothTypeClass", "")
        fdi = to_fdi.get(number, "")
        if number and not fdi:
            warnings.append(f"Tooth number “{number}” of element {t.get('ToothElementID', '?')} is neither "
                            "Universal nor FDI; the element was left out.")
        kind = _tooth_kind(cls)
        if kind == "other" and cls not in TOOTH_CLASSES:
            warnings.append(f"Unknown tooth element class “{cls}”; it was read as “other”.")
        elements.append(ToothElement(t.get("ToothElementID", ""), number, fdi, cls, kind, t.get("ModelElementID", "")))

    link_ids = {link.get("LinkID") for link in _objects(root, "TDM_Item_Link")
                if link.get("CacheLinkTypeClass", "ltConnector") == "ltConnector"}
    joined: dict[str, set[str]] = {}
    for lt in _objects(root, "TDM_Item_LinkToothElement"):
        if lt.get("LinkID") in link_ids:
            joined.setdefault(lt["LinkID"], set()).add(lt.get("ToothElementID", ""))
    default = (order.get("CacheMaterialName", ""), order.get("CacheColor", ""))
    by_model = {m.element_id: (m.material or default[0], m.shade or default[1]) for m in models}
    items = _build_items(elements, list(joined.values()), by_model, default, items_text)

    # The arch of the prepared teeth: of the scan's own tooth or model element when it names one.
    restored = [e for e in elements if e.fdi and e.kind != "other"]

    def prep_arch(scan: dict[str, str]) -> Jaw:
        chosen = [e for e in restored if scan.get("ToothElementID") and e.element_id == scan["ToothElementID"]]
        chosen = chosen or [e for e in restored if scan.get("ModelElementID")
                            and e.model_element_id == scan["ModelElementID"]]
        arches = {_arch_of(e.fdi) for e in (chosen or restored)}
        return Jaw(arches.pop()) if len(arches) == 1 else Jaw.UNKNOWN

    scans = []
    for s in _objects(root, "TDM_Item_Scan"):
        kind = _scan_kind(s.get("ScanType", ""))
        jaw = {"preparation": prep_arch(s), "antagonist": _opposite(prep_arch(s)), "bite": Jaw.BITE}.get(kind, Jaw.UNKNOWN)
        scans.append(Scan(s.get("ScanID", ""), s.get("ScanType", ""), kind, jaw, _unix(s.get("ScanDate", "")),
                          s.get("FileName", "")))
    if restored and len({_arch_of(e.fdi) for e in restored}) > 1 and any(s.kind != "bite" and s.kind for s in scans):
        warnings.append("The prepared teeth are on both arches: which arch each scan shows is not told by "
                        "the order.")

    files = _read_files(source, xml_member, models, scans, prep_arch({}), progress, read_meshes)
    first, last = split_patient_name(order.get("Patient_FirstName", ""),
                                     order.get("Patient_LastName", "") or order.get("PatientName", ""))
    patient = PatientRef(first_name=first, last_name=last, chart_number=order.get("Patient_RefNo", ""))
    return ThreeShapeExport(
        name=source.name, order_id=order_id, ext_order_id=order.get("ExtOrderID", ""),
        client_order_no=order.get("ClientOrderNo", ""), patient=patient, comments=order.get("OrderComments", ""),
        items_text=items_text, customer=order.get("Customer", ""), contact_person=order.get("ClientContactPerson", ""),
        manufacturer=order.get("ManufName", ""), operator=order.get("OperatorName", ""),
        material=order.get("CacheMaterialName", ""), shade=order.get("CacheColor", ""), scanned_at=scanned_at,
        container_version=root.get("version", ""), tooth_numbering=system if raw_teeth else "",
        tooth_elements=tuple(elements), model_elements=models, scans=tuple(scans), files=files, items=items,
        xml_path=xml_member.path, warnings=tuple(warnings), num_order_id=order.get("NumOrderID", ""),
        client_id=order.get("ClientID", ""), patient_guid=order.get("PatientGuid", ""),
        scan_source=order.get("ScanSource", ""), threeshape_order_no=order.get("ThreeShapeOrderNo", ""),
        order_3ox_path=ox_member.path if ox_member is not None else "",
    )


def _material_names(source: _Source, warnings: list[str]) -> dict[str, str]:
    """MaterialID -> name from Materials.xml, when the export has one (it is optional)."""
    member = next((m for m in source.members if PurePosixPath(m.path).name.lower() == "materials.xml"), None)
    if member is None:
        return {}
    try:
        root = parse_xml(source.read(member, 20 * 1024**2), "Materials.xml")
    except (ExportError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        warnings.append(f"Materials.xml was not read: {exc}")
        return {}
    names = {}
    for obj in root.iter("Object"):
        props = _props(obj)
        name = props.get("MaterialName") or props.get("DisplayName") or props.get("Name")
        if props.get("MaterialID") and name:
            names[props["MaterialID"]] = name
    return names


def _read_files(source: _Source, xml_member: _Member, models: tuple[ModelElement, ...], scans: list[Scan],
                prep_jaw: Jaw, progress: Progress | None, read_meshes: bool = True) -> tuple[ExportFile, ...]:
    model_files = {PurePosixPath(m.file_name.replace("\\", "/")).name.lower() for m in models if m.file_name}
    meshes = [m for m in source.members if PurePosixPath(m.path).suffix.lower() in MESH_EXTENSIONS]
    total, done = sum(m.size for m in meshes), 0
    files: list[ExportFile] = []
    for member in sorted(source.members, key=lambda m: m.path):
        suffix = PurePosixPath(member.path).suffix.lower()
        fmt = mesh.extension_format(member.path)
        kind = "other" if member is xml_member else _file_kind(member.path, model_files)
        info, error = None, ""
        if suffix in MESH_EXTENSIONS:
            base = done

            def step(read: int, _total: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + read, total)

            try:
                with source.open(member) as f:
                    if read_meshes:
                        info = mesh.inspect(f, name=member.path, size=member.size, progress=step)
                        fmt = info.format
                    else:
                        fmt = mesh.check_head(f.read(mesh.CHUNK_SIZE), member.size, member.path)
            except MeshError as exc:
                error = str(exc)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                error = f"The file is damaged inside the export and cannot be read ({exc})."
            done += member.size
            if progress is not None:
                progress(done, total)
        files.append(ExportFile(member.path, fmt, kind, member.size, info, error,
                                reference_only=bool(mesh.reference_only(member.path))))
    return _assign_jaws(files, scans, prep_jaw)


def _assign_jaws(files: list[ExportFile], scans: list[Scan], prep_jaw: Jaw) -> tuple[ExportFile, ...]:
    """Jaw of each scan file: its TDM_Item_Scan (by FileName, ScanID, or the only scan of the kind its name
    says) > the file name > geometry (mesh.detect_jaws, over the order's scan files)."""
    scan_at = [i for i, f in enumerate(files) if f.kind == "scan"]
    vendor: dict[int, tuple[Scan, Jaw]] = {}
    named_kind: dict[int, Jaw] = {}
    for i in scan_at:
        f = files[i]
        stem = os.path.splitext(f.file_name)[0].lower()
        match = next((s for s in scans if s.file_name and os.path.splitext(
            PurePosixPath(s.file_name.replace("\\", "/")).name)[0].lower() == stem), None)
        match = match or next((s for s in scans if s.scan_id and s.scan_id.lower() in _tokens(f.file_name)), None)
        kind = _name_kind(f.file_name)
        if match is None and kind:
            same = [s for s in scans if s.kind == kind]
            if len(same) == 1:
                match = same[0]
            else:  # the name says the kind, the order says where the prepared teeth are
                named_kind[i] = {"preparation": prep_jaw, "antagonist": _opposite(prep_jaw),
                                 "bite": Jaw.BITE}[kind]
        if match is not None:
            vendor[i] = (match, match.jaw)
    detected = mesh.detect_jaws([
        (files[i].file_name, vendor[i][1] if i in vendor else None, files[i].mesh) for i in scan_at])
    out = list(files)
    for i, guess in zip(scan_at, detected):
        (jaw, how), note = guess, guess.note
        if how in ("", mesh.SOURCE_GEOMETRY) and named_kind.get(i, Jaw.UNKNOWN) != Jaw.UNKNOWN:
            jaw, how, note = named_kind[i], mesh.SOURCE_FILE_NAME, ""
        scan_id = vendor[i][0].scan_id if i in vendor else ""
        out[i] = dataclasses.replace(files[i], scan_id=scan_id, jaw=jaw, jaw_source=how, jaw_note=note)
    return tuple(out)
