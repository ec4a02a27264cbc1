"""The person's way back from a vendor's sign-in page, as a browser takes it."""
from __future__ import annotations

import html
import re

FIELD = re.compile(r'<input id="(code|state)" name="\1" type="hidden" value="([^"]*)"')


def finish_sign_in(client, back: str):
    """GET `back` (the path the vendor redirected to, with code and state): the page asks to
    finish, and the person's click POSTs the code (nothing is stored on the GET)."""
    page = client.get(back)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "Finish connecting" in text, text
    fields = {name: html.unescape(value) for name, value in FIELD.findall(text)}
    return client.post("/admin/scanners/oauth/callback", {"code": fields["code"], "state": fields["state"]})
