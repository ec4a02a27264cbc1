"""The lab's private page: /lab/<token>. No login; the token is the key (docs/reliability.md M1-M5).

GET shows the case and changes nothing (mail scanners open links). Every change is a POST from
the page with its CSRF token, made by a person, and goes through the lifecycle as the lab.
"""
from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from portal import logfilter
from portal.ack import services
from portal.ack.forms import DispatchForm, MessageForm, ReasonForm, StatusForm
from portal.cases import lifecycle
from portal.cases.lifecycle import IllegalMove
from portal.cases.status import Status
from portal.extensions import db, limiter, transaction
from portal.messages.services import MessageError, thread
from portal.practices.models import Practice
from portal.scans.queries import work_order_scans
from portal.tokens import guesses

bp = Blueprint("ack", __name__, url_prefix="/lab")
bp.record_once(lambda state: logfilter.install(state.app, "/lab/"))

# What each lifecycle verb is called on the lab's page, and what it tells the practice.
ACTIONS = {
    "acknowledge": ("Acknowledge", "We have the case and will make it."),
    "start_production": ("In production", "Work has started."),
    "resume": ("Resume", "The hold is over; carry on where it stopped."),
    "dispatch": ("Dispatched", "The work is on its way to the practice."),
    "hold": ("Put on hold", "Work is paused until the practice answers."),
    "request_rescan": ("Ask for a rescan", "The scan can't be used; the practice rescans the patient."),
}
ORDER = ["acknowledge", "start_production", "resume", "dispatch", "hold", "request_rescan"]


def _link_limit() -> str:
    return current_app.config.get("LAB_LINK_RATE_LIMIT", "30 per minute")


per_ip = limiter.shared_limit(_link_limit, scope="lab-link")


@bp.after_app_request
def _private(response):
    """M3 on every /lab/ answer, errors and 429s included."""
    if request.path.startswith("/lab/") or request.path == "/lab":
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Robots-Tag"] = "noindex, nofollow"
        response.vary.add("Cookie")
    return response


def _gone(problem: str):
    status = 404 if problem == "unknown" else 410
    return render_template("ack/gone.html", problem=problem, status=status), status


@bp.errorhandler(400)
def _refused(error):
    return render_template("ack/gone.html", problem="refused", status=400), 400


@bp.errorhandler(429)
def _slow_down(error):
    return render_template("ack/gone.html", problem="slow", status=429), 429


def _actions(case) -> list[tuple[Status, str, str, str]]:
    moves = services.lab_actions(case)
    found = [(status, rule.action) for status, rule in moves.items() if rule.action in ACTIONS]
    found.sort(key=lambda pair: ORDER.index(pair[1]))
    return [(status, action, *ACTIONS[action]) for status, action in found]


def _page(link, token: str, *, code: int = 200, forms: dict | None = None, open_action: str = ""):
    case = link.case
    forms = forms or {}
    return render_template(
        "ack/page.html", link=link, token=token, case=case, lab=link.lab,
        practice=db.session.get(Practice, case.practice_id), patient_ref=services.patient_ref(case.patient),
        actions=_actions(case), messages=thread(case.id), open_action=open_action,
        scan_files=work_order_scans(case.id),
        status_form=forms.get("status") or StatusForm(formdata=None),
        reason_form=forms.get("reason") or ReasonForm(formdata=None),
        dispatch_form=forms.get("dispatch") or DispatchForm(formdata=None),
        message_form=forms.get("message") or MessageForm(formdata=None),
    ), code


def _back(token: str):
    return redirect(url_for("ack.page", token=token), 303)


@bp.get("/<token>")
@per_ip
@guesses
def page(token: str):
    found = services.resolve(token)
    if found.problem:
        return _gone(found.problem)
    return _page(found.link, token)


@bp.post("/<token>/status")
@per_ip
@guesses
def status(token: str):
    found = services.resolve(token)
    if found.problem:
        return _gone(found.problem)
    link = found.link
    wanted = request.form.get("status", "")
    rule = next((r for s, r in services.lab_actions(link.case).items() if s.value == wanted), None)
    if rule is None:
        try:
            target = Status(wanted)
            lifecycle.check(link.case, target, side=lifecycle.LAB)
            message = "That is not possible now."
        except (ValueError, IllegalMove) as exc:
            message = str(exc) if isinstance(exc, IllegalMove) else "Choose one of the buttons on the page."
        flash(f"Nothing changed: {message}", "error")
        return _page(link, token, code=409)

    if rule.action == "dispatch":
        form, key = DispatchForm(), "dispatch"
    elif rule.needs_reason:
        form, key = ReasonForm(), "reason"
    else:
        form, key = StatusForm(), "status"
    if not form.validate():
        return _page(link, token, code=422, forms={key: form}, open_action=rule.action)

    detail = {}
    if key == "dispatch":
        detail = {"carrier": form.carrier.data, "tracking_number": form.tracking_number.data,
                  "eta": form.eta.data.isoformat()}
    with transaction(IllegalMove) as outcome:
        services.lab_move(link, Status(wanted), reason=form.reason.data.strip() if key == "reason" else "",
                          detail=detail)
    if outcome.refused:
        flash(f"Nothing changed: {outcome.refused}", "error")
        return _page(link, token, code=409)
    flash(f"Thank you. {link.case.number} is now {link.case.status.label}; the practice sees it now.", "success")
    return _back(token)


@bp.post("/<token>/message")
@per_ip
@guesses
def message(token: str):
    found = services.resolve(token)
    if found.problem:
        return _gone(found.problem)
    link = found.link
    form = MessageForm()
    if not form.validate():
        return _page(link, token, code=422, forms={"message": form}, open_action="message")
    with transaction(MessageError) as outcome:
        services.lab_message(link, form.text.data)
    if outcome.refused:
        form.text.errors = [str(outcome.refused)]
        return _page(link, token, code=422, forms={"message": form}, open_action="message")
    flash("Message sent to the practice.", "success")
    return _back(token)
