"""Scheduler checks: every diffusers scheduler either samples UnityVideo's flow correctly or is refused before any
transformer call, with a message naming the ones that work; moving between flow schedulers keeps the flow shift."""

from __future__ import annotations

import inspect
import logging

import diffusers
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.schedulers import LinearFlowMatchEulerScheduler, check_flow_scheduler
from unityvideo_diffusers.tasks import resolve_task
from unityvideo_diffusers.testing import tiny_pipeline_components


FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)


def scheduler_cases() -> list:
    """Every diffusers scheduler class built with its defaults, and with flow options where it has them."""
    cases = []
    for name in sorted(dir(diffusers)):
        cls = getattr(diffusers, name, None)
        if not inspect.isclass(cls) or not issubclass(cls, SchedulerMixin) or cls is SchedulerMixin:
            continue
        try:
            default = cls()
        except TypeError:  # needs arguments (not buildable with defaults)
            continue
        cases.append(pytest.param(cls, {}, id=name))
        if "use_flow_sigmas" in default.config:
            options = {key: value for key, value in FLOW.items() if key in default.config}
            cases.append(pytest.param(cls, options, id=f"{name}-flow"))
    return cases + [pytest.param(LinearFlowMatchEulerScheduler, {}, id="LinearFlowMatchEulerScheduler")]


@pytest.fixture(scope="module")
def pipe():
    return UnityVideoPipeline(**tiny_pipeline_components())


def samples_one_point(pipe, scheduler) -> bool:
    """Run the pipeline's own loop with the exact velocity field of a one-point data set, v(x, t) = (x - x0) / sigma
    at sigma = t / 1000 (the model's convention): a correct flow sampler ends at x0 (up to diffusers' integer
    timesteps of UniPC / DPM)."""
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 48, 2, 4, 4, generator=generator)
    object.__setattr__(pipe, "scheduler", scheduler)  # past the check, to see what the refused ones would do
    try:
        scheduler.set_timesteps(12, device="cpu")
    except Exception:
        return False

    def exact_velocity(latents, modality_latents, timestep, *rest):
        sigma = timestep.flatten()[0].double() / 1000
        return (latents - x0) / sigma.clamp(min=1e-6), None

    pipe._velocities = exact_velocity
    pipe._guidance_scale = 1.0
    pipe._interrupt = False
    try:
        latents, _ = pipe.denoise(
            latents=noise.clone(),
            modality_latents=None,
            task=resolve_task("joint"),
            timesteps=scheduler.timesteps,
            prompt_embeds=None,
            negative_prompt_embeds=None,
            modality_prompt_embeds=None,
            modality=None,
            scheduler=scheduler,
        )
    except Exception:  # any failure inside diffusers: not a working scheduler
        return False
    finally:
        del pipe._velocities
    return bool((latents - x0).abs().max() < 1e-2)


@pytest.mark.parametrize("cls, options", scheduler_cases())
def test_every_scheduler_works_or_is_refused(pipe, cls, options):
    """Accepted exactly when it samples a flow correctly; refused with a message naming the ones that do."""
    scheduler = cls(**options)
    try:
        check_flow_scheduler(scheduler)
        accepted = True
    except ValueError as error:
        accepted = False
        assert "FlowMatchEulerDiscreteScheduler" in str(error) and "flow_prediction" in str(error)
        with pytest.raises(ValueError, match="flow"):
            pipe.scheduler = scheduler
    original = pipe.scheduler
    try:
        assert samples_one_point(pipe, cls(**options)) == accepted
    finally:
        object.__setattr__(pipe, "scheduler", original)


def test_refused_before_any_transformer_call(pipe):
    with pytest.raises(ValueError, match="EulerDiscreteScheduler .*prediction_type='epsilon'.*FlowMatchEuler"):
        pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="falls back to epsilon"):
        pipe.scheduler = UniPCMultistepScheduler.from_config(FlowMatchEulerDiscreteScheduler().config)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="DDIMScheduler"):
        UnityVideoPipeline(**{**tiny_pipeline_components(), "scheduler": DDIMScheduler()})

    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    scheduler = UniPCMultistepScheduler(**FLOW)
    pipe.scheduler = scheduler
    scheduler.register_to_config(prediction_type="epsilon")  # changed after it was set: refused when used
    try:
        with pytest.raises(ValueError, match="does not predict flow"):
            pipe("a ball", num_frames=5, height=64, width=64, num_inference_steps=2, output_type="latent")
    finally:
        hook.remove()
        pipe.scheduler = UniPCMultistepScheduler(**FLOW)
    assert calls == []


def test_moving_between_flow_schedulers_keeps_the_shift(pipe, caplog):
    pipe.scheduler = UniPCMultistepScheduler(**FLOW)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.shift == 5.0
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    assert pipe.scheduler.config.flow_shift == 5.0
    pipe.scheduler = LinearFlowMatchEulerScheduler()  # the authors' sampler: unshifted by design
    assert pipe.scheduler.config.shift == 1.0
    pipe.scheduler = UniPCMultistepScheduler(**FLOW)
    with caplog.at_level(logging.WARNING):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # chosen: kept, with a warning
    assert pipe.scheduler.config.shift == 3.0 and "pass shift=5.0 to keep it" in caplog.text
