"""Settings → Integrations: a practice's scanner and practice management system (PMS) integrations
(the Admin Control Plane), and the steps that talk to the vendor through the integration's adapter.

What each vendor needs is one table, `SETTINGS`: secrets (client id and secret, a signing secret)
are sealed into `credentials` (portal/keyring.py) and never shown again, only whether they
are set; the rest (hosts, a watched folder) is plain JSON in `settings`. An edit that leaves a
secret blank keeps the stored one. Every change writes an audit row on the entity
"scanner_integration" that names the fields that changed and never carries a secret's value.

Vendor steps (connect, pair, test, sync, disconnect) go through `registry.adapter_for`, which
raises VendorError for anything the vendor refused or that this version can't do; the view shows
that message and rolls back. Services flush; the request commits. Callers must not hold
uncommitted writes while an adapter calls the vendor (portal/integrations/oauth.py reads and writes
tokens on a connection of its own).
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from portal import keyring as crypto
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.errors import UserError
from portal.extensions import db
from portal.integrations import registry, sync
from portal.integrations.base import Adapter
from portal.integrations.http import VendorError, check_host
from portal.integrations.models import ScannerIntegration
from portal.integrations.oauth import clear_tokens
from portal.integrations.threeshape.adapter import validate_settings
from portal.integrations.vendor import Vendor
from portal.labs.models import Lab
from portal.practices.models import Practice, utcnow
from portal.tokens import new_token, public_url

ENTITY = "scanner_integration"


@dataclass(frozen=True)
class Setting:
    """One thing an integration of a vendor needs. `secret` ones are sealed into `credentials` and
    are write-only in the UI; the others are kept in `settings`. `kind` says how it is checked:
    "url" (http(s), host on SCANNER_ALLOWED_HOSTS), "path" (an absolute folder on this server),
    "text". `length` is an exact length (Medit's 32-character client id and secret). A `rotates`
    secret (a webhook signing secret) keeps the value it replaces as `previous_<key>`, with
    `previous_<key>_until` in settings, for ROTATION_OVERLAP: deliveries signed with either verify
    while the vendor switches (docs/reliability.md W3)."""

    key: str
    label: str
    secret: bool = False
    required: bool = True
    kind: str = "text"
    length: int | None = None
    default: str = ""
    hint: str = ""
    rotates: bool = False


ROTATION_OVERLAP = dt.timedelta(hours=24)


SETTINGS: dict[Vendor, tuple[Setting, ...]] = {
    Vendor.ITERO: (
        Setting("client_id", "Client id", secret=True, hint="From Align's partner onboarding."),
        Setting("client_secret", "Client secret", secret=True),
        Setting("base_url", "Base URL", kind="url",
                hint="Align's API base; discovery is asked here for the regional URLs."),
        Setting("oauth_base", "OAuth base URL", kind="url", hint="Where the sign-in and the tokens come from."),
    ),
    Vendor.MEDIT: (
        Setting("client_id", "Client id", secret=True, length=32, hint="32 characters, from Medit's developer portal."),
        Setting("client_secret", "Client secret", secret=True, length=32, hint="32 characters."),
        Setting("auth_host", "Auth host", kind="url", default="https://openapi-auth.meditlink.com",
                hint="Sign-in and tokens. Medit's stage hosts start with stage-."),
        Setting("resource_host", "Resource host", kind="url", default="https://openapi-resources.meditlink.com",
                hint="Cases and files."),
        Setting("webhook_secret", "Webhook signing secret", secret=True, required=False, rotates=True,
                hint="Optional: Medit signs its webhooks with it; without one, webhooks are refused. "
                     "A replaced secret still verifies for a day."),
    ),
    Vendor.THREESHAPE: (
        Setting("folder", "Watched import folder", kind="path",
                hint="An absolute path on the Lab Manager server where TRIOS exports its order folders."),
    ),
    Vendor.OPENDENTAL: (
        Setting("developer_key", "Developer key", secret=True, hint="Lab Manager's key from Open Dental's "
                "developer portal (the same for every practice)."),
        Setting("customer_key", "Customer key", secret=True, hint="The practice's key, made in Open Dental under "
                "Setup → Advanced Setup → API; one per location of a DSO."),
        Setting("base_url", "Base URL", kind="url", default="https://api.opendental.com/api/v1",
                hint="Open Dental's cloud service, or the practice's own Local API / API Service "
                     "(its host must be allowed by whoever runs Lab Manager)."),
        Setting("clinic_num", "ClinicNum", required=False, kind="number",
                hint="For a DSO with clinics in one database: the ClinicNum that is this practice. Blank reads all."),
    ),
}


@dataclass
class IntegrationData:
    name: str
    lab_ids: list[int]
    values: dict[str, str]  # setting key -> what was typed; a blank secret keeps the stored one


@dataclass(frozen=True)
class Capabilities:
    """What the integration's adapter offers, for the buttons on its page."""

    supported: bool
    uses_oauth: bool = False
    polls: bool = False
    notifications: bool = False


# -- reading ------------------------------------------------------------------------------------------

def offered_vendors() -> list[Vendor]:
    """Vendors an integration can be added for: those with an adapter in this version."""
    return [v for v in registry.supported() if v in SETTINGS]


def integrations(practice_id: int) -> list[ScannerIntegration]:
    return list(db.session.scalars(
        select(ScannerIntegration).where(ScannerIntegration.practice_id == practice_id)
        .options(selectinload(ScannerIntegration.labs))
        .order_by(ScannerIntegration.vendor, ScannerIntegration.name, ScannerIntegration.id)))


def lab_choices(organization_id: int, integration: ScannerIntegration | None = None) -> list[Lab]:
    """The organisation's active labs, and any inactive lab the integration may still send to (so
    saving the form does not drop it silently)."""
    labs = list(db.session.scalars(select(Lab).where(
        Lab.organization_id == organization_id, Lab.active.is_(True)).order_by(Lab.name)))
    if integration is not None:
        known = {lab.id for lab in labs}
        labs += [lab for lab in integration.labs if lab.id not in known]
    return labs


def stored_secrets(integration: ScannerIntegration) -> dict[str, bool] | None:
    """Which secrets are set ({key: True/False}); None when the stored credentials can't be read
    with the configured keys (they must be entered again)."""
    try:
        data = crypto.unseal(integration.credentials)
    except crypto.CredentialsError:
        return None
    return {s.key: bool(data.get(s.key)) for s in SETTINGS.get(integration.vendor, ()) if s.secret}


def capabilities(integration: ScannerIntegration) -> Capabilities:
    try:
        adapter = registry.adapter_for(integration)
    except VendorError:
        return Capabilities(False)
    cls = type(adapter)
    return Capabilities(True, uses_oauth=cls.uses_oauth, polls=cls.polls,
                        notifications=cls.verify_callback is not Adapter.verify_callback)


# -- checking what was typed -------------------------------------------------------------------------

def setting_problem(setting: Setting, value: str) -> str:
    """Why `value` can't be used for `setting`, or "" (an empty value is judged by the caller)."""
    if setting.length and len(value) != setting.length:
        return f"{setting.label} is {setting.length} characters; this is {len(value)}."
    if setting.kind == "url":
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            return "Give a full address starting with https://."
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost"):
            return "Use https:// (plain http only for a sandbox on this machine)."
        try:
            check_host(value)
        except VendorError:
            return (f"{parts.hostname} is not on the allowed vendor hosts (SCANNER_ALLOWED_HOSTS); "
                    "ask whoever runs Lab Manager to add it.")
    if setting.kind == "number" and not value.isdigit():
        return f"{setting.label} is a whole number, as Open Dental shows it."
    if setting.kind == "url":
        from portal.outbound import check_url

        if problem := check_url(value):
            return problem
    if setting.kind == "path":
        problems = validate_settings({setting.key: value})  # the watched folder's own rules
        return problems[0] if problems else ""
    return ""


def check(vendor: Vendor, data: IntegrationData, integration: ScannerIntegration | None = None) -> dict[str, str]:
    """Every problem at once: {field: message}. Secrets left blank on an edit keep the stored value."""
    problems: dict[str, str] = {}
    if not data.name.strip():
        problems["name"] = "Give the integration a name people here will recognise."
    if not data.lab_ids and vendor.kind == "scanner":
        problems["lab_ids"] = "Choose at least one lab this scanner may send to."
    stored = stored_secrets(integration) if integration is not None else {}
    for setting in SETTINGS[vendor]:
        value = data.values.get(setting.key, "").strip()
        if not value:
            kept = setting.secret and stored and stored.get(setting.key)
            if setting.required and not kept:
                problems[setting.key] = f"Enter the {setting.label.lower()}."
            continue
        if problem := setting_problem(setting, value):
            problems[setting.key] = problem
    return problems


def _labs(organization_id: int, lab_ids: list[int], integration: ScannerIntegration | None,
          vendor: Vendor | None = None) -> list[Lab]:
    allowed = {lab.id: lab for lab in lab_choices(organization_id, integration)}
    if not lab_ids and (vendor or integration.vendor).kind == "pms":
        return []  # a PMS names its laboratories itself (linked on its page)
    if not lab_ids:
        raise UserError("Choose at least one lab this scanner may send to.", field="lab_ids")
    if any(i not in allowed for i in lab_ids):
        raise UserError("Choose labs from the list.", field="lab_ids")
    return sorted((allowed[i] for i in set(lab_ids)), key=lambda lab: lab.name)


# -- changing ----------------------------------------------------------------------------------------------

def _public(integration: ScannerIntegration) -> dict:
    """What an audit row may show of an integration: never a credential."""
    return {"vendor": integration.vendor.value, "name": integration.name, "active": integration.active,
            "labs": sorted(lab.id for lab in integration.labs), "settings": integration.config}


def create_integration(practice: Practice, vendor: Vendor, data: IntegrationData, actor: Actor) -> ScannerIntegration:
    if vendor not in offered_vendors():
        raise UserError(f"{vendor.label} can't be added in this version.", field="vendor")
    if problems := check(vendor, data):
        field, message = next(iter(problems.items()))
        raise UserError(message, field=field)
    integration = ScannerIntegration(practice_id=practice.id, vendor=vendor, name=data.name.strip()[:100])
    integration.labs = _labs(practice.organization_id, data.lab_ids, None, vendor)
    secrets_given = _apply_values(integration, data.values)
    db.session.add(integration)
    db.session.flush()
    record("scanner.created", ENTITY, integration.id, after={**_public(integration), "credentials_set": secrets_given},
           actor=actor, practice_id=practice.id)
    return integration


def update_integration(integration: ScannerIntegration, data: IntegrationData, actor: Actor) -> list[str]:
    """Save an edit; returns the names of the fields that changed (secrets by name only)."""
    if problems := check(integration.vendor, data, integration):
        field, message = next(iter(problems.items()))
        raise UserError(message, field=field)
    practice = db.session.get(Practice, integration.practice_id)
    before = _public(integration)
    integration.name = data.name.strip()[:100]
    integration.labs = _labs(practice.organization_id, data.lab_ids, integration)
    secrets_changed = _apply_values(integration, data.values)
    after = _public(integration)
    changed = [k for k in ("name", "labs") if before[k] != after[k]]
    changed += [f"settings.{k}" for k in sorted(set(before["settings"]) | set(after["settings"]))
                if before["settings"].get(k) != after["settings"].get(k)]
    changed += [f"credentials.{k}" for k in secrets_changed]
    if changed:
        keys = [k for k in ("name", "labs") if k in changed]
        record("scanner.updated", ENTITY, integration.id,
               before={**{k: before[k] for k in keys}, "settings": before["settings"]},
               after={**{k: after[k] for k in keys}, "settings": after["settings"], "changed": changed},
               actor=actor, practice_id=integration.practice_id)
    return changed


def _apply_values(integration: ScannerIntegration, values: dict[str, str]) -> list[str]:
    """Put typed values on the row; returns the keys of the secrets that changed (never their values)."""
    settings = integration.config
    try:
        stored = crypto.unseal(integration.credentials)
    except crypto.CredentialsError:
        stored = {}  # unreadable with today's keys: check() asked for every secret again
    changed = []
    for setting in SETTINGS[integration.vendor]:
        value = values.get(setting.key, "").strip()
        if setting.secret:
            if value and stored.get(setting.key) != value:
                if setting.rotates and stored.get(setting.key):
                    stored[f"previous_{setting.key}"] = stored[setting.key]
                    settings[f"previous_{setting.key}_until"] = (utcnow() + ROTATION_OVERLAP).isoformat()
                stored[setting.key] = value
                changed.append(setting.key)
        elif setting.kind == "url":
            settings[setting.key] = value.rstrip("/")
        else:
            settings[setting.key] = value
    if changed:
        integration.credentials = crypto.seal(stored)
    integration.set_config(**settings)
    return changed


def set_active(integration: ScannerIntegration, active: bool, actor: Actor) -> bool:
    if integration.active == active:
        return False
    integration.active = active
    record("scanner.resumed" if active else "scanner.paused", ENTITY, integration.id,
           before={"active": not active}, after={"active": active}, actor=actor,
           practice_id=integration.practice_id)
    return True


HOOKS_PATH = "/api/scanners/hooks/"  # + the key: where vendors notify us (portal/integrations/hooks.py)


def new_callback_url(integration: ScannerIntegration) -> str:
    """A fresh notification URL for the integration (the old one stops working): an unguessable
    key of which only the hash is stored. The caller commits."""
    token, digest = new_token()
    integration.callback_key_hash = digest
    return public_url(HOOKS_PATH + token)


def renew_callback_url(integration: ScannerIntegration, actor: Actor) -> str:
    """A new notification URL (the old one stops working). The URL is the key: it goes to the
    person once and never into the audit row."""
    had = integration.callback_key_hash is not None
    url = new_callback_url(integration)
    record("scanner.callback_url_renewed", ENTITY, integration.id, before={"had_url": had},
           after={"had_url": True}, actor=actor, practice_id=integration.practice_id)
    return url


# -- the vendor's side -----------------------------------------------------------------------------------

def start_sign_in(integration: ScannerIntegration, redirect_uri: str) -> tuple[str, str]:
    """(state, the vendor's sign-in URL). The caller binds the state to the person's session."""
    _usable(integration)
    state = secrets.token_urlsafe(32)
    url = registry.adapter_for(integration).authorize_url(state, redirect_uri)
    if not url:
        raise VendorError(f"{integration.vendor.label} has no sign-in step: it works without connecting.", "refused")
    return state, url


def finish_sign_in(integration: ScannerIntegration, code: str, redirect_uri: str, actor: Actor) -> None:
    """Trade the vendor's code for tokens (stored sealed on the row). The caller commits before
    asking the vendor anything else: the adapter reads the tokens as committed."""
    _usable(integration)
    registry.adapter_for(integration).finish_authorization(code, redirect_uri)
    record("scanner.signed_in", ENTITY, integration.id, after={"tokens": "stored"}, actor=actor,
           practice_id=integration.practice_id)


def pairing_accounts(integration: ScannerIntegration) -> list[tuple[str, str]] | None:
    """The accounts the vendor offers to pair to, or None when it has no pairing step."""
    accounts = registry.adapter_for(integration).accounts()
    return None if accounts is None else [(str(a), str(label)) for a, label in accounts]


def mark_connected(integration: ScannerIntegration, actor: Actor, account: tuple[str, str] | None = None) -> None:
    before = {"connected": integration.connected}
    integration.connected_at = utcnow()
    after = {"connected": True}
    if account is not None:
        after.update(account_id=account[0], account=account[1])
    record("scanner.connected", ENTITY, integration.id, before=before, after=after, actor=actor,
           practice_id=integration.practice_id)


def forget_sign_in(integration: ScannerIntegration, actor: Actor, why: str) -> None:
    """Undo a sign-in whose next step failed, so no half-connected integration is left."""
    clear_tokens(integration)
    integration.connected_at = None
    record("scanner.sign_in_undone", ENTITY, integration.id, after={"tokens": "cleared", "why": why[:200]},
           actor=actor, practice_id=integration.practice_id, outcome="error")


def pair(integration: ScannerIntegration, account: tuple[str, str], actor: Actor) -> None:
    """Pair to the chosen account with a fresh notification URL. The new URL's hash stays unflushed
    while the vendor is called, so a refusal (rolled back by the caller) leaves the old one."""
    _usable(integration)
    adapter = registry.adapter_for(integration)
    callback_url = new_callback_url(integration)
    with db.session.no_autoflush:
        adapter.pair(account[0], callback_url)
    mark_connected(integration, actor, account)


def test_connection(integration: ScannerIntegration) -> str:
    """What the vendor answered, as the adapter puts it; VendorError otherwise."""
    try:
        return registry.adapter_for(integration).test_connection()
    except crypto.CredentialsError as exc:
        raise VendorError(str(exc), "refused") from exc


def stop_for_host(integration: ScannerIntegration, exc: VendorError, actor: Actor) -> str:
    """The vendor pointed us off the allowed hosts outside a sync (Test connection): the same as in
    a sync (docs/reliability.md W8): the integration is paused, the error recorded and both audited. Returns
    the integration's error for the person."""
    sync.failed(integration, exc, actor)
    return integration.last_error


def request_sync(integration: ScannerIntegration, actor: Actor) -> None:
    """A poll now, after the commit (sync.sync_now), unless it can't run; then say why."""
    if not integration.active:
        raise UserError("The integration is paused; resume it first.", field="sync")
    caps = capabilities(integration)
    if not caps.supported:
        raise UserError(f"This version has no {integration.vendor.label} adapter.", field="sync")
    if not caps.polls:
        raise UserError(f"{integration.vendor.label} is not polled: its scans arrive by "
                                            "notification or export.", field="sync")
    if not sync.can_sync(integration):
        raise UserError("Connect the integration first.", field="sync")
    sync.sync_now(integration)
    record("scanner.sync_requested", ENTITY, integration.id, after={"queued": True}, actor=actor,
           practice_id=integration.practice_id)


def disconnect(integration: ScannerIntegration, actor: Actor) -> None:
    _usable(integration, need_active=False)
    before = {"connected": integration.connected}
    registry.adapter_for(integration).disconnect()
    integration.connected_at = None
    record("scanner.disconnected", ENTITY, integration.id, before=before, after={"connected": False},
           actor=actor, practice_id=integration.practice_id)


def _usable(integration: ScannerIntegration, need_active: bool = True) -> None:
    if need_active and not integration.active:
        raise VendorError("The integration is paused; resume it first.", "refused")


def since(moment: dt.datetime | None) -> str:
    """A short "how long ago" for the settings table (UTC times beside it)."""
    if moment is None:
        return ""
    seconds = int((utcnow() - moment).total_seconds())
    if seconds < 90:
        return "just now"
    if seconds < 90 * 60:
        return f"{seconds // 60} min ago"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"
