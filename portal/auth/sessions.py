"""Server-side session records (ASVS 3.3): sign-out, a password change, an admin's deactivation
and "sign out everywhere" end a session for every copy of its cookie at once; a session also
ends after `SESSION_IDLE_MINUTES` without activity and `SESSION_MAX_HOURS` after sign-in.

The signed Flask cookie holds the random session key (`session["sid"]`); the database holds its
SHA-256, so a copy of the database opens no session. `load(user_id)` is Flask-Login's user
loader: one statement finds the session, its user and the user's memberships.

Background polls (the board's, an upload's progress) do not count as activity: a board left
open on a screen still signs out after the idle timeout. Views mark themselves with `passive`.
"""
from __future__ import annotations

import datetime as dt
import functools

from flask import current_app, g, has_request_context, request, session
from sqlalchemy import select, update
from sqlalchemy.orm import joinedload

from portal import tokens
from portal.auth.models import UserSession
from portal.extensions import db
from portal.practices.models import User, utcnow

SESSION_KEY = "sid"
# last_seen_at is written at most this often, so polling pages do not write on every request.
TOUCH_SECONDS = 60


def idle_limit() -> dt.timedelta:
    return dt.timedelta(minutes=float(current_app.config.get("SESSION_IDLE_MINUTES", 30)))


def absolute_limit() -> dt.timedelta:
    return dt.timedelta(hours=float(current_app.config.get("SESSION_MAX_HOURS", 12)))


def start(user: User) -> UserSession:
    """A new session for `user`, its key put in the (already cleared) Flask session."""
    key, key_hash = tokens.new_token()
    now = utcnow()
    row = UserSession(key_hash=key_hash, user_id=user.id, created_at=now, last_seen_at=now)
    if has_request_context():
        row.ip = (request.remote_addr or "")[:64]
        row.user_agent = (request.user_agent.string or "")[:200]
    db.session.add(row)
    db.session.flush()
    session[SESSION_KEY] = key
    return row


def current() -> UserSession | None:
    return g.get("user_session")


def why_ended(row: UserSession | None, now: dt.datetime) -> str:
    """"" while the session may be used; otherwise why not."""
    if row is None:
        return "unknown"
    if row.ended_at is not None:
        return row.end_reason or "ended"
    if now - row.created_at >= absolute_limit():
        return "expired"
    if now - row.last_seen_at >= idle_limit():
        return "idle"
    return ""


def passive(predicate=None):
    """Mark a view as a background poll: it does not keep the session alive. With `predicate`,
    only the requests for which it answers True are polls."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            return view(*args, **kwargs)

        wrapped.passive_session = predicate or (lambda: True)
        return wrapped

    return decorator


def _is_passive() -> bool:
    if not has_request_context() or request.endpoint is None:
        return False
    view = current_app.view_functions.get(request.endpoint)
    check = getattr(view, "passive_session", None)
    return bool(check and check())


def load(user_id: str) -> User | None:
    """Flask-Login's user loader: the user of a live session whose key is in the cookie."""
    key = session.get(SESSION_KEY)
    if not key or not tokens.TOKEN_SHAPE.match(key):
        return None
    row = db.session.scalar(
        select(UserSession).options(joinedload(UserSession.user))
        .where(UserSession.key_hash == tokens.hash_token(key)))
    now = utcnow()
    reason = why_ended(row, now)
    if not reason and str(row.user_id) != str(user_id):
        reason = "unknown"
    if reason:
        g.session_end_reason = reason
        session.pop(SESSION_KEY, None)
        session.pop("_user_id", None)
        return None
    g.user_session = row
    if not _is_passive() and (now - row.last_seen_at).total_seconds() >= TOUCH_SECONDS:
        db.session.execute(update(UserSession).where(UserSession.id == row.id).values(last_seen_at=now),
                           execution_options={"synchronize_session": False})
        db.session.commit()
    return row.user


def end(row: UserSession, reason: str, now: dt.datetime | None = None) -> None:
    if row.ended_at is None:
        row.ended_at = now or utcnow()
        row.end_reason = reason
        db.session.flush()


def end_all(user_id: int, reason: str) -> int:
    """End every open session of the user (every browser, every copy of every cookie); returns
    how many. The caller writes the audit row and commits."""
    result = db.session.execute(
        update(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason),
        execution_options={"synchronize_session": False})
    if (row := current()) is not None and row.user_id == user_id:
        db.session.expire(row)
    return result.rowcount or 0


def open_sessions(user_id: int) -> list[UserSession]:
    """The user's sessions that still work, newest first."""
    now = utcnow()
    rows = db.session.scalars(
        select(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None),
                                  UserSession.created_at > now - absolute_limit(),
                                  UserSession.last_seen_at > now - idle_limit())
        .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc()))
    return list(rows)


MESSAGES = {
    "idle": "You were signed out after {idle} minutes without activity. Sign in to continue.",
    "expired": "Your session reached its {hours}-hour limit. Sign in again to continue.",
    "password_changed": "Your password was changed, which signs out every session. Sign in with the new one.",
    "deactivated": "An admin changed your access, which ended your session. Sign in to continue.",
    "signed_out_everywhere": "You signed out everywhere. Sign in to continue.",
    "signed_out": "This session was signed out. Sign in to continue.",
}


def end_message(reason: str) -> str:
    template = MESSAGES.get(reason, "")
    if not template:
        return ""
    minutes = float(current_app.config.get("SESSION_IDLE_MINUTES", 30))
    hours = float(current_app.config.get("SESSION_MAX_HOURS", 12))
    return template.format(idle=f"{minutes:g}", hours=f"{hours:g}")


def browser_label(user_agent: str) -> str:
    """"Chrome on Linux" from a User-Agent string, for the account page (the full string is its title)."""
    ua = user_agent or ""
    browser = next((name for token, name in (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
                                             ("Chrome/", "Chrome"), ("Chromium/", "Chromium"),
                                             ("Safari/", "Safari")) if token in ua), "")
    system = next((name for token, name in (("iPhone", "iPhone"), ("iPad", "iPad"), ("Android", "Android"),
                                            ("Windows", "Windows"), ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"),
                                            ("Linux", "Linux")) if token in ua), "")
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or (ua[:40] if ua else "")
