"""A practice's users: who belongs, adding people, roles, deactivation, set-password links.

- `members(practice_id)`: every membership of the practice with its user, active ones first.
- `add_member(practice, name, email, role)`: a new account with a set-password link by email, or
  (an existing account, e.g. a DSO colleague from another practice) a membership for this practice.
- `change_role`, `deactivate`, `reactivate`: nothing may leave the practice without an active admin
  (`LastAdmin`); `by` is the admin acting, so the message can say "you".
- `send_password_link(practice, membership)` and `resolve_link(token)` / `set_password(link, pw)`:
  the one-time link. Tokens are `secrets.token_urlsafe(32)`; only their SHA-256 is stored; the
  outbox row holds it only encrypted (`secret`, as for lab links) until the mail is delivered.

Every change writes an audit row with before/after. Services flush; the caller commits.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from flask import current_app, render_template
from sqlalchemy import func, select
from sqlalchemy.orm import contains_eager, lazyload

from portal import tokens
from portal.admin.users.models import PasswordLink
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.auth import sessions
from portal.auth.passwords import hash_password
from portal.clock import utcnow
from portal.errors import UserError
from portal.extensions import db
from portal.mail.services import queue_mail
from portal.practices.models import Membership, Practice, Role, User

DEFAULT_TTL_HOURS = 72


class LastAdmin(UserError):
    """The change would leave the practice without an active admin."""


@dataclass(frozen=True)
class Added:
    membership: Membership
    new_account: bool


# ---- reading ------------------------------------------------------------------------------------

def _with_user():
    return contains_eager(Membership.user).options(lazyload(User.memberships))


def members(practice_id: int) -> list[Membership]:
    return list(db.session.scalars(
        select(Membership).join(Membership.user).options(_with_user())
        .where(Membership.practice_id == practice_id)
        .order_by(Membership.active.desc(), func.lower(User.name), User.id)
    ).unique())


def membership(practice_id: int, user_id: int) -> Membership | None:
    """The user's membership of this practice, active or not; None for anyone else's user."""
    return db.session.scalar(
        select(Membership).join(Membership.user).options(_with_user())
        .where(Membership.practice_id == practice_id, Membership.user_id == user_id))


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == normalize_email(email)))


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def email_problem(practice_id: int, email: str) -> str:
    """Why this email cannot be added to the practice ("" when it can)."""
    user = find_user(email)
    existing = user and membership(practice_id, user.id)
    if not existing:
        return ""
    if existing.active:
        return f"{user.name} is already in this practice as {existing.role.value}."
    return f"{user.name} is in the list as deactivated: reactivate them there instead."


# ---- changes ------------------------------------------------------------------------------------

def add_member(practice: Practice, name: str, email: str, role: Role) -> Added:
    """Raises UserError (field "email") when the person is already listed here."""
    email = normalize_email(email)
    if problem := email_problem(practice.id, email):
        raise UserError(problem, field="email")
    user = find_user(email)
    if user is not None:
        member = Membership(user_id=user.id, practice_id=practice.id, role=role)
        db.session.add(member)
        db.session.flush()
        record("user.membership_add", "user", user.id, before={"member": False},
               after={"member": True, "role": role.value, "email": user.email}, practice_id=practice.id)
        return Added(member, new_account=False)

    # The account gets a random password nobody knows, until the person sets theirs from the link.
    user = User(email=email, name=name.strip(), password_hash=hash_password(secrets.token_urlsafe(32)))
    db.session.add(user)
    db.session.flush()
    member = Membership(user_id=user.id, practice_id=practice.id, role=role)
    db.session.add(member)
    db.session.flush()
    record("user.create", "user", user.id, before={},
           after={"email": user.email, "name": user.name, "role": role.value}, practice_id=practice.id)
    send_password_link(practice, member, welcome=True)
    return Added(member, new_account=True)


def change_role(practice: Practice, member: Membership, role: Role, by: User) -> bool:
    """True when the role changed."""
    if member.role is role:
        return False
    if member.role is Role.ADMIN and member.active:
        _keep_an_admin(practice, member, by, "demote")
    before = member.role
    member.role = role
    db.session.flush()
    record("user.role_change", "user", member.user_id, before={"role": before.value},
           after={"role": role.value}, practice_id=practice.id)
    return True


def deactivate(practice: Practice, member: Membership, by: User) -> bool:
    """The user leaves this practice (their account and other practices stay) and the unused
    set-password links this practice sent them stop working. True when something changed."""
    if not member.active:
        return False
    if member.role is Role.ADMIN:
        _keep_an_admin(practice, member, by, "deactivate")
    member.active = False
    revoked = revoke_links(member.user_id, practice_id=practice.id)
    # Every session of theirs ends now (they sign in again to any practice they still belong to).
    ended = sessions.end_all(member.user_id, "deactivated")
    record("user.deactivate", "user", member.user_id, before={"active": True},
           after={"active": False, "revoked_link_ids": revoked, "ended_sessions": ended},
           practice_id=practice.id)
    return True


def reactivate(practice: Practice, member: Membership) -> bool:
    if member.active:
        return False
    member.active = True
    db.session.flush()
    record("user.reactivate", "user", member.user_id, before={"active": False}, after={"active": True},
           practice_id=practice.id)
    return True


def _keep_an_admin(practice: Practice, leaving: Membership, by: User, verb: str) -> None:
    """Refuse when `leaving` is the practice's last active admin. Locks the practice row first
    (PostgreSQL), so two admins demoting each other at once cannot both pass the check."""
    db.session.execute(select(Practice.id).where(Practice.id == practice.id).with_for_update())
    others = db.session.scalar(
        select(func.count()).select_from(Membership).join(Membership.user)
        .where(Membership.practice_id == practice.id, Membership.role == Role.ADMIN,
               Membership.active, User.active, Membership.id != leaving.id))
    if others:
        return
    if by.id == leaving.user_id:
        message = (f"You are the last admin of {practice.name}, so you cannot {verb} yourself. "
                   "Make someone else an admin first.")
    else:
        message = (f"{leaving.user.name} is the last admin of {practice.name}. "
                   "Make someone else an admin first.")
    raise LastAdmin(message, field="role")


# ---- set-password links -------------------------------------------------------------------------

def link_url(token: str) -> str:
    return tokens.public_url(f"/set-password/{token}")


def revoke_links(user_id: int, now: dt.datetime | None = None, practice_id: int | None = None) -> list[int]:
    """Revoke the user's live links (only those `practice_id` sent, if given); returns their ids."""
    query = select(PasswordLink).where(PasswordLink.user_id == user_id, PasswordLink.used_at.is_(None),
                                       PasswordLink.revoked_at.is_(None))
    if practice_id is not None:
        query = query.where(PasswordLink.practice_id == practice_id)
    links = db.session.scalars(query.order_by(PasswordLink.id)).all()
    for link in links:
        link.revoked_at = now or utcnow()
    db.session.flush()
    return [link.id for link in links]


def send_password_link(practice: Practice, member: Membership, *, welcome: bool = False) -> PasswordLink:
    """A new link for the member (their older links stop working), emailed through the outbox."""
    if not member.active:
        raise UserError(f"{member.user.name} is deactivated here; reactivate them first.")
    now = utcnow()
    revoked = revoke_links(member.user_id, now)
    token, token_hash = tokens.new_token()
    hours = int(current_app.config.get("PASSWORD_LINK_TTL_HOURS", DEFAULT_TTL_HOURS))
    link = PasswordLink(token_hash=token_hash, user_id=member.user_id, practice_id=practice.id,
                        created_at=now, expires_at=now + dt.timedelta(hours=hours))
    db.session.add(link)
    db.session.flush()
    user = member.user
    context = {"user": user, "practice": practice, "role": member.role, "url": link_url(token),
               "expires_at": link.expires_at, "hours": hours, "welcome": welcome}
    subject = (f"Your Lab Manager account at {practice.name}" if welcome
               else f"Set your Lab Manager password · {practice.name}")
    queue_mail(to=user.email, subject=subject, kind="password_link", practice_id=practice.id, secret=token,
               text=render_template("mail/password_link.txt", **context),
               html=render_template("mail/password_link.html", **context))
    record("user.password_link_sent", "user", user.id, before={"live_link_ids": revoked},
           after={"link_id": link.id, "expires_at": link.expires_at.isoformat(timespec="seconds")},
           practice_id=practice.id)
    return link


@dataclass(frozen=True)
class Lookup:
    link: PasswordLink | None
    problem: str  # "", "unknown", "used", "revoked", "expired"


def resolve_link(token: str, now: dt.datetime | None = None) -> Lookup:
    link = tokens.find(PasswordLink, token)
    if link is None:
        return Lookup(None, "unknown")
    problem = link.problem(now or utcnow())
    if not problem and membership_is_gone(link):
        problem = "revoked"
    return Lookup(link, problem)


def membership_is_gone(link: PasswordLink) -> bool:
    member = membership(link.practice_id, link.user_id)
    return member is None or not member.active or not member.user.active


def link_actor(link: PasswordLink, user: User) -> Actor:
    """The person, acting through their link. The source names the link id, never the token
    (audit rows otherwise record the request path, which holds it)."""
    return Actor("user", str(user.id), user.email, source=f"password-link:{link.id}")


def set_password(link: PasswordLink, password: str) -> User:
    """Use the link: the password is set, this link is spent and any other live link revoked."""
    user = db.session.get(User, link.user_id)
    now = utcnow()
    link.used_at = now
    user.password_hash = hash_password(password)
    db.session.flush()
    others = revoke_links(user.id, now)
    ended = sessions.end_all(user.id, "password_changed")  # whoever held the old password is out
    record("user.password_set", "user", user.id, before={"link_id": link.id, "used": False},
           after={"link_id": link.id, "used": True, "revoked_link_ids": others, "ended_sessions": ended},
           actor=link_actor(link, user), practice_id=link.practice_id)
    return user
