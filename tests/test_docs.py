"""The repository explains itself: code, tests and the README cite documents under docs/ only,
every document they cite is there, and the reliability codes they cite are defined."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("portal", "jobs", "tests", "sandbox", "bench", "templates", "openapi")
           for p in (ROOT / d).rglob("*") if p.suffix in {".py", ".html", ".yaml", ".txt"} and "vendor" not in p.parts]
SOURCES.append(ROOT / "README.md")
CITED = re.compile(r"\bdocs/[\w/.-]+\.md\b")
OUTSIDE = re.compile(r"contracts/[a-z-]+\.md|\bRELIABILITY\b|\b[Ss]eeds? ?-?00\d\b|\bPRODUCT\.md|\.\./shared")


def test_nothing_cites_a_document_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)}" for p in SOURCES if p != pathlib.Path(__file__)
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for m in OUTSIDE.finditer(line)]
    assert not found, "citations of documents that are not in the repository:\n" + "\n".join(found)


def test_every_cited_document_is_in_docs():
    missing = sorted({m.group(0) for p in SOURCES for m in CITED.finditer(p.read_text(errors="replace"))
                      if not (ROOT / m.group(0)).is_file()})
    assert not missing, f"cited but not in the repository: {missing}"


def test_the_reliability_codes_cited_are_defined():
    defined = set(re.findall(r"\*\*([WDMFA]\d) —", (ROOT / "docs/reliability.md").read_text()))
    cited = {code for p in SOURCES for code in re.findall(r"docs/reliability\.md ([WDMFA]\d)", p.read_text(errors="replace"))}
    assert cited and cited <= defined, f"cited but not defined: {sorted(cited - defined)}"
