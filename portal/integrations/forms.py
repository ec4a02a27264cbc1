from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, SelectMultipleField, StringField
from wtforms.validators import InputRequired, Length, Optional, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from portal.integrations.models import ScannerIntegration
from portal.integrations.services import SETTINGS
from portal.integrations.services import stored_secrets
from portal.integrations.vendor import Vendor


class Checkboxes(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()

    def pre_validate(self, form):
        known = {value for value, _ in self.choices}
        if any(value not in known for value in self.data or ()):
            raise ValidationError("Choose labs from the list.")

    def process_formdata(self, valuelist):
        try:
            self.data = [self.coerce(v) for v in valuelist]
        except (TypeError, ValueError):
            self.data = []
            raise ValueError("Choose labs from the list.") from None


class IntegrationForm(FlaskForm):
    """The fields every integration has; `integration_form` adds the vendor's own."""

    name = StringField("Name", validators=[InputRequired("Give the integration a name people here will recognise."),
                                           Length(max=100)],
                       description="How people here call it, e.g. “Surgery 2 iTero”.")
    lab_ids = Checkboxes("Labs it may send to", coerce=int)

    vendor: Vendor

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Give the integration a name people here will recognise.")

    def validate_lab_ids(self, field):
        if not field.data and self.vendor.kind == "scanner":
            raise ValidationError("Choose at least one lab this scanner may send to.")

    @property
    def vendor_fields(self):
        return [self[s.key] for s in SETTINGS[self.vendor]]

    def values(self) -> dict[str, str]:
        return {s.key: (self[s.key].data or "").strip() for s in SETTINGS[self.vendor]}


def integration_form(vendor: Vendor, integration: ScannerIntegration | None = None, **kwargs) -> IntegrationForm:
    """The form for `vendor`: its settings as text fields, its secrets as password fields that are
    never filled back in (left blank on an edit, the stored secret is kept)."""
    stored = {}
    if integration is not None:
        stored = stored_secrets(integration) or {}

    class Form(IntegrationForm):
        pass

    Form.vendor = vendor
    for s in SETTINGS[vendor]:
        description = s.hint
        if s.secret:
            kept = stored.get(s.key)
            field = PasswordField(s.label, validators=[Optional(), Length(max=500)], description=description,
                                  render_kw={"autocomplete": "new-password", "spellcheck": "false",
                                             "placeholder": "stored (hidden)" if kept else ""})
        else:
            field = StringField(s.label, validators=[Optional(), Length(max=500)], description=description,
                                default=s.default, render_kw={"spellcheck": "false"})
        setattr(Form, s.key, field)
    return Form(**kwargs)


class ActionForm(FlaskForm):
    """Only the CSRF token: pause, resume, connect, test, sync, disconnect, a new notification URL."""


class FinishSignInForm(FlaskForm):
    """The vendor's authorization code and the state, carried from the sign-in's return to a POST."""

    code = HiddenField(validators=[InputRequired(), Length(max=2000)])
    state = HiddenField(validators=[InputRequired(), Length(max=200)])


class PairForm(FlaskForm):
    account_id = StringField("Account", validators=[InputRequired("Choose the account to pair to.")])
