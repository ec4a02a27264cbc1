from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from portal.cases.forms import choices
from portal.labs.forms import check_email
from portal.practices.models import Role

ROLE_LABELS = {
    Role.COORDINATOR: "Coordinator — creates and moves cases",
    Role.MANAGER: "Manager — reads everything and the reports",
    Role.ADMIN: "Admin — labs, users and settings, and what a coordinator does",
}
MIN_PASSWORD = 12


def _role_field(label: str = "Role") -> SelectField:
    return SelectField(label, choices=choices([(r.value, ROLE_LABELS[r]) for r in Role]),
                       validators=[DataRequired("Pick a role.")])


class AddUserForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired("Enter their name."), Length(max=200)])
    email = EmailField("Email", validators=[DataRequired("Enter their email address."), Length(max=254)])
    role = _role_field()

    def validate_email(self, field):
        field.data = check_email(field.data.strip())  # raises ValidationError with the reason


class RoleForm(FlaskForm):
    role = _role_field()


class SetPasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[
        DataRequired("Choose a password."),
        Length(min=MIN_PASSWORD, max=200, message=f"Use at least {MIN_PASSWORD} characters."),
    ], description=f"At least {MIN_PASSWORD} characters. A few words you will remember are fine.")
    confirm = PasswordField("Repeat it", validators=[
        DataRequired("Type the password again."), EqualTo("password", "The two passwords differ."),
    ])
