from __future__ import annotations


from flask import Blueprint, current_app, flash, redirect, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.auth import sessions
from portal.auth.forms import LoginForm, SignOutEverywhereForm
from portal.auth.services import authenticate
from portal.extensions import db, limiter
from portal.web import render, safe_next

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("board.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        db.session.commit()
        if user is not None:
            session.clear()  # a new session for a new sign-in (no fixation)
            sessions.start(user)
            db.session.commit()
            login_user(user)
            return redirect(safe_next(request.args.get("next"), url_for("board.index")))
        form.password.errors.append("That email and password do not match an active account.")
        status = 422
    elif request.method == "POST":
        status = 422
    return render("auth/login.html", form=form, code=status)


@bp.post("/logout")
@login_required
def logout():
    """Ends this session for every copy of its cookie, not just this browser's."""
    row = sessions.current()
    if row is not None:
        sessions.end(row, "signed_out")
    record("auth.logout", "user", current_user.id, actor=Actor.user(current_user),
           after={"session_id": row.id if row else None})
    db.session.commit()
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.post("/practice")
@login_required
def switch_practice():
    wanted = request.form.get("practice_id", type=int)
    if current_user.role_in(wanted) is None:
        flash("You are not a member of that practice.", "error")
    else:
        session["practice_id"] = wanted
    return redirect(url_for("board.index"))


@bp.get("/account")
@login_required
def account():
    """The signed-in person's own page: who they are, where they belong, where they are signed in."""
    rows = sessions.open_sessions(current_user.id)
    return render("auth/account.html", sessions=rows, this_session=sessions.current(),
                  form=SignOutEverywhereForm(), browser_label=sessions.browser_label, idle_minutes=current_app.config["SESSION_IDLE_MINUTES"],
                  max_hours=current_app.config["SESSION_MAX_HOURS"])


@bp.post("/account/sign-out-everywhere")
@login_required
def sign_out_everywhere():
    """Ends every session of this account, on every browser and device, this one included."""
    if not SignOutEverywhereForm().validate():
        return redirect(url_for("auth.account"), 303)
    user_id = current_user.id
    ended = sessions.end_all(user_id, "signed_out_everywhere")
    record("auth.logout_everywhere", "user", user_id, actor=Actor.user(current_user),
           after={"ended_sessions": ended})
    db.session.commit()
    logout_user()
    session.clear()
    flash(f"You are signed out everywhere ({ended} session{'s' if ended != 1 else ''} ended).", "info")
    return redirect(url_for("auth.login"), 303)
