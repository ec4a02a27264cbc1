"""The retry schedule of deliveries to systems that may be down for hours: work orders and order
events to a lab's API (portal/dispatch), and write-backs to a practice management system.

A lab's API being down for an afternoon is normal, so retries are spread over more than a day,
the way the webhook senders people trust do it: by default 10 s, 1 min, 5 min, 30 min, 2 h, 5 h,
10 h and 10 h after each failed attempt (about 27.6 hours in all, nine attempts), each delay
with ±10% jitter so the deliveries held up by one outage do not all come back at once. A server
that asks for more time (`Retry-After`) gets it, up to the schedule's longest step.
`DISPATCH_RETRY_SCHEDULE` sets the steps (`10s,1m,5m,30m,2h,5h,10h,10h`).

    attempt = row.attempts                      # the attempts made so far, this one included
    wait = retries.delay(retries.in_round(attempt, row.max_attempts), retry_after)
    if wait is None: ...                        # the schedule is spent: failed for good

A row starts with `max_attempts = retries.attempts()`; a person's Retry gives it a new round
(`max_attempts = attempts + retries.attempts()`), which starts the schedule again.
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping

DEFAULT = "10s,1m,5m,30m,2h,5h,10h,10h"
JITTER = 0.1
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse(text: str) -> tuple[float, ...]:
    """"10s,1m,2h" -> (10.0, 60.0, 7200.0). Raises ValueError naming a step it cannot read."""
    steps = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _STEP.match(part.lower())
        if match is None:
            raise ValueError(f"DISPATCH_RETRY_SCHEDULE: {part.strip()!r} is not a delay like 30s, 5m or 2h")
        steps.append(float(match.group(1)) * _UNITS[match.group(2)])
    if not steps:
        raise ValueError("DISPATCH_RETRY_SCHEDULE needs at least one delay")
    return tuple(steps)


def schedule(config: Mapping | None = None) -> tuple[float, ...]:
    """The delays after the first, second, ... failed attempt (seconds)."""
    if config is None:
        from flask import current_app

        config = current_app.config
    value = config.get("DISPATCH_RETRY_SCHEDULE", DEFAULT)
    return parse(value) if isinstance(value, str) else tuple(float(v) for v in value)


def attempts(config: Mapping | None = None) -> int:
    """Attempts in one round: the first, and one after each delay."""
    return len(schedule(config)) + 1


def in_round(attempt: int, max_attempts: int, config: Mapping | None = None) -> int:
    """Which attempt of the current round `attempt` is (a person's Retry starts a new round)."""
    return max(1, attempt - (max_attempts - attempts(config)))


def delay(attempt: int, retry_after: float | None = None, config: Mapping | None = None) -> float | None:
    """Seconds to wait after failed attempt number `attempt` of a round (1 = the first), with
    jitter and never sooner than the server's Retry-After (capped at the longest step); None when
    the schedule is spent."""
    steps = schedule(config)
    if attempt < 1 or attempt > len(steps):
        return None
    wait = steps[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        wait = max(wait, min(float(retry_after), max(steps)))
    return wait


def span(config: Mapping | None = None) -> float:
    """The shortest time from the first attempt to the last (all jitter at its low end)."""
    return sum(schedule(config)) * (1 - JITTER)
