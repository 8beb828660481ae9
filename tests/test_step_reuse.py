"""Work reused across denoising steps: the texts' cross-attention projections (exact) and batched guidance."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_inputs, relative_error, tiny_pipeline_components
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from peft import LoraConfig

from unityvideo_diffusers import (
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
)


SIZE = dict(height=64, width=64)


class Counter:
    """Counts the calls of a module's forward (a forward hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1


def steps(model, inputs, count=3, **kwargs):
    """`count` forwards as a denoising loop makes them: new latents and timestep, the same texts."""
    outputs = []
    for step in range(count):
        latents = {
            name: None if inputs[name] is None else inputs[name] * (1 - 0.2 * step)
            for name in ("hidden_states", "modality_hidden_states")
        }
        out = model(**{**inputs, **latents, "timestep": inputs["timestep"] * (1 - 0.3 * step)}, **kwargs)
        outputs.append(out)
    return outputs


def assert_equal_outputs(actual, expected):
    for a, e in zip(actual, expected):
        assert torch.equal(a.sample, e.sample)
        assert (a.modality_sample is None and e.modality_sample is None) or torch.equal(
            a.modality_sample, e.modality_sample
        )


# ---------------------------------------------------------------- the transformer's text projection cache


@torch.no_grad()
@pytest.mark.parametrize("texts", ["modality_prompt", "shared_prompt", "rgb_only"])
def test_cached_projections_are_exact_and_computed_once(tiny_model, texts):
    inputs = random_inputs()
    if texts != "modality_prompt":
        inputs["modality_encoder_hidden_states"] = None
    if texts == "rgb_only":
        inputs["modality_hidden_states"] = None
    plain = steps(tiny_model, inputs, modality="depth" if texts != "rgb_only" else None)
    embedder = Counter(tiny_model.condition_embedder.text_embedder)
    key_projection = Counter(tiny_model.blocks[1].attn2.to_k)
    with tiny_model.cache_text_projections() as cache:
        reused = steps(tiny_model, inputs, modality="depth" if texts != "rgb_only" else None)
        assert len(cache.entries) == 1
    assert_equal_outputs(reused, plain)
    assert embedder.calls == 1 and key_projection.calls == 1
    assert tiny_model._text_cache is None  # emptied on exit; the model works on its own again
    steps(tiny_model, inputs, count=1, modality="depth" if texts != "rgb_only" else None)
    assert embedder.calls == 2


@torch.no_grad()
def test_replaced_or_modified_texts_and_weights_are_projected_anew(tiny_model):
    def changes(model, inputs):
        """Forwards between changes of what the projections depend on."""
        yield model(**inputs, modality="depth")
        yield model(**{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"] + 1}, modality="depth")
        inputs["modality_encoder_hidden_states"].mul_(0.5)  # an in-place change of a text
        yield model(**inputs, modality="depth")
        model.blocks[0].attn2.norm_k.weight.mul_(1.5)  # an in-place change of a weight, as an optimiser makes
        yield model(**inputs, modality="depth")

    plain = list(changes(copy.deepcopy(tiny_model), random_inputs()))
    with tiny_model.cache_text_projections() as cache:
        reused = list(changes(tiny_model, random_inputs()))
        assert len(cache.entries) == 3  # the replaced text was freed, its entry dropped
    assert_equal_outputs(reused, plain)


@torch.no_grad()
def test_entries_of_freed_texts_are_dropped(tiny_model):
    inputs = random_inputs()
    with tiny_model.cache_text_projections() as cache:
        for _ in range(3):  # a new text tensor at every call: a miss each time, but no growing cache
            tiny_model(
                **{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}, modality="depth"
            )
        assert len(cache.entries) == 1


@torch.no_grad()
def test_cache_follows_lora_scale_and_adapters(tiny_model):
    inputs = random_inputs()
    for name in ("first", "second"):
        tiny_model.add_adapter(
            LoraConfig(r=2, lora_alpha=2, target_modules=["to_k", "to_v", "linear_1"], init_lora_weights=False),
            adapter_name=name,
        )

    def settings():
        tiny_model.set_adapters(["first", "second"])
        yield dict(attention_kwargs={"scale": 1.0})
        yield dict(attention_kwargs={"scale": 0.5})
        tiny_model.set_adapters(["first", "second"], weights=[0.3, 1.2])
        yield {}
        tiny_model.set_adapters("second")
        yield {}
        tiny_model.disable_adapters()
        yield {}
        tiny_model.enable_adapters()
        yield dict(attention_kwargs={"scale": 2.0})

    plain = [tiny_model(**inputs, modality="depth", **kwargs) for kwargs in settings()]
    with tiny_model.cache_text_projections() as cache:
        reused = [tiny_model(**inputs, modality="depth", **kwargs) for kwargs in settings()]
        assert len(cache.entries) == 6
    assert_equal_outputs(reused, plain)
    assert not torch.equal(plain[0].sample, plain[1].sample)


def test_cache_is_left_out_when_training(tiny_model):
    inputs = random_inputs()
    with tiny_model.cache_text_projections() as cache:
        out = tiny_model(**inputs, modality="depth")
        out.sample.square().mean().backward()
        assert not cache.entries
    assert tiny_model.blocks[0].attn2.to_k.weight.grad is not None


@torch.no_grad()
def test_cache_keeps_the_attention_backend_and_step_caches(tiny_model):
    inputs = random_inputs()
    tiny_model.set_attention_backend("native")
    plain = steps(tiny_model, inputs, modality="depth")
    with tiny_model.cache_text_projections():
        assert_equal_outputs(steps(tiny_model, inputs, modality="depth"), plain)
    tiny_model.reset_attention_backend()


# ---------------------------------------------------------------- the pipelines


@pytest.fixture(scope="module")
def components():
    return tiny_pipeline_components()


def make(pipeline_class, components, **attributes):
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    for name, value in attributes.items():
        setattr(pipe, name, value)
    return pipe


def video(frames=9):
    return torch.rand(frames, 3, 64, 64, generator=torch.Generator().manual_seed(3))


JOBS = {
    "joint": (UnityVideoPipeline, dict(prompt="a red ball", modality="depth", num_frames=5)),
    "control": (UnityVideoControlPipeline, dict(prompt="a red ball", control_video=video(), modality="depth")),
    "perception": (UnityVideoPerceptionPipeline, dict(video=video(), modality="depth")),
}


def call(pipe, job, **kwargs):
    arguments = {**JOBS[job][1], **SIZE, "num_inference_steps": 3, "output_type": "latent", **kwargs}
    out = pipe(**arguments, generator=torch.Generator().manual_seed(0))
    return out.frames, out.modality_frames


def assert_equal_or_both_none(actual, expected):
    for a, e in zip(actual, expected):
        assert (a is None and e is None) or torch.equal(a, e)


@torch.no_grad()
@pytest.mark.parametrize("job", list(JOBS))
def test_reuse_is_bit_identical_in_every_job(components, job):
    pipeline_class = JOBS[job][0]
    plain_pipe = make(pipeline_class, components, reuse_text_projections=False)
    embedder = Counter(plain_pipe.transformer.condition_embedder.text_embedder)
    guidance = 4.0 if job != "perception" else 1.0
    plain = call(plain_pipe, job, guidance_scale=guidance)
    calls_without_reuse, embedder.calls = embedder.calls, 0
    reused = call(make(pipeline_class, components), job, guidance_scale=guidance)
    assert_equal_or_both_none(reused, plain)
    passes = 2 if guidance > 1 else 1
    assert calls_without_reuse == 3 * passes and embedder.calls == passes
    embedder.handle.remove()


@torch.no_grad()
def test_reuse_follows_a_callback_that_replaces_the_prompt(components):
    def swap_prompt(pipeline, step, timestep, tensors):
        if step == 1:
            return {
                "prompt_embeds": tensors["prompt_embeds"].flip(1),
                "negative_prompt_embeds": tensors["prompt_embeds"],
            }
        return {}

    kwargs = dict(
        guidance_scale=3.0,
        callback_on_step_end=swap_prompt,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )
    plain = call(make(UnityVideoPipeline, components, reuse_text_projections=False), "joint", **kwargs)
    reused = call(make(UnityVideoPipeline, components), "joint", **kwargs)
    assert_equal_or_both_none(reused, plain)
    unswapped = call(make(UnityVideoPipeline, components), "joint", guidance_scale=3.0)
    assert not torch.equal(unswapped[0], plain[0])


@torch.no_grad()
def test_reuse_in_windows(components):
    kwargs = dict(num_frames=17, window_frames=9, window_overlap_frames=4, guidance_scale=2.0)
    plain = call(make(UnityVideoPipeline, components, reuse_text_projections=False), "joint", **kwargs)
    reused = call(make(UnityVideoPipeline, components), "joint", **kwargs)
    assert_equal_or_both_none(reused, plain)


@torch.no_grad()
@pytest.mark.parametrize("job", ["joint", "control"])
def test_batched_guidance_is_one_forward_per_step(components, job):
    pipeline_class = JOBS[job][0]
    two_passes = call(make(pipeline_class, components), job, guidance_scale=4.0)
    pipe = make(pipeline_class, components, batch_guidance=True)
    forwards = Counter(pipe.transformer)
    batched = call(pipe, job, guidance_scale=4.0)
    forwards.handle.remove()
    assert forwards.calls == 3
    # the same computation, but matrix products of twice the rows round differently in the last bits
    for a, e in zip(batched, two_passes):
        if e is not None:
            assert relative_error(a, e) < 1e-5


@torch.no_grad()
@pytest.mark.parametrize(
    "config",
    [
        FirstBlockCacheConfig(threshold=10.0),
        MagCacheConfig(mag_ratios=[1.0] * 4, num_inference_steps=4, threshold=1.0, max_skip_steps=2),
        # diffusers' default identifiers ("^blocks.*attn", matched whole) miss Wan's attn1 / attn2: name them
        TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=1,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[r"blocks\.\d+\.(attn1|attn2|ffn)"],
        ),
    ],
    ids=["first_block", "mag", "taylor_seer"],
)
def test_diffusers_step_caches_run_on_the_two_stream_model(components, config):
    """Each cache skips work (the result moves away from the uncached one) and composes with the text reuse."""
    pipe = make(UnityVideoPipeline, copy.deepcopy(components))
    uncached = call(pipe, "joint", guidance_scale=3.0, num_inference_steps=4)
    pipe.transformer.enable_cache(config)
    attention = pipe.transformer.blocks[-1].attn1
    processor, calls = attention.processor, []

    def counting_processor(*args, **kwargs):  # the cache hooks wrap the module: count the work inside it
        calls.append(1)
        return processor(*args, **kwargs)

    attention.set_processor(counting_processor)
    cached = call(pipe, "joint", guidance_scale=3.0, num_inference_steps=4)
    pipe.transformer.disable_cache()
    assert len(calls) < 2 * 4  # fewer evaluations than 2 passes x 4 steps
    assert all(torch.isfinite(c).all() for c in cached)
    assert not torch.equal(cached[0], uncached[0])
