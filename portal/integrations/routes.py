"""Settings → Integrations (/admin/scanners): a practice's connections to outside systems.

Admins only. Credentials are write-only: the pages say whether each is set, never what it is. The
vendor steps (connect, pair, test, sync, disconnect) go through the integration's adapter; a
VendorError is shown as the vendor's reason and nothing is kept of the step. Another practice's
integration is not found (404).
"""
from __future__ import annotations

import hmac

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    request,
    session,
    url_for,
)
from flask_login import current_user

from portal.audit.actor import Actor
from portal.errors import UserError
from portal.extensions import db, transaction
from portal.integrations import services as admin
from portal.integrations.forms import ActionForm, FinishSignInForm, PairForm, integration_form
from portal.integrations.http import VendorError
from portal.integrations.models import ScannerIntegration
from portal.integrations.services import IntegrationData
from portal.integrations.vendor import Vendor
from portal.keyring import CredentialsError
from portal.practices.models import Role
from portal.tokens import public_url
from portal.web import get_or_404, go_to, render, requires, safe_next, wants_fragment

bp = Blueprint("scanner_settings", __name__, url_prefix="/admin/scanners")
ADMIN = (Role.ADMIN,)
OAUTH_STATE = "scanner_oauth"
PAIRING = "scanner_pairing"


def _integration_or_404(integration_id: int) -> ScannerIntegration:
    return get_or_404(ScannerIntegration, integration_id)


@bp.get("/", endpoint="index")
@requires(*ADMIN)
def settings_index():
    every = admin.integrations(g.practice.id)
    vendors = admin.offered_vendors()
    return render("scanners/settings.html", "integrations", form=ActionForm(), since=admin.since,
                  integrations=[i for i in every if i.vendor.kind == "scanner"],
                  pms_integrations=[i for i in every if i.vendor.kind == "pms"],
                  vendors=[v for v in vendors if v.kind == "scanner"], pms_vendors=[v for v in vendors if v.kind == "pms"])


integrations_alias = Blueprint("integration_settings", __name__, url_prefix="/admin/integrations")


@integrations_alias.get("/", endpoint="index")
@requires(*ADMIN)
def integrations_index():
    """The label says Integrations; the pages stay under /admin/scanners, whose URLs keep working."""
    return redirect(url_for("scanner_settings.index"), 301)


def _form_page(form, vendor: Vendor, integration: ScannerIntegration | None, code: int = 200):
    labs = admin.lab_choices(g.practice.organization_id, integration)
    return render("scanners/integration_form.html", "integration_form", form=form, vendor=vendor,
                  integration=integration, labs=labs, settings=admin.SETTINGS[vendor],
                  stored=admin.stored_secrets(integration) if integration else {}, code=code)


def _fill_labs(form, integration: ScannerIntegration | None) -> None:
    form.lab_ids.choices = [(lab.id, lab.name) for lab in admin.lab_choices(g.practice.organization_id, integration)]


def _problems_beside_fields(form, problems: dict[str, str]) -> None:
    for field, message in problems.items():
        target = form[field] if field in form else None
        if target is not None and message not in target.errors:
            target.errors = list(target.errors) + [message]


@bp.route("/new", methods=["GET", "POST"])
@requires(*ADMIN)
def new():
    try:
        vendor = Vendor(request.values.get("vendor", ""))
    except ValueError:
        abort(404)
    if vendor not in admin.offered_vendors():
        abort(404)  # no adapter for it in this version: never a dead option
    form = integration_form(vendor)
    _fill_labs(form, None)
    if request.method == "GET":
        form.name.data = vendor.label
        form.lab_ids.data = [value for value, _ in form.lab_ids.choices]  # all, by default
        return _form_page(form, vendor, None)
    ok = form.validate()
    data = IntegrationData(form.name.data or "", form.lab_ids.data or [], form.values())
    problems = admin.check(vendor, data)
    _problems_beside_fields(form, problems)
    if not ok or problems:
        return _form_page(form, vendor, None, 422)
    with transaction(UserError, CredentialsError) as outcome:
        integration = admin.create_integration(g.practice, vendor, data, Actor.user(current_user))
    if outcome.refused:
        _problems_beside_fields(form, {getattr(outcome.refused, "field", None) or "name": str(outcome.refused)})
        return _form_page(form, vendor, None, 422)
    flash(f"{integration.name} added. {_next_step(integration)}", "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration.id))


def _next_step(integration: ScannerIntegration) -> str:
    caps = admin.capabilities(integration)
    if caps.uses_oauth:
        return "Connect it to sign in at the vendor."
    return "Test the connection to check the settings."


@bp.route("/<int:integration_id>/edit", methods=["GET", "POST"])
@requires(*ADMIN)
def edit(integration_id: int):
    integration = _integration_or_404(integration_id)
    vendor = integration.vendor
    if vendor not in admin.SETTINGS:
        abort(404)
    if request.method == "GET":
        form = integration_form(vendor, integration, formdata=None)
        _fill_labs(form, integration)
        form.name.data = integration.name
        form.lab_ids.data = [lab.id for lab in integration.labs]
        config = integration.config
        for s in admin.SETTINGS[vendor]:
            if not s.secret:
                form[s.key].data = config.get(s.key, s.default)
        return _form_page(form, vendor, integration)
    form = integration_form(vendor, integration)
    _fill_labs(form, integration)
    ok = form.validate()
    data = IntegrationData(form.name.data or "", form.lab_ids.data or [], form.values())
    problems = admin.check(vendor, data, integration)
    _problems_beside_fields(form, problems)
    if not ok or problems:
        return _form_page(form, vendor, integration, 422)
    with transaction(UserError, CredentialsError) as outcome:
        changed = admin.update_integration(integration, data, Actor.user(current_user))
    if outcome.refused:
        _problems_beside_fields(form, {getattr(outcome.refused, "field", None) or "name": str(outcome.refused)})
        return _form_page(form, vendor, integration, 422)
    flash(f"{integration.name} saved ({_changed_words(changed)})." if changed else "Nothing changed.", "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration.id))


def _changed_words(changed: list[str]) -> str:
    labels = {s.key: s.label.lower() for settings in admin.SETTINGS.values() for s in settings}
    words = [labels.get(c.split(".", 1)[-1], c.split(".", 1)[-1]).replace("lab_ids", "labs") for c in changed]
    return ", ".join(dict.fromkeys(words))


def _show(integration: ScannerIntegration, *, code: int = 200, block: str | None = "integration_main", **extra):
    pms_view = None
    if integration.vendor.kind == "pms":
        from portal.integrations import pms

        pms_view = pms.page_view(integration, g.practice.organization_id)
    response = render("scanners/integration.html", block, code=code, i=integration, pms=pms_view,
                      caps=admin.capabilities(integration), stored=admin.stored_secrets(integration),
                      settings=admin.SETTINGS.get(integration.vendor, ()), form=ActionForm(), since=admin.since,
                      **{"test_result": None, "test_error": "", "new_url": "", "error": "", **extra})
    if extra.get("new_url"):
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/<int:integration_id>", endpoint="show")
@requires(*ADMIN)
def integration_show(integration_id: int):
    return _show(_integration_or_404(integration_id))


def _checked_action(integration_id: int) -> ScannerIntegration:
    integration = _integration_or_404(integration_id)
    if not ActionForm().validate():
        abort(400)
    return integration


def _vendor_failed(integration_id: int, exc: Exception, what: str):
    """A vendor step failed: keep nothing of it and say why on the integration's page."""
    db.session.rollback()
    integration = _integration_or_404(integration_id)
    return _show(integration, code=409 if isinstance(exc, UserError) else 502, block=None,
                 error=f"{what}: {exc}")


@bp.post("/<int:integration_id>/active")
@requires(*ADMIN)
def set_active(integration_id: int):
    integration = _checked_action(integration_id)
    active = request.form.get("active") == "1"
    changed = admin.set_active(integration, active, Actor.user(current_user))
    db.session.commit()
    note = (f"{integration.name} is {'active again' if active else 'paused: nothing is fetched or accepted from it'}."
            if changed else f"{integration.name} was already {'active' if active else 'paused'}.")
    if wants_fragment() and (request.htmx.target or "") == f"integration-{integration.id}":
        return render("scanners/_integration_row.html", i=integration, note=note, form=ActionForm(),
                      since=admin.since)
    flash(note, "success")
    return redirect(safe_next(request.form.get("next"), url_for("scanner_settings.show", integration_id=integration.id)), 303)


@bp.post("/<int:integration_id>/test")
@requires(*ADMIN)
def test(integration_id: int):
    integration = _checked_action(integration_id)
    try:
        answer, problem = admin.test_connection(integration), ""
    except VendorError as exc:
        db.session.rollback()
        answer, problem = None, str(exc)
        if exc.kind == "host":  # as a sync does (docs/reliability.md W8): paused, the error recorded and audited
            problem = admin.stop_for_host(_integration_or_404(integration_id), exc, Actor.user(current_user))
            db.session.commit()
    integration = _integration_or_404(integration_id)
    if answer is not None and integration.vendor.kind == "pms" and not integration.connected:
        admin.mark_connected(integration, Actor.user(current_user))  # a PMS is connected once its keys work
        db.session.commit()
    return _show(integration, block="test_result", test_result=answer, test_error=problem)


@bp.post("/<int:integration_id>/sync")
@requires(*ADMIN)
def sync_now(integration_id: int):
    integration = _checked_action(integration_id)
    with transaction(UserError, VendorError) as outcome:
        admin.request_sync(integration, Actor.user(current_user))
    if outcome.refused:
        return _vendor_failed(integration_id, outcome.refused, "Sync not started")
    flash("A sync is queued. Last sync and last error below show how it went; reload in a minute.", "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration_id))


@bp.post("/<int:integration_id>/disconnect")
@requires(*ADMIN)
def disconnect(integration_id: int):
    integration = _checked_action(integration_id)
    try:
        admin.disconnect(integration, Actor.user(current_user))
    except (VendorError, CredentialsError) as exc:
        return _vendor_failed(integration_id, exc, "Not disconnected")
    db.session.commit()
    what = "keys" if integration.vendor.kind == "pms" else "tokens"
    flash(f"{integration.name} is disconnected; its {what} are forgotten. Connect it again to resume.", "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration_id))


@bp.post("/<int:integration_id>/callback-url")
@requires(*ADMIN)
def callback_url(integration_id: int):
    """Shows the new URL in this response only (never in a flash: the session cookie is signed,
    not encrypted), with no-store."""
    integration = _checked_action(integration_id)
    url = admin.renew_callback_url(integration, Actor.user(current_user))
    db.session.commit()
    return _show(integration, block=None, new_url=url)


# ---- connecting: the vendor's sign-in, then the account to pair to -----------------------------------

def _redirect_uri() -> str:
    return public_url(url_for("scanner_settings.oauth_callback"))


@bp.post("/<int:integration_id>/connect")
@requires(*ADMIN)
def connect(integration_id: int):
    integration = _checked_action(integration_id)
    try:
        state, url = admin.start_sign_in(integration, _redirect_uri())
    except (VendorError, CredentialsError) as exc:
        return _vendor_failed(integration_id, exc, "Could not start the sign-in")
    session[OAUTH_STATE] = {"state": state, "integration_id": integration.id, "practice_id": g.practice.id}
    session.pop(PAIRING, None)
    return redirect(url, 303)


@bp.get("/oauth/callback")
@requires(*ADMIN)
def oauth_callback():
    """Where the vendor sends the person back after signing in. Nothing is stored on this GET
    (docs/reliability.md F1): the page checks the state this session started and asks the person to finish, with a
    POST carrying the code (and the CSRF token)."""
    started, state = session.get(OAUTH_STATE) or {}, request.args.get("state", "")
    integration, refusal = _sign_in_started(started, state)
    if refusal is not None:
        return refusal
    if request.args.get("error"):
        session.pop(OAUTH_STATE, None)
        reason = request.args.get("error_description") or request.args["error"]
        return _show(integration, code=409, block=None,
                     error=f"{integration.vendor.label} did not sign in: {reason[:200]}. Nothing was changed.")
    code = request.args.get("code", "")
    if not code:
        return _show(integration, code=400, block=None,
                     error=f"{integration.vendor.label} sent no authorization code. Nothing was changed.")
    form = FinishSignInForm(formdata=None, data={"code": code[:2000], "state": state})
    return render("scanners/finish_sign_in.html", i=integration, form=form)


@bp.post("/oauth/callback")
@requires(*ADMIN)
def finish_sign_in():
    """The person finishes the sign-in: the state is used up and the code traded for tokens."""
    form = FinishSignInForm()
    started = session.pop(OAUTH_STATE, None) or {}
    integration, refusal = _sign_in_started(started, form.state.data or "")
    if refusal is not None:
        return refusal
    if not form.validate():
        return _show(integration, code=400, block=None,
                     error=f"{integration.vendor.label} sent no authorization code. Nothing was changed.")
    actor = Actor.user(current_user)
    try:
        admin.finish_sign_in(integration, form.code.data, _redirect_uri(), actor)
    except (VendorError, CredentialsError) as exc:
        return _vendor_failed(integration.id, exc, "Sign-in not completed")
    db.session.commit()  # the adapter reads the new tokens as committed
    try:
        accounts = admin.pairing_accounts(integration)
    except (VendorError, CredentialsError) as exc:
        db.session.rollback()
        integration = _integration_or_404(started["integration_id"])
        admin.forget_sign_in(integration, actor, str(exc))
        db.session.commit()
        return _show(integration, code=502, block=None,
                     error=f"Signed in, but the accounts could not be listed: {exc} The sign-in was undone; "
                           "try Connect again.")
    if accounts is None:
        admin.mark_connected(integration, actor)
        db.session.commit()
        flash(f"{integration.name} is connected.", "success")
        return redirect(url_for("scanner_settings.show", integration_id=integration.id), 303)
    session[PAIRING] = {"integration_id": integration.id, "accounts": accounts}
    return _pair_page(integration, PairForm(formdata=None), accounts)


def _sign_in_started(started: dict, state: str):
    """(the integration, None) when `state` is the one this session's Connect started, else
    (None, the page that says why). Another practice's integration is not found."""
    if not started or not state or not hmac.compare_digest(state, str(started.get("state", ""))):
        return None, render("error.html", code=400, status=400, message=(
            "This sign-in was not started here, or it was already used. Nothing was changed; start it "
            "again with Connect on the integration's page."))
    if started.get("practice_id") != g.practice.id:
        abort(404)
    return _integration_or_404(started["integration_id"]), None


def _pair_page(integration, form, accounts, code: int = 200):
    return render("scanners/pair.html", code=code, i=integration, form=form, accounts=accounts)


@bp.post("/<int:integration_id>/pair")
@requires(*ADMIN)
def pair(integration_id: int):
    integration = _integration_or_404(integration_id)
    pending = session.get(PAIRING) or {}
    if pending.get("integration_id") != integration.id:
        return _show(integration, code=409, block=None,
                     error="This pairing is no longer open (it was finished, or another sign-in started). "
                           "Connect again.")
    accounts = [tuple(a) for a in pending.get("accounts", [])]
    form = PairForm()
    if not form.validate():
        if "csrf_token" in form.errors:
            abort(400)
        return _pair_page(integration, form, accounts, 422)
    chosen = next((a for a in accounts if a[0] == form.account_id.data), None)
    if chosen is None:
        form.account_id.errors = ["Choose one of the accounts listed."]
        return _pair_page(integration, form, accounts, 422)
    with transaction(VendorError, CredentialsError) as outcome:
        admin.pair(integration, chosen, Actor.user(current_user))
    if outcome.refused:
        form.account_id.errors = [f"{integration.vendor.label} did not pair: {outcome.refused}"]
        return _pair_page(_integration_or_404(integration_id), form, accounts, 502)
    session.pop(PAIRING, None)
    flash(f"{integration.name} is paired to {chosen[1]} and connected.", "success")
    return redirect(url_for("scanner_settings.show", integration_id=integration.id), 303)



# ---- a practice management system: patients waiting for a person, laboratories to link -------------

@bp.post("/<int:integration_id>/matches/<int:match_id>")
@requires(*ADMIN)
def resolve_match(integration_id: int, match_id: int):
    """A person says which patient here the PMS's patient is, or that it is a new one."""
    from portal.errors import UserError
    from portal.integrations import pms
    from portal.integrations.models import PmsMatch

    integration = _checked_action(integration_id)
    match = db.session.get(PmsMatch, match_id)
    if match is None or match.integration_id != integration.id:
        abort(404)
    choice = request.form.get("patient_id", "")
    try:
        patient = pms.resolve_match(match, None if choice == "new" else int(choice), Actor.user(current_user))
    except (UserError, ValueError) as exc:
        db.session.rollback()
        return _show(_integration_or_404(integration_id), code=409, block=None,
                     error=f"Not matched: {exc if isinstance(exc, UserError) else 'choose a patient from the list.'}")
    db.session.commit()
    flash(f"{patient.full_name} ({patient.chart_number}) is now {integration.vendor.label}'s patient {match.ref}.",
          "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration_id))


@bp.post("/<int:integration_id>/laboratories/<int:row_id>")
@requires(*ADMIN)
def link_laboratory(integration_id: int, row_id: int):
    """Link one of the PMS's laboratories to one of Lab Manager's labs (lab cases written back name it)."""
    from portal.errors import UserError
    from portal.integrations import pms

    integration = _checked_action(integration_id)
    try:
        lab_id = int(request.form.get("lab_id") or 0) or None
        row = pms.link_laboratory(integration, row_id, lab_id, g.practice.organization_id, Actor.user(current_user))
    except (UserError, ValueError) as exc:
        db.session.rollback()
        return _show(_integration_or_404(integration_id), code=409, block=None,
                     error=f"Not linked: {exc if isinstance(exc, UserError) else 'choose a lab from the list.'}")
    db.session.commit()
    flash(f"{row.name} is linked to {row.lab.name}." if row.lab else f"{row.name} is no longer linked.", "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration_id))


@bp.post("/<int:integration_id>/pms/write-open-cases")
@requires(*ADMIN)
def write_open_cases(integration_id: int):
    """Ask the PMS for a lab case for each open case sent before it was connected."""
    from portal.integrations import writeback

    integration = _checked_action(integration_id)
    if integration.vendor.kind != "pms" or not integration.active:
        abort(404)
    queued = writeback.write_open_cases(integration, Actor.user(current_user))
    db.session.commit()
    flash(f"{queued} open case{'s' if queued != 1 else ''} will be written to {integration.vendor.label}; "
          "each case page shows how its write went.", "success")
    return go_to(url_for("scanner_settings.show", integration_id=integration_id))
