"""Which jaw a scan file holds: upper, lower or bite, from the vendor's metadata, then the file's
name, then the shape of the meshes of one order; and the bite's links to both arches."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from portal.integrations.vendor import Jaw
from portal.scans.mesh.parsers import MeshInfo

SOURCE_VENDOR = "vendor"
SOURCE_FILE_NAME = "file name"
SOURCE_GEOMETRY = "geometry"

_UPPER_WORDS = frozenset({"upper", "maxilla", "maxillary", "maxillar", "oberkiefer"})
_LOWER_WORDS = frozenset({"lower", "mandible", "mandibular", "unterkiefer"})
_BITE_WORDS = frozenset({"bite", "bites", "occlusion", "occlusal", "interocclusal", "buccal"})
_WORD_SUFFIXES = ("", "jaw", "arch", "scan", "jawscan", "archscan")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

ARCH_SHARE = 0.6  # a mesh whose horizontal span is at least this share of the order's widest is an arch
BITE_SHARE = 0.6  # one under this share of the narrowest arch's span is a bite, when two arches are there
SEPARATION = 0.25  # upper and lower centroids must be this share of the arches' mean height apart in z
SAME_FRAME = 0.5  # and their horizontal boxes must overlap by this share of the smaller box


def _matches(word: str, vocabulary: frozenset[str]) -> bool:
    return any(word == w + s for w in vocabulary for s in _WORD_SUFFIXES)


def jaw_from_name(file_name: str) -> Jaw | None:
    """The jaw a file name states, by whole words (camelCase, digits and punctuation split words):
    "UpperJaw.stl", "2024_maxillary", "case-LowerJawScan", "BiteScan_1", "occlusion". A bite word wins
    over an arch word ("bite upper-lower"); a name naming both arches and no bite says nothing."""
    stem = os.path.splitext(os.path.basename(file_name.replace("\\", "/")))[0]
    words = [w.lower() for w in _WORDS.findall(stem)]
    if any(_matches(w, _BITE_WORDS) for w in words):
        return Jaw.BITE
    upper = any(_matches(w, _UPPER_WORDS) for w in words)
    lower = any(_matches(w, _LOWER_WORDS) for w in words)
    if upper != lower:
        return Jaw.UPPER if upper else Jaw.LOWER
    return None


def _span(m: MeshInfo) -> float:
    dx, dy, _ = m.extent  # type: ignore[misc]
    return math.hypot(dx, dy)


def _same_frame(a: MeshInfo, b: MeshInfo) -> bool:
    ox = min(a.bbox_max[0], b.bbox_max[0]) - max(a.bbox_min[0], b.bbox_min[0])  # type: ignore[index]
    oy = min(a.bbox_max[1], b.bbox_max[1]) - max(a.bbox_min[1], b.bbox_min[1])  # type: ignore[index]
    if ox <= 0 or oy <= 0:
        return False
    smaller = min(a.extent[0] * a.extent[1], b.extent[0] * b.extent[1])  # type: ignore[index]
    return smaller > 0 and ox * oy >= SAME_FRAME * smaller


def _geometry(infos: Sequence[MeshInfo | None]) -> dict[int, Jaw]:
    boxed = {i: m for i, m in enumerate(infos) if m is not None and m.bbox_min is not None and _span(m) > 0}
    if len(boxed) < 2:
        return {}
    widest = max(_span(m) for m in boxed.values())
    arches = [i for i, m in boxed.items() if _span(m) >= ARCH_SHARE * widest]
    found: dict[int, Jaw] = {}
    if len(arches) >= 2:
        narrowest = min(_span(boxed[i]) for i in arches)
        for i, m in boxed.items():
            if i not in arches and _span(m) < BITE_SHARE * narrowest:
                found[i] = Jaw.BITE
    if len(arches) == 2:
        a, b = (boxed[i] for i in arches)
        height = (a.extent[2] + b.extent[2]) / 2  # type: ignore[index]
        dz = a.centroid[2] - b.centroid[2]  # type: ignore[index]
        if _same_frame(a, b) and height > 0 and abs(dz) >= SEPARATION * height:
            high, low = arches if dz > 0 else arches[::-1]
            found[high], found[low] = Jaw.UPPER, Jaw.LOWER
    return found


def detect_jaws(files: Sequence[tuple[str, Jaw | None, MeshInfo | None]]) -> list[tuple[Jaw, str]]:
    """The jaw of each file of ONE order and how it was known: (jaw, "vendor" | "file name" | "geometry"),
    or (Jaw.UNKNOWN, "") when nothing tells. Each file is (file_name, vendor_hint, mesh_info).

    In order: the vendor's metadata (a hint other than UNKNOWN); the file name (:func:`jaw_from_name`);
    then the geometry of the order's meshes, as a last resort:

    - Arches are the meshes whose horizontal (x-y) bounding-box diagonal is at least 60% of the
      order's widest. When there are at least two, any mesh under 60% of the narrowest arch's span
      is the bite (a buccal bite scan covers a few teeth; a full arch is 50-60 mm across).
    - When there are exactly two arches, sharing one coordinate frame (their x-y boxes overlap by
      half of the smaller) and set apart along z by a quarter of their mean height, the one whose
      vertex centroid is higher in z is the upper, the other the lower.
    - A file already known by vendor or name is never changed. A geometric upper/lower is used only
      if it agrees with an arch already known (a file named upper must also lie higher); otherwise
      the frame is not the one assumed and both stay as they were.

    Limits: it assumes +z points from the lower to the upper jaw, which holds for scans exported
    together in the bite-aligned frame (TRIOS, iTero, Medit) but not for meshes re-oriented or
    exported one by one (each centred on its own origin: then no upper/lower is guessed). Quadrant
    scans (prep, antagonist and bite all about the same size) get no geometric bite. More than two
    arches in one order (a rescan beside the first scan) get no geometric upper/lower. Units do not
    matter (everything is relative), mirrored or flipped meshes would fool it. UNKNOWN is the honest
    answer, and a person can set the jaw.
    """
    result: list[tuple[Jaw, str]] = []
    for name, hint, _ in files:
        if hint is not None and hint != Jaw.UNKNOWN:
            result.append((Jaw(hint), SOURCE_VENDOR))
            continue
        jaw = jaw_from_name(name)
        result.append((jaw, SOURCE_FILE_NAME) if jaw else (Jaw.UNKNOWN, ""))
    if all(j != Jaw.UNKNOWN for j, _ in result):
        return result
    geometric = _geometry([info for _, _, info in files])
    arch_guesses = {i: j for i, j in geometric.items() if j in (Jaw.UPPER, Jaw.LOWER)}
    if any(result[i][0] not in (Jaw.UNKNOWN, j) for i, j in arch_guesses.items()):
        arch_guesses = {}  # the geometry disagrees with what the vendor or the name said
    for i, jaw in geometric.items():
        if result[i][0] == Jaw.UNKNOWN and (jaw == Jaw.BITE or i in arch_guesses):
            result[i] = (jaw, SOURCE_GEOMETRY)
    return result


def bite_links(jaws: Sequence[Jaw | tuple[Jaw, str]]) -> dict[int, tuple[int | None, int | None]]:
    """For the files of one order: index of each bite file -> (index of the upper, index of the lower),
    None where the order has no such arch. With several uppers (a rescan), the first one is linked."""
    kinds = [j[0] if isinstance(j, tuple) else j for j in jaws]
    upper = next((i for i, j in enumerate(kinds) if j == Jaw.UPPER), None)
    lower = next((i for i, j in enumerate(kinds) if j == Jaw.LOWER), None)
    return {i: (upper, lower) for i, j in enumerate(kinds) if j == Jaw.BITE}
