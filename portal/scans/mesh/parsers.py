"""Mesh files of intraoral scans: what they hold, read without trusting them (docs/vendors/threeshape.md).

:func:`inspect` reads an STL (binary or ASCII), a PLY (ascii, binary_little_endian,
binary_big_endian) or an OBJ and returns a :class:`MeshInfo`, or raises :class:`MeshError` whose
message is meant for the person who uploaded the file. The file is streamed in bounded chunks
(:data:`CHUNK_SIZE`), never loaded whole; numpy does the per-chunk arithmetic.

What the counts mean:

- ``vertex_count``: vertex records as the file stores them. STL does not share vertices, so an STL
  of T triangles has 3*T (the same corner is counted once per triangle that uses it); PLY and OBJ
  count their vertex list.
- ``face_count``: faces as written (a PLY or OBJ quad is one face).
- ``triangle_count``: triangles once polygons are fanned: a face of n corners counts n - 2 (a quad is
  two triangles). For STL it equals ``face_count``.
- ``bbox_min``/``bbox_max``/``centroid``: the bounding box and the mean of the vertex records (for
  STL, of the triangle corners), in the file's own units and frame. ``None`` only for a PLY whose
  vertices have no x, y, z properties.

The content decides the format, not the extension, with one rule from the contract: a file whose
size agrees with a binary STL's triangle count (84 + 50 * count bytes, or up to 49 more) is a binary STL even when
its 80-byte header starts with "solid". The extension only sharpens the message of a refusal.

3Shape's .dcm and password-protected .3ml are references only (:data:`REFERENCE_ONLY_FORMATS`):
they are never opened.

Which jaw each file holds is in jaws.py.
"""
from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

CHUNK_SIZE = 1 << 20  # bytes asked of the file at a time
MAX_LINE = 64 * 1024  # a text mesh with a longer line is not a text mesh
MAX_PLY_HEADER = 64 * 1024
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, skipped before a text mesh

MESH_FORMATS = {".stl": "STL", ".ply": "PLY", ".obj": "OBJ"}
REFERENCE_ONLY_FORMATS = {
    "DCM": "3Shape's own mesh format (.dcm); Lab Manager keeps a reference to it and does not read it",
    "3ML": "a password-protected 3Shape file (.3ml); Lab Manager keeps a reference to it and cannot read it",
}

Progress = Callable[[int, int], None]


class MeshError(ValueError):
    """A file that is not a mesh Lab Manager can read; str() is a sentence for a person."""


@dataclass(frozen=True)
class MeshInfo:
    format: str  # STL, PLY, OBJ
    encoding: str  # STL: binary or ascii; PLY: ascii, binary_little_endian, binary_big_endian; OBJ: ascii
    vertex_count: int
    triangle_count: int
    face_count: int
    size_bytes: int
    bbox_min: tuple[float, float, float] | None = None
    bbox_max: tuple[float, float, float] | None = None
    centroid: tuple[float, float, float] | None = None

    @property
    def extent(self) -> tuple[float, float, float] | None:
        """Width, depth and height of the bounding box."""
        if self.bbox_min is None or self.bbox_max is None:
            return None
        return tuple(b - a for a, b in zip(self.bbox_min, self.bbox_max))  # type: ignore[return-value]


def extension_format(name: str) -> str:
    """Upper-case format of a file name by its extension ("STL", "DCM", "ZIP"...), "" without one."""
    return os.path.splitext(name)[1].lstrip(".").upper()


def reference_only(name: str) -> str:
    """Why a file is kept as a reference and never parsed (3Shape .dcm, .3ml), or "" for any other."""
    return REFERENCE_ONLY_FORMATS.get(extension_format(name), "")


def human_bytes(n: int) -> str:
    if n < 1000:
        return f"{n:,} byte{'s' if n != 1 else ''}"
    for unit, scale in (("KB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < scale * 1000 or unit == "GB":
            return f"{n / scale:,.1f} {unit}"
    raise AssertionError  # pragma: no cover


# Reading

class _Stream:
    """Forward-only reads of at most `chunk` bytes at a time, with progress and a pushed-back head."""

    def __init__(self, f: BinaryIO, size: int, progress: Progress | None, chunk: int):
        self.f, self.size, self.progress, self.chunk = f, size, progress, chunk
        self.pos = 0  # bytes handed out
        self.head = b""  # bytes read ahead (sniffing), handed out first
        self._read = 0  # bytes read from the file
        self.cut_tail = False  # the text ends without a line end, and that last line is being read

    def _raw(self, n: int) -> bytes:
        out = []
        while n > 0:
            data = self.f.read(min(n, self.chunk))
            if not data:
                break
            out.append(data)
            n -= len(data)
            self._read += len(data)
            if self.progress is not None:
                self.progress(min(self._read, self.size), self.size)
        return b"".join(out)

    def peek(self, n: int) -> bytes:
        if len(self.head) < n:
            self.head += self._raw(n - len(self.head))
        return self.head[:n]

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the file."""
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self._raw(n - len(data))
        else:
            data = self._raw(n)
        self.pos += len(data)
        return data

    def blocks(self) -> Iterator[bytes]:
        while True:
            data = self.read(self.chunk)
            if not data:
                return
            yield data

    def text_blocks(self) -> Iterator[bytes]:
        """The rest of the file in blocks that end at a line end (the last one may not)."""
        carry = b""
        lines = 0  # line ends in the blocks handed out
        for data in self.blocks():
            data = carry + data
            nul = data.find(b"\x00")
            if nul >= 0:
                line = lines + data.count(b"\n", 0, nul) + 1
                raise MeshError(f"The file holds binary data on line {line:,} where "
                                "text was expected: it is corrupted or not a text mesh.")
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) > MAX_LINE:
                    raise MeshError(f"The file has a line longer than {human_bytes(MAX_LINE)}: it is not a text mesh.")
                carry = data
                continue
            carry = data[cut:]
            lines += data.count(b"\n", 0, cut)
            yield data[:cut]
        if carry:
            self.cut_tail = True
            yield carry


class _Bounds:
    """Bounding box and mean of vertex rows, accumulated chunk by chunk in float64."""

    def __init__(self):
        self.lo = np.full(3, np.inf)
        self.hi = np.full(3, -np.inf)
        self.total = np.zeros(3)
        self.n = 0

    def add(self, points: np.ndarray) -> int:
        """Add (k, 3) points; return -1, or the row of the first that is not finite (nothing added)."""
        if not len(points):
            return -1
        finite = np.isfinite(points).all(axis=1)
        if not finite.all():
            return int(np.flatnonzero(~finite)[0])
        self.lo = np.minimum(self.lo, points.min(axis=0))
        self.hi = np.maximum(self.hi, points.max(axis=0))
        self.total += points.sum(axis=0, dtype=np.float64)
        self.n += len(points)
        return -1

    def add_columns(self, rows: np.ndarray) -> bool:
        """Add points given by rows of coordinates, (3k, n): rows x, y, z, x, y, z... of n columns of k
        points each. False (nothing added) when a coordinate is not finite: NaN carries into min and max
        and an infinity shows in them, so no separate pass looks for them."""
        if not rows.size:
            return True
        lo = rows.min(axis=1).reshape(-1, 3).min(axis=0)
        hi = rows.max(axis=1).reshape(-1, 3).max(axis=0)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            return False
        self.lo = np.minimum(self.lo, lo)
        self.hi = np.maximum(self.hi, hi)
        self.total += rows.sum(axis=1, dtype=np.float64).reshape(-1, 3).sum(axis=0)
        self.n += rows.shape[1] * (rows.shape[0] // 3)
        return True

    def result(self) -> dict:
        if not self.n:
            return {}
        return {"bbox_min": tuple(float(v) for v in self.lo), "bbox_max": tuple(float(v) for v in self.hi),
                "centroid": tuple(float(v) for v in self.total / self.n)}


def inspect(source: str | os.PathLike | BinaryIO, *, name: str = "", size: int | None = None,
            progress: Progress | None = None, chunk_size: int = CHUNK_SIZE) -> MeshInfo:
    """Read what a mesh file holds, streaming it; raise MeshError with a clear message when it cannot.

    `source` is a path or a binary file object positioned at the start (a zip member, an upload);
    for a file object give `size` unless it can seek. `name` (a file name) only sharpens messages
    and refuses reference-only formats. `progress(bytes_read, total)` is called after every chunk.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        if not os.path.isfile(source):
            raise MeshError(f"{os.path.basename(name)} is not a file.")
        with open(source, "rb") as f:
            return inspect(f, name=name, size=os.fstat(f.fileno()).st_size, progress=progress, chunk_size=chunk_size)
    if size is None:
        try:
            start = source.tell()
            size = source.seek(0, os.SEEK_END) - start
            source.seek(start)
        except (AttributeError, OSError) as exc:
            raise TypeError("inspect() needs size= for a file object that cannot seek") from exc
    why = reference_only(name)
    if why:
        raise MeshError(f"This is {why}.")
    if chunk_size < 4096:
        raise ValueError("chunk_size must be at least 4096 bytes")
    stream = _Stream(source, size, progress, chunk_size)
    if size == 0:
        raise MeshError("The file is empty.")
    head = stream.peek(min(size, chunk_size))
    kind = _sniff(head, size, extension_format(name))
    if kind != "STL-binary" and head.startswith(BOM):
        stream.read(len(BOM))  # a text file saved by an editor that marks UTF-8, as Windows' Notepad does
    if kind == "PLY":
        return _read_ply(stream)
    if kind == "STL-binary":
        return _read_binary_stl(stream)
    if kind == "STL-ascii":
        return _read_ascii_stl(stream)
    return _read_obj(stream)


def check_head(head: bytes, size: int, name: str = "") -> str:
    """Refuse at once what plainly is not a mesh, from its first bytes (up to CHUNK_SIZE) and its size,
    before a background job reads the whole file: a PDF or zip renamed .stl, a binary STL whose
    triangle count does not match its size (cut off), an empty file. Returns the format it looks
    like (STL, PLY, OBJ); only :func:`inspect` says the file is whole and sound."""
    why = reference_only(name)
    if why:
        raise MeshError(f"This is {why}.")
    if size == 0:
        raise MeshError("The file is empty.")
    kind = _sniff(head[:CHUNK_SIZE], size, extension_format(name))
    return {"PLY": "PLY", "STL-binary": "STL", "STL-ascii": "STL"}.get(kind, "OBJ")


# Recognising the format

_SIGNATURES: list[tuple[int, bytes, str]] = [
    (0, b"%PDF", "a PDF document"), (0, b"PK\x03\x04", "a zip archive"), (0, b"PK\x05\x06", "an empty zip archive"),
    (0, b"\x89PNG", "a PNG image"), (0, b"\xff\xd8\xff", "a JPEG image"), (0, b"GIF8", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"), (0, b"MM\x00*", "a TIFF image"), (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"\x1f\x8b", "a gzip archive"), (0, b"Rar!", "a RAR archive"), (0, b"\xd0\xcf\x11\xe0", "a Microsoft Office document"),
    (0, b"{\\rtf", "an RTF document"), (0, b"\x7fELF", "a program"), (0, b"MZ", "a Windows program"),
    (0, b"RIFF", "an audio or video file"), (4, b"ftyp", "a video"), (128, b"DICM", "a DICOM image"),
    (0, b"glTF", "a glTF model (GLB), a format Lab Manager does not read"),
]
_TEXT_SIGNATURES: list[tuple[bytes, str]] = [
    (b"<?xml", "an XML document"), (b"<!doctype html", "a web page"), (b"<html", "a web page"),
    (b"{", "a JSON document"), (b"[", "a JSON document"),
]
_CONTROL = bytes(range(0, 9)) + bytes(range(14, 32))
_OBJ_STATEMENTS = frozenset({
    b"v", b"vt", b"vn", b"vp", b"f", b"l", b"p", b"o", b"g", b"s", b"mg", b"usemtl", b"mtllib", b"cstype",
    b"deg", b"bmat", b"step", b"curv", b"curv2", b"surf", b"parm", b"trim", b"hole", b"scrv", b"sp", b"end",
    b"con", b"bevel", b"c_interp", b"d_interp", b"lod", b"shadow_obj", b"trace_obj", b"ctech", b"stech",
    b"maplib", b"usemap",
})


def _is_text(sample: bytes) -> bool:
    return len(sample.translate(None, _CONTROL)) == len(sample)


def _first_line(head: bytes) -> str:
    line = head.lstrip().split(b"\n", 1)[0].strip()[:60]
    return line.decode("utf-8", "replace")


def _stl_count(head: bytes) -> int:
    return struct.unpack_from("<I", head, 80)[0]


def _stl_mismatch(count: int, size: int) -> MeshError:
    expected = 84 + 50 * count
    if count == 0:
        return MeshError(f"The binary STL says it holds no triangles but is {human_bytes(size)}: "
                         "its header or its size is wrong.")
    if size < expected:
        return MeshError(f"The file says it holds {count:,} triangles but is {human_bytes(expected - size)} short: "
                         "it was cut off (an interrupted copy or upload?).")
    return MeshError(f"The file says it holds {count:,} triangles but has {human_bytes(size - expected)} more "
                     "than they need: its triangle count does not match its size.")


def _binary_stl_size(count: int, size: int) -> bool:
    """Whether a file of `size` bytes is a binary STL of `count` triangles: 84 + 50 * count bytes, or a
    few bytes more (fewer than one record), as some writers leave and readers people trust accept."""
    return 0 <= size - (84 + 50 * count) < 50


def _sniff(head: bytes, size: int, ext: str) -> str:
    if re.match(rb"(?:\xef\xbb\xbf)?ply\r?\n", head):
        return "PLY"
    if size >= 84 and _binary_stl_size(_stl_count(head), size):
        return "STL-binary"
    for offset, magic, what in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            raise MeshError(f"This is not a mesh: it looks like {what}.")
    sample = head[:4096]
    text = sample.removeprefix(BOM)
    if _is_text(text):
        lowered = text.lstrip().lower()
        if lowered.startswith(b"solid"):
            return "STL-ascii"
        for magic, what in _TEXT_SIGNATURES:
            if lowered.startswith(magic):
                raise MeshError(f"This is not a mesh: it looks like {what}.")
        for line in text.splitlines():
            words = line.split(None, 1)
            if not words or words[0].startswith(b"#"):
                continue
            if words[0] in _OBJ_STATEMENTS:
                return "OBJ"
            break
        if ext == "OBJ":
            return "OBJ"  # its own reader names the first line that is not OBJ
        starts = f"(it starts “{_first_line(text)}”)"
        if ext == "PLY":
            raise MeshError(f"The file is named .ply but does not start with a PLY header “ply” {starts}.")
        if ext == "STL":
            raise MeshError(f"The file is named .stl but is text that does not start with “solid” like an "
                            f"ASCII STL {starts}.")
        raise MeshError(f"This is not a mesh: it is a text file that is neither ASCII STL, PLY nor OBJ {starts}.")
    if size < 84:
        raise MeshError(f"This is not a mesh: {human_bytes(size)} of data that match no mesh format.")
    count = _stl_count(head)
    if ext == "STL" or head.lstrip().lower().startswith(b"solid") or size / 2 <= 84 + 50 * count <= size * 2:
        raise _stl_mismatch(count, size)
    if ext == "PLY":
        raise MeshError("The file is named .ply but does not start with a PLY header (“ply”).")
    if ext == "OBJ":
        raise MeshError("The file is named .obj but is not text, as an OBJ is.")
    raise MeshError("This is not a mesh: its content matches no STL, PLY or OBJ layout.")


# STL

_STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
assert _STL_RECORD.itemsize == 50


def _read_binary_stl(stream: _Stream) -> MeshInfo:
    """Records of 50 bytes; each chunk's nine corner coordinates are copied into rows (one row per
    coordinate, a copy numpy makes at memory speed) so that min, max and sum run along contiguous
    memory. Bytes after the last record that are fewer than one record are ignored (see _sniff)."""
    header = stream.read(84)
    count = _stl_count(header)
    if count == 0:
        raise MeshError("The STL holds no triangles.")
    bounds = _Bounds()
    per = max(1, stream.chunk // 50)
    rows = np.empty((9, min(per, count)), dtype=np.float32)
    done = 0
    while done < count:
        n = min(per, count - done)
        data = stream.read(n * 50)
        if len(data) != n * 50:  # the file shrank while being read
            raise _stl_mismatch(count, stream.pos)
        corners = np.frombuffer(data, dtype=_STL_RECORD)["v"].reshape(n, 9)
        block = rows[:, :n]
        np.copyto(block, corners.T)
        if not bounds.add_columns(block):
            bad = int(np.flatnonzero(~np.isfinite(corners).all(axis=1))[0])
            raise MeshError(f"Triangle {done + 1 + bad:,} has a corner whose coordinates are not numbers "
                            "(NaN or infinite): the file is corrupted.")
        done += n
    stream.read(stream.size - stream.pos)  # the few bytes some writers leave after the last record
    return MeshInfo("STL", "binary", 3 * count, count, count, stream.size, **bounds.result())


_STL_LINE = re.compile(rb"^[ \t]*(\S+)", re.M)
_STL_VERTEX = re.compile(rb"^[ \t]*vertex[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)[ \t]*\r?$", re.M)
_STL_VERTEX_LINE = re.compile(rb"^[ \t]*vertex\b[^\n]*", re.M)
_STL_CODES = {b"solid": b"s", b"facet": b"f", b"outer": b"o", b"vertex": b"v", b"endloop": b"l",
              b"endfacet": b"e", b"endsolid": b"z"}
_STL_UNITS = re.compile(rb"(?:s|z|fovvvle)*")
_FACET = b"fovvvle"
# A facet as whitespace-separated words: facet normal i j k / outer loop / vertex x y z (three times) /
# endloop / endfacet: 21 words on 7 lines.
_FACET_WORDS = {0: b"facet", 1: b"normal", 5: b"outer", 6: b"loop", 7: b"vertex", 11: b"vertex", 15: b"vertex",
                19: b"endloop", 20: b"endfacet"}
_FACET_COORDS = (8, 9, 10, 12, 13, 14, 16, 17, 18)


class _AsciiStl:
    """What an ASCII STL has shown so far, unit by unit (a unit is a run of whole lines that ends after
    an `endfacet` line, or the rest of the file)."""

    def __init__(self):
        self.bounds = _Bounds()
        self.facets = 0
        self.lines = 0  # lines before the unit being read
        self.carry = b""  # the letters of a facet cut by a unit's end (only in a malformed file)
        self.open_solid = False
        self.seen_solid = False

    def line_of(self, unit: bytes, offset: int) -> int:
        return self.lines + unit.count(b"\n", 0, offset) + 1

    def read(self, unit: bytes) -> None:
        if not self._fast(unit):
            self._careful(unit)
        self.lines += unit.count(b"\n")

    def _fast(self, unit: bytes) -> bool:
        """The usual layout, read with a few C-speed passes: True when the unit was read, False when
        something in it is unusual (blank lines, odd spacing of words over lines, an error), for
        :meth:`_careful` to read or to name."""
        if self.carry:
            return False
        pieces: list[bytes] = []  # the runs of facet lines around the solid lines
        kinds: list[bool] = []  # the solid line after each run: True for "solid", False for "endsolid"
        at = 0
        hit = unit.find(b"solid")
        while hit >= 0:
            start = unit.rfind(b"\n", 0, hit) + 1
            end = unit.find(b"\n", hit)
            end = len(unit) if end < 0 else end + 1
            first = unit[start:end].split(None, 1)[:1]
            if first not in ([b"solid"], [b"endsolid"]):
                return False
            pieces.append(unit[at:start])
            kinds.append(first == [b"solid"])
            at = end
            hit = unit.find(b"solid", end)
        pieces.append(unit[at:])
        open_solid, seen = self.open_solid, self.seen_solid
        columns: list[np.ndarray] = []
        facets = 0
        for i, piece in enumerate(pieces):
            words = piece.split()
            if words:
                n = len(words) // 21
                lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
                if not open_solid or len(words) != 21 * n or lines != 7 * n:
                    return False
                for k, word in _FACET_WORDS.items():
                    if words[k::21] != [word] * n:
                        return False
                coords = itertools.chain.from_iterable(words[k::21] for k in _FACET_COORDS)
                try:  # map(float) into fromiter: the quickest way from words to numbers numpy offers
                    columns.append(np.fromiter(map(float, coords), dtype=np.float64, count=9 * n).reshape(9, n))
                except ValueError:
                    return False
                facets += n
            if i < len(kinds):
                if kinds[i] == open_solid:
                    return False
                open_solid, seen = not open_solid, True
        for block in columns:
            if not self.bounds.add_columns(block):
                return False
        self.open_solid, self.seen_solid = open_solid, seen
        self.facets += facets
        return True

    def _careful(self, unit: bytes) -> None:
        """Line by line: tolerant of blank lines and names every error with its line."""
        facets = self.facets
        matches = list(_STL_LINE.finditer(unit))
        words = [m.group(1) for m in matches]
        try:
            letters = b"".join([_STL_CODES[w] for w in words])
        except KeyError:
            at = next(i for i, w in enumerate(words) if w not in _STL_CODES)
            letters = b"".join([_STL_CODES[w] for w in words[:at]])
            raise MeshError(f"Line {self.line_of(unit, matches[at].start(1)):,} of the ASCII STL is not STL "
                            f"(after facet {facets + letters[:at].count(b'e'):,}; it starts “{words[at][:30].decode('utf-8', 'replace')}”).") from None
        seq = self.carry + letters
        cut = max(seq.rfind(b"e"), seq.rfind(b"s"), seq.rfind(b"z")) + 1
        complete, carry = seq[:cut], seq[cut:]
        if len(carry) >= len(_FACET) or not _FACET.startswith(carry) or not _STL_UNITS.fullmatch(complete):
            good = _STL_UNITS.match(seq).end()  # whole facets and solid lines, then the faulty one
            k = 0
            while good + k < len(seq) and k < len(_FACET) and seq[good + k] == _FACET[k]:
                k += 1
            at = max(0, min(len(words) - 1, good + k - len(self.carry)))
            line = self.line_of(unit, matches[at].start(1)) if matches else self.lines + 1
            raise MeshError(f"The ASCII STL is malformed on line {line:,} (after facet "
                            f"{facets + _whole_facets(complete):,}): a facet must have “outer loop”, three "
                            "“vertex” lines, “endloop” and “endfacet”.")
        was_open = self.open_solid
        for code in complete.translate(None, b"fovle"):
            if (code == ord("s")) == self.open_solid:
                raise MeshError("The ASCII STL has “solid” and “endsolid” out of order.")
            self.open_solid = not self.open_solid
            self.seen_solid = True
        if (complete[:1] == b"f" and not was_open) or re.search(rb"z(?:fovvvle)+", complete):
            raise MeshError("The ASCII STL has facets outside “solid … endsolid”.")
        vertices = _STL_VERTEX.findall(unit)
        if len(vertices) != letters.count(b"v"):
            bad = next(m for m in _STL_VERTEX_LINE.finditer(unit) if not _STL_VERTEX.fullmatch(m.group()))
            raise MeshError(f"The ASCII STL has a vertex line without three coordinates on line "
                            f"{self.line_of(unit, bad.start()):,} (facet {facets + unit.count(b'endfacet', 0, bad.start()) + 1:,}).")
        if vertices:
            try:
                points = np.array(vertices, dtype=np.float64)
            except ValueError:
                for i, row in enumerate(vertices):
                    try:
                        [float(c) for c in row]
                    except ValueError:
                        break
                line = self.line_of(unit, list(_STL_VERTEX.finditer(unit))[i].start())
                raise MeshError(f"The ASCII STL has a vertex coordinate that is not a number on line {line:,} "
                                f"(facet {facets + 1 + i // 3:,}).") from None
            bad = self.bounds.add(points)
            if bad >= 0:
                line = self.line_of(unit, list(_STL_VERTEX.finditer(unit))[bad].start())
                raise MeshError(f"Facet {facets + 1 + bad // 3:,} has a vertex whose coordinates are not numbers "
                                f"(NaN or infinite) on line {line:,}: the file is corrupted.")
        self.carry = carry
        self.facets += complete.count(b"e")


def _read_ascii_stl(stream: _Stream) -> MeshInfo:
    """ASCII STL: `solid name`, then facets of exactly `facet normal`, `outer loop`, three `vertex`
    lines, `endloop`, `endfacet`, then `endsolid`; several solids may follow each other. Keywords in
    any case; a UTF-8 byte-order mark before `solid` is skipped (by :func:`inspect`)."""
    st = _AsciiStl()
    rest = b""  # lines after the last `endfacet` of a block, read with the next one
    try:
        for block in stream.text_blocks():
            data = rest + block.lower()
            end = data.rfind(b"endfacet")
            if end < 0:
                unit, rest = data, b""
            else:
                end = data.find(b"\n", end)
                end = len(data) if end < 0 else end + 1
                unit, rest = data[:end], data[end:]
            st.read(unit)
        if rest:
            st.read(rest)
    except MeshError:
        if stream.cut_tail:
            raise MeshError(f"The ASCII STL stops in the middle of a line after facet {st.facets:,}: "
                            "it was cut off.") from None
        raise
    if st.carry or st.open_solid:
        raise MeshError(f"The ASCII STL stops in the middle after facet {st.facets:,} (no “endsolid”): "
                        "it was cut off.")
    if not st.seen_solid or not st.facets:
        raise MeshError("The STL holds no triangles.")
    return MeshInfo("STL", "ascii", 3 * st.facets, st.facets, st.facets, stream.size, **st.bounds.result())


def _whole_facets(letters: bytes) -> int:
    m = re.match(rb"(?:s|z|fovvvle)*", letters)
    return m.group().count(b"e") if m else 0


# PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_ENCODINGS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_FACE_LISTS = ("vertex_indices", "vertex_index")


@dataclass
class _Prop:
    name: str
    type: str  # numpy code without byte order
    count_type: str = ""  # for a list: the type of its length


@dataclass
class _Element:
    name: str
    count: int
    props: list[_Prop]

    @property
    def lists(self) -> list[int]:
        return [i for i, p in enumerate(self.props) if p.count_type]


def _ply_header(stream: _Stream) -> tuple[str, list[_Element]]:
    head = stream.peek(min(stream.size, MAX_PLY_HEADER))
    m = re.search(rb"^end_header[ \t]*\r?\n", head, re.M)
    if not m:
        if len(head) >= MAX_PLY_HEADER:
            raise MeshError(f"The PLY header does not end (no “end_header” in the first {human_bytes(MAX_PLY_HEADER)}).")
        raise MeshError("The PLY header does not end (no “end_header”): the file was cut off or is not a PLY.")
    header = stream.read(m.end())
    encoding = ""
    elements: list[_Element] = []
    for number, raw in enumerate(header.decode("ascii", "replace").splitlines(), start=1):
        words = raw.split()
        if number == 1 or not words or words[0] in ("comment", "obj_info", "end_header"):
            continue
        where = f"line {number} of the PLY header (“{raw.strip()[:60]}”)"
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _PLY_ENCODINGS:
                raise MeshError(f"Unknown PLY format on {where}: expected ascii, binary_little_endian or "
                                "binary_big_endian.")
            encoding = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise MeshError(f"Cannot read {where}: expected “element <name> <count>”.")
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise MeshError(f"A property comes before any element on {where}.")
            if len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                if _PLY_TYPES[words[2]][0] == "f":
                    raise MeshError(f"A list length must be a whole-number type on {where}.")
                elements[-1].props.append(_Prop(words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]]))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].props.append(_Prop(words[2], _PLY_TYPES[words[1]]))
            else:
                raise MeshError(f"Cannot read {where}: unknown property type.")
        else:
            raise MeshError(f"Cannot read {where}.")
    if not encoding:
        raise MeshError("The PLY header has no “format” line.")
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is None or vertex.count == 0:
        raise MeshError("The PLY holds no vertices.")
    if vertex.lists:
        raise MeshError("The PLY's vertex element has a list property, which no mesh writer produces.")
    face = next((e for e in elements if e.name == "face"), None)
    if face is None or face.count == 0:
        raise MeshError(f"The PLY holds {vertex.count:,} points but no faces: a point cloud, not a surface scan.")
    if _face_list(face) is None:
        raise MeshError("The PLY's face element has no list of vertex indices.")
    return encoding, elements


def _face_list(face: _Element) -> int | None:
    """Index of the property holding a face's vertex indices."""
    lists = face.lists
    for i in lists:
        if face.props[i].name in _FACE_LISTS:
            return i
    return lists[0] if len(lists) == 1 else None


def _counts_phrase(elements: list[_Element]) -> str:
    v = next(e for e in elements if e.name == "vertex").count
    f = next(e for e in elements if e.name == "face").count
    return f"{v:,} vertices and {f:,} faces"


def _read_ply(stream: _Stream) -> MeshInfo:
    encoding, elements = _ply_header(stream)
    vertex_count = next(e for e in elements if e.name == "vertex").count
    acc = _PlyTotals(vertex_count)
    if encoding == "ascii":
        _read_ply_ascii(stream, elements, acc)
    else:
        _read_ply_binary(stream, elements, _PLY_ENCODINGS[encoding], acc)
    face_count = next(e for e in elements if e.name == "face").count
    if acc.triangles == 0:
        raise MeshError("The PLY holds no triangles.")
    return MeshInfo("PLY", encoding, vertex_count, acc.triangles, face_count, stream.size, **acc.bounds.result())


class _PlyTotals:
    def __init__(self, vertex_count: int):
        self.vertex_count = vertex_count
        self.bounds = _Bounds()
        self.vertices = 0
        self.faces = 0
        self.triangles = 0

    def add_vertices(self, xyz: np.ndarray | None, n: int) -> None:
        bad = self.bounds.add(xyz) if xyz is not None else -1
        if bad >= 0:
            raise MeshError(f"The coordinates of vertex {self.vertices + bad:,} (numbered from 0) are not "
                            "numbers (NaN or infinite): the file is corrupted.")
        self.vertices += n

    def add_faces(self, corners: int, indices: np.ndarray) -> None:
        """`indices` is (n, corners) for n faces of `corners` corners each."""
        n = len(indices)
        if not n:
            return
        if corners < 3:
            raise MeshError(f"Face {self.faces + 1:,} has {corners} corner{'s' if corners != 1 else ''}; "
                            "a face needs at least 3.")
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= self.vertex_count:
            bad = lo if lo < 0 else hi
            row = int(np.flatnonzero(((indices < 0) | (indices >= self.vertex_count)).any(axis=1))[0])
            raise MeshError(f"Face {self.faces + row + 1:,} refers to vertex {bad:,}, but the file holds "
                            f"{self.vertex_count:,} vertices (numbered from 0).")
        self.faces += n
        self.triangles += n * (corners - 2)


def _xyz(names: list[str]) -> list[int] | None:
    try:
        return [names.index(c) for c in "xyz"]
    except ValueError:
        return None


class _Cut(Exception):
    """A binary PLY ended inside an element: `missing` estimates the bytes its records still needed."""

    def __init__(self, missing: int):
        self.missing = missing


def _smallest(e: _Element) -> int:
    """The fewest bytes a record of `e` takes (lists empty)."""
    return sum(np.dtype(p.count_type or p.type).itemsize for p in e.props)


def _read_ply_binary(stream: _Stream, elements: list[_Element], order: str, acc: _PlyTotals) -> None:
    body = stream.size - stream.pos
    needed = sum(e.count * _smallest(e) for e in elements)
    if needed > body:
        raise MeshError(f"The file says it holds {_counts_phrase(elements)} but is at least "
                        f"{human_bytes(needed - body)} short: it was cut off.")
    for at, e in enumerate(elements):
        try:
            if not e.lists:
                _binary_fixed(stream, e, order, acc)
            elif len(e.lists) == 1:
                _binary_one_list(stream, e, order, acc)
            else:
                _binary_records(stream, e, order, acc)
        except _Cut as cut:
            missing = cut.missing + sum(later.count * _smallest(later) for later in elements[at + 1:])
            raise MeshError(f"The file says it holds {_counts_phrase(elements)} but is about "
                            f"{human_bytes(missing)} short: it was cut off.") from None
    extra = stream.size - stream.pos
    if extra:
        raise MeshError(f"The file says it holds {_counts_phrase(elements)}, but {human_bytes(extra)} "
                        "remain after them: its counts do not match its content.")


def _binary_fixed(stream: _Stream, e: _Element, order: str, acc: _PlyTotals) -> None:
    dtype = np.dtype([(f"p{i}", order + p.type) for i, p in enumerate(e.props)])
    xyz = _xyz([p.name for p in e.props]) if e.name == "vertex" else None
    per = max(1, stream.chunk // max(dtype.itemsize, 1))
    left = e.count
    while left:
        n = min(per, left)
        data = stream.read(n * dtype.itemsize)
        if len(data) != n * dtype.itemsize:
            raise _Cut(left * dtype.itemsize - len(data))
        if e.name == "vertex":
            rows = np.frombuffer(data, dtype=dtype)
            points = (np.column_stack([rows[f"p{i}"].astype(np.float64) for i in xyz]) if xyz else None)
            acc.add_vertices(points, n)
        left -= n


def _binary_one_list(stream: _Stream, e: _Element, order: str, acc: _PlyTotals) -> None:
    """Records with one list property, vectorised over runs of records whose lists have the same length."""
    li = e.lists[0]
    prop = e.props[li]
    before = sum(np.dtype(p.type).itemsize for p in e.props[:li])
    after = sum(np.dtype(p.type).itemsize for p in e.props[li + 1:])
    count_dt = np.dtype(order + prop.count_type)
    item_dt = np.dtype(order + prop.type)
    cs, isz = count_dt.itemsize, item_dt.itemsize
    is_face = e.name == "face" and _face_list(e) == li
    buf, p, left = b"", 0, e.count
    while left:
        if len(buf) - p < before + cs:
            more = stream.read(stream.chunk)
            if not more:
                raise _Cut(left * (before + cs + 3 * isz + after) - (len(buf) - p))
            buf, p = buf[p:] + more, 0
            continue
        k = int(np.frombuffer(buf, dtype=count_dt, count=1, offset=p + before)[0])
        if k < 0:
            raise MeshError(f"A “{e.name}” record has a negative list length: the file is corrupted.")
        rec = before + cs + k * isz + after
        n = min((len(buf) - p) // rec, left)
        if n == 0:
            if rec > MAX_LINE:
                raise MeshError(f"A “{e.name}” record claims {k:,} list items: the file is corrupted.")
            more = stream.read(stream.chunk)
            if not more:
                raise _Cut(left * rec - (len(buf) - p))
            buf, p = buf[p:] + more, 0
            continue
        rows = np.frombuffer(buf, dtype=np.uint8, count=n * rec, offset=p).reshape(n, rec)
        counts = np.ascontiguousarray(rows[:, before:before + cs]).view(count_dt).ravel()
        breaks = np.flatnonzero(counts != k)
        if breaks.size:
            n = int(breaks[0])
            rows = rows[:n]
        if is_face:
            items = np.ascontiguousarray(rows[:, before + cs:before + cs + k * isz]).view(item_dt)
            acc.add_faces(k, items.reshape(n, k).astype(np.int64))
        p += n * rec
        left -= n
    stream.pos -= len(buf) - p  # bytes read ahead belong to the next element
    stream.head = buf[p:] + stream.head


def _binary_records(stream: _Stream, e: _Element, order: str, acc: _PlyTotals) -> None:
    """Records with several lists: one at a time (rare, slow, correct)."""
    face_list = _face_list(e) if e.name == "face" else None
    for done in range(e.count):
        def cut(got: bytes, wanted: int) -> _Cut:
            return _Cut(wanted - len(got) + (e.count - done - 1) * _smallest(e))

        for i, prop in enumerate(e.props):
            if prop.count_type:
                cdt = np.dtype(order + prop.count_type)
                raw = stream.read(cdt.itemsize)
                if len(raw) != cdt.itemsize:
                    raise cut(raw, cdt.itemsize)
                k = int(np.frombuffer(raw, dtype=cdt)[0])
                idt = np.dtype(order + prop.type)
                raw = stream.read(k * idt.itemsize)
                if len(raw) != k * idt.itemsize:
                    raise cut(raw, k * idt.itemsize)
                if i == face_list:
                    acc.add_faces(k, np.frombuffer(raw, dtype=idt).astype(np.int64).reshape(1, k))
            else:
                size = np.dtype(prop.type).itemsize
                raw = stream.read(size)
                if len(raw) != size:
                    raise cut(raw, size)


def _read_ply_ascii(stream: _Stream, elements: list[_Element], acc: _PlyTotals) -> None:
    """One record a line (blank lines skipped), values separated by spaces."""
    queue = [e for e in elements]
    index, done = 0, 0  # element being read, records of it read
    try:
        for block in stream.text_blocks():
            lines = [line for line in block.splitlines() if line.strip()]
            at = 0
            while at < len(lines):
                while index < len(queue) and done == queue[index].count:
                    index, done = index + 1, 0
                if index == len(queue):
                    raise MeshError(f"The file says it holds {_counts_phrase(elements)}, but more lines follow "
                                    "them: its counts do not match its content.")
                e = queue[index]
                take = lines[at:at + e.count - done]
                _ascii_records(e, take, done, acc)
                at += len(take)
                done += len(take)
    except MeshError:
        if stream.cut_tail:
            raise MeshError("The PLY stops in the middle of a line: it was cut off.") from None
        raise
    while index < len(queue) and done == queue[index].count:
        index, done = index + 1, 0
    if index < len(queue):
        e = queue[index]
        raise MeshError(f"The file says it holds {_counts_phrase(elements)} but ends after {done:,} of its "
                        f"{e.count:,} “{e.name}” records: it was cut off.")


def _ascii_records(e: _Element, lines: list[bytes], first: int, acc: _PlyTotals) -> None:
    names = [p.name for p in e.props]
    if not e.lists:
        tokens = b" ".join(lines).split()
        width = len(e.props)
        if len(tokens) != width * len(lines):
            bad = next(i for i, line in enumerate(lines) if len(line.split()) != width)
            raise MeshError(f"“{e.name}” record {first + bad + 1:,} has {len(lines[bad].split())} values; "
                            f"the header declares {width}.")
        if e.name != "vertex":
            return
        xyz = _xyz(names)
        if xyz is None:
            acc.add_vertices(None, len(lines))
            return
        try:
            values = np.array(tokens, dtype=np.float64).reshape(len(lines), width)
        except ValueError:
            raise MeshError(f"A vertex between {first + 1:,} and {first + len(lines):,} has a value that is "
                            "not a number.") from None
        acc.add_vertices(values[:, xyz], len(lines))
        return
    face_list = _face_list(e) if e.name == "face" else None
    if e.props and len(e.props) == 1 and face_list == 0:  # the usual “3 i j k” faces
        tokens = b" ".join(lines).split()
        if len(tokens) == 4 * len(lines):
            try:
                rows = np.array(tokens, dtype=np.int64).reshape(len(lines), 4)
            except ValueError:
                rows = None
            if rows is not None and (rows[:, 0] == 3).all():
                acc.add_faces(3, rows[:, 1:])
                return
    by_corners: dict[int, list[list[int]]] = {}
    for i, line in enumerate(lines):
        words = line.split()
        at = 0
        for j, prop in enumerate(e.props):
            if prop.count_type:
                try:
                    k = int(words[at])
                    items = words[at + 1:at + 1 + k]
                    if len(items) != k:
                        raise IndexError
                    if j == face_list:
                        group = by_corners.setdefault(k, [])
                        group.append([int(w) for w in items])
                except (ValueError, IndexError):
                    raise MeshError(f"“{e.name}” record {first + i + 1:,} is malformed "
                                    f"(“{line.strip()[:60].decode('utf-8', 'replace')}”).") from None
                at += 1 + k
            else:
                at += 1
        if at != len(words):
            raise MeshError(f"“{e.name}” record {first + i + 1:,} has {len(words)} values, not the {at} "
                            "its header declares.")
    for k, faces in by_corners.items():
        acc.add_faces(k, np.array(faces, dtype=np.int64).reshape(len(faces), k))


# OBJ

_OBJ_SLASH = re.compile(rb"/\S*")


def _read_obj(stream: _Stream) -> MeshInfo:
    """`v x y z [w | r g b]` and `f a b c ...` with `a`, `a/t`, `a/t/n` or `a//n` corners, 1-based,
    negative ones counting back from the last vertex so far; every other OBJ statement is skipped."""
    bounds = _Bounds()
    vertices = faces = triangles = 0
    max_index = 0
    line_no = 0
    try:
        for block in stream.text_blocks():
            v_rows: list[bytes] = []
            f_rows: list[bytes] = []
            f_base: list[int] = []  # vertices defined before each face (for negative indices)
            f_line: list[int] = []
            for line in block.splitlines():
                line_no += 1
                words = line.split(None, 1)
                if not words or words[0][:1] == b"#":
                    continue
                key = words[0]
                if key == b"v":
                    v_rows.append(words[1] if len(words) > 1 else b"")
                    vertices += 1
                elif key == b"f":
                    f_rows.append(words[1] if len(words) > 1 else b"")
                    f_base.append(vertices)
                    f_line.append(line_no)
                elif key not in _OBJ_STATEMENTS:
                    raise MeshError(f"Line {line_no:,} of the OBJ is not an OBJ statement "
                                    f"(“{line.strip()[:60].decode('utf-8', 'replace')}”).")
            if v_rows:
                first = vertices - len(v_rows)
                tokens = b" ".join(v_rows).split()
                if len(tokens) != 3 * len(v_rows):
                    rows = []
                    for i, row in enumerate(v_rows):
                        xyz = row.split()[:3]
                        if len(xyz) != 3:
                            raise MeshError(f"Vertex {first + i + 1:,} of the OBJ does not have three coordinates.")
                        rows.extend(xyz)
                    tokens = rows
                try:
                    points = np.array(tokens, dtype=np.float64).reshape(len(v_rows), 3)
                except ValueError:
                    raise MeshError(f"A vertex of the OBJ between {first + 1:,} and {vertices:,} has a coordinate "
                                    "that is not a number.") from None
                bad = bounds.add(points)
                if bad >= 0:
                    raise MeshError(f"The coordinates of vertex {first + 1 + bad:,} are not numbers "
                                    "(NaN or infinite): the file is corrupted.")
            if f_rows:
                n, t, top = _obj_faces(f_rows, f_base, f_line)
                faces += n
                triangles += t
                max_index = max(max_index, top)
    except MeshError:
        if stream.cut_tail:
            raise MeshError("The OBJ stops in the middle of a line: it was cut off.") from None
        raise
    if max_index > vertices:
        raise MeshError(f"A face of the OBJ refers to vertex {max_index:,}, but the file holds {vertices:,} vertices.")
    if not faces:
        if vertices:
            raise MeshError(f"The OBJ holds {vertices:,} vertices but no faces: a point cloud, not a surface scan.")
        raise MeshError("The OBJ holds no vertices and no faces.")
    return MeshInfo("OBJ", "ascii", vertices, triangles, faces, stream.size, **bounds.result())


def _obj_faces(rows: list[bytes], base: list[int], line_nos: list[int]) -> tuple[int, int, int]:
    """Faces, triangles and the highest (1-based) vertex index of a block's `f` lines."""
    joined = b" ".join(rows)
    if b"/" in joined:
        joined = _OBJ_SLASH.sub(b"", joined)
    tokens = joined.split()
    if len(tokens) == 3 * len(rows):  # all triangles, the usual case
        try:
            idx = np.array(tokens, dtype=np.int64).reshape(len(rows), 3)
        except ValueError:
            idx = None
        if idx is not None:
            _obj_resolve(idx, np.array(base, dtype=np.int64), line_nos)
            return len(rows), len(rows), int(idx.max())
    triangles, top = 0, 0
    for row, b, line_no in zip(rows, base, line_nos):
        corners = _OBJ_SLASH.sub(b"", row).split()
        if len(corners) < 3:
            raise MeshError(f"The face on line {line_no:,} of the OBJ has {len(corners)} corners; a face needs "
                            "at least 3.")
        try:
            idx = np.array(corners, dtype=np.int64).reshape(1, -1)
        except ValueError:
            raise MeshError(f"The face on line {line_no:,} of the OBJ has a corner that is not a vertex number "
                            f"(“{row.strip()[:60].decode('utf-8', 'replace')}”).") from None
        _obj_resolve(idx, np.array([b], dtype=np.int64), [line_no])
        triangles += len(corners) - 2
        top = max(top, int(idx.max()))
    return len(rows), triangles, top


def _obj_resolve(idx: np.ndarray, base: np.ndarray, line_nos: list[int]) -> None:
    """Turn negative (relative) indices into absolute 1-based ones in place; refuse 0 and reaching back
    before the first vertex."""
    neg = idx < 0
    if neg.any():
        idx += np.where(neg, base[:, None] + 1, 0)
    bad = (idx < 1).any(axis=1)
    if bad.any():
        raise MeshError(f"The face on line {line_nos[int(np.flatnonzero(bad)[0])]:,} of the OBJ refers to a vertex "
                        "that does not exist (OBJ vertices are numbered from 1).")


# Scan type: upper, lower or bite
