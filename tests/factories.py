"""Small builders for test data, going through the same services the app uses."""
from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from decimal import Decimal

from portal.audit.actor import Actor
from portal.auth.passwords import hash_password
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.services import CaseData, ItemData, create_case
from portal.extensions import db
from portal.labs.models import Channel, Lab, LabSecret, LabService
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from portal.practices.models import Membership, Organization, Practice, Role, User

PASSWORD = "correct horse battery staple"
_seq = itertools.count(1)
_HASH = None


def _password_hash() -> str:
    global _HASH
    if _HASH is None:
        _HASH = hash_password(PASSWORD)
    return _HASH


@dataclass
class World:
    org: Organization
    practice: Practice
    other_practice: Practice
    labs: dict[str, Lab]
    provider: Provider
    users: dict[str, User] = field(default_factory=dict)

    @property
    def lab(self) -> Lab:
        return self.labs["email"]


def practice(org: Organization, name: str = "Practice", numbering: str = "fdi") -> Practice:
    p = Practice(organization=org, name=name, tooth_numbering=numbering, phone="+1 555 0000")
    db.session.add(p)
    db.session.flush()
    return p


def user(email: str, memberships: list[tuple[Practice, Role]]) -> User:
    u = User(email=email, name=email.split("@")[0].title(), password_hash=_password_hash())
    db.session.add(u)
    db.session.flush()
    for p, role in memberships:
        db.session.add(Membership(user_id=u.id, practice_id=p.id, role=role))
    db.session.flush()
    db.session.refresh(u)
    return u


def lab(org: Organization, channel: Channel = Channel.EMAIL, name: str | None = None, **kw) -> Lab:
    n = next(_seq)
    lab = Lab(organization_id=org.id, name=name or f"Lab {n}", channel=channel,
              email=kw.pop("email", f"lab{n}@lab.test"), **kw)
    lab.services = [
        LabService(restoration="crown", materials="zirconia, lithium disilicate", turnaround_days=5,
                   fee=Decimal("200")),
        LabService(restoration="bridge", materials="zirconia", turnaround_days=7, fee=Decimal("500")),
        LabService(restoration="night_guard", materials="hard acrylic", turnaround_days=3, fee=Decimal("90")),
    ]
    if channel is Channel.API:
        lab.api_url = kw.get("api_url", "http://127.0.0.1:9")
        lab.secrets = [LabSecret(secret="whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=")]
    db.session.add(lab)
    db.session.flush()
    return lab


def patient(practice: Practice, first: str = "Ada", last: str | None = None, chart: str | None = None,
            dob: dt.date | None = dt.date(1980, 5, 17)) -> Patient:
    n = next(_seq)
    p = Patient(practice_id=practice.id, chart_number=chart or f"C{n:05d}", first_name=first,
                last_name=last or f"Lovelace{n}", date_of_birth=dob)
    db.session.add(p)
    db.session.flush()
    return p


def provider(practice: Practice, name: str = "Dr. Test") -> Provider:
    n = next(_seq)
    p = Provider(practice_id=practice.id, abbr=f"P{n}", name=name, license_number=f"LIC{n}")
    db.session.add(p)
    db.session.flush()
    return p


def appointment(patient: Patient, day: dt.date, kind=AppointmentKind.SEAT) -> Appointment:
    a = Appointment(practice_id=patient.practice_id, patient_id=patient.id,
                    starts_at=dt.datetime.combine(day, dt.time(10, 0)), kind=kind)
    db.session.add(a)
    db.session.flush()
    return a


def world() -> World:
    org = Organization(name="Test DSO")
    db.session.add(org)
    db.session.flush()
    main = practice(org, "Main Street Dental")
    other = practice(org, "Other Practice")
    labs = {c.value: lab(org, c, name=f"{c.value.title()} Lab") for c in Channel}
    w = World(org=org, practice=main, other_practice=other, labs=labs, provider=provider(main))
    for role in Role:
        w.users[role.value] = user(f"{role.value}@test.test", [(main, role)])
    w.users["outsider"] = user("outsider@test.test", [(other, Role.ADMIN)])
    # The world's admin also administers the organisation (a lab's API address and secrets);
    # tests of a practice-only admin make one.
    from portal.practices.models import OrganizationMembership, OrganizationRole

    db.session.add(OrganizationMembership(user_id=w.users["admin"].id, organization_id=org.id,
                                          role=OrganizationRole.ADMIN))
    db.session.commit()
    return w


def case(w: World, status: Status = Status.DRAFT, *, practice: Practice | None = None, lab: Lab | None = None,
         patient_obj: Patient | None = None, seat: dt.date | None = None, due: dt.date | None = None,
         restoration: str = "crown", teeth: list[str] | None = None, commit: bool = True):
    practice = practice or w.practice
    patient_obj = patient_obj or patient(practice)
    prov = w.provider if practice is w.practice else provider(practice)
    lab = lab or w.lab
    appt = appointment(patient_obj, seat) if seat else None
    actor = Actor.user(w.users["coordinator"])
    c = create_case(practice, CaseData(
        patient_id=patient_obj.id, provider_id=prov.id, lab_id=lab.id,
        seat_appointment_id=appt.id if appt else None, due_date=due,
        items=[ItemData(teeth=teeth if teeth is not None else ["11"], restoration=restoration,
                        material="zirconia", shade="A2", margin="chamfer")],
    ), actor)
    path = {
        Status.DRAFT: [], Status.SENT: [Status.SENT],
        Status.ACKNOWLEDGED: [Status.SENT, Status.ACKNOWLEDGED],
        Status.IN_PRODUCTION: [Status.SENT, Status.IN_PRODUCTION],
        Status.DISPATCHED: [Status.SENT, Status.DISPATCHED],
        Status.RECEIVED: [Status.SENT, Status.DISPATCHED, Status.RECEIVED],
        Status.FITTED: [Status.SENT, Status.DISPATCHED, Status.RECEIVED, Status.FITTED],
        Status.ON_HOLD: [Status.SENT, Status.ON_HOLD], Status.RESCAN: [Status.SENT, Status.RESCAN],
        Status.CANCELLED: [Status.CANCELLED],
    }[status]
    for step in path:
        lifecycle.move(c, step, actor=actor, reason="because")
    if commit:
        db.session.commit()
    return c


def integration(practice: Practice, vendor=None, labs: list[Lab] | None = None, name: str = "Front desk",
                **config):
    """A scanner integration of `practice` (connected, no credentials), allowed to send to `labs`."""
    from portal.clock import utcnow
    from portal.integrations.models import ScannerIntegration
    from portal.integrations.vendor import Vendor

    i = ScannerIntegration(practice_id=practice.id, vendor=vendor or Vendor.ITERO, name=name,
                           connected_at=utcnow())
    i.labs = list(labs or [])
    if config:
        i.set_config(**config)
    db.session.add(i)
    db.session.flush()
    return i
