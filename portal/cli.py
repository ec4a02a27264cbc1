"""Flask CLI commands: flask seed-demo, flask audit verify, flask create-user, flask organisation-manager,
flask scanners ..."""
from __future__ import annotations

import secrets
import sys

import click
from flask import Flask
from flask.cli import AppGroup

from portal import keyring as crypto
from portal.audit.actor import Actor
from portal.audit.models import AuditHead
from portal.audit.record import Walk, head, parse_head, record, verify_chain
from portal.auth.passwords import hash_password
from portal.config import INSTANCE
from portal.extensions import db
from portal.integrations.models import ScannerIntegration
from portal.labs.models import LabSecret
from portal.practices.models import Membership, Organization, OrganizationMembership, OrganizationRole, Practice, Role, User

audit_cli = AppGroup("audit", help="The audit trail.")
scanners_cli = AppGroup("scanners", help="Scanner integrations.")


@scanners_cli.command("rotate-keys")
def scanners_rotate_keys() -> None:
    """Re-encrypt everything the SCANNER_CREDENTIALS_KEYS ring holds (every integration's
    credentials and tokens, every lab's signing secrets) with its first key."""
    from sqlalchemy import select, update

    count = 0
    for integration in db.session.scalars(select(ScannerIntegration)):
        integration.credentials = crypto.rotate(integration.credentials)
        integration.tokens = crypto.rotate(integration.tokens)
        record("scanner.keys_rotated", "scanner_integration", integration.id, after={"encrypted_with": "first key"},
               actor=Actor.system("cli"), practice_id=integration.practice_id)
        count += 1
    secrets_by_lab: dict[int, list[int]] = {}
    for row in db.session.execute(select(LabSecret.id, LabSecret.lab_id, LabSecret.secret)).all():
        # Read with any key of the ring, written back with the first (the column type encrypts).
        db.session.execute(update(LabSecret).where(LabSecret.id == row.id).values(secret=row.secret),
                           execution_options={"synchronize_session": False})
        secrets_by_lab.setdefault(row.lab_id, []).append(row.id)
    for lab_id, ids in secrets_by_lab.items():
        record("lab.secrets_rotated", "lab", lab_id, after={"encrypted_with": "first key", "secret_ids": ids},
               actor=Actor.system("cli"))
    db.session.commit()
    click.echo(f"Re-encrypted the credentials of {count} integration(s) and "
               f"{sum(map(len, secrets_by_lab.values()))} lab signing secret(s) with the first key.")


@scanners_cli.command("demo-patients")
def scanners_demo_patients() -> None:
    """Print the demo scanner patients (First,Last,Chart,Date of birth; ...) for the vendor sandbox."""
    from portal.demo.scanners import demo_patients  # demo code loads only for the demo commands

    click.echo(";".join(demo_patients()))


@scanners_cli.command("demo-connect")
@click.option("--sandbox", "sandbox_url", required=True, help="The vendor sandbox's root URL.")
def scanners_demo_connect(sandbox_url: str) -> None:
    """Create and connect the demo practice's iTero and Medit integrations to the vendor sandbox."""
    from portal.demo.scanners import connect

    for line in connect(sandbox_url):
        click.echo(f"Scanners: {line}")


@scanners_cli.command("demo-connect-pms")
@click.option("--base-url", required=True, help="The Open Dental sandbox's API base URL (.../api/v1).")
def scanners_demo_connect_pms(base_url: str) -> None:
    """Create and connect the demo practice's Open Dental integration to the Open Dental sandbox."""
    from portal.demo.opendental import connect

    for line in connect(base_url):
        click.echo(f"Open Dental: {line}")


@audit_cli.command("verify")
@click.option("--head", "head_text", default=None, metavar="ROWS:HASH",
              help="An exported head (`flask audit head`): the chain must still reach it, unchanged.")
@click.option("--head-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A file holding an exported head.")
def audit_verify(head_text: str | None, head_file: str | None) -> None:
    """Check the whole chain's keyed hashes; exit 1 and say where if it is broken."""
    expected = None
    if head_file:
        with open(head_file, encoding="utf-8") as fh:
            head_text = fh.read()
    if head_text is not None:
        try:
            expected = parse_head(head_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--head") from None
    walk = Walk()
    problems = list(verify_chain(expected_head=expected, walk=walk))
    if problems:
        for p in problems[:50]:
            click.echo(f"BROKEN at row {p.seq}: {p.message}", err=True)
        if len(problems) > 50:
            click.echo(f"... and {len(problems) - 50} more", err=True)
        sys.exit(1)
    head = db.session.get(AuditHead, 1)
    click.echo(f"Audit chain intact: {head.seq if head else 0} rows verified.")
    if walk.legacy_rows:
        click.echo(f"{walk.legacy_rows} of them predate the keyed chain (plain SHA-256, anchored by the "
                   "first keyed row).")
    if expected:
        click.echo(f"It reaches the exported head (row {expected[0]}) unchanged.")


@audit_cli.command("head")
def audit_head() -> None:
    """Print the chain's head as ROWS:HASH, to keep outside the database (for verify --head)."""
    count, digest = head()
    click.echo(f"{count}:{digest}")


@click.command("seed-demo")
@click.option("--password", envvar="DEMO_PASSWORD", default=None,
              help="Password for the demo users (default: generated and kept in instance/demo-password).")
@click.option("--lab-url", envvar="DEMO_LAB_URL", default=None,
              help="Where the demo lab's API listens (make run passes the port it started it on); "
                   "an existing demo's API lab is pointed there.")
def seed_demo(password: str | None, lab_url: str | None) -> None:
    """Load the demo data once; running it again changes nothing (but the demo lab's address)."""
    from portal.demo.seed import DEMO_LAB_URL, already_seeded, point_demo_lab, seed

    if already_seeded():
        if lab_url and point_demo_lab(lab_url):
            db.session.commit()
            click.echo(f"Demo data already loaded; the demo lab's API is now {lab_url}.")
            return
        click.echo("Demo data already loaded; nothing changed.")
        return
    if password is None:
        INSTANCE.mkdir(parents=True, exist_ok=True)
        path = INSTANCE / "demo-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(9))
            path.chmod(0o600)
        password = path.read_text().strip()
    summary = seed(password, lab_url=lab_url or DEMO_LAB_URL)
    db.session.commit()
    click.echo(f"Demo data loaded: {summary['cases']} cases, {summary['patients']} patients.")


@click.command("create-user")
@click.argument("email")
@click.argument("name")
@click.option("--practice-id", type=int, required=True, multiple=True)
@click.option("--role", type=click.Choice(["coordinator", "manager", "admin"]), required=True)
@click.password_option()
def create_user(email: str, name: str, practice_id: tuple[int, ...], role: str, password: str) -> None:
    """Create a user with a role in one or more practices."""

    for pid in practice_id:
        if db.session.get(Practice, pid) is None:
            raise click.BadParameter(f"no practice with id {pid}", param_hint="--practice-id")
    user = User(email=email.lower(), name=name, password_hash=hash_password(password))
    db.session.add(user)
    db.session.flush()
    for pid in practice_id:
        db.session.add(Membership(user_id=user.id, practice_id=pid, role=Role(role)))
    record("user.create", "user", user.id, after={"email": user.email, "role": role}, actor=Actor.system("cli"))
    db.session.commit()
    click.echo(f"Created {user.email}.")


@click.command("organisation-manager")
@click.argument("email")
@click.option("--organization-id", type=int, required=True)
@click.option("--revoke", is_flag=True, help="Take the role away instead.")
def organisation_manager(email: str, organization_id: int, revoke: bool) -> None:
    """Make a user an organisation manager (the DSO view of every practice), or --revoke it."""
    _organisation_role(email, organization_id, OrganizationRole.MANAGER, revoke)


@click.command("organisation-admin")
@click.argument("email")
@click.option("--organization-id", type=int, required=True)
@click.option("--revoke", is_flag=True, help="Take the role away instead.")
def organisation_admin(email: str, organization_id: int, revoke: bool) -> None:
    """Make a user an organisation admin (the labs' API addresses and signing secrets), or --revoke it."""
    _organisation_role(email, organization_id, OrganizationRole.ADMIN, revoke)


def _organisation_role(email: str, organization_id: int, role: OrganizationRole, revoke: bool) -> None:
    from sqlalchemy import select

    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.BadParameter(f"no user with the email {email}", param_hint="EMAIL")
    if db.session.get(Organization, organization_id) is None:
        raise click.BadParameter(f"no organisation with id {organization_id}", param_hint="--organization-id")
    row = db.session.scalar(select(OrganizationMembership).where(
        OrganizationMembership.user_id == user.id, OrganizationMembership.organization_id == organization_id,
        OrganizationMembership.role == role))
    before = {"role": row.role.value, "active": row.active} if row else None
    if row is None:
        row = OrganizationMembership(user_id=user.id, organization_id=organization_id, role=role)
        db.session.add(row)
    row.active = not revoke
    db.session.flush()
    record(f"organization.{role.value}_{'revoke' if revoke else 'grant'}", "organization",
           organization_id, before=before, after={"user": user.email, "role": row.role.value, "active": row.active},
           actor=Actor.system("cli"))
    db.session.commit()
    click.echo(f"{user.email} {'is no longer' if revoke else 'is now'} an organisation {role.value} of organisation "
               f"{organization_id}.")


def init_app(app: Flask) -> None:
    app.cli.add_command(audit_cli)
    app.cli.add_command(scanners_cli)
    app.cli.add_command(seed_demo)
    app.cli.add_command(create_user)
    app.cli.add_command(organisation_manager)
    app.cli.add_command(organisation_admin)
