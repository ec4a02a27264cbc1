from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from portal.cases.forms import choices


class PracticeForm(FlaskForm):
    name = StringField("Practice name", validators=[DataRequired(), Length(max=200)])
    phone = StringField("Phone", validators=[Optional(), Length(max=40)])
    address = StringField("Address", validators=[Optional(), Length(max=300)])
    tooth_numbering = SelectField("Tooth numbering", choices=choices(
        [("universal", "Universal (1-32, A-T)"), ("fdi", "FDI / ISO 3950 (11-48)")]))
    seat_buffer_days = IntegerField(
        "Seat-risk buffer (business days)", validators=[DataRequired(), NumberRange(min=0, max=15)],
        description="Work due later than the seat appointment minus this many business days is flagged.")


class ClosureForm(FlaskForm):
    day = DateField("Closed on", validators=[DataRequired("Pick the day.")])
    reason = StringField("Reason", validators=[Optional(), Length(max=200)])
