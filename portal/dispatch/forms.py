from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField


class SendForm(FlaskForm):
    confirm_risk = BooleanField("I have checked the dates and want to send it anyway")


class RetryForm(FlaskForm):
    pass
