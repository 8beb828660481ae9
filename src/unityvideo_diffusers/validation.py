"""Small helpers for messages that say what was wrong and what is allowed."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def unknown_key(key: str, valid: Iterable[str], where: str = "") -> str:
    """ "Unknown key 'x' in F; did you mean 'y'?" (or without the suggestion when nothing is close)."""
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f"Unknown key {key!r}{f' in {where}' if where else ''}" + (
        f"; did you mean {close[0]!r}?" if close else "."
    )


def check_model_source(source: str, option: str) -> None:
    """A model (or LoRA) named by `option` must be an existing path or a Hub id `owner/name`; anything else (such as
    a mistyped `./pretrained_models`) is named as both, instead of huggingface_hub's repo-id rules."""

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


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 and every user does: `1e-5` is a float, not a string
    (YAML 1.1 wants `1.0e-5`), while `1_000` or `0x10` stay as they were."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str):
    """YAML text (a config file, or one `--set` value) to Python values, with YAML 1.2 numbers."""
    return yaml.load(text, Loader=_Yaml12Loader)


def numeric_problem(name: str, value, whole: bool = False) -> tuple[str | None, int | float]:
    """(None, `value` as a number: an int if `whole`, else a float) when it is one, a numeric string included (a
    quoted `"1e-5"`); else (a message naming `name`, `value`), never a TypeError later."""
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return f"{name} must be {kind}, got {value!r}", value
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        return f"{name} must be {kind}, got {value!r}", value
    if not whole:
        return None, float(number)
    if isinstance(number, float) and not number.is_integer():
        return f"{name} must be {kind}, got {value!r}", value
    return None, int(number)


def check_size(name: str, value, vae_factor: int, patch: int) -> None:
    """Heights and widths are multiples of the VAE's spatial factor times the transformer's patch: 32 for the released
    model (16 x 2), 16 for the bundled demo model (8 x 2). One rule and one message for the pipelines and the CLI."""
    multiple = vae_factor * patch
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        raise ValueError(
            f"`{name}` must be a positive multiple of {multiple} (VAE {vae_factor}x times patch {patch}), got {value!r}."
        )


def size_factors(model: str | os.PathLike) -> tuple[int, int]:
    """(VAE spatial factor, transformer height patch) of a local model folder, read from its configs before anything
    is loaded; the released model's (16, 2) for a Hub id."""
    folder = Path(model)
    vae, transformer = folder / "vae" / "config.json", folder / "transformer" / "config.json"
    if not (vae.is_file() and transformer.is_file()):
        return 16, 2
    return json.loads(vae.read_text())["scale_factor_spatial"], json.loads(transformer.read_text())["patch_size"][1]
