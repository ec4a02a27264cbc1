"""OAuth 2 tokens of a scanner integration: stored encrypted, refreshed before they expire, and
refreshed exactly once when several jobs find them expired at the same moment (docs/reliability.md W7).

iTero and Medit both rotate refresh tokens: a refresh returns a new refresh token and the old one
stops working. Two workers refreshing at once would leave one of them holding a dead token, so a
refresh is taken like a lease on the integration's row:

    UPDATE scanner_integration SET refresh_lease_until = now + 30 s
     WHERE id = :id AND token_version = :seen AND (refresh_lease_until IS NULL OR < now)

The worker whose UPDATE hits the row calls the vendor and stores the new tokens with
`token_version + 1`; the others wait for the version to change and use the new access token. A
worker that dies mid-refresh lets the lease lapse. These statements run on a connection of their
own, committed at once, so they never mix with the caller's transaction; callers (jobs) must call
`access_token` while their own session holds no uncommitted writes (SQLite has one writer).
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update

from portal import keyring as crypto
from portal.extensions import db
from portal.integrations.http import VendorError
from portal.integrations.models import ScannerIntegration
from portal.practices.models import utcnow

# A token is refreshed once this share of its lifetime is left (6 minutes of iTero's hour; 3 s of a
# 30 s token, which a fixed minute would refresh on every call). A token stored before its lifetime
# was kept gets the fixed margin.
REFRESH_SHARE = 0.1
REFRESH_MARGIN = dt.timedelta(seconds=60)
LEASE = dt.timedelta(seconds=30)
_T = ScannerIntegration.__table__


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: dt.datetime | None
    version: int
    lifetime: int | None = None  # seconds the access token was given to live (expires_in)

    @property
    def margin(self) -> dt.timedelta:
        if self.lifetime:
            return dt.timedelta(seconds=self.lifetime * REFRESH_SHARE)
        return REFRESH_MARGIN

    def fresh(self, now: dt.datetime) -> bool:
        return bool(self.access_token) and (self.expires_at is None or self.expires_at - self.margin > now)


def sealed_tokens(data: dict, previous_refresh: str = "") -> tuple[str, dt.datetime | None]:
    """(the sealed token set, when the access token expires) from a token endpoint's JSON. A
    response without a refresh token keeps the one we had."""
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise VendorError("The vendor's token answer holds no access_token.", "refused")
    refresh = data.get("refresh_token") if isinstance(data.get("refresh_token"), str) else ""
    try:
        expires_in = int(data.get("expires_in") or 3600)
    except (TypeError, ValueError):
        expires_in = 3600
    sealed = crypto.seal({"access_token": access, "refresh_token": refresh or previous_refresh,
                          "lifetime": max(expires_in, 0)})
    return sealed, utcnow() + dt.timedelta(seconds=max(expires_in, 0))


def set_tokens(integration: ScannerIntegration, data: dict) -> None:
    """Store a new token set on the ORM row (authorization code, pairing); the caller commits."""
    previous = crypto.unseal(integration.tokens).get("refresh_token", "") if integration.tokens else ""
    integration.tokens, integration.token_expires_at = sealed_tokens(data, previous)
    integration.token_version = (integration.token_version or 0) + 1
    integration.refresh_lease_until = None


def clear_tokens(integration: ScannerIntegration) -> None:
    integration.tokens, integration.token_expires_at = "", None
    integration.token_version = (integration.token_version or 0) + 1
    integration.refresh_lease_until = None


def read(integration_id: int) -> Tokens:
    """The tokens as committed now (not as the caller's session last saw them)."""
    with db.engine.connect() as conn:
        row = conn.execute(select(_T.c.tokens, _T.c.token_expires_at, _T.c.token_version)
                           .where(_T.c.id == integration_id)).one()
    data = crypto.unseal(row.tokens)
    lifetime = data.get("lifetime")
    return Tokens(data.get("access_token", ""), data.get("refresh_token", ""), row.token_expires_at,
                  row.token_version or 0, lifetime if isinstance(lifetime, int) and lifetime > 0 else None)


def access_token(integration_id: int, refresh: Callable[[str], dict], *, stale_version: int | None = None,
                 wait_seconds: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> Tokens:
    """A usable access token. When it is about to expire (or the vendor just refused the token of
    `stale_version`), exactly one caller runs `refresh(refresh_token) -> token JSON` and the others
    wait for its result. Raises VendorError when the refresh fails or nobody finishes in time."""
    deadline = time.monotonic() + wait_seconds
    while True:
        tokens = read(integration_id)
        now = utcnow()
        needs = not tokens.fresh(now) or (stale_version is not None and tokens.version == stale_version)
        if not needs:
            return tokens
        if not tokens.refresh_token:
            raise VendorError("There is no refresh token: connect the integration again.", "auth")
        if _take_lease(integration_id, tokens.version, now):
            return _refresh(integration_id, tokens, refresh)
        if time.monotonic() > deadline:
            raise VendorError("Another worker is refreshing the vendor token and has not finished; "
                              "we will try again.", "transient")
        sleep(0.1)


def _take_lease(integration_id: int, version: int, now: dt.datetime) -> bool:
    with db.engine.begin() as conn:
        result = conn.execute(
            update(_T).where(_T.c.id == integration_id, _T.c.token_version == version,
                             (_T.c.refresh_lease_until.is_(None)) | (_T.c.refresh_lease_until < now))
            .values(refresh_lease_until=now + LEASE))
        return result.rowcount == 1


def _refresh(integration_id: int, tokens: Tokens, refresh: Callable[[str], dict]) -> Tokens:
    try:
        data = refresh(tokens.refresh_token)
        sealed, expires_at = sealed_tokens(data, tokens.refresh_token)
    except BaseException:
        with db.engine.begin() as conn:  # let the next caller try at once
            conn.execute(update(_T).where(_T.c.id == integration_id, _T.c.token_version == tokens.version)
                         .values(refresh_lease_until=None))
        raise
    with db.engine.begin() as conn:
        conn.execute(update(_T).where(_T.c.id == integration_id).values(
            tokens=sealed, token_expires_at=expires_at, token_version=tokens.version + 1,
            refresh_lease_until=None))
    return read(integration_id)
