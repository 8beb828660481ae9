"""Small helpers for messages that say what was wrong and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_key(key: str, valid: Iterable[str], where: str = "") -> str:
    """ "Unknown key 'x' in F; did you mean 'y'?" (or without the suggestion when nothing is close)."""
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f"Unknown key {key!r}{f' in {where}' if where else ''}" + (
        f"; did you mean {close[0]!r}?" if close else "."
    )
