"""What every scanner adapter hands to Lab Manager, whatever the vendor calls it.

An adapter (iTero's API, Medit Link's API, a 3Shape TRIOS export, a plain mesh upload) reads the
vendor's own shapes in its own mapping module and produces a :class:`VendorOrder`. The scan inbox
(`portal/scans/services.py: ingest`) only ever sees these: it matches the patient, records the
scan and its file references, and creates or updates the lab case. Lab Manager keeps references to
scan files (vendor artifact ids, URLs, a document store path), never the files (docs/sources.md source 000).
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from dataclasses import dataclass, field, fields


class Vendor(enum.StrEnum):
    ITERO = "itero"
    MEDIT = "medit"
    THREESHAPE = "3shape"
    UPLOAD = "upload"  # any STL/PLY/OBJ a person uploaded, no vendor integration behind it
    OPENDENTAL = "opendental"  # a practice management system (PMS), not a scanner

    @property
    def label(self) -> str:
        return {"itero": "iTero", "medit": "Medit Link", "3shape": "3Shape TRIOS",
                "upload": "File upload", "opendental": "Open Dental"}[self.value]

    @property
    def kind(self) -> str:
        """"scanner" (scans come in) or "pms" (a practice management system: patients, providers,
        appointments and laboratories come in, lab cases go back). Dentrix, Eaglesoft and Curve
        would be "pms" vendors too."""
        return "pms" if self in PMS_VENDORS else "scanner"

    @classmethod
    def scanners(cls) -> list["Vendor"]:
        return [v for v in cls if v.kind == "scanner"]


PMS_VENDORS = frozenset({Vendor.OPENDENTAL})


class Jaw(enum.StrEnum):
    UPPER = "upper"
    LOWER = "lower"
    BITE = "bite"
    UNKNOWN = "unknown"


class OrderStage(enum.StrEnum):
    """Where the vendor says the scan is, reduced to what the case needs to know.

    READY: a (re)scan is complete and can go to the lab (iTero Completed / Ready for Download,
    Medit COMPLETED, an export or upload). REVIEW: back from modelling or interpretation 2 for the
    lab to review (iTero Lab Review). MILLING, READY_TO_SHIP, DOWNLOADED: iTero's milling flow.
    RESCAN: sent back to the doctor for a rescan (iTero Scanning). IN_PROGRESS: the vendor is still
    working on it (Medit SCAN, CAD...; iTero iTero Modeling). DELETED: the vendor removed it.
    """

    IN_PROGRESS = "in_progress"
    READY = "ready"
    REVIEW = "review"
    RESCAN = "rescan"
    MILLING = "milling"
    READY_TO_SHIP = "ready_to_ship"
    DOWNLOADED = "downloaded"
    DELETED = "deleted"

    @property
    def label(self) -> str:
        return {"in_progress": "In progress at the vendor", "ready": "Scan ready", "review": "Lab review",
                "rescan": "Sent back for a rescan", "milling": "Milling", "ready_to_ship": "Ready to ship",
                "downloaded": "Downloaded", "deleted": "Deleted at the vendor"}[self.value]


@dataclass(frozen=True)
class PatientRef:
    """The patient as the scanner knows them; matched to a patient of the practice by chart number,
    else by name and date of birth, else left for a person to match."""

    first_name: str = ""
    last_name: str = ""
    chart_number: str = ""
    date_of_birth: dt.date | None = None

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@dataclass(frozen=True)
class Asset:
    """A reference to one file of a scan, kept instead of the file.

    `ref` is the vendor's artifact id (iTero asset id, Medit file uuid) or, for an upload or an
    export, the path in the document store; `url` is where it can be fetched, when there is one.
    `format` is upper case (STL, PLY, OBJ, DCM, 3ML, ZIP, JPG, 7Z). `jaw_source` says how the jaw
    was known: vendor metadata, file name, geometry, or "" when it is unknown.
    """

    ref: str
    file_name: str
    format: str
    kind: str = "scan"  # scan, cad, cam, image, viewer, other
    size_bytes: int | None = None
    jaw: Jaw = Jaw.UNKNOWN
    jaw_source: str = ""
    jaw_note: str = ""  # geometry: how sure ("sure: ..." or "not sure: ..."), see portal/scans/mesh/jaws.py
    url: str = ""
    vertex_count: int | None = None
    triangle_count: int | None = None
    error: str = ""  # why the file was refused (broken mesh...), "" when it is fine


@dataclass(frozen=True)
class RxItem:
    """One line of the prescription the scanner carries (teeth in FDI)."""

    teeth: tuple[str, ...]
    restoration: str  # a key of portal.cases.catalog.RESTORATIONS, "other" when unsure
    material: str = ""
    shade: str = ""
    notes: str = ""


@dataclass(frozen=True)
class VendorOrder:
    """One scan order as a vendor reports it at one moment.

    `order_id` is the key that stays the same through every flow (iTero's order id, Medit's case
    uuid, 3Shape's order id, an upload's generated id). `rx_id` is iTero's Rx id when there is one.
    `updated_at` orders reports of the same order: an older report never undoes a newer one.
    `status` is the vendor's own word, kept for people and the timeline; `stage` is what it means.
    """

    vendor: Vendor
    order_id: str
    status: str
    stage: OrderStage
    patient: PatientRef
    updated_at: dt.datetime | None = None
    rx_id: str = ""
    scanned_at: dt.datetime | None = None
    doctor_name: str = ""
    doctor_ref: str = ""
    procedure: str = ""
    items: tuple[RxItem, ...] = ()
    lab_ref: str = ""
    lab_name: str = ""
    due_date: dt.date | None = None
    notes: str = ""
    assets: tuple[Asset, ...] = ()
    history: tuple[tuple[str, dt.datetime | None], ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def content_key(self) -> str:
        """A digest of everything that matters to the case. The same order delivered again with the
        same content has the same key (a no-op); a rescan with new files does not (docs/reliability.md W4:
        the order id alone is not enough). Worked out once per report (a sync compares it twice)."""
        key = self.__dict__.get("_content_key")
        if key is None:
            data = _plain(self)
            data.pop("extra", None)
            key = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
            object.__setattr__(self, "_content_key", key)  # frozen: not a field, so not compared or copied
        return key


def _plain(value):
    """`dataclasses.asdict` without its deep copy of every value (the JSON of both is the same; a
    sync worked out the content key of 1,000 orders mostly copying them)."""
    if hasattr(type(value), "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
