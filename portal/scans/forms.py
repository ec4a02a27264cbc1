"""The inbox's forms (match a patient, choose a case, dismiss) and the upload page's form."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import MultipleFileField
from wtforms import HiddenField, IntegerField, SelectField, StringField
from wtforms.validators import InputRequired, Length, Optional, ValidationError

from portal.cases.forms import choices


class OptionalId(IntegerField):
    """An id chosen from a list, or none: "" and "0" read as none; anything else not a number is
    an error beside the field."""

    def process_formdata(self, valuelist):
        raw = (valuelist[0] if valuelist else "").strip()
        if raw in ("", "0"):
            self.data = None
            return
        try:
            self.data = int(raw)
        except ValueError:
            self.data = None
            raise ValueError("Choose from the list.") from None


class UploadForm(FlaskForm):
    patient_q = StringField("Find the patient", validators=[Optional(), Length(max=100)])
    patient_id = OptionalId("Patient", validators=[Optional()])
    case_id = OptionalId("Case", validators=[Optional()])
    files = MultipleFileField("Scan files")


class ActionForm(FlaskForm):
    """Only the CSRF token: restore a scan, make a new case from it."""


class ChoiceId(IntegerField):
    """The id of a row chosen from a list; anything else reads as "choose from the list"."""

    def __init__(self, label, message: str, **kwargs):
        super().__init__(label, validators=[InputRequired(message)], **kwargs)
        self.message = message

    def process_formdata(self, valuelist):
        try:
            super().process_formdata(valuelist)
        except ValueError:
            raise ValueError(self.message) from None


class ConfirmField(HiddenField):
    """"1" once the person has seen the scanner's patient beside the record and confirmed."""

    @property
    def confirmed(self) -> bool:
        return (self.data or "") == "1"


class PatientForm(FlaskForm):
    patient_id = ChoiceId("Patient", "Choose the patient from the list.")
    confirm = ConfirmField()


class CaseChoiceForm(FlaskForm):
    case_id = ChoiceId("Case", "Choose one of the patient's open cases.")
    confirm = ConfirmField()


class JawForm(FlaskForm):
    file_id = ChoiceId("File", "Choose one of the scan's files.")
    jaw = SelectField("Jaw", choices=choices([("upper", "Upper"), ("lower", "Lower"), ("bite", "Bite"),
                                              ("unknown", "Not known")]),
                      validators=[InputRequired("Choose upper, lower, bite or not known.")])


class DismissForm(FlaskForm):
    reason = StringField("Why", validators=[InputRequired("Say why the scan is set aside."), Length(max=300)])

    def validate_reason(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Say why the scan is set aside.")
