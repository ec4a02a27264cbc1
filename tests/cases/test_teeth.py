"""Tooth numbering: Universal (ADA) <-> FDI (ISO 3950) for every tooth, ranges, bad input.

The expected mapping is built here from the charts' rules, not from portal.cases.teeth."""
from __future__ import annotations

import pytest

from portal.cases import teeth
from portal.cases.teeth import ToothError, display, parse


def _universal_to_fdi() -> dict[str, str]:
    table = {}
    for n in range(1, 33):
        if n <= 8:
            fdi = f"1{9 - n}"  # 1 = upper right third molar = 18
        elif n <= 16:
            fdi = f"2{n - 8}"  # 9 = upper left central = 21
        elif n <= 24:
            fdi = f"3{25 - n}"  # 17 = lower left third molar = 38
        else:
            fdi = f"4{n - 24}"  # 25 = lower right central = 41
        table[str(n)] = fdi
    for i, letter in enumerate("ABCDEFGHIJKLMNOPQRST", start=1):
        if i <= 5:
            fdi = f"5{6 - i}"  # A = upper right second primary molar = 55
        elif i <= 10:
            fdi = f"6{i - 5}"  # F = upper left primary central = 61
        elif i <= 15:
            fdi = f"7{16 - i}"  # K = lower left second primary molar = 75
        else:
            fdi = f"8{i - 15}"  # P = lower right primary central = 81
        table[letter] = fdi
    return table


EXPECTED = _universal_to_fdi()
LANDMARKS = {"1": "18", "8": "11", "9": "21", "16": "28", "17": "38", "24": "31", "25": "41", "32": "48",
             "A": "55", "E": "51", "F": "61", "J": "65", "K": "75", "O": "71", "P": "81", "T": "85"}


def test_the_expected_chart_has_every_tooth_once():
    assert len(EXPECTED) == 52 and len(set(EXPECTED.values())) == 52
    assert {k: EXPECTED[k] for k in LANDMARKS} == LANDMARKS
    assert set(EXPECTED.values()) == set(teeth.ALL_FDI)


@pytest.mark.parametrize(("universal", "fdi"), sorted(EXPECTED.items()))
def test_universal_to_fdi_and_back(universal, fdi):
    assert parse(universal, "universal") == [fdi]
    assert parse(f"#{universal.lower()}", "universal") == [fdi]  # "#3", "a" typed in lower case
    assert display([fdi], "universal") == f"#{universal}"
    assert parse(fdi, "fdi") == [fdi]
    assert display([fdi], "fdi") == fdi
    assert teeth.UNIVERSAL_TO_FDI[universal] == fdi and teeth.FDI_TO_UNIVERSAL[fdi] == universal


@pytest.mark.parametrize(("text", "system", "expected"), [
    ("13-23", "fdi", ["13", "12", "11", "21", "22", "23"]),  # across the upper midline
    ("23-13", "fdi", ["13", "12", "11", "21", "22", "23"]),  # either direction
    ("33-43", "fdi", ["43", "42", "41", "31", "32", "33"]),  # across the lower midline
    ("6-11", "universal", ["13", "12", "11", "21", "22", "23"]),
    ("22-27", "universal", ["43", "42", "41", "31", "32", "33"]),
    ("#3-5", "universal", ["16", "15", "14"]),
    ("14-16", "fdi", ["16", "15", "14"]),
    ("C-H", "universal", ["53", "52", "51", "61", "62", "63"]),
    ("53-63", "fdi", ["53", "52", "51", "61", "62", "63"]),
    ("M-R", "universal", ["83", "82", "81", "71", "72", "73"]),
    ("18-28", "fdi", [f"1{i}" for i in range(8, 0, -1)] + [f"2{i}" for i in range(1, 9)]),
    ("1-16", "universal", [f"1{i}" for i in range(8, 0, -1)] + [f"2{i}" for i in range(1, 9)]),
    ("11", "fdi", ["11"]),
    ("21-21", "fdi", ["21"]),
])
def test_ranges_run_along_the_arch(text, system, expected):
    assert parse(text, system) == expected


@pytest.mark.parametrize(("text", "system", "expected"), [
    ("8, 9", "universal", ["11", "21"]),
    ("9 8", "universal", ["11", "21"]),  # sorted in arch order whatever the typing order
    ("21; 11 / 36", "fdi", ["11", "21", "36"]),
    ("11, 11, 12-11", "fdi", ["12", "11"]),  # duplicates once
    ("A, J", "universal", ["55", "65"]),
    (" 46 ,  47 ", "fdi", ["47", "46"]),
    ("3, 14-15, 30", "universal", ["16", "26", "27", "46"]),
])
def test_lists_are_sorted_along_the_arches_without_duplicates(text, system, expected):
    assert parse(text, system) == expected


@pytest.mark.parametrize(("text", "system", "message"), [
    ("99", "fdi", "“99” is not an FDI tooth number (11-48, 51-85)."),
    ("19", "fdi", "“19” is not an FDI tooth number"),
    ("8", "fdi", "“8” is not an FDI tooth number"),
    ("33", "universal", "“33” is not a Universal tooth number (1-32, A-T)."),
    ("0", "universal", "“0” is not a Universal tooth number"),
    ("U", "universal", "“U” is not a Universal tooth number"),
    ("11", "universal", None),  # a valid Universal number (upper left canine): no error
    ("", "fdi", "Enter at least one tooth."),
    (" , ; ", "fdi", "Enter at least one tooth."),
    ("11-31", "fdi", "A range must stay on one arch; 11 and 31 are on different arches."),
    ("8-25", "universal", "A range must stay on one arch; 11 and 41 are on different arches."),
    ("55-11", "fdi", "A range must stay on one arch"),  # primary to permanent
    ("11-", "fdi", "“11-” is not an FDI tooth number"),
    ("11-x", "fdi", "“X” is not an FDI tooth number"),
    ("<script>", "fdi", "“<SCRIPT>” is not an FDI tooth number"),
])
def test_bad_input_says_what_is_wrong(text, system, message):
    if message is None:
        assert parse(text, system) == ["23"]
        return
    with pytest.raises(ToothError) as refused:
        parse(text, system)
    assert str(refused.value).startswith(message)


def test_an_unknown_numbering_system_is_refused():
    with pytest.raises(ToothError, match="Unknown numbering system 'palmer'"):
        parse("11", "palmer")


def test_display_takes_the_stored_string_and_skips_junk():
    assert display("16 15 14", "universal") == "#3, #4, #5"
    assert display("16 15 14") == "16, 15, 14"
    assert display("16 zz 14", "universal") == "#3, #5"
    assert display([], "universal") == ""
