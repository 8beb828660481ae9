"""Sampling defaults: what a call uses for each setting it is not given, one set per job.

They belong to the model, not to the code: a model samples best at the size and length it was trained on, with the
steps, guidance and scheduler measured for it. So a pipeline folder records them in its `model_index.json`
(`sampling_defaults`, a pipeline config entry that `save_pretrained` keeps), and the pipelines, the command line, the
web demo and the evaluation all read them from there. A folder without them gets the released 5B model's.
"""

from __future__ import annotations

import math

from .schedulers import SCHEDULER_NAMES
from .tasks import resolve_task


SETTINGS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "scheduler")

# The released model was trained at 33 x 256 x 256, with noise levels drawn logit-normal and shifted by 5, so UniPC at
# that shift samples where it was trained (the authors' unshifted grid spends a quarter of its steps at t <= 0.25,
# where 0.3 % of the training went). Guidance 1, as the authors sample. Steps: the demo model, trained the same way,
# reaches the authors' 20 Euler steps at 4 (joint), 3 (control) and 1 (perception) UniPC steps at shift 5 (its own
# folder samples at shift 3, which lets 3 and 2 do); a real video's velocity field bends more than that of flat shapes,
# so the released model gets 10, 10 and 4: half the authors' evaluations or fewer (docs/schedulers_and_speed.md).
RELEASED_SAMPLING_DEFAULTS: dict[str, dict] = {
    "joint": dict(height=256, width=256, num_frames=33, num_inference_steps=10, guidance_scale=1.0, scheduler="default"),
    "control": dict(height=256, width=256, num_frames=33, num_inference_steps=10, guidance_scale=1.0, scheduler="default"),
    "perception": dict(height=256, width=256, num_frames=33, num_inference_steps=4, guidance_scale=1.0, scheduler="default"),
}  # fmt: skip


def _check_setting(job: str, key: str, value) -> None:
    where = f"sampling_defaults[{job!r}][{key!r}]"
    if key == "scheduler":
        if value not in SCHEDULER_NAMES:
            raise ValueError(f"{where} must be one of {', '.join(SCHEDULER_NAMES)}, got {value!r}.")
    elif key == "guidance_scale":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
            raise ValueError(f"{where} must be a number >= 1 (1 = no guidance), got {value!r}.")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive integer, got {value!r}.")


def resolve_sampling_defaults(recorded: dict | None) -> dict[str, dict]:
    """A folder's recorded defaults, checked, with every job and setting it leaves out filled in from the released
    model's. Jobs may be named by any of their names (`text2all`, `estimate`, ...)."""
    if recorded is not None and not isinstance(recorded, dict):
        raise TypeError(
            f"sampling_defaults must be a mapping of job names to settings, got {type(recorded).__name__}."
        )
    resolved = {job: dict(settings) for job, settings in RELEASED_SAMPLING_DEFAULTS.items()}
    for job, settings in (recorded or {}).items():
        name = resolve_task(job).name
        if not isinstance(settings, dict):
            raise TypeError(
                f"sampling_defaults[{job!r}] must be a mapping of settings, got {type(settings).__name__}."
            )
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValueError(
                f"sampling_defaults[{job!r}] has unknown settings {unknown}; known: {', '.join(SETTINGS)}."
            )
        for key, value in settings.items():
            _check_setting(job, key, value)
        resolved[name].update(settings)
    return resolved


def trained_size(defaults: dict[str, dict]) -> tuple[int, int, int]:
    """(frames, height, width) the model was trained at: its text -> video defaults."""
    joint = defaults["joint"]
    return joint["num_frames"], joint["height"], joint["width"]


__all__ = ["RELEASED_SAMPLING_DEFAULTS", "SETTINGS", "resolve_sampling_defaults", "trained_size"]
