"""Who did something: a person, a lab, a vendor, a job, or the system itself."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    kind: str  # user, lab, vendor, job, system
    id: str = ""
    label: str = ""
    on_behalf_of: str = ""  # e.g. a coordinator recording a lab's phone call: on behalf of "lab:3"
    source: str = ""  # the route or job that acted

    @classmethod
    def user(cls, user, on_behalf_of: str = "") -> Actor:
        return cls("user", str(user.id), user.email, on_behalf_of)

    @classmethod
    def lab(cls, lab, source: str = "") -> Actor:
        return cls("lab", str(lab.id), lab.name, source=source)

    @classmethod
    def vendor(cls, integration, source: str = "") -> Actor:
        """A scanner vendor, through one of the practice's integrations (its API, webhook or export)."""
        return cls("vendor", str(integration.id), f"{integration.vendor.label}: {integration.name}", source=source)

    @classmethod
    def job(cls, name: str) -> Actor:
        return cls("job", name, name, source=name)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls("system", "", label)
