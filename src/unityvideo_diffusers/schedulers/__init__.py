from diffusers import UniPCMultistepScheduler

from .by_name import SCHEDULER_NAMES, check_scheduler_choice, scheduler_by_name
from .flow_matching import check_flow_scheduler, flow_shift_of
from .scheduling_linear_flow_match_euler import LinearFlowMatchEulerScheduler


def default_scheduler() -> UniPCMultistepScheduler:
    """The scheduler a UnityVideo pipeline folder ships with.

    UniPC (flow prediction) with flow shift 5: the model was trained on timesteps drawn logit-normal and shifted by
    s = 5, so a shift-5 schedule spends its steps where training did; it is also the base Wan2.2-TI2V-5B's default,
    and UniPC reaches in 20-30 steps what first-order Euler needs many more for. For step-for-step reproduction of
    the authors' script use `LinearFlowMatchEulerScheduler` instead.
    """
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)


__all__ = [
    "SCHEDULER_NAMES",
    "LinearFlowMatchEulerScheduler",
    "check_flow_scheduler",
    "default_scheduler",
    "flow_shift_of",
    "check_scheduler_choice",
    "scheduler_by_name",
]
