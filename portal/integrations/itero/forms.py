"""The forms of the case page's iTero panel."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import StringField


class RxForm(FlaskForm):
    """Send, or withdraw, an Rx: nothing but the CSRF token."""


class RescanForm(FlaskForm):
    reason = StringField("What should the doctor rescan?")
