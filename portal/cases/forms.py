from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField, DateField, DecimalField, FieldList, Form, FormField, HiddenField, IntegerField, SelectChoice,
    SelectField, StringField, TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, ValidationError

from portal.cases import catalog, teeth


def choices(pairs) -> list[SelectChoice]:
    """WTForms 3.3 wants SelectChoice objects; accept a mapping or (value, label) pairs."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return [SelectChoice(value, label) for value, label in items]


_choices = choices


class ItemForm(Form):
    """One prescription line. Teeth are typed in the practice's numbering and stored in FDI."""

    teeth = StringField("Teeth", validators=[Optional(), Length(max=200)])
    restoration = SelectField("Restoration", choices=_choices(catalog.RESTORATIONS))
    material = StringField("Material", validators=[Optional(), Length(max=60)])
    shade = StringField("Shade", validators=[Optional(), Length(max=20)])
    margin = SelectField("Margin", choices=choices([("", "—")] + list(catalog.MARGINS.items())), validate_choice=True)
    notes = TextAreaField("Notes", validators=[Optional(), Length(max=2000)])

    numbering = "fdi"  # set by CaseForm before validation

    def validate_teeth(self, field):
        if not field.data:
            if self.restoration.data not in catalog.ARCH_WORK:
                raise ValidationError("Name the teeth for this restoration.")
            field.fdi = []
            return
        try:
            field.fdi = teeth.parse(field.data, self.numbering)
        except teeth.ToothError as exc:
            raise ValidationError(str(exc)) from None
        if self.restoration.data in ("bridge", "implant_bridge") and len(field.fdi) < 2:
            raise ValidationError("A bridge spans at least two teeth, e.g. 3-5.")


class CaseForm(FlaskForm):
    # Chosen from a searchable radio list (a practice has thousands of patients, not a <select>'s worth).
    patient_id = IntegerField("Patient", validators=[InputRequired("Choose the patient.")])
    patient_q = StringField("Find patient", validators=[Optional(), Length(max=100)])
    find_patient = HiddenField()
    provider_id = SelectField("Provider", coerce=int, validators=[InputRequired("Choose the provider.")])
    lab_id = SelectField("Lab", coerce=int, validators=[InputRequired("Choose a lab.")])
    seat_appointment_id = SelectField("Seat appointment", coerce=int, validate_choice=False)
    due_date = DateField("Due date", validators=[Optional()],
                         description="Leave blank to compute it from the lab's turnaround.")
    instructions = TextAreaField("Instructions to the lab", validators=[Optional(), Length(max=4000)])
    fee = DecimalField("Fee", places=2, validators=[Optional(), NumberRange(min=0, max=100000)])
    invoice_number = StringField("Invoice number", validators=[Optional(), Length(max=60)])
    origin = SelectField("Origin", choices=_choices(catalog.ORIGINS))
    origin_order_id = StringField("Scanner order id", validators=[Optional(), Length(max=100)])
    stage = SelectField("Stage", choices=_choices(catalog.STAGES))
    previous_stage_number = StringField("Follows case (try-in)", validators=[Optional(), Length(max=20)])
    items = FieldList(FormField(ItemForm), min_entries=1, max_entries=12)
    add_item = HiddenField()

    def set_numbering(self, system: str) -> None:
        for entry in self.items:
            entry.form.numbering = system

    def validate_origin_order_id(self, field):
        if self.origin.data != "manual" and not field.data:
            raise ValidationError("Give the scanner's order id so the scan can be found later.")


class MoveForm(FlaskForm):
    status = HiddenField(validators=[DataRequired()])
    reason = StringField("Reason", validators=[Optional(), Length(max=500)])


class RemakeForm(FlaskForm):
    reason = SelectField("Why", choices=_choices(catalog.REMAKE_REASONS))
    payer = SelectField("Who pays", choices=_choices(catalog.REMAKE_PAYERS))
    notes = TextAreaField("What was wrong", validators=[DataRequired("Say what was wrong, for the lab."),
                                                        Length(max=2000)])


class CheckInForm(FlaskForm):
    quality_checked = BooleanField("Quality checked: fit on model, shade and contacts as prescribed")
    quality_note = StringField("Note", validators=[Optional(), Length(max=500)])
