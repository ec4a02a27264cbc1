"""portal/scans/mesh/__init__.py: counts on every format, every refusal and its message, streaming, jaws."""
from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.integrations.vendor import Jaw
from portal.scans import mesh
from portal.scans.mesh import MeshError, MeshInfo, bite_links, detect_jaws, inspect, jaw_from_name
from tests.scans import meshes as M

CUBE = M.corners(M.CUBE_VERTICES, M.CUBE_QUADS)


def read(data: bytes, name: str = "", **kw) -> MeshInfo:
    return inspect(io.BytesIO(data), name=name, **kw)


def refused(data: bytes, name: str = "", **kw) -> str:
    with pytest.raises(MeshError) as exc:
        read(data, name, **kw)
    return str(exc.value)


def assert_cube(info: MeshInfo, fmt: str, encoding: str, vertices: int, faces: int = 12) -> None:
    assert (info.format, info.encoding) == (fmt, encoding)
    assert info.vertex_count == vertices
    assert info.triangle_count == 12
    assert info.face_count == faces
    assert info.bbox_min == (0.0, 0.0, 0.0)
    assert info.bbox_max == (1.0, 1.0, 1.0)
    assert info.centroid == pytest.approx((0.5, 0.5, 0.5))
    assert info.extent == (1.0, 1.0, 1.0)


# Counts on each format

def test_binary_stl_counts_triangles_and_corners():
    data = M.binary_stl(CUBE)
    info = read(data, "cube.stl")
    assert_cube(info, "STL", "binary", vertices=36)
    assert info.size_bytes == len(data) == 84 + 50 * 12


def test_binary_stl_whose_header_starts_with_solid_is_read_as_binary_when_the_size_agrees():
    info = read(M.binary_stl(CUBE, header=b"solid exported by a scanner that writes solid in binary headers"))
    assert_cube(info, "STL", "binary", vertices=36)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_ascii_stl_counts_facets(newline):
    assert_cube(read(M.ascii_stl(CUBE, newline=newline), "cube.stl"), "STL", "ascii", vertices=36)


def test_ascii_stl_with_several_solids_and_upper_case_keywords():
    data = M.ascii_stl(CUBE[:5], "a") + M.ascii_stl(CUBE[5:], "b").upper()
    assert_cube(read(data), "STL", "ascii", vertices=36)


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_counts_vertices_faces_and_fans_quads(encoding):
    info = read(M.ply(M.CUBE_VERTICES, M.CUBE_QUADS, encoding))
    assert_cube(info, "PLY", encoding, vertices=8, faces=6)  # 6 quads = 12 triangles


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("index_type", ["int", "uint", "short"])
def test_ply_with_colours_and_other_index_types(encoding, index_type):
    info = read(M.ply(M.CUBE_VERTICES, M.CUBE_TRIANGLES, encoding, colors=True, index_type=index_type))
    assert_cube(info, "PLY", encoding, vertices=8, faces=12)


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_with_mixed_polygons_counts_n_minus_2_triangles_each(encoding):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 1.5, 0], [-0.5, 0.5, 0]])
    faces = [[0, 1, 2], [0, 2, 3], [0, 1, 2, 3], [0, 1, 2, 4, 3], [0, 1, 2], [0, 1, 2, 4, 3, 5], [3, 4, 5]]
    info = read(M.ply(vertices, faces, encoding))
    assert (info.vertex_count, info.face_count) == (6, 7)
    assert info.triangle_count == 1 + 1 + 2 + 3 + 1 + 4 + 1


def test_ply_with_an_extra_element_and_properties_around_the_face_list():
    header = (b"ply\nformat binary_little_endian 1.0\nobj_info scanner X\nelement vertex 3\nproperty double x\n"
              b"property double y\nproperty double z\nproperty float confidence\nelement face 1\n"
              b"property uchar flags\nproperty list uchar int vertex_indices\nproperty float quality\n"
              b"element material 2\nproperty list uchar float texcoord\nend_header\n")
    verts = struct.pack("<dddf", 0, 0, 0, 1) + struct.pack("<dddf", 2, 0, 0, 1) + struct.pack("<dddf", 0, 3, 1, 1)
    face = struct.pack("<BB3if", 7, 3, 0, 1, 2, 0.5)
    material = struct.pack("<B2f", 2, 0.1, 0.2) + struct.pack("<B", 0)
    info = read(header + verts + face + material)
    assert (info.vertex_count, info.triangle_count, info.face_count) == (3, 1, 1)
    assert info.bbox_max == (2.0, 3.0, 1.0)


def test_ply_face_element_with_two_lists_is_read_record_by_record():
    header = (b"ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
              b"property float z\nelement face 2\nproperty list uchar int vertex_indices\n"
              b"property list uchar float texcoord\nend_header\n")
    verts = b"".join(struct.pack(">3f", *v) for v in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)])
    faces = struct.pack(">B4iB2f", 4, 0, 1, 2, 3, 2, 0.0, 1.0) + struct.pack(">B3iB", 3, 0, 1, 2, 0)
    info = read(header + verts + faces)
    assert (info.vertex_count, info.face_count, info.triangle_count) == (4, 2, 3)


@pytest.mark.parametrize("style,vertices", [("plain", 8), ("full", 8), ("normals", 8), ("negative", 24)])
def test_obj_counts_and_face_styles(style, vertices):
    info = read(M.obj(M.CUBE_VERTICES, M.CUBE_QUADS, style), "cube.obj")
    assert_cube(info, "OBJ", "ascii", vertices=vertices, faces=6)


def test_obj_triangles_and_vertices_with_colours():
    data = b"v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 2 0 1 0\nvt 0 0\nf 1/1 2/1 3/1\nf -3 -2 -1\nl 1 2\n"
    info = read(data, "x.obj")
    assert (info.vertex_count, info.face_count, info.triangle_count) == (3, 2, 2)
    assert info.bbox_max == (1.0, 1.0, 2.0)


def test_content_decides_the_format_not_the_extension():
    assert read(M.ply(M.CUBE_VERTICES, M.CUBE_QUADS), "misnamed.stl").format == "PLY"
    assert read(M.binary_stl(CUBE), "misnamed.obj").format == "STL"


def test_a_path_a_seekable_file_and_a_file_object_with_a_size(tmp_path):
    path = M.write(tmp_path / "cube.stl", M.binary_stl(CUBE))
    assert inspect(path).triangle_count == 12
    assert inspect(str(path)).triangle_count == 12
    with open(path, "rb") as f:
        assert inspect(f).triangle_count == 12

    class Pipe(io.RawIOBase):  # a stream that cannot seek, as a socket or a pipe
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def read(self, n=-1):
            return self.inner.read(n)

    assert inspect(Pipe(path.read_bytes()), size=path.stat().st_size).triangle_count == 12
    with pytest.raises(TypeError, match="size="):
        inspect(Pipe(b""))
    with pytest.raises(MeshError, match="is not a file"):
        inspect(tmp_path)


# Refusals and their messages

def test_empty_file():
    assert refused(b"", "scan.stl") == "The file is empty."


def test_binary_stl_shorter_than_its_count_says():
    message = refused(M.binary_stl(CUBE)[:-120], "scan.stl")
    assert message == ("The file says it holds 12 triangles but is 120 bytes short: it was cut off "
                       "(an interrupted copy or upload?).")


def test_a_big_binary_stl_cut_off_says_by_how_much_in_megabytes():
    header = b"solid big".ljust(80) + struct.pack("<I", 120_000)
    data = header + bytes(50 * 120_000 - 3_000_000)  # 6 MB of triangles declared, 3 MB missing
    assert "holds 120,000 triangles but is 3.0 MB short" in refused(data, "scan.stl")


def test_binary_stl_longer_than_its_count_says():
    message = refused(M.binary_stl(CUBE) + b"\0" * 50, "scan.stl")
    assert message == ("The file says it holds 12 triangles but has 50 bytes more than they need: its triangle "
                       "count does not match its size.")


def test_binary_stl_with_no_triangles():
    assert refused(M.binary_stl(CUBE[:0]), "scan.stl") == "The STL holds no triangles."
    assert "says it holds no triangles but is" in refused(M.binary_stl(CUBE, count=0), "scan.stl")


def test_binary_stl_with_a_solid_header_and_a_wrong_size_is_still_judged_as_binary():
    data = M.binary_stl(CUBE, header=b"solid ascii-looking header")[:-7]
    assert "holds 12 triangles but is 7 bytes short" in refused(data)


def test_a_truncated_binary_stl_without_extension_is_recognised():
    assert "holds 12 triangles but is 10 bytes short" in refused(M.binary_stl(CUBE)[:-10])


def test_nan_coordinates_are_refused_in_every_format():
    bad = CUBE.copy()
    bad[4, 1, 2] = np.nan
    assert refused(M.binary_stl(bad)) == ("Triangle 5 has a corner whose coordinates are not numbers (NaN or "
                                         "infinite): the file is corrupted.")
    assert "Facet 5 has a vertex whose coordinates are not numbers (NaN or infinite) on line 33" in refused(M.ascii_stl(bad))
    vertices = M.CUBE_VERTICES.copy()
    vertices[3, 0] = np.inf
    for encoding in ("ascii", "binary_little_endian"):
        assert "vertex 3 (numbered from 0) are not numbers" in refused(M.ply(vertices, M.CUBE_QUADS, encoding))
    assert "vertex 4 are not numbers" in refused(M.obj(vertices, M.CUBE_QUADS), "x.obj")


@pytest.mark.parametrize("data,what", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "a PNG image"),
    (b"\xff\xd8\xff\xe0\0\x10JFIF", "a JPEG image"),
    (b"PK\x03\x04\x14\0\0\0\x08\0", "a zip archive"),
    (b"\x1f\x8b\x08\0\0\0\0\0", "a gzip archive"),
    (b"<?xml version='1.0'?><DentalContainer/>", "an XML document"),
    (b"<!DOCTYPE html><html><body>Not found</body></html>", "a web page"),
    (b'{"error": "expired link"}', "a JSON document"),
    (b"\0" * 128 + b"DICM" + b"\0" * 200, "a DICOM image"),
])
def test_files_that_are_not_meshes_say_what_they_look_like(data, what):
    assert refused(data, "scan.stl") == f"This is not a mesh: it looks like {what}."


def test_text_that_is_no_mesh():
    assert refused(b"Patient: Jane Doe\nTooth 14\n") == ("This is not a mesh: it is a text file that is neither "
                                                         "ASCII STL, PLY nor OBJ (it starts “Patient: Jane Doe”).")
    assert refused(b"Patient: Jane Doe\n", "upper.stl").startswith("The file is named .stl but is text that does not")
    assert refused(b"Patient: Jane Doe\n", "upper.ply").startswith("The file is named .ply but does not start with")
    assert refused(b"Patient: Jane Doe\n", "upper.obj").startswith("Line 1 of the OBJ is not an OBJ statement")


def test_binary_garbage():
    rng = np.random.default_rng(1)
    garbage = rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    garbage = garbage[:80] + struct.pack("<I", 3_000_000_000) + garbage[84:]
    assert refused(b"\x00\x01\x02\x03" * 10) == "This is not a mesh: 40 bytes of data that match no mesh format."
    assert refused(garbage) == "This is not a mesh: its content matches no STL, PLY or OBJ layout."
    assert refused(garbage, "upper.obj") == "The file is named .obj but is not text, as an OBJ is."
    assert refused(garbage, "upper.ply").startswith("The file is named .ply but does not start with a PLY header")
    assert "holds 3,000,000,000 triangles but is 150.0 GB short" in refused(garbage, "upper.stl")


@pytest.mark.parametrize("name", ["x.dcm", "PreparationScan.DCM", "order/raw.3ml"])
def test_reference_only_formats_are_never_parsed(name):
    assert mesh.reference_only(name)
    message = refused(M.binary_stl(CUBE), name)  # even when the content would read
    assert message.startswith("This is ") and "Lab Manager keeps a reference to it" in message
    assert mesh.reference_only("x.stl") == ""
    assert set(mesh.REFERENCE_ONLY_FORMATS) == {"DCM", "3ML"}


def test_ascii_stl_refusals():
    good = M.ascii_stl(CUBE)
    assert refused(good[:-40]) == "The ASCII STL stops in the middle of a line after facet 11: it was cut off."
    cut_at_line = good[: good.index(b"endloop", len(good) // 2)]
    assert "stops in the middle after facet" in refused(cut_at_line)
    assert "no “endsolid”" in refused(good.replace(b"endsolid scan\n", b""))
    four = good.replace(b"endloop", b"vertex 0 0 0\n    endloop", 1)
    assert refused(four) == ("The ASCII STL is malformed on line 7 (after facet 0): a facet must have “outer loop”, "
                             "three “vertex” lines, “endloop” and “endfacet”.")
    parts = good.split(b"outer loop")
    fourth_without_loop = b"outer loop".join(parts[:4]) + b"".join(parts[4:5]) + b"outer loop".join([b""] + parts[5:])
    # facet 4 starts on line 23; line 24 is left blank; line 25 holds a vertex where "outer loop" belongs
    assert "is malformed on line 25 (after facet 3):" in refused(fourth_without_loop)
    assert refused(good.replace(b"vertex 0.000000e+00", b"vertex", 1)) == \
        "The ASCII STL has a vertex line without three coordinates on line 4 (facet 1)."
    assert refused(good.replace(b"vertex 0.000000e+00", b"vertex zero", 1)) == \
        "The ASCII STL has a vertex coordinate that is not a number on line 4 (facet 1)."
    assert refused(good.replace(b"outer loop", b"outer loop\nhello", 1)) == \
        "Line 4 of the ASCII STL is not STL (after facet 0; it starts “hello”)."
    assert refused(b"solid empty\nendsolid empty\n") == "The STL holds no triangles."
    assert refused(b"solid a\nendsolid a\nendsolid a\n") == "The ASCII STL has “solid” and “endsolid” out of order."
    stray = b"solid a\nendsolid a\n" + good[good.index(b"  facet"):]
    assert "outside “solid … endsolid”" in refused(stray.replace(b"endsolid scan\n", b""))


def test_ascii_stl_errors_name_the_line_far_into_a_file_read_in_small_chunks():
    vertices, faces = M.arch("lower", segments=60, across=8)
    good = M.ascii_stl(M.corners(vertices, faces))
    lines = good.split(b"\n")
    at = 7 * 500 + 4  # 0-based: the second vertex line of facet 501
    assert lines[at].strip().startswith(b"vertex")
    for bad, message in [(b"      vertex 1 2", "a vertex line without three coordinates on line 3,505 (facet 501)"),
                         (b"      vertex 1 2 x", "a vertex coordinate that is not a number on line 3,505 (facet 501)"),
                         (b"      vertex 1 2 nan", "Facet 501 has a vertex whose coordinates are not numbers (NaN or "
                                                    "infinite) on line 3,505"),
                         (b"      vertices 1 2 3", "Line 3,505 of the ASCII STL is not STL (after facet 500;")]:
        data = b"\n".join(lines[:at] + [bad] + lines[at + 1:])
        for chunk_size in (4096, mesh.CHUNK_SIZE):
            assert message in refused(data, chunk_size=chunk_size)
    blank = b"\n".join(lines[:at] + [b"", lines[at]] + lines[at + 1:])  # a blank line is fine, and counted
    assert read(blank, chunk_size=4096).triangle_count == len(faces)
    blank_then_bad = b"\n".join(lines[:at] + [b"", b"vertex 1 2"] + lines[at + 1:])
    assert "on line 3,506 (facet 501)" in refused(blank_then_bad, chunk_size=4096)


def test_a_utf8_byte_order_mark_before_a_text_mesh_is_skipped():
    bom = b"\xef\xbb\xbf"
    assert_cube(read(bom + M.ascii_stl(CUBE), "scan.stl"), "STL", "ascii", 36)
    assert_cube(read(bom + M.ascii_stl(CUBE, newline="\r\n")), "STL", "ascii", 36)
    assert_cube(read(bom + M.ply(M.CUBE_VERTICES, M.CUBE_QUADS, "ascii"), "scan.ply"), "PLY", "ascii", 8, 6)
    assert_cube(read(bom + M.ply(M.CUBE_VERTICES, M.CUBE_QUADS, "binary_little_endian")), "PLY",
                "binary_little_endian", 8, 6)
    assert_cube(read(bom + M.obj(M.CUBE_VERTICES, M.CUBE_TRIANGLES), "scan.obj"), "OBJ", "ascii", 8)
    assert mesh.check_head(bom + M.ascii_stl(CUBE), 1000, "scan.stl") == "STL"
    assert "Line 2 of the ASCII STL is not STL" in refused(bom + M.ascii_stl(CUBE).replace(b"facet normal", b"hello", 1))


def test_a_binary_stl_with_a_few_bytes_after_its_last_record_is_read():
    # numpy-stl's own test files include a binary STL one byte longer than its records; it and other
    # readers (admesh, trimesh) read the records the count says and ignore the rest.
    for extra in (b"\0", b"\n", b"\0" * 49):
        assert_cube(read(M.binary_stl(CUBE) + extra, "scan.stl"), "STL", "binary", 36)
        assert_cube(read(M.binary_stl(CUBE, header=b"solid looks like text") + extra), "STL", "binary", 36)
    assert mesh.check_head(M.binary_stl(CUBE)[:1000], len(M.binary_stl(CUBE)) + 1, "scan.stl") == "STL"
    assert "has 50 bytes more than they need" in refused(M.binary_stl(CUBE) + b"\0" * 50)


def test_ply_header_refusals():
    def ply(header: str) -> str:
        return refused(("ply\n" + header).encode())

    assert "does not end (no “end_header”)" in ply("format ascii 1.0\nelement vertex 1\n")
    assert ply("element vertex 3\nproperty float x\nend_header\n") == "The PLY header has no “format” line."
    assert "Unknown PLY format on line 2" in ply("format binary_middle_endian 1.0\nend_header\n")
    assert "expected “element <name> <count>”" in ply("format ascii 1.0\nelement vertex many\nend_header\n")
    assert "property comes before any element on line 3" in ply("format ascii 1.0\nproperty float x\nend_header\n")
    assert "unknown property type" in ply("format ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n")
    assert "Cannot read line 3" in ply("format ascii 1.0\nbanana\nend_header\n")
    assert ply("format ascii 1.0\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n3 0 1 2\n") == \
        "The PLY holds no vertices."
    assert ply("format ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
               "end_header\n0 0 0\n") == "The PLY holds 1 points but no faces: a point cloud, not a surface scan."
    assert ply("format ascii 1.0\nelement vertex 1\nproperty float x\nelement face 1\nproperty int n\n"
               "end_header\n0\n0\n") == "The PLY's face element has no list of vertex indices."
    assert "list length must be a whole-number type" in ply(
        "format ascii 1.0\nelement vertex 1\nproperty float x\nelement face 1\n"
        "property list float int vertex_indices\nend_header\n")
    huge = "format ascii 1.0\n" + "comment padding\n" * 5000
    assert "no “end_header” in the first 65.5 KB" in ply(huge)


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_counts_that_do_not_match_the_content(encoding):
    v, f = M.CUBE_VERTICES, M.CUBE_TRIANGLES
    more_faces = refused(M.ply(v, f, encoding, face_count=20))
    more_vertices = refused(M.ply(v, f, encoding, vertex_count=30))
    fewer_faces = refused(M.ply(v, f, encoding, face_count=10))
    if encoding == "ascii":
        assert more_faces == ("The file says it holds 8 vertices and 20 faces but ends after 12 of its 20 “face” "
                              "records: it was cut off.")
        assert "“vertex” record 9 has 4 values; the header declares 3" in more_vertices
        assert fewer_faces == ("The file says it holds 8 vertices and 10 faces, but more lines follow them: its "
                               "counts do not match its content.")
    else:
        assert more_faces == ("The file says it holds 8 vertices and 20 faces but is about 104 bytes short: it was "
                              "cut off.")
        assert "holds 30 vertices and 12 faces but is at least" in more_vertices
        assert fewer_faces == ("The file says it holds 8 vertices and 10 faces, but 26 bytes remain after them: its "
                               "counts do not match its content.")


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_faces_must_refer_to_existing_vertices_and_have_three_corners(encoding):
    v = M.CUBE_VERTICES
    assert refused(M.ply(v, [[0, 1, 2], [0, 1, 8]], encoding)) == \
        "Face 2 refers to vertex 8, but the file holds 8 vertices (numbered from 0)."
    assert "refers to vertex -1" in refused(M.ply(v, [[0, 1, -1]], encoding, index_type="int"))
    assert refused(M.ply(v, [[0, 1, 2], [0, 1]], encoding)) == "Face 2 has 2 corners; a face needs at least 3."


def test_ply_binary_truncated_inside_the_faces_and_a_corrupted_list_length():
    data = M.ply(M.CUBE_VERTICES, M.CUBE_QUADS, "binary_little_endian")
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    assert refused(data[:-5]) == "The file says it holds 8 vertices and 6 faces but is about 5 bytes short: it was cut off."
    corrupt = bytearray(data)
    corrupt[header_end + 8 * 12] = 255  # the first face claims 255 corners
    assert "remain after them" not in refused(bytes(corrupt))


def test_ply_ascii_value_errors():
    good = M.ply(M.CUBE_VERTICES, M.CUBE_QUADS, "ascii")
    assert "has a value that is not a number" in refused(good.replace(b"\n1 0 0\n", b"\n1 zero 0\n", 1))
    assert "“face” record 1 is malformed" in refused(good.replace(b"\n4 0 3 2 1", b"\n4 0 3 two 1", 1))
    assert "“face” record 1 has 6 values, not the 5" in refused(good.replace(b"\n4 0 3 2 1", b"\n4 0 3 2 1 7", 1))


def test_obj_refusals():
    good = M.obj(M.CUBE_VERTICES, M.CUBE_TRIANGLES)
    assert refused(good.replace(b"usemtl gum", b"hello world"), "x.obj") == \
        "Line 14 of the OBJ is not an OBJ statement (“hello world”)."
    assert refused(good + b"f 1 2 99\n", "x.obj") == "A face of the OBJ refers to vertex 99, but the file holds 8 vertices."
    assert "refers to a vertex that does not exist (OBJ vertices are numbered from 1)" in refused(good + b"f 0 1 2\n", "x.obj")
    assert "refers to a vertex that does not exist" in refused(b"v 0 0 0\nv 1 0 0\nf -1 -2 -3\n", "x.obj")
    assert "has 2 corners; a face needs at least 3" in refused(good + b"f 1 2\n", "x.obj")
    assert "has a corner that is not a vertex number" in refused(good + b"f 1 2 x 4\n", "x.obj")
    assert "does not have three coordinates" in refused(b"v 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "x.obj")
    assert "has a coordinate that is not a number" in refused(b"v 0 0 a\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "x.obj")
    assert refused(b"v 0 0 0\nv 1 0 0\n", "x.obj") == \
        "The OBJ holds 2 vertices but no faces: a point cloud, not a surface scan."
    assert refused(b"# nothing\n", "x.obj") == "The OBJ holds no vertices and no faces."
    assert refused(good[:50] + b"\0\0\0" + good[50:], "x.obj") == "The file is named .obj but is not text, as an OBJ is."
    padded = good + b"# padding\n" * 1000
    line = padded.count(b"\n") + 1
    assert refused(padded + b"\0\0\0" + good, "x.obj") == (f"The file holds binary data on line {line:,} "
                                                         "where text was expected: it is corrupted or not a text mesh.")
    far = padded * 3 + b"v 0\0 0 0\n"  # past the first blocks of 4 KB: lines are counted across them
    assert f"binary data on line {3 * (line - 1) + 1:,} where" in refused(far, "x.obj", chunk_size=4096)
    assert "a line longer than 65.5 KB" in refused(b"v " + b"1" * 2_000_000, "x.obj")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.sampled_from(["", "x.stl", "x.ply", "x.obj"]))
def test_any_bytes_give_a_mesh_info_or_a_mesh_error(data, name):
    try:
        read(data, name)
    except MeshError as exc:
        assert str(exc)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian"]))
def test_any_cut_of_a_ply_is_refused(data_, encoding):
    data = M.ply(M.CUBE_VERTICES, M.CUBE_QUADS, encoding)
    cut = data_.draw(st.integers(min_value=0, max_value=len(data) - 1))
    if encoding == "ascii" and cut == len(data) - 1:
        return  # only the last line end is missing: the content is whole
    with pytest.raises(MeshError):
        read(data[:cut])


# Streaming: bounded reads, progress, and chunk boundaries

class Recorder(io.RawIOBase):
    """A file object that records the size of every read asked of it."""

    def __init__(self, path):
        self.f = open(path, "rb")
        self.asked: list[int] = []

    def readable(self):
        return True

    def read(self, n=-1):
        self.asked.append(n)
        return self.f.read(n)

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()

    def close(self):
        self.f.close()
        super().close()


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    stl = M.big_binary_stl(root / "big.stl", 120_000)  # 6 MB
    ply, v, f = M.big_ascii_ply(root / "big.ply", 3_000_000)
    vertices, faces = M.arch("upper", segments=400, across=40)
    obj = M.write(root / "big.obj", M.obj(vertices, faces, "full"))
    ply_bin = M.write(root / "big_bin.ply", M.ply(vertices, faces, "binary_big_endian", colors=True))
    return {"stl": stl, "ply": (ply, v, f), "obj": obj, "ply_bin": ply_bin}


@pytest.mark.parametrize("kind", ["stl", "ply", "obj", "ply_bin"])
def test_large_files_are_read_in_bounded_chunks_with_progress(big_files, kind):
    path = big_files[kind][0] if kind == "ply" else big_files[kind]
    size = path.stat().st_size
    seen: list[tuple[int, int]] = []
    with Recorder(path) as f:
        info = inspect(f, name=path.name, progress=lambda done, total: seen.append((done, total)))
    assert max(f.asked) <= mesh.CHUNK_SIZE
    assert sum(1 for n in f.asked if n > 0) >= size // mesh.CHUNK_SIZE
    assert info.size_bytes == size
    assert [total for _, total in seen] == [size] * len(seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == size and len(done) >= size // mesh.CHUNK_SIZE


def test_large_file_counts(big_files):
    info = inspect(big_files["stl"])
    assert (info.triangle_count, info.vertex_count) == (120_000, 360_000)
    assert all(-30 <= c <= 30 for c in info.bbox_min + info.bbox_max)
    path, v, f = big_files["ply"]
    info = inspect(path)
    assert (info.vertex_count, info.triangle_count) == (v, f)


@pytest.mark.parametrize("kind", ["stl-ascii", "ply-ascii", "ply-le", "ply-be", "obj", "obj-negative"])
def test_small_chunks_across_line_and_record_boundaries_give_the_same_answer(kind):
    vertices, faces = M.arch("lower", segments=60, across=8)
    faces = faces[:100] + [faces[100] + [faces[101][2]]] + faces[102:]  # a quad among the triangles
    data = {
        "stl-ascii": lambda: M.ascii_stl(M.corners(vertices, faces)),
        "ply-ascii": lambda: M.ply(vertices, faces, "ascii"),
        "ply-le": lambda: M.ply(vertices, faces, "binary_little_endian", colors=True),
        "ply-be": lambda: M.ply(vertices, faces, "binary_big_endian"),
        "obj": lambda: M.obj(vertices, faces, "full"),
        "obj-negative": lambda: M.obj(vertices, faces, "negative"),
    }[kind]()
    whole = read(data)
    chunked = read(data, chunk_size=4096)
    assert dataclasses.replace(chunked, centroid=None) == dataclasses.replace(whole, centroid=None)
    assert chunked.centroid == pytest.approx(whole.centroid, rel=1e-12)  # summed in another order
    assert whole.triangle_count == len(M.triangulate(faces))
    assert whole.bbox_min == pytest.approx(tuple(vertices.min(axis=0)), abs=1e-5)
    assert whole.bbox_max == pytest.approx(tuple(vertices.max(axis=0)), abs=1e-5)


# Scan type

@pytest.mark.parametrize("name,jaw", [
    ("UpperJaw.stl", Jaw.UPPER), ("order-123-UpperJawScan.ply", Jaw.UPPER), ("maxilla.obj", Jaw.UPPER),
    ("2024_06_11_Maxillary.stl", Jaw.UPPER), ("upperjaw.stl", Jaw.UPPER), ("UPPER_arch.stl", Jaw.UPPER),
    ("LowerJaw.stl", Jaw.LOWER), ("mandible.ply", Jaw.LOWER), ("Doe-Mandibular-2.stl", Jaw.LOWER),
    ("x-LowerJawScan.stl", Jaw.LOWER), ("lowerarch.obj", Jaw.LOWER),
    ("BiteScan.stl", Jaw.BITE), ("bite1.stl", Jaw.BITE), ("Occlusion.ply", Jaw.BITE), ("buccal_left.stl", Jaw.BITE),
    ("bite upper-lower.stl", Jaw.BITE), ("C:\\exports\\Doe\\upper.stl", Jaw.UPPER),
    ("supper.stl", None), ("flowerpot.stl", None), ("lowered.stl", None), ("uppercase.stl", None),
    ("upper_lower.stl", None), ("PreparationScan.stl", None), ("scan.stl", None), ("maxi.stl", None),
    ("ambitext.stl", None), ("Sublower.stl", None),
])
def test_jaw_from_name(name, jaw):
    assert jaw_from_name(name) == jaw


def info(vertices_faces) -> MeshInfo:
    vertices, faces = vertices_faces
    return read(M.binary_stl(M.corners(vertices, faces)))


@pytest.fixture(scope="module")
def arches():
    return {"upper": info(M.arch("upper")), "lower": info(M.arch("lower")), "bite": info(M.bite())}


def test_vendor_metadata_comes_first_then_the_name_then_geometry(arches):
    files = [
        ("scan-a.stl", Jaw.LOWER, arches["upper"]),  # the vendor says lower: believed over geometry
        ("UpperJaw.stl", None, arches["lower"]),  # the name says upper
        ("scan-c.stl", Jaw.UNKNOWN, arches["bite"]),  # UNKNOWN from the vendor is no hint
    ]
    assert detect_jaws(files) == [(Jaw.LOWER, "vendor"), (Jaw.UPPER, "file name"), (Jaw.BITE, "geometry")]


def test_geometry_tells_upper_lower_and_bite_in_one_frame(arches):
    files = [("scan-1.stl", None, arches["bite"]), ("scan-2.stl", None, arches["lower"]),
             ("scan-3.stl", None, arches["upper"])]
    jaws = detect_jaws(files)
    assert jaws == [(Jaw.BITE, "geometry"), (Jaw.LOWER, "geometry"), (Jaw.UPPER, "geometry")]
    assert bite_links(jaws) == {0: (2, 1)}


def test_geometry_completes_a_pair_only_when_it_agrees_with_the_name(arches):
    agree = detect_jaws([("UpperJaw.stl", None, arches["upper"]), ("scan.stl", None, arches["lower"])])
    assert agree == [(Jaw.UPPER, "file name"), (Jaw.LOWER, "geometry")]
    # Named upper but lying lower: the frame is not the one assumed; nothing is guessed.
    disagree = detect_jaws([("UpperJaw.stl", None, arches["lower"]), ("scan.stl", None, arches["upper"])])
    assert disagree == [(Jaw.UPPER, "file name"), (Jaw.UNKNOWN, "")]


def test_geometry_stays_honest_when_nothing_tells(arches):
    upper, lower = M.arch("upper"), M.arch("lower")
    centred_upper = info((upper[0] - upper[0].mean(axis=0), upper[1]))  # each exported on its own origin
    centred_lower = info((lower[0] - lower[0].mean(axis=0), lower[1]))
    assert detect_jaws([("a.stl", None, centred_upper), ("b.stl", None, centred_lower)]) == [(Jaw.UNKNOWN, "")] * 2
    assert detect_jaws([("a.stl", None, arches["upper"])]) == [(Jaw.UNKNOWN, "")]
    assert detect_jaws([("a.stl", None, None), ("b.stl", None, None)]) == [(Jaw.UNKNOWN, "")] * 2
    # Three arches (a rescan beside the first scans): no upper/lower guessed, a bite still found.
    three = detect_jaws([("a", None, arches["upper"]), ("b", None, arches["lower"]), ("c", None, arches["upper"]),
                         ("d", None, arches["bite"])])
    assert three == [(Jaw.UNKNOWN, "")] * 3 + [(Jaw.BITE, "geometry")]
    # A small mesh beside a single arch is not called a bite.
    assert detect_jaws([("a", None, arches["upper"]), ("b", None, arches["bite"])]) == [(Jaw.UNKNOWN, "")] * 2


def _frame(mesh_, transform):
    vertices, faces = mesh_
    return info((transform(np.asarray(vertices)), faces))


def test_geometry_with_minus_z_up_is_not_sure_instead_of_swapping_the_jaws():
    flip = lambda v: v * np.array([1, 1, -1])  # noqa: E731  -- the same scan, exported with -z up
    upper, lower = _frame(M.arch("upper"), flip), _frame(M.arch("lower"), flip)
    jaws = detect_jaws([("a.stl", None, upper), ("b.stl", None, lower)])
    assert jaws == [(Jaw.UNKNOWN, "")] * 2
    assert all("not sure" in j.note and "upside down" in j.note for j in jaws)


def test_geometry_in_a_y_up_frame_tells_upper_and_lower():
    y_up = lambda v: v[:, [0, 2, 1]] * np.array([1, 1, -1])  # noqa: E731  -- (x, y, z) -> (x, z, -y): +z becomes +y
    upper, lower = _frame(M.arch("upper"), y_up), _frame(M.arch("lower"), y_up)
    bite = _frame(M.bite(), y_up)
    jaws = detect_jaws([("a.stl", None, lower), ("b.stl", None, bite), ("c.stl", None, upper)])
    assert jaws == [(Jaw.LOWER, "geometry"), (Jaw.BITE, "geometry"), (Jaw.UPPER, "geometry")]
    assert jaws[2].note == "sure: it lies above the other along +y and is 5% wider"  # 6% narrower centre line, the same ridge
    assert jaws[0].note.startswith("sure: it lies below the other along +y")


def test_geometry_says_how_sure_and_gives_a_jaw_only_when_both_clues_agree(arches):
    jaws = detect_jaws([("a.stl", None, arches["upper"]), ("b.stl", None, arches["lower"]),
                        ("c.stl", None, arches["bite"])])
    assert [j.note.split(":")[0] for j in jaws] == ["sure"] * 3
    # Stacked but as wide as each other: which is above depends on the frame's up, so no jaw.
    same = detect_jaws([("a.stl", None, info(M.arch("upper"))), ("b.stl", None, info(M.arch("lower", scale=1.0)))])
    assert same == [(Jaw.UNKNOWN, "")] * 2 and "both are as wide" in same[0].note
    # Each on its own origin: one is wider, but nothing says which way is up in a shared frame.
    upper, lower = M.arch("upper"), M.arch("lower")
    centred = [info((m[0] - m[0].mean(axis=0), m[1])) for m in (upper, lower)]
    alone = detect_jaws([("a.stl", None, centred[0]), ("b.stl", None, centred[1])])
    assert alone == [(Jaw.UNKNOWN, "")] * 2 and "5% wider (an upper?) but they are not stacked" in alone[0].note
    assert detect_jaws([("UpperJaw.stl", None, arches["upper"])])[0].note == ""


@pytest.mark.parametrize("name,jaw", [
    ("20240611_Doe_u.stl", Jaw.UPPER), ("20240611_Doe_l.stl", Jaw.LOWER), ("Doe-U.ply", Jaw.UPPER),
    ("Doe_OK.stl", Jaw.UPPER), ("Doe_UK.stl", Jaw.LOWER), ("OK_Scan.stl", Jaw.UPPER), ("Mueller UK 2.stl", Jaw.LOWER),
    ("superior.stl", Jaw.UPPER), ("arch_inferior.obj", Jaw.LOWER), ("SuperiorArch.stl", Jaw.UPPER),
    ("Doe_u_bite.stl", Jaw.BITE), ("look_ok.stl", None), ("uk_lab.stl", None), ("u.stl", None), ("scan_l2.stl", None),
    ("Doe_OK_UK.stl", None),
])
def test_jaw_from_short_and_german_names(name, jaw):
    assert jaw_from_name(name) == jaw


def test_bite_links():
    assert bite_links([Jaw.UPPER, Jaw.BITE, Jaw.LOWER, Jaw.BITE]) == {1: (0, 2), 3: (0, 2)}
    assert bite_links([(Jaw.BITE, "file name"), (Jaw.LOWER, "vendor")]) == {0: (None, 1)}
    assert bite_links([Jaw.UPPER, Jaw.LOWER]) == {}
    assert bite_links([Jaw.UPPER, Jaw.UPPER, Jaw.BITE]) == {2: (0, None)}
