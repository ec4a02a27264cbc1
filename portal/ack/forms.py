from __future__ import annotations

import datetime as dt

from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, ValidationError


class StatusForm(FlaskForm):
    """Acknowledge, in production, resume: a status and nothing else."""

    status = HiddenField(validators=[DataRequired()])


class ReasonForm(FlaskForm):
    """On hold and ask for a rescan: the reason is required."""

    status = HiddenField(validators=[DataRequired()])
    reason = TextAreaField("Reason", validators=[InputRequired("Say why, so the practice can act on it."),
                                                  Length(max=500)])

    def validate_reason(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Say why, so the practice can act on it.")


class DispatchForm(FlaskForm):
    status = HiddenField(validators=[DataRequired()])
    carrier = StringField("Carrier", validators=[InputRequired("Name the carrier (or “courier”, “hand delivery”)."),
                                                 Length(max=60)])
    tracking_number = StringField("Tracking number", validators=[
        InputRequired("Give the tracking number so the practice can follow the parcel."), Length(max=100)])
    eta = DateField("Expected delivery", validators=[InputRequired("When will it arrive at the practice?")])

    def validate_carrier(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Name the carrier (or “courier”, “hand delivery”).")

    def validate_tracking_number(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Give the tracking number so the practice can follow the parcel.")

    def validate_eta(self, field):
        today = dt.date.today()
        if field.data < today:
            raise ValidationError("The expected delivery date can't be in the past.")
        if field.data > today + dt.timedelta(days=365):
            raise ValidationError("That is more than a year away; check the date.")


class MessageForm(FlaskForm):
    text = TextAreaField("Message", validators=[InputRequired("Write a message first."), Length(max=4000)])

    def validate_text(self, field):
        if not (field.data or "").strip():
            raise ValidationError("Write a message first.")
