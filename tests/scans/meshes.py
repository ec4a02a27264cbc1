"""Mesh files and 3Shape exports made on the fly for the tests and the bench (nothing binary is committed).

Triangles are numpy arrays of shape (T, 3, 3); indexed meshes are (vertices (V, 3), faces: list of
index lists, 0-based). Writers return bytes or write a path and return it.
"""
from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

# A unit cube: 8 vertices, 6 quads = 12 triangles.
CUBE_VERTICES = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                          [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=float)
CUBE_QUADS = [[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7]]


def triangulate(faces: list[list[int]]) -> list[list[int]]:
    return [[f[0], f[i], f[i + 1]] for f in faces for i in range(1, len(f) - 1)]


CUBE_TRIANGLES = triangulate(CUBE_QUADS)


def corners(vertices: np.ndarray, faces: list[list[int]]) -> np.ndarray:
    """(T, 3, 3) triangle corners of an indexed mesh (polygons fanned)."""
    return np.asarray(vertices, dtype=float)[np.array(triangulate(faces))]


# STL

def binary_stl(tris: np.ndarray, header: bytes = b"Lab Manager test mesh", count: int | None = None) -> bytes:
    tris = np.asarray(tris, dtype="<f4").reshape(-1, 3, 3)
    records = np.zeros(len(tris), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    records["v"] = tris
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    records["n"] = np.divide(n, length, out=np.zeros_like(n), where=length > 0)
    head = header[:80].ljust(80, b" ")
    return head + struct.pack("<I", len(tris) if count is None else count) + records.tobytes()


def ascii_stl(tris: np.ndarray, name: str = "scan", newline: str = "\n") -> bytes:
    lines = [f"solid {name}"]
    for t in np.asarray(tris, dtype=float).reshape(-1, 3, 3):
        lines.append("  facet normal 0 0 1")
        lines.append("    outer loop")
        lines.extend(f"      vertex {x:.6e} {y:.6e} {z:.6e}" for x, y, z in t)
        lines.append("    endloop")
        lines.append("  endfacet")
    lines.append(f"endsolid {name}")
    return (newline.join(lines) + newline).encode()


# PLY

def ply(vertices: np.ndarray, faces: list[list[int]], encoding: str = "ascii", *, colors: bool = False,
        face_count: int | None = None, vertex_count: int | None = None, index_type: str = "int",
        comment: str = "made by tests/scans/meshes.py") -> bytes:
    """A PLY of x y z vertices (optionally with r g b uchar colours) and polygon faces."""
    vertices = np.asarray(vertices, dtype=float)
    header = ["ply", f"format {encoding} 1.0", f"comment {comment}",
              f"element vertex {len(vertices) if vertex_count is None else vertex_count}",
              "property float x", "property float y", "property float z"]
    if colors:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(faces) if face_count is None else face_count}",
               f"property list uchar {index_type} vertex_indices", "end_header"]
    head = ("\n".join(header) + "\n").encode()
    if encoding == "ascii":
        rows = [" ".join(f"{c:.6g}" for c in v) + (" 200 180 170" if colors else "") for v in vertices]
        rows += [" ".join(str(i) for i in [len(f), *f]) for f in faces]
        return head + ("\n".join(rows) + "\n").encode()
    order = "<" if encoding == "binary_little_endian" else ">"
    vdt = [("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4")]
    if colors:
        vdt += [("r", "u1"), ("g", "u1"), ("b", "u1")]
    vrec = np.zeros(len(vertices), dtype=vdt)
    vrec["x"], vrec["y"], vrec["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors:
        vrec["r"], vrec["g"], vrec["b"] = 200, 180, 170
    itype = {"int": "i4", "uint": "u4", "short": "i2"}[index_type]
    body = b"".join(struct.pack(order + "B", len(f)) + np.array(f, dtype=order + itype).tobytes() for f in faces)
    return head + vrec.tobytes() + body


# OBJ

def obj(vertices: np.ndarray, faces: list[list[int]], style: str = "plain") -> bytes:
    """style: plain (`f 1 2 3`), full (`f 1/1/1`, with vt and vn lines), normals (`f 1//1`), negative
    (each face written right after its vertices, with indices counting back: `f -3 -2 -1`)."""
    out = ["# made by tests/scans/meshes.py", "mtllib scan.mtl", "o scan", "g jaw", "s off"]
    if style == "negative":
        for f in faces:
            for i in f:
                out.append("v " + " ".join(f"{c:.6g}" for c in vertices[i]))
            out.append("f " + " ".join(str(-len(f) + k) for k in range(len(f))))
        return ("\n".join(out) + "\n").encode()
    out += ["v " + " ".join(f"{c:.6g}" for c in v) for v in vertices]
    if style == "full":
        out += [f"vt {i % 2} {i // 2 % 2}" for i in range(len(vertices))]
    if style in ("full", "normals"):
        out += ["vn 0 0 1"]
    out.append("usemtl gum")
    for f in faces:
        if style == "full":
            out.append("f " + " ".join(f"{i + 1}/{i + 1}/1" for i in f))
        elif style == "normals":
            out.append("f " + " ".join(f"{i + 1}//1" for i in f))
        else:
            out.append("f " + " ".join(str(i + 1) for i in f))
    return ("\n".join(out) + "\n").encode()


# Dental arches: a horseshoe band in one coordinate frame (mm), teeth towards the occlusal plane z=0.

def arch(jaw: str, segments: int = 40, across: int = 6, z_gap: float = 12.0,
         scale: float | None = None) -> tuple[np.ndarray, list[list[int]]]:
    """An arch-like surface: 50 mm wide, 40 mm deep, a 10 mm ridge of 12 mm height. The upper sits
    above z=0 with its ridge pointing down, the lower below with its ridge pointing up, and is 6%
    narrower (`scale` 0.94: the maxilla overlaps the mandible)."""
    sign = 1.0 if jaw == "upper" else -1.0
    scale = scale if scale is not None else (1.0 if jaw == "upper" else 0.94)
    verts = []
    for i in range(segments + 1):
        t = math.pi * i / segments
        cx, cy = 25 * scale * math.cos(t), 40 * scale * math.sin(t)
        nx, ny = math.cos(t), math.sin(t) * 25 / 40
        norm = math.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm
        for j in range(across + 1):
            v = j / across
            r = (v - 0.5) * 10
            bump = 1 - (2 * v - 1) ** 2  # 0 at the edges, 1 on the ridge
            verts.append((cx + nx * r, cy + ny * r, sign * (z_gap + 10 - 10 * bump)))
    faces = []
    w = across + 1
    for i in range(segments):
        for j in range(across):
            a, b = i * w + j, (i + 1) * w + j
            faces += [[a, b, b + 1], [a, b + 1, a + 1]]
    return np.array(verts), faces


def bite(segments: int = 8, tall: int = 4) -> tuple[np.ndarray, list[list[int]]]:
    """A buccal bite scan: a 20 mm strip on the left side spanning both arches (z -8..8)."""
    verts = []
    for i in range(segments + 1):
        t = math.pi * (0.15 + 0.25 * i / segments)
        x, y = 30 * math.cos(t), 45 * math.sin(t)
        for j in range(tall + 1):
            verts.append((x, y, -8 + 16 * j / tall))
    faces = []
    w = tall + 1
    for i in range(segments):
        for j in range(tall):
            a, b = i * w + j, (i + 1) * w + j
            faces += [[a, b, b + 1], [a, b + 1, a + 1]]
    return np.array(verts), faces


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Large files for the streaming tests and the bench, written in slices.

def big_binary_stl(path: Path, triangles: int, slice_size: int = 100_000) -> Path:
    rng = np.random.default_rng(7)
    with open(path, "wb") as f:
        f.write(b"solid big test mesh".ljust(80, b" ") + struct.pack("<I", triangles))
        done = 0
        while done < triangles:
            n = min(slice_size, triangles - done)
            records = np.zeros(n, dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
            records["v"] = rng.uniform(-30, 30, size=(n, 3, 3))
            f.write(records.tobytes())
            done += n
    return path


def big_ascii_ply(path: Path, target_bytes: int) -> tuple[Path, int, int]:
    """An ASCII PLY of about target_bytes: a grid of vertices and its triangles. Returns (path, V, F)."""
    # A grid of c x c vertices holds 2 (c-1)^2 triangles; about 23 bytes a vertex line and 20 a face line.
    c = max(3, int(math.sqrt(target_bytes / (23 + 2 * 20))))
    vertex_count, face_count = c * c, 2 * (c - 1) ** 2
    with open(path, "wb") as f:
        f.write(f"ply\nformat ascii 1.0\nelement vertex {vertex_count}\nproperty float x\nproperty float y\n"
                f"property float z\nelement face {face_count}\nproperty list uchar int vertex_indices\n"
                "end_header\n".encode())
        for row in range(c):
            xs = np.arange(c) * 0.1
            lines = [f"{x:.3f} {row * 0.1:.3f} {math.sin(x + row * 0.1):.4f}" for x in xs]
            f.write(("\n".join(lines) + "\n").encode())
        for row in range(c - 1):
            a = row * c + np.arange(c - 1)
            b = a + c
            lines = [f"3 {i} {j} {j + 1}\n3 {i} {j + 1} {i + 1}" for i, j in zip(a, b)]
            f.write(("\n".join(lines) + "\n").encode())
    return path, vertex_count, face_count


# 3Shape TRIOS / Dental System exports

def _prop(name: str, value) -> str:
    return f"<Property name={quoteattr(name)} value={quoteattr(str(value))}/>"


def _obj(type_: str, props: dict) -> str:
    return f'<Object type="{type_}">' + "".join(_prop(k, v) for k, v in props.items()) + "</Object>"


def _list(name: str, type_: str, objects: list[str]) -> str:
    return (f'<Object name="{name}" type="TDM_List_{type_}"><List name="Items">' + "".join(objects)
            + "</List></Object>")


def order_xml(order_id: str = "20240611_1432_Tech01_Doe", *, first: str = "Jane", last: str = "Doe",
              ref_no: str = "CH-1042", items: str = "Anatomy bridge 24-26, Anatomy crown 22",
              teeth: list[tuple[int, str]] | None = None, scans: list[dict] | None = None,
              material: str = "Zirconia", shade: str = "A2", scan_date: int = 1718116320,
              comments: str = "Please check the contact on 22.", manufacturer: str = "Smile Lab",
              connectors: list[tuple[int, int]] | None = None, delivery_date: int = 1718841600,
              extra_order: dict | None = None, prolog: str = '<?xml version="1.0" encoding="utf-8"?>\n') -> bytes:
    """A DentalContainer order XML shaped like real TRIOS / Dental System exports: teeth are given as
    (ToothNumber, CacheToothTypeClass), ToothNumber in Universal numbering as importers report it."""
    if teeth is None:  # bridge 24-26 (Universal 12, 13, 14) and crown 22 (Universal 10), all upper
        teeth = [(12, "teCrown"), (13, "teCrownPontic"), (14, "teCrown"), (10, "teCrown")]
    if scans is None:
        scans = [
            {"ScanID": "S1", "ScanType": "stPreparationIntraOral", "ScanDate": scan_date - 600},
            {"ScanID": "S2", "ScanType": "stAntagonistIntraOral", "ScanDate": scan_date - 300},
            {"ScanID": "S3", "ScanType": "stOcclusion", "ScanDate": scan_date},
        ]
    order = {
        "IntOrderID": order_id, "ExtOrderID": f"EXT-{order_id[-6:]}", "NumOrderID": "1792912845684",
        "ClientOrderNo": "PO-77", "ClientID": "17929", "Patient_FirstName": first, "Patient_LastName": last,
        "Patient_RefNo": ref_no, "OrderComments": comments, "Items": items, "Customer": "Bright Dental Clinic",
        "ClientContactPerson": "Dr. Ann Smith", "ManufName": manufacturer, "ManufacturerID": "17929",
        "OperatorName": "Tech 01", "CacheMaterialName": material, "CacheColor": shade,
        "CacheMaxScanDate": scan_date, "DesignModuleID": "DentalDesigner", "ScanSource": "ss3SE4",
        **(extra_order or {}),
    }
    model = {"ModelElementID": "ME1", "ModelJobID": "MJ1", "ModelElementType": "meIndicationRegular",
             "MaterialID": "Configuration_11_Material1", "CacheMaterialName": material, "CacheColor": shade,
             "ModelFilename": f"CAD\\{order_id} 0.dcm", "DeliveryDate": delivery_date,
             "ProcessStatusID": "psScanned", "ValidationResult": "vrPassed"}
    elements = [_obj("TDM_Item_ToothElement", {
        "ToothElementID": f"TE{i + 1}", "ModelElementID": "ME1", "toothElementTypeID": f"{cls}_type",
        "ToothNumber": number, "CacheToothTypeClass": cls, "Anatomical": "True", "PostAndCore": "False"})
        for i, (number, cls) in enumerate(teeth)]
    links, link_teeth = [], []
    numbers = [n for n, _ in teeth]
    for k, (a, b) in enumerate(connectors or []):
        links.append(_obj("TDM_Item_Link", {"LinkID": f"L{k}", "LinkTypeID": "LinkTypeConnector6",
                                            "CacheLinkTypeClass": "ltConnector", "ModelElementID": "ME1"}))
        for side, n in (("a", a), ("b", b)):
            link_teeth.append(_obj("TDM_Item_LinkToothElement", {
                "LinkToothElementID": f"LT{k}{side}", "LinkID": f"L{k}", "ToothElementID": f"TE{numbers.index(n) + 1}"}))
    body = (
        '<DentalContainer version="2022-1"><Object name="MainObject" type="TDM_Container">'
        + _list("OrderList", "Order", [_obj("TDM_Item_Order", order)])
        + _list("ModelJobList", "ModelJob", [_obj("TDM_Item_ModelJob", {"ModelJobID": "MJ1", "OrderID": order_id})])
        + _list("ModelElementList", "ModelElement", [_obj("TDM_Item_ModelElement", model)])
        + _list("ToothElementList", "ToothElement", elements)
        + _list("LinkList", "Link", links)
        + _list("LinkToothElementList", "LinkToothElement", link_teeth)
        + _list("ScanList", "Scan", [_obj("TDM_Item_Scan", {"ModelJobID": "MJ1", **s}) for s in scans])
        + _prop("ImportControl", "icNone")
        + "</Object></DentalContainer>"
    )
    return (prolog + body).encode()


OX_NS = "http://schemas.3shape.com/3OX/OrderInterface/2011/01"


def order_3ox(order_no: str = "20240611_1432_Tech01_Doe", *, encoding: str = "utf-16", **fields: str) -> bytes:
    """A .3ox order file as 3Shape writes it: UTF-16 with a byte-order mark, namespaced elements that
    hold their values as text. `fields` become elements (ThreeShapeOrderNo is always there)."""
    values = {"ThreeShapeOrderNo": order_no, **fields}
    body = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in values.items())
    text = (f'<?xml version="1.0" encoding="{encoding}"?>\n<ThreeShapeOrder xmlns="{OX_NS}"><Order>{body}'
            '<ModelElements><ModelElement displayName="Crown 22"><ModelElementIndex>1</ModelElementIndex>'
            "</ModelElement></ModelElements></Order></ThreeShapeOrder>")
    return text.encode(encoding)


def arch_files(order_id: str, fmt: str = "stl") -> dict[str, bytes]:
    """Preparation (upper), antagonist (lower) and bite scans of one order, named as TRIOS names them."""
    upper, lower, bite_ = arch("upper"), arch("lower"), bite()
    out = {}
    for label, mesh in (("PreparationScan", upper), ("AntagonistScan", lower), ("BiteScan", bite_)):
        if fmt == "stl":
            out[f"{order_id}_{label}.stl"] = binary_stl(corners(*mesh))
        else:
            out[f"{order_id}_{label}.ply"] = ply(*mesh, encoding="binary_little_endian")
    return out


def export_files(order_id: str = "20240611_1432_Tech01_Doe", *, xml: bytes | None = None,
                 meshes: dict[str, bytes] | None = None, materials: bool = True) -> dict[str, bytes]:
    """The files of a realistic export, by path inside the export folder."""
    files = {f"{order_id}.xml": xml if xml is not None else order_xml(order_id)}
    files.update(meshes if meshes is not None else arch_files(order_id))
    files[f"{order_id}_PreparationScan.dcm"] = b"<HPS version=\"1.0\"><Binary_data/></HPS>"
    files[f"CAD/{order_id} 0.dcm"] = b"<HPS version=\"1.0\"><Binary_data/></HPS>"
    if materials:
        files["Materials.xml"] = (
            '<?xml version="1.0" encoding="utf-8"?><DentalContainer version="2022-1">'
            + _list("MaterialList", "Material", [_obj("TDM_Item_Material", {
                "MaterialID": "Configuration_11_Material1", "MaterialName": "Zirconia HT"})])
            + "</DentalContainer>").encode()
    files["PrintableOrderForm/PrintableOrderForm.html"] = b"<html><body>Order form</body></html>"
    files["3SCom/Screenshots/Front.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    return files


def write_export(root: Path, order_id: str = "20240611_1432_Tech01_Doe", files: dict[str, bytes] | None = None) -> Path:
    """An export folder named after the order id."""
    folder = root / order_id
    for rel, data in (files if files is not None else export_files(order_id)).items():
        write(folder / rel, data)
    return folder


def write_export_zip(path: Path, order_id: str = "20240611_1432_Tech01_Doe", files: dict[str, bytes] | None = None,
                     *, top_folder: bool = True, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip of an export, its entries under `<order_id>/` (as TRIOS zips a folder) or at the root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for rel, data in (files if files is not None else export_files(order_id)).items():
            z.writestr(f"{order_id}/{rel}" if top_folder else rel, data)
    return path
