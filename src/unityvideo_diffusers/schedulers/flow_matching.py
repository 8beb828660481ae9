"""Which diffusers schedulers can sample UnityVideo, and the flow shift they carry.

UnityVideo predicts a flow velocity (noise - data) at sigma = t / 1000. A scheduler that reads the model's output as
noise (epsilon), v-prediction or a sample, or that steps on a noise schedule other than sigma, returns garbage or
fails deep inside diffusers with an unrelated message. Every diffusers scheduler was tried on the exact velocity of a
one-point data set (which any correct flow sampler follows to that point; tests/test_schedulers.py): those below
reach it, all others do not, so the check is an allow-list.
"""

from __future__ import annotations

import logging

from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    FlowMapEulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    LTXEulerAncestralRFScheduler,
    UniPCMultistepScheduler,
)

from .scheduling_linear_flow_match_euler import LinearFlowMatchEulerScheduler


logger = logging.getLogger(__name__)

# flow-matching by construction; their flow shift is `shift`
NATIVE_FLOW_SCHEDULERS = (
    FlowMatchEulerDiscreteScheduler,  # also the project's LinearFlowMatchEulerScheduler (the authors' sampler)
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    FlowMapEulerDiscreteScheduler,
    LTXEulerAncestralRFScheduler,
)
# flow-matching with prediction_type="flow_prediction", use_flow_sigmas=True; their flow shift is `flow_shift`
FLOW_PREDICTION_SCHEDULERS = (UniPCMultistepScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler)

FLOW_SCHEDULERS_HINT = (
    "use a flow-matching scheduler: FlowMatchEulerDiscreteScheduler(shift=5.0), FlowMatchHeunDiscreteScheduler, "
    "UniPCMultistepScheduler / DPMSolverMultistepScheduler / DPMSolverSinglestepScheduler with "
    'prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, or LinearFlowMatchEulerScheduler '
    "(the authors' sampler); 5.0 is the shift the released model was trained with"
)


def flow_shift_key(scheduler) -> str | None:
    """The config key holding `scheduler`'s flow shift ("shift" or "flow_shift"), or None if it has none to set (the
    authors' sampler steps on an unshifted grid by design)."""
    if isinstance(scheduler, LinearFlowMatchEulerScheduler):
        return None
    if isinstance(scheduler, NATIVE_FLOW_SCHEDULERS):
        return "shift" if "shift" in scheduler.config else None
    if isinstance(scheduler, FLOW_PREDICTION_SCHEDULERS):
        return "flow_shift"
    return None


def flow_shift_of(scheduler) -> float:
    """The flow shift `scheduler` samples with (1: none)."""
    key = flow_shift_key(scheduler)
    return 1.0 if key is None else float(scheduler.config[key])


def check_flow_scheduler(scheduler) -> None:
    """Refuse a scheduler that does not sample a flow-matching model, naming the ones that do."""
    name = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    if isinstance(scheduler, FLOW_PREDICTION_SCHEDULERS):
        if config.get("prediction_type") != "flow_prediction" or not config.get("use_flow_sigmas"):
            raise ValueError(
                f"{name} with prediction_type={config.get('prediction_type')!r} and "
                f"use_flow_sigmas={config.get('use_flow_sigmas')!r} does not predict flow, and UnityVideo is a "
                f"flow-matching model (`{name}.from_config(flow_config)` falls back to epsilon): "
                f"{FLOW_SCHEDULERS_HINT}."
            )
    elif not isinstance(scheduler, NATIVE_FLOW_SCHEDULERS):
        what = f"prediction_type={config['prediction_type']!r}" if config.get("prediction_type") else "no flow"
        raise ValueError(f"{name} ({what}) cannot sample UnityVideo, a flow-matching model: {FLOW_SCHEDULERS_HINT}.")
    if config.get("use_dynamic_shifting"):
        raise ValueError(
            f"{name} with use_dynamic_shifting=True needs a resolution-dependent `mu` that UnityVideo does not use: "
            "set use_dynamic_shifting=False and a fixed shift (5.0 for the released model)."
        )


def keep_flow_shift(previous, scheduler):
    """`scheduler`, replacing `previous` in a pipeline, with `previous`'s flow shift (the one its model was trained
    for) when it was built without choosing one: `FlowMatchEulerDiscreteScheduler.from_config(unipc.config)` or
    `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)` would otherwise silently
    shift by 1.0. A shift chosen explicitly is kept, with a warning when it differs."""
    old_key, new_key = flow_shift_key(previous), flow_shift_key(scheduler)
    if old_key is None or new_key is None or previous.config[old_key] == scheduler.config[new_key]:
        return scheduler
    shift = previous.config[old_key]
    if new_key in scheduler.config.get("_use_default_values", ()):
        config = {key: value for key, value in scheduler.config.items() if key != "_use_default_values"}
        return type(scheduler).from_config({**config, new_key: shift})
    logger.warning(
        "The new %s shifts by %s=%s, the previous scheduler by %s=%s (the shift the model folder was saved with); "
        "pass %s=%s to keep it.",
        type(scheduler).__name__,
        new_key,
        scheduler.config[new_key],
        old_key,
        shift,
        new_key,
        shift,
    )
    return scheduler
