"""The upload page's form: the patient (optional), one of their open cases (optional), the files."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import MultipleFileField
from wtforms import IntegerField, StringField
from wtforms.validators import Length, Optional


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
