from __future__ import annotations

from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.auth.passwords import DUMMY_HASH, check_password
from portal.clock import utcnow
from portal.extensions import db
from portal.practices.models import User


def authenticate(email: str, password: str) -> User | None:
    """The active user with this email and password, or None. Failed attempts are audited."""
    user = db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        check_password(DUMMY_HASH, password)
        record("auth.login_failed", "user", "", after={"email": email[:254]}, actor=Actor.system("login"),
               outcome="denied")
        return None
    if not check_password(user.password_hash, password) or not user.is_active:
        record("auth.login_failed", "user", user.id, after={"email": user.email}, actor=Actor.system("login"),
               outcome="denied")
        return None
    user.last_login_at = utcnow()
    record("auth.login", "user", user.id, actor=Actor.user(user))
    return user
