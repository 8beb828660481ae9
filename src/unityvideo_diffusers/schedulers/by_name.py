"""Schedulers chosen by a short name (the command line, the web demo and the evaluation use these names)."""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .scheduling_linear_flow_match_euler import LinearFlowMatchEulerScheduler


SCHEDULER_NAMES = ("default", "reference", "euler", "unipc", "dpm")


def flow_shift_of(scheduler) -> float:
    """The flow shift a scheduler samples with: the one its model was trained for, when it is the folder's own."""
    config = scheduler.config
    return float(config.get("flow_shift") if config.get("use_flow_sigmas") else config.get("shift", 5.0))


def scheduler_by_name(name: str, current):
    """'default' keeps `current` (the folder's scheduler); 'reference' is the authors' sampler (Euler on a linear
    grid, no shift); the others are diffusers' own, with `current`'s flow shift."""
    if name not in SCHEDULER_NAMES:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}.")
    shift = flow_shift_of(current)
    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    choices = {
        "default": lambda: current,
        "reference": LinearFlowMatchEulerScheduler,
        "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=shift),
        "unipc": lambda: UniPCMultistepScheduler(**flow),
        "dpm": lambda: DPMSolverMultistepScheduler(**flow),
    }
    return choices[name]()
