"""The lab directory: labs belong to the organisation; admins change them, everything audited.
Signing secrets never appear in audit rows (only their ids)."""
from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from decimal import Decimal

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.clock import utcnow
from portal.errors import UserError
from portal.extensions import db
from portal.labs.models import Channel, Lab, LabSecret, LabService

MAX_ACTIVE_SECRETS = 2


class LabError(UserError):
    """A change the directory refuses; the message is for a person (beside `field` when it has one)."""


SHARED_ONLY = ("Only an administrator of the organisation can change a lab's API address or signing secrets: "
               "every practice of the organisation sends work to this lab.")


@dataclass
class ServiceData:
    restoration: str
    materials: str
    turnaround_days: int
    fee: Decimal | None = None


@dataclass
class LabData:
    name: str
    channel: Channel
    contact_name: str = ""
    email: str = ""
    cc_emails: str = ""
    phone: str = ""
    address: str = ""
    api_url: str = ""
    active: bool = True
    notes: str = ""
    services: list[ServiceData] = field(default_factory=list)


FIELDS = ("name", "channel", "contact_name", "email", "cc_emails", "phone", "address", "api_url", "active", "notes")


def snapshot(lab: Lab) -> dict:
    data = {name: getattr(lab, name) for name in FIELDS}
    data["channel"] = lab.channel.value if lab.channel else None
    data["services"] = sorted(
        ({"restoration": s.restoration, "materials": s.materials, "turnaround_days": s.turnaround_days,
          "fee": str(s.fee) if s.fee is not None else None} for s in lab.services),
        key=lambda s: s["restoration"])
    return data


def _normalise_materials(text: str) -> str:
    return ", ".join(dict.fromkeys(m.strip() for m in (text or "").split(",") if m.strip()))


def _apply(lab: Lab, data: LabData) -> None:
    for name in FIELDS:
        setattr(lab, name, getattr(data, name))
    existing = {s.restoration: s for s in lab.services}
    wanted = {s.restoration for s in data.services}
    for row in data.services:
        service = existing.get(row.restoration)
        if service is None:
            service = LabService(restoration=row.restoration)
            lab.services.append(service)
        service.materials = _normalise_materials(row.materials)
        service.turnaround_days = row.turnaround_days
        service.fee = row.fee
    for restoration, service in existing.items():
        if restoration not in wanted:
            lab.services.remove(service)


def _check(data: LabData) -> None:
    if data.channel is Channel.EMAIL and not data.email:
        raise LabError("An email lab needs an email address.")
    if data.channel is Channel.API and not data.api_url:
        raise LabError("An API lab needs its API URL.")
    for row in data.services:
        if not 1 <= row.turnaround_days <= 60:
            raise LabError("Turnaround is 1 to 60 business days.")


def create_lab(organization_id: int, data: LabData, actor: Actor, practice_id: int | None, *,
               org_admin: bool) -> Lab:
    """`org_admin`: the actor administers the organisation, so may set what its practices share."""
    _check(data)
    if data.api_url and not org_admin:
        raise LabError(SHARED_ONLY, field="api_url")
    lab = Lab(organization_id=organization_id, name=data.name, channel=data.channel)
    db.session.add(lab)
    _apply(lab, data)
    db.session.flush()
    record("lab.create", "lab", lab.id, after=snapshot(lab), actor=actor, practice_id=practice_id)
    return lab


def update_lab(lab: Lab, data: LabData, actor: Actor, practice_id: int | None, *, org_admin: bool) -> dict:
    """Returns the changed fields; writes one audit row when anything changed. The API address
    changes only for an administrator of the organisation (`org_admin`)."""
    _check(data)
    if data.api_url != (lab.api_url or "") and not org_admin:
        raise LabError(SHARED_ONLY, field="api_url")
    before = snapshot(lab)
    _apply(lab, data)
    db.session.flush()
    after = snapshot(lab)
    changed = [k for k in after if before[k] != after[k]]
    if changed:
        record("lab.update", "lab", lab.id, before={k: before[k] for k in changed},
               after={k: after[k] for k in changed}, actor=actor, practice_id=practice_id)
    return {k: (before[k], after[k]) for k in changed}


def new_secret_value() -> str:
    """Standard Webhooks style: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def active_secrets(lab: Lab) -> list[LabSecret]:
    return [s for s in lab.secrets if s.revoked_at is None]


def generate_secret(lab: Lab, actor: Actor, practice_id: int | None, *, org_admin: bool) -> tuple[LabSecret, str]:
    """A new signing secret; the old one stays valid until revoked (docs/reliability.md W3). Returns the row and the
    value, which is shown once to the admin. Only an administrator of the organisation (`org_admin`)."""
    if not org_admin:
        raise LabError(SHARED_ONLY)
    if len(active_secrets(lab)) >= MAX_ACTIVE_SECRETS:
        raise LabError("Two secrets are already active. Revoke the old one once the lab uses the new one, "
                       "then generate another.")
    value = new_secret_value()
    row = LabSecret(secret=value, created_at=utcnow())
    lab.secrets.append(row)
    db.session.flush()
    record("lab.secret_create", "lab", lab.id, after={"secret_id": row.id, "active": len(active_secrets(lab))},
           actor=actor, practice_id=practice_id)
    return row, value


def revoke_secret(lab: Lab, secret_id: int, actor: Actor, practice_id: int | None, *, org_admin: bool) -> LabSecret:
    if not org_admin:
        raise LabError(SHARED_ONLY)
    row = next((s for s in lab.secrets if s.id == secret_id), None)
    if row is None:
        raise LabError("That secret is not one of this lab's.")
    if row.revoked_at is not None:
        raise LabError("That secret was already revoked.")
    row.revoked_at = utcnow()
    db.session.flush()
    record("lab.secret_revoke", "lab", lab.id, after={"secret_id": row.id, "active": len(active_secrets(lab))},
           actor=actor, practice_id=practice_id)
    return row
