"""The check before a case is sent: is the prescription complete, and does the lab make it?

Problems block sending and are listed beside the fields they concern. Warnings (the work may
come back too late for the seat appointment) need the coordinator to confirm.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from portal.cases import catalog
from portal.cases.risk import risk_of
from portal.extensions import db
from portal.integrations.models import ScannerIntegration
from portal.labs.models import Channel
from portal.scans.models import Scan


@dataclass(frozen=True)
class Problem:
    field: str  # "lab", "provider", "due_date", "items", or "items-<n>-<field>"
    message: str


@dataclass
class Check:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def on(self, name: str) -> list[str]:
        return [p.message for p in self.problems if p.field == name]

    def summary(self) -> str:
        return " ".join(p.message for p in self.problems)


def _plural(restoration: str) -> str:
    label = catalog.RESTORATIONS.get(restoration, restoration).lower()
    return label if label.endswith("s") else label + "s"


def _scanners_refusing(case, lab) -> list:
    """The integrations that brought this case's scans and may not send to `lab` (docs/sources.md source 000: the
    practice chooses which labs each scanner integration may send to)."""
    from sqlalchemy import select


    if case.id is None:
        return []
    scanners = db.session.scalars(select(ScannerIntegration).join(Scan, Scan.integration_id == ScannerIntegration.id)
                                  .where(Scan.case_id == case.id).distinct())
    return [s for s in scanners if lab not in s.labs]


def check_case(case, today: dt.date | None = None) -> Check:
    """Everything a lab needs, and what this lab offers. Reads the case; writes nothing."""
    today = today or dt.date.today()
    result = Check()
    add = result.problems.append
    lab = case.lab
    if lab is None:
        add(Problem("lab", "Choose the lab to send this case to."))
    elif not lab.active:
        add(Problem("lab", f"{lab.name} is no longer active in your lab directory; choose another lab."))
    elif lab.channel is Channel.API and not lab.api_url:
        add(Problem("lab", f"{lab.name} has no API address in the lab directory."))
    elif lab.channel is Channel.API and not [s for s in lab.secrets if s.revoked_at is None]:
        add(Problem("lab", f"{lab.name} has no active signing secret in the lab directory."))
    elif lab.channel is Channel.EMAIL and not lab.email:
        add(Problem("lab", f"{lab.name} has no email address in the lab directory."))
    if lab is not None:
        for scanner in _scanners_refusing(case, lab):
            allowed = ", ".join(sorted(lab.name for lab in scanner.labs)) or "no lab yet"
            add(Problem("lab", f"The scan came from {scanner.vendor.label} ({scanner.name}), which may send to "
                               f"{allowed}; an admin chooses its labs under Settings → Integrations."))
    if case.provider is None:
        add(Problem("provider", "Choose the prescribing provider."))
    if case.due_date is None:
        add(Problem("due_date", "Set a due date (the lab lists no turnaround for this work)."))
    elif case.due_date < today:
        add(Problem("due_date", f"The due date ({case.due_date:%a %d %b}) has passed; set a new one."))
    if not case.items:
        add(Problem("items", "Add at least one prescription item."))
    for n, item in enumerate(case.items):
        name = catalog.RESTORATIONS.get(item.restoration)
        if name is None:
            add(Problem(f"items-{n}-restoration", "Choose the restoration."))
            continue
        if not item.tooth_list and item.restoration not in catalog.ARCH_WORK:
            add(Problem(f"items-{n}-teeth", f"Name the teeth for the {name.lower()}."))
        if item.restoration in {"bridge", "implant_bridge"} and 0 < len(item.tooth_list) < 2:
            add(Problem(f"items-{n}-teeth", "A bridge spans at least two teeth."))
        if not item.material.strip():
            add(Problem(f"items-{n}-material", f"Choose the material for the {name.lower()}."))
        if item.restoration in catalog.NEEDS_SHADE and not item.shade.strip():
            add(Problem(f"items-{n}-shade", f"The lab needs the shade for a {name.lower()}."))
        if item.restoration in catalog.NEEDS_MARGIN and not item.margin:
            add(Problem(f"items-{n}-margin", f"The lab needs the margin for a {name.lower()}."))
        if lab is not None:
            service = lab.service_for(item.restoration)
            if service is None:
                add(Problem(f"items-{n}-restoration", f"{lab.name} does not make {_plural(item.restoration)}."))
            elif item.material.strip() and item.material.strip().lower() not in {
                    m.lower() for m in service.material_list}:
                offered = ", ".join(service.material_list) or "no materials listed"
                add(Problem(f"items-{n}-material",
                            f"{lab.name} does not make {item.material.strip()} {_plural(item.restoration)} "
                            f"(offers: {offered})."))
    at_risk, why = risk_of(case)
    if at_risk:
        result.warnings.append(why)
    return result
