"""Tooth numbering. Stored in FDI (ISO 3950); Universal (ADA) accepted on input and shown on request.

Input takes single teeth, lists and ranges along the arch: "8, 9", "#3-5", "14-16", "13-23" (FDI
across the midline), "A, J" (Universal primary teeth).
"""
from __future__ import annotations

import re

# Along each arch, from the patient's right to left: the order a range runs in.
UPPER_FDI = [f"1{i}" for i in range(8, 0, -1)] + [f"2{i}" for i in range(1, 9)]
LOWER_FDI = [f"4{i}" for i in range(8, 0, -1)] + [f"3{i}" for i in range(1, 9)]
UPPER_PRIMARY_FDI = [f"5{i}" for i in range(5, 0, -1)] + [f"6{i}" for i in range(1, 6)]
LOWER_PRIMARY_FDI = [f"8{i}" for i in range(5, 0, -1)] + [f"7{i}" for i in range(1, 6)]
ARCHES = [UPPER_FDI, LOWER_FDI, UPPER_PRIMARY_FDI, LOWER_PRIMARY_FDI]

# Universal: 1-16 upper right to upper left, 17-32 lower left to lower right; A-T primary likewise.
UNIVERSAL_TO_FDI: dict[str, str] = {}
for n, fdi in enumerate(UPPER_FDI + list(reversed(LOWER_FDI)), start=1):
    UNIVERSAL_TO_FDI[str(n)] = fdi
for letter, fdi in zip("ABCDEFGHIJKLMNOPQRST", UPPER_PRIMARY_FDI + list(reversed(LOWER_PRIMARY_FDI))):
    UNIVERSAL_TO_FDI[letter] = fdi
FDI_TO_UNIVERSAL = {v: k for k, v in UNIVERSAL_TO_FDI.items()}
ALL_FDI = frozenset(FDI_TO_UNIVERSAL)


class ToothError(ValueError):
    pass


def _one(token: str, system: str) -> str:
    token = token.strip().lstrip("#").upper()
    if system == "universal":
        fdi = UNIVERSAL_TO_FDI.get(token)
        if fdi is None:
            raise ToothError(f"“{token}” is not a Universal tooth number (1-32, A-T).")
        return fdi
    if token not in ALL_FDI:
        raise ToothError(f"“{token}” is not an FDI tooth number (11-48, 51-85).")
    return token


def _range(a: str, b: str) -> list[str]:
    for arch in ARCHES:
        if a in arch and b in arch:
            i, j = arch.index(a), arch.index(b)
            return arch[min(i, j): max(i, j) + 1]
    raise ToothError(f"A range must stay on one arch; {a} and {b} are on different arches.")


def parse(text: str, system: str = "fdi") -> list[str]:
    """Parse teeth typed in `system` ("fdi" or "universal") into FDI codes, in arch order."""
    if system not in ("fdi", "universal"):
        raise ToothError(f"Unknown numbering system {system!r}.")
    tokens = [t for t in re.split(r"[,\s;/]+", text.strip()) if t]
    if not tokens:
        raise ToothError("Enter at least one tooth.")
    teeth: list[str] = []
    for token in tokens:
        if "-" in token.strip("-"):
            a, _, b = token.partition("-")
            teeth.extend(_range(_one(a, system), _one(b, system)))
        else:
            teeth.append(_one(token, system))
    order = {t: i for i, t in enumerate(x for arch in ARCHES for x in arch)}
    return sorted(dict.fromkeys(teeth), key=order.__getitem__)


def display(fdi_teeth: list[str] | str, system: str = "fdi") -> str:
    teeth = fdi_teeth.split() if isinstance(fdi_teeth, str) else fdi_teeth
    if system == "universal":
        return ", ".join(f"#{FDI_TO_UNIVERSAL[t]}" for t in teeth if t in FDI_TO_UNIVERSAL)
    return ", ".join(teeth)
