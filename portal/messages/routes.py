"""Messages with the lab on the case page, the practice's unread list, and resending a lab link."""
from __future__ import annotations

from flask import Blueprint, flash, g, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.ack.forms import MessageForm
from portal.ack.models import AckLink
from portal.ack.services import LinkError, resend_link
from portal.audit.actor import Actor
from portal.cases.models import LabCase
from portal.extensions import db
from portal.labcomm import services as labcomm
from portal.messages import services
from portal.messages.models import IN, LabMessage
from portal.web import ANY_ROLE, CAN_EDIT, get_or_404, render, requires

bp = Blueprint("messages", __name__)


@bp.app_context_processor
def _helpers():
    """Lazy helpers: nothing is queried unless a template calls them (htmx fragments don't)."""

    def unread_lab_messages() -> int:
        if g.get("practice") is None:
            return 0
        if "unread_lab_messages" not in g:
            g.unread_lab_messages = services.unread_count(g.practice.id)
        return g.unread_lab_messages

    def lab_thread(case) -> list[LabMessage]:
        return services.thread(case.id)

    def lab_link_of(case) -> AckLink | None:
        return db.session.scalar(select(AckLink).where(AckLink.case_id == case.id)
                                 .order_by(AckLink.id.desc()).limit(1))

    def message_deliveries(case, messages) -> dict[int, labcomm.MessageDelivery]:
        return labcomm.deliveries(case, messages)

    return {"unread_lab_messages": unread_lab_messages, "lab_thread": lab_thread, "lab_link_of": lab_link_of,
            "message_deliveries": message_deliveries}


def _panel(case: LabCase, form: MessageForm | None = None, code: int = 200):
    return make_response(render_template("cases/_messages_panel.html", case=case,
                                         message_form=form or MessageForm(formdata=None)), code)


@bp.post("/cases/<int:case_id>/messages")
@requires(*CAN_EDIT)
def send(case_id: int):
    case = get_or_404(LabCase, case_id)
    form = MessageForm()
    if case.lab is None:
        form.text.errors = ["Choose a lab for this case first."]
        return _panel(case, form, 422) if request.htmx else _back(case, form.text.errors[0], "error")
    if not form.validate():
        if request.htmx:
            return _panel(case, form, 422)
        return _back(case, " ".join(form.text.errors) or "Write a message first.", "error")
    try:
        services.send_to_lab(case, form.text.data, Actor.user(current_user))
    except services.MessageError as exc:
        db.session.rollback()
        form.text.errors = [str(exc)]
        return _panel(case, form, 422) if request.htmx else _back(case, str(exc), "error")
    db.session.commit()
    if request.htmx:
        return _panel(case)
    return _back(case, f"Message sent to {case.lab.name}.", "success")


@bp.post("/cases/<int:case_id>/messages/read")
@requires(*ANY_ROLE)
def mark_read(case_id: int):
    """Posted by the case page once it has shown the thread; answers with the new top-bar count."""
    case = get_or_404(LabCase, case_id)
    services.mark_read(case)
    db.session.commit()
    g.pop("unread_lab_messages", None)
    return render_template("messages/_unread_badge.html", oob=True)


@bp.post("/cases/<int:case_id>/lab-link")
@requires(*CAN_EDIT)
def resend(case_id: int):
    case = get_or_404(LabCase, case_id)
    try:
        resend_link(case, Actor.user(current_user))
    except LinkError as exc:
        db.session.rollback()
        return _back(case, str(exc), "error")
    db.session.commit()
    return _back(case, f"A new link is on its way to {case.lab.name}; the old one no longer works.", "success")


@bp.get("/messages")
@requires(*ANY_ROLE)
def inbox():
    """Unread messages from labs, newest first, with their cases."""
    rows = db.session.execute(
        select(LabMessage, LabCase).join(LabCase, LabCase.id == LabMessage.case_id)
        .where(LabMessage.practice_id == g.practice.id, LabMessage.direction == IN, LabMessage.read_at.is_(None))
        .order_by(LabMessage.created_at.desc()).limit(200)
    ).all()
    return render("messages/inbox.html", rows=rows)


def _back(case: LabCase, message: str, level: str):
    flash(message, level)
    target = url_for("cases.show", case_id=case.id) + "#lab-messages"
    if request.htmx:
        response = make_response("", 204)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)
