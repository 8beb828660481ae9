"""Schedulers chosen by a short name (the command line, the web demo and the evaluation use these names)."""

from __future__ import annotations

import math

from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .flow_matching import flow_shift_key, flow_shift_of
from .scheduling_linear_flow_match_euler import LinearFlowMatchEulerScheduler


SCHEDULER_NAMES = ("default", "reference", "euler", "unipc", "dpm")


def check_scheduler_choice(name: str, shift: float | None = None) -> None:
    """Refuse an unknown scheduler name, or a flow shift that is not positive or goes to the unshifted 'reference'."""
    if name not in SCHEDULER_NAMES:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}.")
    number = isinstance(shift, (int, float)) and not isinstance(shift, bool) and math.isfinite(shift)
    if shift is not None and not (number and shift > 0):
        raise ValueError(f"A flow shift must be a positive number, got {shift!r}.")
    if shift is not None and name == "reference":
        raise ValueError("The authors' sampler ('reference') is unshifted by design; it takes no flow shift.")


def scheduler_by_name(name: str, current, shift: float | None = None):
    """'default' keeps `current` (the folder's scheduler); 'reference' is the authors' sampler (Euler on a linear
    grid, no shift); the others are diffusers' own. All but 'reference' sample with `current`'s flow shift, unless
    `shift` names another."""
    check_scheduler_choice(name, shift)
    if name == "default":
        key = flow_shift_key(current)
        if shift is None:
            return current
        if key is None:
            raise ValueError(f"{type(current).__name__} has no flow shift to set.")
        return type(current).from_config(current.config, **{key: float(shift)})
    shift = flow_shift_of(current) if shift is None else float(shift)
    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    choices = {
        "reference": LinearFlowMatchEulerScheduler,
        "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=shift),
        "unipc": lambda: UniPCMultistepScheduler(**flow),
        "dpm": lambda: DPMSolverMultistepScheduler(**flow),
    }
    return choices[name]()
