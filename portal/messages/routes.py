"""Messages with the lab on the case page, the practice's unread list, and resending a lab link."""
from __future__ import annotations

from flask import Blueprint, flash, g, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.ack.forms import MessageForm
from portal.ack.services import LinkError, resend_link
from portal.audit.actor import Actor
from portal.cases.models import LabCase
from portal.extensions import db, transaction
from portal.labcomm import services as labcomm
from portal.messages import services
from portal.messages.models import IN, LabMessage
from portal.web import ANY_ROLE, CAN_EDIT, get_or_404, go_to, render, requires

bp = Blueprint("messages", __name__)


@bp.app_context_processor
def _top_bar():
    """The top bar's unread count, on every full page (base.html). Lazy: nothing is queried
    unless the template asks, and htmx fragments don't. The case page's messages panel gets its
    data from the case view instead (portal/cases/routes.py)."""

    def unread_lab_messages() -> int:
        if g.get("practice") is None:
            return 0
        if "unread_lab_messages" not in g:
            g.unread_lab_messages = services.unread_count(g.practice.id)
        return g.unread_lab_messages

    return {"unread_lab_messages": unread_lab_messages}


def _panel(case: LabCase, form: MessageForm | None = None, code: int = 200):
    """The case page's messages panel alone (an htmx request), with its data from lab communication."""
    return render("cases/show.html", "messages_panel", code=code, case=case,
                  messages_panel=labcomm.messages_panel(case), message_form=form or MessageForm(formdata=None))


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
    with transaction(services.MessageError) as outcome:
        services.send_to_lab(case, form.text.data, Actor.user(current_user))
    if outcome.refused:
        form.text.errors = [str(outcome.refused)]
        return _panel(case, form, 422) if request.htmx else _back(case, str(outcome.refused), "error")
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
    return render("messages/_unread_badge.html", oob=True)


@bp.post("/cases/<int:case_id>/lab-link")
@requires(*CAN_EDIT)
def resend(case_id: int):
    case = get_or_404(LabCase, case_id)
    with transaction(LinkError) as outcome:
        resend_link(case, Actor.user(current_user))
    if outcome.refused:
        return _back(case, str(outcome.refused), "error")
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
    return go_to(url_for("cases.show", case_id=case.id) + "#lab-messages")
