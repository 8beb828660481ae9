"""The three pipelines with tiny offline components: the reference procedure, diffusers habits, refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import relative_error, tiny_pipeline_components
from diffusers import (
    DPMSolverMultistepScheduler,
    FirstBlockCacheConfig,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from unityvideo_diffusers import (
    LinearFlowMatchEulerScheduler,
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
    modality_prompt,
)


SIZE = dict(height=64, width=64)
LATENT = (1, 48, 2, 4, 4)  # 5 frames of 64 x 64


@pytest.fixture(scope="module")
def components():
    return tiny_pipeline_components()


def make(pipeline_class, components, **overrides):
    pipe = pipeline_class(**{**components, **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def rgb_video(frames=9, seed=0):
    return torch.rand(frames, 3, 80, 96, generator=seeded(seed))


def text(pipe, prompt):
    return pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512, device="cpu")[0]


def manual_encode(pipe, video_tensor):
    """VAE mode, normalised with the VAE's latents_mean / latents_std, written out here."""
    posterior = pipe.vae.encode(video_tensor).latent_dist
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (posterior.mode() - mean) / std


def authors_loop(
    transformer, rgb, modality_latent, context, modality_context, modality, steps, update_rgb, update_modality
):
    """The authors' sampler: Euler on linspace(1, 0, steps + 1), the model given t * 1000, no guidance."""
    grid = torch.linspace(1.0, 0.0, steps + 1)
    for index in range(steps):
        t, delta = grid[index], grid[index + 1] - grid[index]
        velocity, modality_velocity = transformer(
            hidden_states=rgb,
            timestep=t.repeat(rgb.shape[0]) * 1000.0,
            encoder_hidden_states=context,
            modality_hidden_states=modality_latent,
            modality_encoder_hidden_states=modality_context,
            modality=modality,
            return_dict=False,
        )
        if update_rgb:
            rgb = rgb + delta * velocity
        if update_modality:
            modality_latent = modality_latent + delta * modality_velocity
    return rgb, modality_latent


# ---------------------------------------------------------------- the reference procedure, step for step


@torch.no_grad()
def test_joint_generation_matches_the_authors_loop(components):
    pipe = make(UnityVideoPipeline, components, scheduler=LinearFlowMatchEulerScheduler())
    noise, modality_noise = torch.randn(LATENT, generator=seeded(1)), torch.randn(LATENT, generator=seeded(2))
    out = pipe(
        "a red ball",
        modality="depth",
        num_frames=5,
        **SIZE,
        num_inference_steps=6,
        guidance_scale=1.0,
        latents=noise,
        modality_latents=modality_noise,
        output_type="latent",
    )
    expected = authors_loop(
        pipe.transformer,
        noise,
        modality_noise,
        text(pipe, "a red ball"),
        text(pipe, modality_prompt("depth")),
        "depth",
        6,
        True,
        True,
    )
    assert relative_error(out.frames, expected[0]) < 1e-6
    assert relative_error(out.modality_frames, expected[1]) < 1e-6


@torch.no_grad()
def test_control_matches_the_authors_loop(components):
    pipe = make(UnityVideoControlPipeline, components, scheduler=LinearFlowMatchEulerScheduler())
    video = rgb_video()
    noise = torch.randn(1, 48, 3, 4, 4, generator=seeded(3))
    out = pipe(
        "a knight",
        control_video=video,
        modality="segmentation",
        **SIZE,
        num_inference_steps=5,
        guidance_scale=1.0,
        latents=noise,
        output_type="latent",
    )
    assert out.modality_frames is None
    condition = manual_encode(pipe, pipe.prepare_condition_videos(video, 1, 9, 64, 64)[0])
    expected, untouched = authors_loop(
        pipe.transformer,
        noise,
        condition,
        text(pipe, "a knight"),
        text(pipe, modality_prompt("segmentation")),
        "segmentation",
        5,
        True,
        False,
    )
    assert relative_error(out.frames, expected) < 1e-6


@torch.no_grad()
def test_perception_matches_the_authors_loop(components):
    pipe = make(UnityVideoPerceptionPipeline, components, scheduler=LinearFlowMatchEulerScheduler())
    video = rgb_video()
    noise = torch.randn(1, 48, 3, 4, 4, generator=seeded(4))
    out = pipe(
        video=video, modality="raft", **SIZE, num_inference_steps=5, modality_latents=noise, output_type="latent"
    )
    assert out.frames is None
    rgb = manual_encode(pipe, pipe.prepare_condition_videos(video, 1, 9, 64, 64)[0])
    _, expected = authors_loop(
        pipe.transformer, rgb, noise, text(pipe, ""), text(pipe, modality_prompt("raft")), "raft", 5, False, True
    )
    assert relative_error(out.modality_frames, expected) < 1e-6


def test_conditioning_video_is_sampled_and_cropped_like_the_reference(components):
    pipe = make(UnityVideoControlPipeline, components)
    frames = [Image.new("RGB", (128, 64), (i, 0, 0)) for i in range(17)]
    frames[0].paste((0, 255, 0), (0, 0, 32, 64))  # left quarter cropped away by the centre crop to 64 x 64
    tensor, count = pipe.prepare_condition_videos(frames, 1, 5, 64, 64)
    assert count == 5 and tensor.shape == (1, 3, 5, 64, 64)
    reds = ((tensor[0, 0, :, 32, 32] + 1) * 127.5).round().tolist()
    assert reds == [0, 4, 8, 12, 16]  # indices round(i * 16 / 4)
    assert tensor[0, 1, 0].max() < -0.99  # no green left


# ---------------------------------------------------------------- diffusers habits


@torch.no_grad()
def test_seed_determinism_and_shapes(components):
    pipe = make(UnityVideoPipeline, components)
    kwargs = dict(modality="depth", num_frames=5, **SIZE, num_inference_steps=2)
    a = pipe("a red ball", generator=seeded(0), **kwargs)
    b = pipe("a red ball", generator=seeded(0), **kwargs)
    c = pipe("a red ball", generator=seeded(1), **kwargs)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.modality_frames, b.modality_frames)
    assert not np.array_equal(a.frames, c.frames)
    batch = pipe(
        ["a red ball", "a blue cube"], num_videos_per_prompt=2, **{**kwargs, "modality": ["depth", "skeleton"]}
    )
    assert batch.frames.shape == batch.modality_frames.shape == (4, 5, 64, 64, 3)
    assert 0 <= batch.frames.min() and batch.frames.max() <= 1


@torch.no_grad()
def test_output_types_and_tuple(components):
    pipe = make(UnityVideoPipeline, components)
    kwargs = dict(modality="depth", num_frames=5, **SIZE, num_inference_steps=1, generator=seeded(0))
    pil = pipe("x", output_type="pil", **kwargs)
    assert isinstance(pil.frames[0][0], Image.Image) and len(pil.modality_frames[0]) == 5
    pt = pipe("x", output_type="pt", **kwargs)
    assert pt.frames.shape == (1, 5, 3, 64, 64)
    frames, modality_frames = pipe("x", return_dict=False, **kwargs)
    assert frames.shape == modality_frames.shape == (1, 5, 64, 64, 3)
    with pytest.raises(ValueError, match="output_type"):
        pipe("x", output_type="gif", **kwargs)


@torch.no_grad()
def test_save_load_round_trip_and_shared_folder(components, tmp_path):
    pipe = make(UnityVideoPipeline, components)
    pipe.save_pretrained(tmp_path)
    kwargs = dict(modality="depth", num_frames=5, **SIZE, num_inference_steps=2)
    expected = pipe("a red ball", generator=seeded(0), **kwargs).frames
    reloaded = UnityVideoPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    # equal up to float rounding (transformers may pick another attention kernel for the reloaded text encoder)
    assert np.allclose(reloaded("a red ball", generator=seeded(0), **kwargs).frames, expected, atol=1e-6)
    # one folder serves all three jobs
    control = UnityVideoControlPipeline.from_pretrained(tmp_path)
    assert isinstance(control.transformer, type(pipe.transformer))


@torch.no_grad()
def test_runs_without_text_encoder_from_embeddings(components):
    full = make(UnityVideoPipeline, components)
    embeds = text(full, "a red ball")
    modality_embeds = text(full, modality_prompt("depth"))
    kwargs = dict(modality="depth", num_frames=5, **SIZE, num_inference_steps=2, guidance_scale=1.0)
    expected = full("a red ball", generator=seeded(0), **kwargs).frames
    bare = make(UnityVideoPipeline, components, text_encoder=None, tokenizer=None)
    out = bare(prompt_embeds=embeds, modality_prompt_embeds=modality_embeds, generator=seeded(0), **kwargs).frames
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="no text encoder"):
        bare("a red ball", **kwargs)


def test_texts_are_padded_to_the_tokenizer_length(components):
    assert make(UnityVideoPipeline, components).text_length() == 512  # UMT5 tokenizers leave model_max_length unset
    short = copy.deepcopy(components["tokenizer"])
    short.model_max_length = 16
    pipe = make(UnityVideoPipeline, components, tokenizer=short)
    assert pipe.text_length() == 16 and pipe.text_length(24) == 24
    lengths = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(
            (kwargs["encoder_hidden_states"].shape[1], kwargs["modality_encoder_hidden_states"].shape[1])
        ),
        with_kwargs=True,
    )
    try:
        pipe("a red ball", modality="depth", num_frames=5, num_inference_steps=1, guidance_scale=1.0, **SIZE)
        pipe(
            "a red ball",
            modality="depth",
            num_frames=5,
            num_inference_steps=1,
            guidance_scale=1.0,
            max_sequence_length=24,
            **SIZE,
        )
    finally:
        hook.remove()
    assert lengths == [(16, 16), (24, 24)]
    with pytest.raises(ValueError, match="max_sequence_length` must be a positive integer"):
        pipe("a red ball", num_frames=5, num_inference_steps=1, max_sequence_length=0, **SIZE)


def test_modality_prompt_is_encoded_once(components, monkeypatch):
    pipe = make(UnityVideoPipeline, components)
    calls = []
    original = pipe._get_t5_prompt_embeds
    monkeypatch.setattr(
        pipe, "_get_t5_prompt_embeds", lambda prompt, *a, **k: calls.append(prompt) or original(prompt, *a, **k)
    )
    for _ in range(2):
        pipe("a", modality="depth", num_frames=5, **SIZE, num_inference_steps=2, guidance_scale=1.0)
    assert calls.count(modality_prompt("depth")) == 1 and calls.count(["a"]) + calls.count("a") == 2


@pytest.mark.parametrize(
    "scheduler",
    [
        FlowMatchEulerDiscreteScheduler(shift=5.0),
        UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
        DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
    ],
    ids=["euler", "unipc", "dpmsolver"],
)
@torch.no_grad()
def test_swapped_schedulers_step_each_stream_with_its_own_history(components, scheduler):
    pipe = make(UnityVideoPipeline, components)
    pipe.scheduler = scheduler.__class__.from_config(scheduler.config)
    noise, modality_noise = torch.randn(LATENT, generator=seeded(5)), torch.randn(LATENT, generator=seeded(6))
    out = pipe(
        "a",
        modality="depth",
        num_frames=5,
        **SIZE,
        num_inference_steps=4,
        guidance_scale=1.0,
        latents=noise,
        modality_latents=modality_noise,
        output_type="latent",
    )

    # the same loop by hand, one scheduler per stream
    rgb_scheduler = scheduler.__class__.from_config(scheduler.config)
    rgb_scheduler.set_timesteps(4)
    modality_scheduler = copy.deepcopy(rgb_scheduler)
    rgb, mod = noise.clone(), modality_noise.clone()
    for t in rgb_scheduler.timesteps:
        velocity, modality_velocity = pipe.transformer(
            hidden_states=rgb,
            timestep=t.expand(1),
            encoder_hidden_states=text(pipe, "a"),
            modality_hidden_states=mod,
            modality_encoder_hidden_states=text(pipe, modality_prompt("depth")),
            modality="depth",
            return_dict=False,
        )
        rgb = rgb_scheduler.step(velocity, t, rgb, return_dict=False)[0]
        mod = modality_scheduler.step(modality_velocity, t, mod, return_dict=False)[0]
    assert relative_error(out.frames, rgb) < 1e-6 and relative_error(out.modality_frames, mod) < 1e-6


@torch.no_grad()
def test_callback_can_change_latents(components):
    pipe = make(UnityVideoPipeline, components, scheduler=LinearFlowMatchEulerScheduler())
    seen = []

    def zero_modality(pipeline, step, timestep, tensors):
        seen.append(sorted(tensors))
        return {"modality_latents": torch.zeros_like(tensors["modality_latents"])}

    out = pipe(
        "a",
        modality="depth",
        num_frames=5,
        **SIZE,
        num_inference_steps=3,
        guidance_scale=1.0,
        output_type="latent",
        callback_on_step_end=zero_modality,
        callback_on_step_end_tensor_inputs=["latents", "modality_latents"],
    )
    assert seen == [["latents", "modality_latents"]] * 3
    assert not out.modality_frames.any()
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe("a", num_frames=5, **SIZE, callback_on_step_end_tensor_inputs=["noise"])


@torch.no_grad()
def test_classifier_free_guidance(components):
    pipe = make(UnityVideoPipeline, components)
    kwargs = dict(modality="depth", num_frames=5, **SIZE, num_inference_steps=2)
    plain = pipe("a red ball", guidance_scale=1.0, generator=seeded(0), **kwargs).frames
    guided = pipe("a red ball", guidance_scale=4.0, generator=seeded(0), **kwargs).frames
    negative = pipe("a red ball", negative_prompt="blurry", guidance_scale=4.0, generator=seeded(0), **kwargs).frames
    assert not np.allclose(plain, guided) and not np.allclose(guided, negative)


@torch.no_grad()
def test_image_keeps_the_first_latent_frame(components):
    pipe = make(UnityVideoPipeline, components)
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    out = pipe("a", image=image, modality="depth", num_frames=9, **SIZE, num_inference_steps=2, output_type="latent")
    first = manual_encode(pipe, pipe.prepare_condition_videos([[image]], 1, 1, 64, 64)[0])
    assert relative_error(out.frames[:, :, :1], first) < 1e-6
    assert not torch.allclose(out.frames[:, :, 1:2], first, atol=1e-3)


@torch.no_grad()
def test_lora_load_fuse_unload(components):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = make(UnityVideoPipeline, copy.deepcopy(components))
    kwargs = dict(
        modality="depth", num_frames=5, **SIZE, num_inference_steps=2, guidance_scale=1.0, output_type="latent"
    )
    base = pipe("a", generator=seeded(0), **kwargs).frames

    donor = copy.deepcopy(pipe.transformer)
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    lora = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(donor).items()}
    pipe.load_lora_weights(lora, adapter_name="style")
    with_lora = pipe("a", generator=seeded(0), **kwargs).frames
    assert not torch.allclose(with_lora, base)
    pipe.fuse_lora()
    assert relative_error(pipe("a", generator=seeded(0), **kwargs).frames, with_lora) < 1e-5
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    assert relative_error(pipe("a", generator=seeded(0), **kwargs).frames, base) < 1e-6


@torch.no_grad()
def test_offload_tiling_and_cache(components):
    pipe = make(UnityVideoPipeline, copy.deepcopy(components))
    kwargs = dict(modality="depth", num_frames=5, **SIZE, num_inference_steps=2, generator=seeded(0))
    expected = pipe("a", **kwargs).frames
    pipe.enable_model_cpu_offload(device="cpu")
    assert np.allclose(pipe("a", **{**kwargs, "generator": seeded(0)}).frames, expected, atol=1e-6)
    pipe.remove_all_hooks()

    grouped = make(UnityVideoPipeline, copy.deepcopy(components))
    grouped.transformer.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    assert np.allclose(grouped("a", **{**kwargs, "generator": seeded(0)}).frames, expected, atol=1e-6)

    tiled = make(UnityVideoPipeline, copy.deepcopy(components))
    tiled.vae.enable_tiling(
        tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16
    )
    tiled.vae.enable_slicing()
    assert tiled("a", **{**kwargs, "generator": seeded(0)}).frames.shape == expected.shape

    cached = make(UnityVideoPipeline, copy.deepcopy(components))
    cached.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    assert cached("a", **{**kwargs, "generator": seeded(0)}).frames.shape == expected.shape


# ---------------------------------------------------------------- refusals before heavy work


@pytest.mark.parametrize(
    "pipeline_class, kwargs, error, message",
    [
        (UnityVideoPipeline, dict(prompt="a", num_frames=6), ValueError, r"num_frames. must be 4k\+1"),
        (UnityVideoPipeline, dict(prompt="a", height=48), ValueError, "height. must be a positive multiple of 32"),
        (UnityVideoPipeline, dict(prompt="a", modality="normals"), ValueError, "no modality 'normals'"),
        (UnityVideoPipeline, dict(prompt=["a", "b"], modality=["depth"]), ValueError, "1 modalities for 2 prompts"),
        (UnityVideoPipeline, dict(prompt=3), TypeError, "string or a list of strings"),
        (UnityVideoPipeline, dict(prompt="a", prompt_embeds=torch.zeros(1, 4, 32)), ValueError, "not both"),
        (UnityVideoPipeline, dict(prompt=["a", "b"], negative_prompt=["c"]), ValueError, "2 prompts but 1 negative"),
        (
            UnityVideoPipeline,
            dict(prompt="a", latents=torch.zeros(1, 48, 3, 4, 4)),
            ValueError,
            "latents. must have shape",
        ),
        (UnityVideoControlPipeline, dict(prompt="a", modality="depth"), ValueError, "Pass .control_video."),
        (UnityVideoControlPipeline, dict(prompt="a", control_video=rgb_video(9)), ValueError, "Pass .modality."),
        (
            UnityVideoControlPipeline,
            dict(prompt="a", control_video=rgb_video(5), modality="depth", num_frames=9),
            ValueError,
            "has 5 frames; 9 were requested",
        ),
        (
            UnityVideoControlPipeline,
            dict(prompt=["a", "b", "c"], control_video=[rgb_video(5), rgb_video(5)], modality="depth"),
            ValueError,
            "2 videos for 3 prompts",
        ),
        (
            UnityVideoControlPipeline,
            dict(prompt="a", control_video=42, modality="depth"),
            TypeError,
            "A video is a file path",
        ),
        (
            UnityVideoControlPipeline,
            dict(prompt="a", control_video="/nonexistent.mp4", modality="depth"),
            FileNotFoundError,
            "No video at",
        ),
        (
            UnityVideoPerceptionPipeline,
            dict(video=torch.rand(5, 4, 8, 8), modality="depth"),
            ValueError,
            r"must be \(F, 3, H, W\)",
        ),
    ],
)
def test_bad_input_is_refused_before_heavy_work(components, monkeypatch, pipeline_class, kwargs, error, message):
    pipe = make(pipeline_class, components)
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: pytest.fail("the transformer ran"))
    monkeypatch.setattr(pipe.vae, "encode", lambda *a, **k: pytest.fail("the VAE ran"))
    with pytest.raises(error, match=message):
        pipe(**{"num_frames": 5, "height": 64, "width": 64, "num_inference_steps": 1, **kwargs})


# ---------------------------------------------------------------- longer than one window


def test_window_plan():
    from unityvideo_diffusers.pipelines.pipeline_unityvideo_base import window_plan

    assert window_plan(9, 9, 2) == [(0, 9)]
    assert window_plan(20, 9, 2) == [(0, 9), (7, 16), (11, 20)]
    assert window_plan(5, 3, 1) == [(0, 3), (2, 5)]


@torch.no_grad()
def test_windows_continue_the_previous_window(components):
    pipe = make(UnityVideoPipeline, components, scheduler=LinearFlowMatchEulerScheduler())
    noise = torch.randn(1, 48, 5, 4, 4, generator=seeded(7))
    modality_noise = torch.randn(1, 48, 5, 4, 4, generator=seeded(8))
    common = dict(modality="depth", **SIZE, num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    long = pipe(
        "a",
        num_frames=17,
        latents=noise,
        modality_latents=modality_noise,
        window_frames=9,
        window_overlap_frames=4,
        **common,
    )
    first_window = pipe(
        "a", num_frames=9, latents=noise[:, :, :3], modality_latents=modality_noise[:, :, :3], **common
    )
    # windows (0, 3) and (2, 5) in latent frames: the second holds frame 2 to the first's result
    assert torch.equal(long.frames[:, :, :3], first_window.frames)
    assert torch.equal(long.modality_frames[:, :, :3], first_window.modality_frames)
    unwindowed = pipe("a", num_frames=17, latents=noise, modality_latents=modality_noise, **common)
    assert not torch.allclose(long.frames[:, :, 3:], unwindowed.frames[:, :, 3:])


@torch.no_grad()
def test_long_perception_and_control(components):
    video = rgb_video(frames=25)
    perception = make(UnityVideoPerceptionPipeline, components)
    out = perception(
        video=video, modality="depth", **SIZE, num_inference_steps=2, window_frames=9, window_overlap_frames=8
    )
    assert out.modality_frames.shape == (1, 25, 64, 64, 3)
    control = make(UnityVideoControlPipeline, components)
    out = control("a", control_video=video, modality="depth", **SIZE, num_inference_steps=2, window_frames=13)
    assert out.frames.shape == (1, 25, 64, 64, 3)
    with pytest.raises(ValueError, match="window_overlap_frames"):
        control("a", control_video=video, modality="depth", **SIZE, window_frames=9, window_overlap_frames=8 + 1)


def test_held_frames_get_timestep_zero(components):
    from unityvideo_diffusers.pipelines.pipeline_unityvideo_base import Hold

    pipe = make(UnityVideoPipeline, components)
    latents = torch.zeros(2, 48, 3, 4, 4)
    keep = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 3, 1, 1)
    timestep = pipe._model_timestep(torch.tensor(800.0), latents, True, {"rgb": Hold(torch.zeros_like(latents), keep)})
    tokens = 2 * 2  # per latent frame
    assert timestep.shape == (2, 2 * 3 * tokens)
    assert timestep[0, :tokens].eq(0).all() and timestep[0, tokens : 2 * tokens].eq(400).all()
    assert timestep[0, 3 * tokens :].eq(800).all()  # the modality stream is not held


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ""], ids=["mp4", "gif", "frame_folder"])
def test_conditioning_video_from_a_file(components, tmp_path, suffix):
    from unityvideo_diffusers.video_io import save_video

    path = save_video(np.random.default_rng(0).random((9, 64, 64, 3)), tmp_path / f"clip{suffix}")
    pipe = make(UnityVideoPerceptionPipeline, components)
    out = pipe(video=str(path), modality="depth", **SIZE, num_inference_steps=1)
    assert out.modality_frames.shape == (1, 9, 64, 64, 3)


def test_unreadable_video_is_named(components, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    pipe = make(UnityVideoPerceptionPipeline, components)
    with pytest.raises(ValueError, match="Cannot read the video .*broken.mp4"):
        pipe(video=str(broken), modality="depth", **SIZE)


def test_from_pipe_keeps_components_and_dtypes(components, tmp_path):
    pipe = make(UnityVideoPipeline, components)
    pipe.save_pretrained(tmp_path)
    half = UnityVideoPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    control = UnityVideoControlPipeline.from_pipe(half)
    assert control.transformer is half.transformer and control.vae is half.vae
    assert control.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert control.transformer.blocks[0].scale_shift_table.dtype == torch.float32  # fp32-kept modules untouched
    bare = UnityVideoPipeline.from_pipe(pipe, text_encoder=None, tokenizer=None)
    assert bare.text_encoder is None and bare.transformer is pipe.transformer
    with pytest.raises(TypeError, match="takes components"):
        UnityVideoPipeline.from_pipe(pipe, unet=None)


def test_vae_convolutions_avoid_the_reference_kernel_and_keep_the_numbers(components):
    """On the CPU the pipelines run the VAE's float32 3-D convolutions through oneDNN: PyTorch's own choice for a
    batch-1 video this small is its reference kernel. Same function to fp32 rounding; modules are left as found."""
    from torch.profiler import profile

    from unityvideo_diffusers.pipelines.pipeline_unityvideo_base import conv3d_through_onednn

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch build has no oneDNN")
    vae = components["vae"]
    video = torch.rand(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def encode_and_decode():
        with profile() as trace, torch.inference_mode():
            latents = vae.encode(video).latent_dist.mode()
            decoded = vae.decode(latents).sample
        kernels = {event.key for event in trace.key_averages()}
        return latents, decoded, kernels

    plain_latents, plain_video, plain_kernels = encode_and_decode()
    with conv3d_through_onednn(vae):
        latents, decoded, kernels = encode_and_decode()
    assert "aten::slow_conv3d_forward" in plain_kernels
    assert "aten::slow_conv3d_forward" not in kernels
    assert relative_error(latents, plain_latents) < 1e-5
    assert (decoded - plain_video).abs().max() < 1e-5
    assert not any("_conv_forward" in vars(module) for module in vae.modules())

    compiled = copy.deepcopy(vae)  # traced with fake tensors, which oneDNN's kernel does not take
    compiled.decoder.compile(backend="eager")
    with torch.inference_mode(), conv3d_through_onednn(compiled):
        assert (compiled.decode(plain_latents).sample - plain_video).abs().max() < 1e-5

    double = copy.deepcopy(vae).double()  # other dtypes keep PyTorch's choice: bit for bit
    with torch.inference_mode():
        expected = double.decode(latents.double()).sample
        with conv3d_through_onednn(double):
            assert torch.equal(double.decode(latents.double()).sample, expected)
