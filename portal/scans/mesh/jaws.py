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

_UPPER_WORDS = frozenset({"upper", "maxilla", "maxillary", "maxillar", "oberkiefer", "superior"})
_LOWER_WORDS = frozenset({"lower", "mandible", "mandibular", "unterkiefer", "inferior"})
_UPPER_CODES = frozenset({"OK"})  # German Oberkiefer / Unterkiefer, written in capitals: "Doe_OK.stl"
_LOWER_CODES = frozenset({"UK"})
_LAST_LETTER = {"u": True, "l": False}  # "Doe_u.stl", "Doe_l.stl": a single letter ending the name
_BITE_WORDS = frozenset({"bite", "bites", "occlusion", "occlusal", "interocclusal", "buccal"})
_WORD_SUFFIXES = ("", "jaw", "arch", "scan", "jawscan", "archscan")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

ARCH_SHARE = 0.6  # a mesh whose horizontal span is at least this share of the order's widest is an arch
BITE_SHARE = 0.6  # one under this share of the narrowest arch's span is a bite, when two arches are there
SEPARATION = 0.25  # upper and lower centroids must be this share of the arches' mean height apart vertically
SAME_FRAME = 0.5  # and their horizontal boxes must overlap by this share of the smaller box
WIDER = 0.03  # the upper arch is wider than the lower (the maxilla overlaps the mandible) by this share at least
AXES = "xyz"


class JawGuess(tuple):
    """(jaw, source) as detect_jaws tells one file, with `note`: how sure, in words for the scan page
    ("" for the vendor's metadata and names, which are taken as they are)."""

    def __new__(cls, jaw: Jaw, source: str, note: str = ""):
        guess = super().__new__(cls, (jaw, source))
        guess.note = note
        return guess

    @property
    def jaw(self) -> Jaw:
        return self[0]

    @property
    def source(self) -> str:
        return self[1]


def _matches(word: str, vocabulary: frozenset[str]) -> bool:
    return any(word == w + s for w in vocabulary for s in _WORD_SUFFIXES)


def jaw_from_name(file_name: str) -> Jaw | None:
    """The jaw a file name states, by whole words (camelCase, digits and punctuation split words):
    "UpperJaw.stl", "2024_maxillary", "case-LowerJawScan", "BiteScan_1", "occlusion", "superior", the
    German capitals "Doe_OK" / "Doe_UK" (Oberkiefer, Unterkiefer) and a last single letter "Doe_u" /
    "Doe_l" (as 3Shape's and other exports shorten them). A bite word wins
    over an arch word ("bite upper-lower"); a name naming both arches and no bite says nothing."""
    stem = os.path.splitext(os.path.basename(file_name.replace("\\", "/")))[0]
    raw = _WORDS.findall(stem)
    words = [w.lower() for w in raw]
    if any(_matches(w, _BITE_WORDS) for w in words):
        return Jaw.BITE
    upper = any(_matches(w, _UPPER_WORDS) for w in words) or any(w in _UPPER_CODES for w in raw)
    lower = any(_matches(w, _LOWER_WORDS) for w in words) or any(w in _LOWER_CODES for w in raw)
    last = re.search(r"[_\-. ]([ulUL])$", stem)
    if last and not (upper or lower):
        upper, lower = _LAST_LETTER[last.group(1).lower()], not _LAST_LETTER[last.group(1).lower()]
    if upper != lower:
        return Jaw.UPPER if upper else Jaw.LOWER
    return None


def _thin_axis(m: MeshInfo) -> int:
    """The axis along which a mesh is thinnest: an arch's vertical (occlusal) axis, whichever it is."""
    ext = m.extent
    return min(range(3), key=lambda i: ext[i])  # type: ignore[index]


def _span(m: MeshInfo, vertical: int) -> float:
    a, b = (i for i in range(3) if i != vertical)
    return math.hypot(m.extent[a], m.extent[b])  # type: ignore[index]


def _same_frame(a: MeshInfo, b: MeshInfo, vertical: int) -> bool:
    h = [i for i in range(3) if i != vertical]
    over = [min(a.bbox_max[i], b.bbox_max[i]) - max(a.bbox_min[i], b.bbox_min[i]) for i in h]  # type: ignore[index]
    if any(o <= 0 for o in over):
        return False
    smaller = min(a.extent[h[0]] * a.extent[h[1]], b.extent[h[0]] * b.extent[h[1]])  # type: ignore[index]
    return smaller > 0 and over[0] * over[1] >= SAME_FRAME * smaller


def _geometry(infos: Sequence[MeshInfo | None]) -> dict[int, tuple[Jaw, str]]:
    """{index: (jaw, note)}: a jaw other than UNKNOWN only when the shape is sure of it; UNKNOWN with a
    note saying what the shape suggests and why that is not enough."""
    usable = {i: m for i, m in enumerate(infos) if m is not None and m.bbox_min is not None and max(m.extent) > 0}
    if len(usable) < 2:
        return {}
    widest = max(usable.values(), key=lambda m: math.hypot(*m.extent))
    vertical = _thin_axis(widest)
    boxed = {i: m for i, m in usable.items() if _span(m, vertical) > 0}
    top = max(_span(m, vertical) for m in boxed.values())
    arches = [i for i, m in boxed.items() if _span(m, vertical) >= ARCH_SHARE * top]
    found: dict[int, tuple[Jaw, str]] = {}
    if len(arches) >= 2:
        narrowest = min(_span(boxed[i], vertical) for i in arches)
        for i, m in boxed.items():
            if i not in arches and _span(m, vertical) < BITE_SHARE * narrowest:
                share = _span(m, vertical) / narrowest
                found[i] = (Jaw.BITE, f"sure: {share:.0%} as wide as the narrower arch, a bite scan's few teeth")
    if len(arches) != 2:
        return found
    a, b = (boxed[i] for i in arches)
    axis = AXES[vertical]
    if _thin_axis(a) != _thin_axis(b):
        return found
    # Two clues, each alone fooled by some export: which arch lies above along +axis (wrong when the
    # frame has -axis up), and which is wider (the upper: the maxilla overlaps the mandible; equal
    # widths when a scan stops short). A jaw only when both are there and agree.
    height = (a.extent[vertical] + b.extent[vertical]) / 2  # type: ignore[index]
    dz = a.centroid[vertical] - b.centroid[vertical]  # type: ignore[index]
    stacked = _same_frame(a, b, vertical) and height > 0 and abs(dz) >= SEPARATION * height
    above = (arches if dz > 0 else arches[::-1])[0] if stacked else None
    wa, wb = _span(a, vertical), _span(b, vertical)
    share = abs(wa - wb) / max(wa, wb)
    wider = (arches[0] if wa > wb else arches[1]) if share >= WIDER else None
    if above is not None and above == wider:
        low = arches[1] if above == arches[0] else arches[0]
        why = f"sure: it lies above the other along +{axis} and is {share:.0%} wider"
        found[above] = (Jaw.UPPER, why)
        found[low] = (Jaw.LOWER, f"sure: it lies below the other along +{axis} and is {share:.0%} narrower")
        return found
    if above is not None and wider is not None:
        note = (f"not sure: the arch above along +{axis} is the narrower one (is the frame upside down?); "
                "set the jaw by hand")
    elif above is not None:
        note = f"not sure: one arch lies above the other along +{axis} but both are as wide; set the jaw by hand"
    elif wider is not None:
        note = (f"not sure: one arch is {share:.0%} wider (an upper?) but they are not stacked in one frame; "
                "set the jaw by hand")
    else:
        note = "not sure: the two arches are as wide and not stacked in one frame; set the jaw by hand"
    for i in arches:
        found[i] = (Jaw.UNKNOWN, note)
    return found


def detect_jaws(files: Sequence[tuple[str, Jaw | None, MeshInfo | None]]) -> list[JawGuess]:
    """The jaw of each file of ONE order and how it was known: (jaw, "vendor" | "file name" | "geometry")
    as a :class:`JawGuess` whose `note` says how sure the shape is, or (Jaw.UNKNOWN, "") when nothing
    tells. Each file is (file_name, vendor_hint, mesh_info).

    In order: the vendor's metadata (a hint other than UNKNOWN); the file name (:func:`jaw_from_name`);
    then the geometry of the order's meshes, as a last resort, and only when it is sure:

    - The vertical axis is the one along which the order's largest mesh is thinnest (an arch is about
      55 x 50 mm across and 20 mm high), so z-up and y-up frames are alike.
    - Arches are the meshes whose horizontal bounding-box diagonal is at least 60% of the order's
      widest. When there are at least two, any mesh under 60% of the narrowest arch's span is the
      bite (a buccal bite scan covers a few teeth; a full arch is 50-60 mm across).
    - With exactly two arches, upper and lower need two clues that agree: one lies above the other
      along the vertical axis in a shared frame (their horizontal boxes overlap by half of the
      smaller, their centroids a quarter of their mean height apart), and the one above is at least
      3% wider (the upper arch is: the maxilla overlaps the mandible). One clue alone, or two that
      disagree (a frame with -z up puts the wider upper below), give UNKNOWN with a note of what the
      shape suggests; so do arches each exported on its own origin.
    - A file already known by vendor or name is never changed. A geometric upper/lower is used only
      if it agrees with an arch already known (a file named upper must also be the one the shape
      calls upper); otherwise both stay as they were. With one arch known, the other of a pair is the
      opposite jaw when the shape is sure.

    Limits: quadrant scans (prep, antagonist and bite all about the same size) get no geometric bite.
    More than two arches in one order (a rescan beside the first scan) get no geometric upper/lower.
    Units do not matter (everything is relative); mirrored meshes would fool it. UNKNOWN is the
    honest answer, and a person can set the jaw on the scan page.
    """
    result: list[JawGuess] = []
    for name, hint, _ in files:
        if hint is not None and hint != Jaw.UNKNOWN:
            result.append(JawGuess(Jaw(hint), SOURCE_VENDOR))
            continue
        jaw = jaw_from_name(name)
        result.append(JawGuess(jaw, SOURCE_FILE_NAME) if jaw else JawGuess(Jaw.UNKNOWN, ""))
    if all(j != Jaw.UNKNOWN for j, _ in result):
        return result
    geometric = _geometry([info for _, _, info in files])
    arch_guesses = {i: j for i, (j, _) in geometric.items() if j in (Jaw.UPPER, Jaw.LOWER)}
    if any(result[i][0] not in (Jaw.UNKNOWN, j) for i, j in arch_guesses.items()):
        # the geometry disagrees with what the vendor or the name said: the frame is not the one assumed
        disagree = "not sure: the shape disagrees with what the vendor or the file name says"
        geometric = {i: (Jaw.UNKNOWN, disagree) if i in arch_guesses else g for i, g in geometric.items()}
        arch_guesses = {}
    for i, (jaw, note) in geometric.items():
        if result[i][0] != Jaw.UNKNOWN:
            continue
        if jaw == Jaw.BITE or i in arch_guesses:
            result[i] = JawGuess(jaw, SOURCE_GEOMETRY, note)
        elif jaw == Jaw.UNKNOWN:
            result[i] = JawGuess(Jaw.UNKNOWN, "", note)
    return result


def bite_links(jaws: Sequence[Jaw | tuple[Jaw, str]]) -> dict[int, tuple[int | None, int | None]]:
    """For the files of one order: index of each bite file -> (index of the upper, index of the lower),
    None where the order has no such arch. With several uppers (a rescan), the first one is linked."""
    kinds = [j[0] if isinstance(j, tuple) else j for j in jaws]
    upper = next((i for i, j in enumerate(kinds) if j == Jaw.UPPER), None)
    lower = next((i for i, j in enumerate(kinds) if j == Jaw.LOWER), None)
    return {i: (upper, lower) for i, j in enumerate(kinds) if j == Jaw.BITE}
