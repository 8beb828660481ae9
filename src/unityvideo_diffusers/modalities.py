"""The modalities UnityVideo knows: names, the fixed prompt of each, and name resolution.

The released model was trained with one fixed prompt per modality on the modality stream; those
prompts are reproduced verbatim here because the model's behaviour depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

# ShapesWorld's extra modalities (the demo model reads and writes them too)
register_modality(
    "normal",
    "surface normal map visualization, facing the camera in blue, up in green.",
    "surface normals, (x, -y, -z) mapped to RGB",
    aliases=("normals", "surface_normal"),
)
register_modality(
    "edge",
    "edge map visualization, white object outlines on black.",
    "object outlines, white on black",
    aliases=("edges",),
)

# The released checkpoint's modalities, in the order of its config.json; ids index this order.
RELEASED_MODALITIES: tuple[str, ...] = ("depth", "densepose", "raft", "segmentation", "skeleton")


# ---------------------------------------------------------------------------------------------------------------------
# Visualisations <-> numbers. The model reads and writes modality videos as RGB visualisations; these turn arrays into
# the visualisations a control pipeline expects and decode generated visualisations back into numbers. All take and
# return arrays of shape (..., H, W, 3) with values in [0, 1] (any leading frame/batch axes).
#
# Colour conventions (assumptions, the authors do not publish their renderers):
# - depth: relative inverse depth (disparity) normalised to [0, 1] per video, through matplotlib's "Spectral_r"
#   (ColorBrewer Spectral, reversed), the map Depth Anything uses: near = warm red, far = cool blue, as the depth prompt
#   says. Decoding returns relative disparity in [0, 1]; metric depth needs a per-video scale and shift.
# - raft (optical flow): the Middlebury colour wheel of RAFT's `flow_to_image`, magnitude normalised by the largest
#   flow in the frame. Decoding returns (dx, dy) in units of that largest magnitude (pass `max_magnitude` to rescale).
# - segmentation: a fixed palette with black background; decoding maps each pixel to the nearest palette colour.


def _piecewise_linear(values: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """values in [0, 1] -> colours interpolated along evenly spaced control colours (n, 3)."""
    position = np.clip(values, 0.0, 1.0) * (len(colours) - 1)
    low = np.minimum(np.floor(position).astype(int), len(colours) - 2)
    fraction = (position - low)[..., None]
    return colours[low] * (1 - fraction) + colours[low + 1] * fraction


def _nearest_on_polyline(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Inverse of `_piecewise_linear`: the value in [0, 1] whose colour is closest to each pixel."""
    flat = pixels.reshape(-1, 3).astype(np.float64)
    starts, ends = colours[:-1], colours[1:]
    direction = ends - starts
    # projection of every pixel onto every segment, clamped to the segment
    along = np.einsum("pc,sc->ps", flat, direction) - np.einsum("sc,sc->s", starts, direction)
    along = np.clip(along / np.einsum("sc,sc->s", direction, direction), 0.0, 1.0)
    nearest = starts[None] + along[..., None] * direction[None]
    distance = np.square(flat[:, None] - nearest).sum(-1)
    segment = distance.argmin(1)
    value = (segment + along[np.arange(len(flat)), segment]) / (len(colours) - 1)
    return value.reshape(pixels.shape[:-1])


# ColorBrewer "Spectral" (11 classes), as in matplotlib; reversed so that 0 (far) is blue and 1 (near) red.
_SPECTRAL_R = np.array(
    [[0x9E, 0x01, 0x42], [0xD5, 0x3E, 0x4F], [0xF4, 0x6D, 0x43], [0xFD, 0xAE, 0x61], [0xFE, 0xE0, 0x8B],
     [0xFF, 0xFF, 0xBF], [0xE6, 0xF5, 0x98], [0xAB, 0xDD, 0xA4], [0x66, 0xC2, 0xA5], [0x32, 0x88, 0xBD],
     [0x5E, 0x4F, 0xA2]], dtype=np.float64,
)[::-1] / 255.0  # fmt: skip


def encode_depth(depth: np.ndarray, inverse: bool = True) -> np.ndarray:
    """Depth (..., H, W) -> visualisation (..., H, W, 3). `inverse=True`: the input is metric depth (near = small) and
    is turned into disparity; `False`: it already is disparity-like (near = large). Normalised over the whole array."""
    depth = np.asarray(depth, dtype=np.float64)
    disparity = 1.0 / np.maximum(depth, 1e-8) if inverse else depth
    low, high = disparity.min(), disparity.max()
    return _piecewise_linear((disparity - low) / max(high - low, 1e-12), _SPECTRAL_R)


def decode_depth(visualisation: np.ndarray) -> np.ndarray:
    """Visualisation (..., H, W, 3) in [0, 1] -> relative disparity (..., H, W) in [0, 1] (1 = nearest)."""
    return _nearest_on_polyline(np.asarray(visualisation), _SPECTRAL_R)


def _flow_colour_wheel() -> np.ndarray:
    """The Middlebury wheel (55 colours: red-yellow-green-cyan-blue-magenta), in [0, 1]."""
    segments = [(15, (1, 0, 0), 1), (6, (1, 1, 0), 0), (4, (0, 1, 0), 2), (11, (0, 1, 1), 1), (13, (0, 0, 1), 0),
                (6, (1, 0, 1), 2)]  # fmt: skip
    wheel = []
    for length, start, channel in segments:
        for step in range(length):
            colour = np.array(start, dtype=np.float64)
            fraction = step / length
            # each segment moves one channel: up when it starts at 0, down when it starts at 1
            colour[channel] = fraction if start[channel] == 0 else 1 - fraction
            wheel.append(colour)
    return np.stack(wheel)


_WHEEL = _flow_colour_wheel()


def encode_flow(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow (..., H, W, 2) as (dx, dy) -> colour-wheel visualisation (..., H, W, 3). The magnitude is normalised by
    `max_magnitude` (default: the largest in the array, as RAFT's visualiser does per frame)."""
    flow = np.asarray(flow, dtype=np.float64)
    u, v = flow[..., 0], flow[..., 1]
    radius = np.sqrt(u**2 + v**2)
    scale = max_magnitude if max_magnitude is not None else max(radius.max(), 1e-12)
    u, v, radius = u / scale, v / scale, radius / scale
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    position = (angle + 1) / 2 * (len(_WHEEL) - 1)
    low = np.floor(position).astype(int)
    high = (low + 1) % len(_WHEEL)
    fraction = (position - low)[..., None]
    colour = (1 - fraction) * _WHEEL[low % len(_WHEEL)] + fraction * _WHEEL[high]
    saturated = 1 - np.minimum(radius, 1.0)[..., None] * (1 - colour)
    return np.where(radius[..., None] <= 1, saturated, colour * 0.75)


def decode_flow(visualisation: np.ndarray, max_magnitude: float = 1.0) -> np.ndarray:
    """Colour-wheel visualisation (..., H, W, 3) -> flow (..., H, W, 2) in units of `max_magnitude`.

    The wheel colour is saturated towards white as the magnitude shrinks: the smallest channel gives the magnitude
    (1 - min), undoing that gives the wheel colour, and its nearest place on the wheel gives the direction.
    """
    pixels = np.asarray(visualisation, dtype=np.float64)
    radius = 1.0 - pixels.min(axis=-1)
    hue = 1.0 - (1.0 - pixels) / np.maximum(radius, 1e-6)[..., None]
    closed_wheel = np.concatenate([_WHEEL, _WHEEL[:1]])
    position = _nearest_on_polyline(hue, closed_wheel) * len(_WHEEL)
    angle = (position / (len(_WHEEL) - 1) * 2 - 1) * np.pi
    return np.stack([-np.cos(angle) * radius, -np.sin(angle) * radius], axis=-1) * max_magnitude


SEGMENTATION_PALETTE = np.array(
    [[0, 0, 0], [255, 255, 255], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]],
    dtype=np.float64,
) / 255.0  # fmt: skip


def encode_segmentation(labels: np.ndarray, palette: np.ndarray = SEGMENTATION_PALETTE) -> np.ndarray:
    """Integer labels (..., H, W) (0 = background) -> palette colours (..., H, W, 3)."""
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= len(palette):
        raise ValueError(
            f"Labels must be in [0, {len(palette)}) for this palette; got [{labels.min()}, {labels.max()}]."
        )
    return palette[labels]


def decode_segmentation(visualisation: np.ndarray, palette: np.ndarray = SEGMENTATION_PALETTE) -> np.ndarray:
    """Visualisation (..., H, W, 3) -> labels (..., H, W): the nearest palette colour of each pixel."""
    pixels = np.asarray(visualisation, dtype=np.float64)
    distance = np.square(pixels[..., None, :] - palette).sum(-1)
    return distance.argmin(-1)
