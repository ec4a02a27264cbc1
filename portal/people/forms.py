from __future__ import annotations

import datetime as dt

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, DateField, SelectField, StringField, TextAreaField, TimeField
from wtforms.validators import DataRequired, InputRequired, Length, Optional, ValidationError

from portal.cases.forms import choices
from portal.people.models import AppointmentKind
from portal.people.services import IMPORT_KINDS, is_email

SEXES = {"": "—", "F": "Female", "M": "Male", "X": "X / other"}
KINDS = {AppointmentKind.SEAT.value: "Seat", AppointmentKind.TRY_IN.value: "Try-in",
         AppointmentKind.OTHER.value: "Other"}


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class PatientForm(FlaskForm):
    chart_number = StringField("Chart number", filters=[_strip],
                               validators=[DataRequired("Give the chart number."), Length(max=40)])
    first_name = StringField("First name", filters=[_strip],
                             validators=[DataRequired("Give the first name."), Length(max=100)])
    last_name = StringField("Last name", filters=[_strip],
                            validators=[DataRequired("Give the last name."), Length(max=100)])
    date_of_birth = DateField("Date of birth", validators=[Optional()])
    sex = SelectField("Sex", choices=choices(SEXES))
    phone = StringField("Phone", filters=[_strip], validators=[Optional(), Length(max=40)])
    email = StringField("Email", filters=[_strip], validators=[Optional(), Length(max=254)])

    def validate_email(self, field):
        if field.data and not is_email(field.data):
            raise ValidationError("That is not an email address.")

    def validate_date_of_birth(self, field):
        if field.data and field.data > dt.date.today():
            raise ValidationError("The date of birth is in the future.")


class ProviderForm(FlaskForm):
    abbr = StringField("Abbreviation", filters=[_strip],
                       validators=[DataRequired("Give a short abbreviation, e.g. DRS."), Length(max=20)],
                       description="As in Open Dental; appointments imported by Abbr find the provider by it.")
    name = StringField("Name", filters=[_strip], validators=[DataRequired("Give the name."), Length(max=200)])
    license_number = StringField("License number", filters=[_strip], validators=[Optional(), Length(max=40)])
    active = BooleanField("Active (offered on new cases)", default=True)


class AppointmentForm(FlaskForm):
    patient_id = SelectField("Patient", coerce=int, validators=[InputRequired("Choose the patient.")])
    provider_id = SelectField("Provider", coerce=int, validate_choice=False)
    day = DateField("Date", validators=[InputRequired("Give the date.")])
    time = TimeField("Time", format=["%H:%M", "%H:%M:%S"], validators=[InputRequired("Give the time.")])
    kind = SelectField("Kind", choices=choices(KINDS))
    note = TextAreaField("Note", filters=[_strip], validators=[Optional(), Length(max=500)])

    def validate_patient_id(self, field):
        if field.data == 0:
            raise ValidationError("Choose the patient.")


class ImportForm(FlaskForm):
    kind = SelectField("The file holds", choices=choices(IMPORT_KINDS))
    file = FileField("CSV file", description="Open Dental export, comma or tab separated, up to 5 MB.")

    def validate_file(self, field):
        if not field.data or not getattr(field.data, "filename", ""):
            raise ValidationError("Choose a CSV file to upload.")
