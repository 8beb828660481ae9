"""The modalities UnityVideo knows: names, the fixed prompt of each, and name resolution.

The released model was trained with one fixed prompt per modality on the modality stream; those
prompts are reproduced verbatim here because the model's behaviour depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    name: str
    prompt: str
    description: str


_REGISTRY: dict[str, Modality] = {}
_ALIASES: dict[str, str] = {}


def register_modality(name: str, prompt: str, description: str = "", aliases: tuple[str, ...] = ()) -> Modality:
    """Make a modality known by name (e.g. a new one added for fine-tuning)."""
    if not name.isidentifier():
        raise ValueError(f"Modality name {name!r} must be a Python identifier (letters, digits, underscores).")
    if name in _REGISTRY or name in _ALIASES:
        raise ValueError(f"Modality {name!r} is already registered.")
    modality = Modality(name=name, prompt=prompt, description=description)
    _REGISTRY[name] = modality
    for alias in aliases:
        _ALIASES[alias] = name
    return modality


def resolve_modality(name: str) -> str:
    """Canonical name of a modality, accepting aliases ('flow' -> 'raft'); raises on unknown names."""
    if not isinstance(name, str):
        raise TypeError(f"A modality is named by a string, got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"Unknown modality {name!r}. Known: {', '.join(known_modalities())}.")
    return key


def get_modality(name: str) -> Modality:
    return _REGISTRY[resolve_modality(name)]


def modality_prompt(name: str) -> str:
    """The fixed text the modality stream is conditioned on."""
    return get_modality(name).prompt


def known_modalities() -> list[str]:
    return list(_REGISTRY)


register_modality(
    "depth",
    "depth map visualization, scene depth from camera, near in warm colors and far in cool colors.",
    "relative depth, colour-mapped (near warm, far cool)",
)
register_modality(
    "densepose",
    "densepose visualization with body part UV coordinates.",
    "DensePose body-part UV visualisation",
    aliases=("dense_pose",),
)
register_modality(
    "raft",
    "optical flow visualization showing motion direction with color and magnitude with intensity.",
    "optical flow (RAFT), colour-wheel visualisation",
    aliases=("flow", "optical_flow", "opticalflow"),
)
register_modality(
    "segmentation",
    "segmentation mask of foreground objects against background.",
    "foreground segmentation masks",
    aliases=("seg", "mask"),
)
register_modality(
    "skeleton",
    "human skeleton pose visualization with body keypoints and limbs.",
    "human pose skeleton (keypoints and limbs)",
    aliases=("pose", "openpose"),
)

# The released checkpoint's modalities, in the order of its config.json; ids index this order.
RELEASED_MODALITIES: tuple[str, ...] = ("depth", "densepose", "raft", "segmentation", "skeleton")
