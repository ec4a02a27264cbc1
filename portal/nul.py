"""NUL characters in JSON from outside (a vendor's answer, a callback, a lab's event).

PostgreSQL's text cannot hold one: storing it fails the insert, and even looking an id holding one
up fails the statement. In a name, a note or an id it means nothing. What Lab Manager reads from a
vendor has them taken out (`without_nul`); what is posted to it and holds one is refused with a
clear message (`holds_nul`).
"""
from __future__ import annotations


def holds_nul(value) -> bool:
    """Whether a string anywhere in parsed JSON (keys too) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    return False


def without_nul(value):
    """Parsed JSON with every NUL character taken out of its strings (keys too)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    return value
