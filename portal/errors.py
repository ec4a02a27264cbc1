"""Errors a person caused and can fix: the message is shown to them as it is.

A service raises :class:`UserError` for input its rules refuse (a taken chart number, a lab of
another practice, the last admin stepping down). ``field`` names the form field the message
belongs beside; without one the page shows it above the form. Routes catch it and put the
message on the form (``form[exc.field].errors``) or in a flash.
"""
from __future__ import annotations


class UserError(ValueError):
    """Input the rules refuse; ``str(exc)`` is the message, ``field`` the form field or None."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
