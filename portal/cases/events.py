"""What happens to a case that other features may need to hear of (published by cases.services)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from portal.audit.actor import Actor
from portal.cases.models import LabCase


@dataclass(frozen=True)
class CaseCancelled:
    """The practice cancelled the case (its status reason says why)."""

    case: LabCase
    actor: Actor


@dataclass(frozen=True)
class CaseEdited:
    """A person saved the case form: ``changed`` names the fields that changed, ``before`` holds
    their values before the change (the case holds the new ones)."""

    case: LabCase
    before: dict
    changed: frozenset[str]
    actor: Actor

    @property
    def previous_due_date(self) -> dt.date | None:
        return self.before.get("due_date")


@dataclass(frozen=True)
class CaseMoved:
    """The case changed status (portal/cases/lifecycle.py `move`, every move): ``previous`` is
    where it was; the case holds the new status and its time stamps."""

    case: LabCase
    previous: object
    actor: Actor
