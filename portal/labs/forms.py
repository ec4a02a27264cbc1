from __future__ import annotations

from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField, DecimalField, FieldList, Form, FormField, HiddenField, IntegerField, SelectField,
    StringField, TextAreaField,
)
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from portal import outbound
from portal.cases import catalog
from portal.cases.forms import choices
from portal.labs.models import Channel

CHANNELS = {Channel.API.value: "API", Channel.EMAIL.value: "Email with a private link",
            Channel.MANUAL.value: "Phone / manual"}


def check_email(address: str) -> str:
    try:
        # The reserved .test domain is accepted in development and tests (the demo's labs use it).
        testing = bool(current_app.config.get("TESTING") or current_app.config.get("DEVELOPMENT"))
        return validate_email(address, check_deliverability=False, test_environment=testing).normalized
    except EmailNotValidError as exc:
        raise ValidationError(f"“{address}” is not an email address ({exc}).") from None


def api_url_problem(url: str) -> str:
    """"" when `url` may receive work orders: https anywhere, plain http only on this machine;
    and outside development only at an address Lab Manager connects to (portal/outbound.py:
    checked again on every connection, this is for a clear message now)."""
    parts = urlsplit(url)
    if not ((parts.scheme == "https" and parts.hostname) or (parts.scheme == "http" and parts.hostname == "127.0.0.1")):
        return "Use an https:// address (plain http only for http://127.0.0.1 in testing)."
    return outbound.check_url(url) or ""


class ServiceForm(Form):
    restoration = SelectField("Service", choices=choices(catalog.RESTORATIONS))
    materials = StringField("Materials", validators=[Optional(), Length(max=500)],
                            description="Comma separated, e.g. zirconia, lithium disilicate")
    turnaround_days = IntegerField("Business days", validators=[
        InputRequired("Give the turnaround in business days."),
        NumberRange(min=1, max=60, message="Turnaround is 1 to 60 business days.")])
    fee = DecimalField("Fee", places=2, validators=[Optional(), NumberRange(min=0, max=100000,
                                                                              message="Fee is 0 to 100000.")])
    remove = BooleanField("Remove")


class LabForm(FlaskForm):
    name = StringField("Name", validators=[InputRequired("Give the lab's name."), Length(max=200)])
    channel = SelectField("How work is sent", choices=choices(CHANNELS))
    contact_name = StringField("Contact", validators=[Optional(), Length(max=200)])
    email = StringField("Email", validators=[Length(max=254)])
    cc_emails = StringField("Copy to (cc)", validators=[Optional(), Length(max=1000)],
                            description="Comma separated addresses that also get the lab's emails")
    phone = StringField("Phone", validators=[Optional(), Length(max=40)])
    address = StringField("Address", validators=[Optional(), Length(max=300)])
    api_url = StringField("API URL", validators=[Length(max=500)],
                          description="Where work orders are posted (API labs)")
    active = BooleanField("Active (offered when creating cases)", default=True)
    notes = TextAreaField("Notes", validators=[Optional(), Length(max=4000)])
    services = FieldList(FormField(ServiceForm), min_entries=0, max_entries=30)
    add_service = HiddenField()

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Give the lab's name.")

    def validate_email(self, field):
        field.data = (field.data or "").strip()
        if field.data:
            field.data = check_email(field.data)
        elif self.channel.data == Channel.EMAIL.value:
            raise ValidationError("An email lab needs an email address: its work orders go there.")

    def validate_cc_emails(self, field):
        addresses = [a.strip() for a in (field.data or "").replace(";", ",").split(",") if a.strip()]
        field.data = ", ".join(check_email(a) for a in addresses)

    def validate_api_url(self, field):
        field.data = (field.data or "").strip()
        if self.channel.data == Channel.API.value:
            if not field.data:
                raise ValidationError("An API lab needs the URL its work orders are posted to.")
            problem = api_url_problem(field.data)
            if problem:
                raise ValidationError(problem)
        elif field.data and api_url_problem(field.data):
            raise ValidationError(api_url_problem(field.data))

    def validate_services(self, field):
        seen = set()
        for entry in field:
            if entry.form.remove.data:
                continue
            restoration = entry.form.restoration.data
            if restoration in seen:
                entry.form.restoration.errors = list(entry.form.restoration.errors) + [
                    f"{catalog.RESTORATIONS.get(restoration, restoration)} is listed twice."]
                raise ValidationError("Each service once.")
            seen.add(restoration)


class SecretForm(FlaskForm):
    """Only the CSRF token: generate or revoke a signing secret."""
