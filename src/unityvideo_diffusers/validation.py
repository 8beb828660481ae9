"""Small helpers for messages that say what was wrong and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


def unknown_key(key: str, valid: Iterable[str], where: str = "") -> str:
    """ "Unknown key 'x' in F; did you mean 'y'?" (or without the suggestion when nothing is close)."""
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f"Unknown key {key!r}{f' in {where}' if where else ''}" + (
        f"; did you mean {close[0]!r}?" if close else "."
    )


def check_model_source(source: str, option: str) -> None:
    """A model (or LoRA) named by `option` must be an existing path or a Hub id `owner/name`; anything else (such as
    a mistyped `./pretrained_models`) is named as both, instead of huggingface_hub's repo-id rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(source, str) or not source:
        raise ValueError(f"{option} must be a folder or a Hub id (owner/name), got {source!r}.")
    if Path(source).exists():
        return
    try:
        validate_repo_id(source)
        is_hub_id = source.count("/") == 1
    except HFValidationError:
        is_hub_id = False
    if not is_hub_id:
        raise FileNotFoundError(f"{option} {source}: no such folder, and not a Hub id (owner/name).")
