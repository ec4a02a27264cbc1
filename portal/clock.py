"""The one clock: naive UTC datetimes, as every DateTime column of the schema stores them."""
from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
