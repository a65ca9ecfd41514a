"""Checks of user-given settings, shared by the scorers, the runner and recipes: each error names the setting,
what was given and what is allowed, before any model loads."""

from __future__ import annotations

from typing import Any


def require_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``; else a ValueError that says so."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value
