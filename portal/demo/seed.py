"""Demo data: a DSO with two practices, three labs (API, email, manual), ~40 patients with
appointments and ~60 cases across every status, some late and some at seat risk.

Every case moves through the real lifecycle, so the audit trail and timelines are real too.
"""
from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.auth.passwords import hash_password
from portal.cases import lifecycle
from portal.cases.duedates import add_business_days
from portal.cases.services import CaseData, ItemData, create_case, remake
from portal.cases.status import Status
from portal.extensions import db
from portal.labs.models import Channel, Lab, LabSecret, LabService
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from portal.practices.models import (
    Membership, Organization, OrganizationMembership, OrganizationRole, Practice, PracticeClosure, Role, User,
)
from portal.cases.risk import closed_days

FIRST = ["Ava", "Liam", "Mia", "Noah", "Emma", "Oliver", "Sophia", "Elijah", "Isabella", "Lucas", "Amelia",
         "Mason", "Harper", "Ethan", "Evelyn", "Logan", "Abigail", "James", "Ella", "Aiden", "Grace", "Jack",
         "Chloe", "Henry", "Zoe", "Owen", "Nora", "Samuel", "Lily", "Leo", "Hannah", "Caleb", "Aria", "Ryan",
         "Layla", "Nathan", "Riley", "Isaac", "Stella", "Julian", "Maya", "Adrian"]
LAST = ["Nguyen", "Garcia", "Smith", "Patel", "Kowalski", "O'Brien", "Johansson", "Okafor", "Müller", "Rossi",
        "Chen", "Dubois", "Haddad", "Silva", "Tanaka", "Murphy", "Novak", "Schmidt", "Ali", "Fischer", "Lopez",
        "Kim", "Brown", "Ivanova", "Yilmaz", "Cohen", "Walsh", "Khan", "Moreau", "Santos", "Berg", "Reyes",
        "Fernandes", "Lindqvist", "Mensah", "Park", "Costa", "Hughes", "Sato", "Varga", "Baker", "Ortiz"]

LABS = [
    ("Keystone Digital Lab", Channel.API, "Dana Whitfield", "orders@keystone.lab.test", "+1 555 0100",
     [("crown", "zirconia, lithium disilicate, PFM", 5, "189"), ("bridge", "zirconia, PFM", 7, "520"),
      ("implant_crown", "zirconia, titanium", 8, "420"), ("night_guard", "hard acrylic", 4, "95"),
      ("inlay_onlay", "lithium disilicate, composite", 5, "160")]),
    ("Harbor Ceramics", Channel.EMAIL, "Luis Ortega", "cases@harbor-ceramics.test", "+1 555 0142",
     [("crown", "lithium disilicate, zirconia", 6, "210"), ("veneer", "lithium disilicate", 7, "240"),
      ("bridge", "zirconia", 8, "560")]),
    ("Oakridge Denture Studio", Channel.MANUAL, "Pat Kemper", "", "+1 555 0177",
     [("full_denture", "acrylic", 10, "650"), ("partial_denture", "CoCr, acrylic", 9, "580"),
      ("night_guard", "hard acrylic, soft EVA", 5, "90"), ("retainer", "thermoplastic", 4, "70")]),
]

# (restoration, teeth FDI, material, shade, margin)
RX = [
    ("crown", ["11"], "zirconia", "A2", "chamfer"),
    ("crown", ["36"], "zirconia", "A3", "chamfer"),
    ("crown", ["14"], "lithium disilicate", "A2", "shoulder"),
    ("bridge", ["24", "25", "26"], "zirconia", "A3", "chamfer"),
    ("implant_crown", ["46"], "zirconia", "B2", "shoulder"),
    ("night_guard", [], "hard acrylic", "", ""),
    ("inlay_onlay", ["27"], "lithium disilicate", "A3", "bevel"),
    ("veneer", ["12", "11", "21", "22"], "lithium disilicate", "BL2", "feather_edge"),
    ("full_denture", [], "acrylic", "A3", ""),
    ("partial_denture", ["35", "36", "37"], "CoCr", "A3", ""),
]

# How many cases end in each status, per practice [main, second].
PLAN = {
    Status.DRAFT: (5, 2), Status.SENT: (7, 2), Status.ACKNOWLEDGED: (5, 2), Status.IN_PRODUCTION: (8, 2),
    Status.DISPATCHED: (5, 1), Status.RECEIVED: (4, 1), Status.FITTED: (4, 1), Status.ON_HOLD: (2, 1),
    Status.RESCAN: (2, 1), Status.CANCELLED: (2, 1),
}
PATH = {
    Status.SENT: [Status.SENT],
    Status.ACKNOWLEDGED: [Status.SENT, Status.ACKNOWLEDGED],
    Status.IN_PRODUCTION: [Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION],
    Status.DISPATCHED: [Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED],
    Status.RECEIVED: [Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED, Status.RECEIVED],
    Status.FITTED: [Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED, Status.RECEIVED,
                    Status.FITTED],
    Status.ON_HOLD: [Status.SENT, Status.ACKNOWLEDGED, Status.ON_HOLD],
    Status.RESCAN: [Status.SENT, Status.RESCAN],
    Status.CANCELLED: [Status.CANCELLED],
    Status.DRAFT: [],
}
REASONS = {
    Status.ON_HOLD: ["Waiting for shade photo", "Bite registration unclear", "Awaiting payment approval"],
    Status.RESCAN: ["Margin not visible on 36 distal", "Scan body moved during capture"],
    Status.CANCELLED: ["Patient chose extraction", "Treatment postponed by patient"],
}


DEMO_LAB_URL = "http://127.0.0.1:5055"  # sandbox/lab.py's default; make run passes the port it used


def point_demo_lab(url: str) -> bool:
    """Point the demo's API lab at `url` (the port `make run` started the demo lab on this time),
    audited; False when it is there already. Only the demo organisation's API labs that point at
    this machine are moved: a lab an admin pointed elsewhere is left alone."""
    from urllib.parse import urlsplit

    org = db.session.scalar(select(Organization).where(Organization.name == DEMO_ORGANIZATION))
    if org is None:
        return False
    moved = False
    for lab in db.session.scalars(select(Lab).where(Lab.organization_id == org.id, Lab.channel == Channel.API)):
        if lab.api_url == url or urlsplit(lab.api_url or "").hostname not in ("127.0.0.1", "localhost"):
            continue
        record("lab.update", "lab", lab.id, before={"api_url": lab.api_url}, after={"api_url": url},
               actor=Actor.system("demo set-up"))
        lab.api_url, moved = url, True
    db.session.flush()
    return moved


def already_seeded() -> bool:
    return db.session.scalar(select(User).where(User.email == "coordinator@demo.test")) is not None


DEMO_ORGANIZATION = "Bright Smiles Dental Group"


def seed(password: str, today: dt.date | None = None, lab_url: str = DEMO_LAB_URL) -> dict:
    rng = random.Random(2026)
    today = today or dt.date.today()
    system = Actor.system("seed-demo")
    org = Organization(name=DEMO_ORGANIZATION)
    main = Practice(organization=org, name="Bright Smiles Downtown", phone="+1 555 0110",
                    address="120 Main Street, Springfield", tooth_numbering="universal")
    second = Practice(organization=org, name="Bright Smiles Riverside", phone="+1 555 0120",
                      address="8 River Road, Springfield", tooth_numbering="fdi")
    db.session.add_all([org, main, second])
    db.session.flush()
    # A closed day two weeks out, so due dates visibly skip it.
    closure_day = today + dt.timedelta(days=14)
    for practice in (main, second):
        db.session.add(PracticeClosure(practice_id=practice.id, day=closure_day, reason="Staff training day"))

    users = {}
    for email, name, role in [("coordinator@demo.test", "Casey Coordinator", Role.COORDINATOR),
                              ("manager@demo.test", "Morgan Manager", Role.MANAGER),
                              ("admin@demo.test", "Alex Admin", Role.ADMIN)]:
        user = User(email=email, name=name, password_hash=hash_password(password))
        db.session.add(user)
        db.session.flush()
        for practice in (main, second):
            db.session.add(Membership(user_id=user.id, practice_id=practice.id, role=role))
        users[role] = user
        record("user.create", "user", user.id, after={"email": email, "role": role.value}, actor=system)
    # The manager also manages the group: Reports -> "All practices ... side by side".
    db.session.add(OrganizationMembership(user_id=users[Role.MANAGER].id, organization_id=org.id,
                                          role=OrganizationRole.MANAGER))
    record("organization.manager_grant", "organization", org.id,
           after={"user": users[Role.MANAGER].email, "role": "manager", "active": True}, actor=system)
    # The admin also administers the group: the labs' API addresses and signing secrets.
    db.session.add(OrganizationMembership(user_id=users[Role.ADMIN].id, organization_id=org.id,
                                          role=OrganizationRole.ADMIN))
    record("organization.admin_grant", "organization", org.id,
           after={"user": users[Role.ADMIN].email, "role": "admin", "active": True}, actor=system)

    labs = []
    for name, channel, contact, email, phone, services in LABS:
        lab = Lab(organization_id=org.id, name=name, channel=channel, contact_name=contact, email=email,
                  phone=phone, api_url=lab_url if channel is Channel.API else "")
        lab.services = [LabService(restoration=r, materials=m, turnaround_days=d, fee=Decimal(f))
                        for r, m, d, f in services]
        if channel is Channel.API:
            lab.secrets = [LabSecret(secret="whsec_" + "ZGVtby1sYWItc2VjcmV0LWZvci1rZXlzdG9uZS0wMDE=")]
        db.session.add(lab)
        labs.append(lab)
    db.session.flush()
    for lab in labs:
        record("lab.create", "lab", lab.id, after={"name": lab.name, "channel": lab.channel.value}, actor=system)

    coordinator = Actor.user(users[Role.COORDINATOR])
    counts = {}
    history = 0  # finished cases of the past six months, for the reports
    patient_no = 0
    for index, practice in enumerate((main, second)):
        providers = [Provider(practice_id=practice.id, abbr=abbr, name=name, license_number=lic)
                     for abbr, name, lic in ([("DRS", "Dr. Rosa Stein", "DDS-44120"), ("DRK", "Dr. Ken Ito", "DDS-51877"),
                                              ("DRP", "Dr. Priya Nair", "DDS-60231")] if index == 0
                                             else [("DRL", "Dr. Lena Holm", "DDS-70015"), ("DRM", "Dr. Marc Bauer", "DDS-70422")])]
        db.session.add_all(providers)
        patients = []
        for _ in range(28 if index == 0 else 12):
            first, last = FIRST[patient_no % len(FIRST)], LAST[(patient_no * 7) % len(LAST)]
            patient_no += 1
            patients.append(Patient(
                practice_id=practice.id, chart_number=f"{'D' if index == 0 else 'R'}{1000 + patient_no}",
                first_name=first, last_name=last, sex=rng.choice("FM"),
                date_of_birth=dt.date(1950 + rng.randrange(55), rng.randrange(1, 13), rng.randrange(1, 28)),
                phone=f"+1 555 {2000 + patient_no:04d}"))
        db.session.add_all(patients)
        db.session.flush()

        n = 0
        for status, per_practice in PLAN.items():
            for _ in range(per_practice[index]):
                patient = patients[n % len(patients)]
                provider = providers[n % len(providers)]
                n += 1
                restoration, fdi, material, shade, margin = RX[n % len(RX)]
                lab = next(lab for lab in labs[n % 3:] + labs if lab.service_for(restoration))
                # Seat appointments spread over the next three weeks; a few too close for comfort.
                seat_day = add_business_days(today, rng.randrange(2, 17))
                seat = Appointment(practice_id=practice.id, patient_id=patient.id, provider_id=provider.id,
                                   starts_at=dt.datetime.combine(seat_day, dt.time(9 + n % 8, 0)),
                                   kind=AppointmentKind.SEAT)  # typed in here; Open Dental's copy is linked by its time
                db.session.add(seat)
                db.session.flush()
                late = status in (Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION) and n % 4 == 0
                due = today - dt.timedelta(days=rng.randrange(1, 4)) if late else None
                case = create_case(practice, CaseData(
                    patient_id=patient.id, provider_id=provider.id, lab_id=lab.id,
                    seat_appointment_id=seat.id if status is not Status.CANCELLED else None,
                    due_date=due, fee=lab.service_for(restoration).fee,
                    items=[ItemData(teeth=fdi, restoration=restoration, material=material, shade=shade,
                                    margin=margin)],
                    # A draft waits for its scan, which sets its origin when it comes (a scanner's
                    # origin with no scan of it would contradict the scans the demo brings).
                    origin=_origin(rng.choice(["manual", "manual", "itero", "medit", "3shape"]), status),
                ), coordinator)
                if case.origin != "manual":
                    case.origin_order_id = f"{case.origin.upper()}-{rng.randrange(10**6, 10**7)}"
                lab_actor = Actor.lab(lab, source="seed-demo")
                # The last step happens now; the ones before it a business day or two apart before,
                # so the case's own dates (and the reports' turnaround) look like real work.
                whens, day = [], today
                for _ in PATH[status][:-1]:
                    day = add_business_days(day, -rng.choice([1, 1, 2]))
                    whens.insert(0, dt.datetime.combine(day, dt.time(9 + rng.randrange(8), rng.randrange(60))))
                whens += [None] if PATH[status] else []
                for step, when in zip(PATH[status], whens, strict=True):
                    actor = lab_actor if step in (Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED,
                                                  Status.ON_HOLD, Status.RESCAN) else coordinator
                    detail = {}
                    if step is Status.DISPATCHED:
                        detail = {"carrier": "UPS", "tracking_number": f"1Z{rng.randrange(10**9, 10**10)}",
                                  "eta": (today + dt.timedelta(days=rng.randrange(1, 3))).isoformat()}
                    lifecycle.move(case, step, actor=actor, reason=rng.choice(REASONS.get(step, [""])),
                                   detail=detail, now=when)
                counts[status] = counts.get(status, 0) + 1
        history += _history(practice, labs, patients, providers, coordinator, rng, today,
                            per_month=HISTORY_PER_MONTH[index])
    # The scanner sandbox's "Priya Raman, 09 Feb 1990" (portal/demo/scanners.py) is this patient only
    # under another birth date: her scan waits in the inbox, and matching it to her asks to confirm.
    patient_no += 1
    db.session.add(Patient(practice_id=main.id, chart_number="D1099", first_name="Priya", last_name="Raman",
                           sex="F", date_of_birth=dt.date(1990, 9, 2), phone="+1 555 2099"))
    db.session.flush()
    return {"cases": sum(counts.values()) + history, "patients": patient_no, "by_status": counts,
            "history": history}


def _origin(drawn: str, status: Status) -> str:
    return "manual" if status is Status.DRAFT else drawn


# Six months of finished work, so the managers' reports have history to read: cases sent, made,
# dispatched, checked in and fitted on dates spread over the past months, a few late, a few held,
# some remade. Each lab keeps its own habits: Keystone is quick and steady, Harbor Ceramics often
# a day or three behind, Oakridge about on time with the odd slow denture.
HISTORY_PER_MONTH = (22, 8)
LAB_HABITS = {  # business days a lab adds to (or takes off) its turnaround before dispatching
    "Keystone Digital Lab": [-2, -2, -1, -1, -1, -1, -1, 0, 1],
    "Harbor Ceramics": [-2, -1, -1, -1, 0, 0, 1, 2, 3],
    "Oakridge Denture Studio": [-2, -2, -1, -1, -1, 0, 1, 2],
}
REMAKES = [  # (reason, payer, what was wrong), drawn for about one case in ten
    ("fit", "lab", "Open margin on the distal"), ("fit", "lab", "Too tight, would not seat"),
    ("fit", "practice", "Impression distorted, rescanned"), ("shade", "practice", "Patient wanted it lighter"),
    ("shade", "lab", "Shade does not match the tab sent"), ("design", "lab", "Contacts too light"),
    ("damaged", "lab", "Chipped in transit"), ("other", "practice", "Patient changed material"),
]


def _history(practice: Practice, labs: list[Lab], patients: list[Patient], providers: list[Provider],
             coordinator: Actor, rng: random.Random, today: dt.date, per_month: int) -> int:
    """Finished cases sent over the past six months (the latest three weeks ago); the number made."""

    closed = closed_days(practice.id)
    first = today - dt.timedelta(days=182)
    last = today - dt.timedelta(days=21)
    span = (last - first).days
    total = per_month * span // 30
    made = 0

    def at(day: dt.date, hour: int) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour, rng.randrange(0, 60, 5)))

    for n in range(total):
        sent_day = add_business_days(first + dt.timedelta(days=span * n // total), 0, closed)
        patient = patients[rng.randrange(len(patients))]
        provider = providers[n % len(providers)]
        restoration, fdi, material, shade, margin = rng.choice(RX[:5] * 3 + RX[5:])  # crowns and bridges lead
        lab = rng.choice([lab for lab in labs if lab.service_for(restoration)])
        service = lab.service_for(restoration)
        due = add_business_days(sent_day, service.turnaround_days, closed)
        # Habits count from the due date: -1 dispatches the day before, and the courier's day brings
        # the work in on the due date itself.
        to_dispatch = max(service.turnaround_days + rng.choice(LAB_HABITS[lab.name]), 1)
        dispatched_day = add_business_days(sent_day, to_dispatch, closed)
        received_day = add_business_days(dispatched_day, 1 if rng.random() < .85 else 2, closed)
        # Seats are booked a few days after the due date; now and then too close to it.
        seat_day = add_business_days(due, rng.choice([0, 1, 1, 2, 2, 3, 4, 5]), closed)
        seat = Appointment(practice_id=practice.id, patient_id=patient.id, provider_id=provider.id,
                           starts_at=at(seat_day, 9 + n % 8), kind=AppointmentKind.SEAT)
        db.session.add(seat)
        db.session.flush()
        case = create_case(practice, CaseData(
            patient_id=patient.id, provider_id=provider.id, lab_id=lab.id, seat_appointment_id=seat.id,
            due_date=due, fee=service.fee,
            items=[ItemData(teeth=fdi, restoration=restoration, material=material, shade=shade, margin=margin)],
        ), coordinator)
        case.created_at = at(sent_day, 8)
        lab_actor = Actor.lab(lab, source="seed-demo")
        # Only the steps the reports read (each move writes an audit row, and the seed runs at start-up).
        steps = [(Status.SENT, coordinator, at(sent_day, 10 + n % 6), {})]
        if rng.random() < .05 and to_dispatch > 2:  # held for a day while the practice answers a question
            steps += [(Status.ON_HOLD, lab_actor, at(add_business_days(sent_day, 1, closed), 9), {}),
                      (Status.SENT, lab_actor, at(add_business_days(sent_day, 1, closed), 15), {})]
        steps += [
            (Status.DISPATCHED, lab_actor, at(dispatched_day, 15),
             {"carrier": "UPS", "tracking_number": f"1Z{rng.randrange(10**9, 10**10)}",
              "eta": add_business_days(dispatched_day, 1, closed).isoformat()}),
            (Status.RECEIVED, coordinator, at(received_day, 11), {}),
            (Status.FITTED, coordinator, max(at(seat_day, 12), at(received_day, 12)), {}),
        ]
        for status, actor, when, detail in steps:
            lifecycle.move(case, status, actor=actor, detail=detail, now=when,
                           reason=rng.choice(REASONS.get(status, [""])))
        made += 1
        fitted_day = case.fitted_at.date()
        if rng.random() < 1 / 10 and fitted_day < today - dt.timedelta(days=14):
            reason, payer, notes = rng.choice(REMAKES)
            redo = remake(case, coordinator, reason, payer, notes)
            resent = add_business_days(fitted_day, 1, closed)
            redo.created_at = at(fitted_day, 16)
            redo.due_date = add_business_days(resent, service.turnaround_days, closed)
            back = add_business_days(resent, max(service.turnaround_days + rng.choice(LAB_HABITS[lab.name]), 1),
                                     closed)
            for status, actor, when in [(Status.SENT, coordinator, at(resent, 10)),
                                        (Status.DISPATCHED, lab_actor, at(back, 15)),
                                        (Status.RECEIVED, coordinator, at(add_business_days(back, 1, closed), 11)),
                                        (Status.FITTED, coordinator, at(add_business_days(back, 2, closed), 12))]:
                if when.date() >= today:
                    break
                lifecycle.move(redo, status, actor=actor, now=when)
            made += 1
    return made
