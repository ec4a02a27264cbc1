from __future__ import annotations

import datetime as dt
import enum

from flask_login import UserMixin
from sqlalchemy import Date, DateTime, Enum, ForeignKey, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import utcnow
from portal.extensions import db


class Role(enum.StrEnum):
    COORDINATOR = "coordinator"  # capture: creates and moves cases
    MANAGER = "manager"  # view: reads everything and the reports
    ADMIN = "admin"  # admin: labs, users, scanners, and everything a coordinator does


class OrganizationRole(enum.StrEnum):
    """A role over a whole organisation (a DSO), beside the roles per practice."""

    MANAGER = "manager"  # reads every practice's reports side by side (the DSO view)
    # Administers what the practices share: a lab's API address and its signing secrets. A practice's
    # own admin edits everything else about a lab, but one practice must not repoint or re-key a lab
    # that every practice of the organisation sends work to.
    ADMIN = "admin"


class Organization(db.Model):
    """A dental service organisation (DSO) running one or more practices."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    practices: Mapped[list[Practice]] = relationship(back_populates="organization")


class Practice(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(40), default="")
    address: Mapped[str] = mapped_column(String(300), default="")
    tooth_numbering: Mapped[str] = mapped_column(String(10), default="universal")  # or "fdi"
    seat_buffer_days: Mapped[int] = mapped_column(Integer, default=2)
    organization: Mapped[Organization] = relationship(back_populates="practices")
    closures: Mapped[list[PracticeClosure]] = relationship(
        back_populates="practice", order_by="PracticeClosure.day"
    )


class PracticeClosure(db.Model):
    """A day the practice is closed (holiday); due dates skip it like a weekend."""

    __table_args__ = (UniqueConstraint("practice_id", "day"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    day: Mapped[dt.date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(200), default="")
    practice: Mapped[Practice] = relationship(back_populates="closures")


class User(UserMixin, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The practices this user belongs to now: a membership an admin deactivated is left out, so the
    # practice switcher, g.practice and role_in never see it. The users page reads Membership itself.
    memberships: Mapped[list[Membership]] = relationship(
        primaryjoin="and_(Membership.user_id == User.id, Membership.active)",
        lazy="joined", order_by="Membership.practice_id", viewonly=True,
    )

    @property
    def is_active(self) -> bool:
        """Flask-Login signs in (and keeps signed in) only an active account with at least one
        active membership: deactivated in their only practice, a user is out."""
        return self.active and bool(self.memberships)

    def manages(self, organization_id: int | None) -> bool:
        """An active organisation-manager role over `organization_id`: one statement, asked by
        the DSO view only."""
        return self._holds(organization_id, OrganizationRole.MANAGER)

    def administers(self, organization_id: int | None) -> bool:
        """An active organisation-admin role over `organization_id` (a lab's shared settings)."""
        return self._holds(organization_id, OrganizationRole.ADMIN)

    def _holds(self, organization_id: int | None, role: OrganizationRole) -> bool:
        if organization_id is None:
            return False
        return db.session.query(OrganizationMembership.id).filter_by(
            user_id=self.id, organization_id=organization_id, role=role, active=True,
        ).first() is not None

    def role_in(self, practice_id: int | None) -> Role | None:
        for m in self.memberships:
            if m.practice_id == practice_id:
                return m.role
        return None


class Membership(db.Model):
    __table_args__ = (UniqueConstraint("user_id", "practice_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=20))
    active: Mapped[bool] = mapped_column(default=True)  # False: deactivated in this practice by an admin
    user: Mapped[User] = relationship()
    practice: Mapped[Practice] = relationship(lazy="joined")


class OrganizationMembership(db.Model):
    """A user's role over an organisation as a whole. It grants nothing inside a practice (the
    practice memberships do that, and sign-in still needs one of them); it opens the views that
    span the organisation's practices."""

    __table_args__ = (UniqueConstraint("user_id", "organization_id", "role"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    role: Mapped[OrganizationRole] = mapped_column(Enum(OrganizationRole, native_enum=False, length=20))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    user: Mapped[User] = relationship()
    organization: Mapped[Organization] = relationship()
