"""The practice's users (/admin/users, admins only) and the set-password page (/set-password/<token>).

Row actions (role, deactivate, reactivate, send a set-password link) answer an htmx request with
the row alone and a plain form post with a redirect to the page (or the page with the error beside
the row). Another practice's user id is not found (404).
"""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from portal import logfilter
from portal.tokens import guesses
from portal.admin.users import services
from portal.admin.users.forms import AddUserForm, RoleForm, SetPasswordForm
from portal.admin.users.services import LastAdmin
from portal.errors import UserError
from portal.extensions import db, transaction
from portal.practices.models import Membership, Role, User
from portal.web import go_to, render, requires, wants_fragment

bp = Blueprint("users", __name__, url_prefix="/admin/users")
password_bp = Blueprint("password", __name__, url_prefix="/set-password")
password_bp.record_once(lambda state: logfilter.install(state.app, "/set-password/"))


def _member_or_404(user_id: int) -> Membership:
    member = services.membership(g.practice.id, user_id)
    if member is None:
        abort(404)
    return member


def _page(form: AddUserForm, *, code: int = 200, problem: dict | None = None):
    return render("admin/users.html", form=form, members=services.members(g.practice.id),
                  problem=problem or {}, code=code)


@bp.get("/")
@requires(Role.ADMIN)
def index():
    return _page(AddUserForm(formdata=None))


@bp.post("/")
@requires(Role.ADMIN)
def add():
    form = AddUserForm()
    ok = form.validate()
    if form.email.data and not form.email.errors:  # every problem at once, the taken email included
        if taken := services.email_problem(g.practice.id, form.email.data):
            form.email.errors = [taken]
            ok = False
    if not ok:
        return _page(form, code=422)
    with transaction(UserError, IntegrityError) as outcome:
        added = services.add_member(g.practice, form.name.data, form.email.data, Role(form.role.data))
        user, role = added.membership.user, added.membership.role.value
    if isinstance(outcome.refused, UserError):
        getattr(form, outcome.refused.field or "email").errors = [str(outcome.refused)]
        return _page(form, code=422)
    if outcome.refused:  # IntegrityError: the same email added by someone else a moment ago
        form.email.errors = ["Someone just added this email. Reload the list to see them."]
        return _page(form, code=422)
    if added.new_account:
        hours = current_app.config.get("PASSWORD_LINK_TTL_HOURS", services.DEFAULT_TTL_HOURS)
        flash(f"{user.name} added as {role}. An email with a link to set their password is on its way "
              f"to {user.email}; it works once, within {hours} hours.", "success")
    else:
        flash(f"{user.email} already has a Lab Manager account, so no second one was made: {user.name} "
              f"is now also in {g.practice.name} as {role} and signs in with the password they have.",
              "success")
    return redirect(url_for("users.index"), 303)


# ---- row actions ----------------------------------------------------------------------------------


def _row(member: Membership, *, code: int = 200, note: str = "", error: str = "", at: str = ""):
    """The row for htmx; otherwise the page (with the error beside the row) or a redirect."""
    if wants_fragment():
        return render("admin/users_row.html", code=code, m=member, note=note, error=error, error_at=at)
    if error:
        return _page(AddUserForm(formdata=None), code=code,
                     problem={"user_id": member.user_id, "message": error, "at": at})
    if note:
        flash(note, "success")
    return redirect(url_for("users.index"), 303)


def _done(member: Membership, note: str):
    """After a commit. An admin who just gave up admin here goes to the board, as the page is
    no longer theirs (htmx follows HX-Redirect)."""
    if current_user.role_in(g.practice.id) is Role.ADMIN:
        return _row(member, note=note)
    flash(note, "success")
    target = url_for("board.index")
    return go_to(target)


def _refused(user_id: int, exc: UserError, at: str):
    """The row again, with why the change was refused (the transaction has rolled back)."""
    return _row(_member_or_404(user_id), code=409, error=str(exc), at=at)


@bp.post("/<int:user_id>/role")
@requires(Role.ADMIN)
def change_role(user_id: int):
    member = _member_or_404(user_id)
    form = RoleForm()
    if not form.validate():
        return _row(member, code=422, error=" ".join(form.role.errors), at="role")
    with transaction(LastAdmin) as outcome:
        changed = services.change_role(g.practice, member, Role(form.role.data), by=current_user)
    if outcome.refused:
        return _refused(user_id, outcome.refused, "role")
    name, role = member.user.name, member.role.value
    return _done(member, f"{name} is now {role}." if changed else f"{name} was already {role}.")


@bp.post("/<int:user_id>/deactivate")
@requires(Role.ADMIN)
def deactivate(user_id: int):
    member = _member_or_404(user_id)
    with transaction(LastAdmin) as outcome:
        changed = services.deactivate(g.practice, member, by=current_user)
    if outcome.refused:
        return _refused(user_id, outcome.refused, "actions")
    name = member.user.name
    return _done(member, f"{name} is deactivated here and can no longer open {g.practice.name}."
                 if changed else f"{name} was already deactivated.")


@bp.post("/<int:user_id>/reactivate")
@requires(Role.ADMIN)
def reactivate(user_id: int):
    member = _member_or_404(user_id)
    changed = services.reactivate(g.practice, member)
    db.session.commit()
    name = member.user.name
    return _done(member, f"{name} is active here again as {member.role.value}."
                 if changed else f"{name} was already active.")


@bp.post("/<int:user_id>/password-link")
@requires(Role.ADMIN)
def password_link(user_id: int):
    member = _member_or_404(user_id)
    with transaction(UserError) as outcome:
        link = services.send_password_link(g.practice, member)
    if outcome.refused:
        return _refused(user_id, outcome.refused, "actions")
    return _done(member, f"A set-password link is on its way to {member.user.email} "
                 f"(works once, until {link.expires_at:%d %b %H:%M} UTC); older links no longer work.")


# ---- the set-password page ------------------------------------------------------------------------


@password_bp.after_request
def _private(response):
    """As for lab links (docs/reliability.md M3): the token is the key, so no Referer carries it away and nothing
    caches the page."""
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@password_bp.route("/<token>", methods=["GET", "POST"])
@guesses
def set_password(token: str):
    """GET shows the form and changes nothing (mail scanners open links); the POST uses the link."""
    lookup = services.resolve_link(token)
    if lookup.problem:
        status = 404 if lookup.problem == "unknown" else 410
        return render_template("admin/users_set_password.html", problem=lookup.problem, form=None,
                               user=None), status
    user = db.session.get(User, lookup.link.user_id)
    form = SetPasswordForm()
    status = 200
    if request.method == "POST":
        if form.validate():
            services.set_password(lookup.link, form.password.data)
            db.session.commit()
            flash("Your password is set. Sign in with your email and the new password.", "success")
            return redirect(url_for("auth.login"), 303)
        status = 422
    return render_template("admin/users_set_password.html", problem="", form=form, user=user), status
