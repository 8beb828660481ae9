"""What a diffusers user meets first: defaults from the model folder, batches and stills, tuples, pre-encoded texts,
save and load."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from unityvideo_diffusers import (
    DEMO_MODEL,
    LinearFlowMatchEulerScheduler,
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
)
from unityvideo_diffusers.testing import tiny_pipeline_components


FOLDER_DEFAULTS = {
    "joint": dict(height=32, width=64, num_frames=5, num_inference_steps=2, guidance_scale=2.0),
    "control": dict(num_frames=5),
    "perception": dict(num_inference_steps=3, scheduler="reference"),
}


@pytest.fixture(scope="module")
def components():
    return tiny_pipeline_components()


def tiny(pipeline_class=UnityVideoPipeline, components=None, **config):
    pipe = pipeline_class(**(components or tiny_pipeline_components()), **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clip(frames: int = 5, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------- defaults from the model folder


def test_unset_settings_take_the_folders_defaults_and_save_pretrained_keeps_them(components, tmp_path):
    pipe = tiny(components=components, sampling_defaults=FOLDER_DEFAULTS)
    out = pipe("a red ball", modality="depth", generator=seeded(), output_type="latent")
    assert out.frames.shape[2:] == (2, 2, 4)  # 5 frames at 32 x 64: (5 - 1) / 4 + 1 latent frames, 16x smaller
    explicit = pipe(
        "a red ball", modality="depth", generator=seeded(), output_type="latent", **FOLDER_DEFAULTS["joint"]
    )
    assert torch.equal(out.frames, explicit.frames)
    assert pipe.job_defaults("estimate") == dict(
        height=256, width=256, num_frames=33, num_inference_steps=3, guidance_scale=1.0, scheduler="reference"
    )  # a job the folder leaves out, and settings it leaves out, are the released model's

    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["sampling_defaults"] == FOLDER_DEFAULTS
    for pipeline_class in (UnityVideoPipeline, UnityVideoControlPipeline, UnityVideoPerceptionPipeline):
        reloaded = pipeline_class.from_pretrained(tmp_path)
        assert reloaded.config.sampling_defaults == FOLDER_DEFAULTS
        assert UnityVideoPipeline.from_pipe(reloaded).job_defaults("joint") == pipe.job_defaults("joint")


def test_a_folder_without_defaults_samples_like_the_released_model(components):
    assert tiny(components=components).job_defaults("text2all") == dict(
        height=256, width=256, num_frames=33, num_inference_steps=10, guidance_scale=1.0, scheduler="default"
    )


@pytest.mark.parametrize(
    "defaults, message",
    [
        ({"jiont": {}}, "Unknown task 'jiont'"),
        ({"joint": {"steps": 20}}, "unknown settings ['steps']"),
        ({"joint": {"num_inference_steps": "20"}}, "must be a positive integer, got '20'"),
        ({"control": {"guidance_scale": 0.5}}, "must be a number >= 1"),
        ({"perception": {"scheduler": "ddim"}}, "must be one of default, reference"),
        ({"joint": [20]}, "must be a mapping of settings"),
    ],
)
def test_wrong_defaults_are_refused_when_the_pipeline_is_built(components, defaults, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny(components=components, sampling_defaults=defaults)


def test_a_size_far_from_the_trained_one_warns_and_names_it(components, caplog):
    from diffusers.utils import logging

    logging.enable_propagation()
    pipe = tiny(components=components, sampling_defaults=FOLDER_DEFAULTS)
    with caplog.at_level("WARNING"):
        pipe("a red ball", height=32, width=32, num_frames=1, num_inference_steps=1, output_type="latent")
    assert not caplog.records  # 32 x 32 against 32 x 64: within 2x
    with caplog.at_level("WARNING"):
        pipe("a red ball", height=128, width=64, num_frames=1, num_inference_steps=1, output_type="latent")
    assert "far from the 32 x 64 this model was trained at" in caplog.text
    logging.disable_propagation()


def test_a_jobs_own_scheduler_applies_until_the_user_assigns_one(components):
    pipe = tiny(UnityVideoPerceptionPipeline, components=components, sampling_defaults=FOLDER_DEFAULTS)
    assert isinstance(pipe.job_scheduler("perception"), LinearFlowMatchEulerScheduler)
    assert pipe.job_scheduler("joint") is pipe.scheduler
    reference = LinearFlowMatchEulerScheduler()
    by_folder = pipe(video=clip(), modality="depth", generator=seeded(), output_type="latent")
    pipe.scheduler = reference
    by_hand = pipe(video=clip(), modality="depth", generator=seeded(), output_type="latent")
    assert torch.equal(by_folder.modality_frames, by_hand.modality_frames)
    pipe.scheduler = type(components["scheduler"]).from_config(components["scheduler"].config)
    assert pipe.job_scheduler("perception") is pipe.scheduler  # assigned by the user: theirs wins


def test_the_bundled_model_called_with_a_prompt_alone_is_what_the_command_writes(tmp_path, monkeypatch):
    """`UnityVideoPipeline.from_pretrained(DEMO_MODEL)(prompt)` and `unityvideo generate PROMPT`: the same video, at
    the folder's size, length, steps and guidance (seed 0 both ways); so is the folder after `save_pretrained`."""
    from unityvideo_diffusers import cli, jobs

    written = {}

    def keep_frames(output, frames, *rest):
        written["frames"] = frames
        return {}

    monkeypatch.setattr(jobs, "write_outputs", keep_frames)
    prompt = "a large red ball slides left in front of a grey wall"
    cli.main(["generate", prompt, "--output", str(tmp_path / "cli.mp4")])
    pipe = UnityVideoPipeline.from_pretrained(DEMO_MODEL)
    torch.manual_seed(0)
    frames = pipe(prompt).frames
    assert frames.shape == (1, 17, 64, 64, 3) and np.array_equal(frames, written["frames"])
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = UnityVideoPipeline.from_pretrained(tmp_path / "saved")
    torch.manual_seed(0)
    assert np.array_equal(reloaded(prompt).frames, frames)


# ---------------------------------------------------------------- batches and stills


def test_perception_takes_a_batch_of_videos_in_every_form(components):
    pipe = tiny(UnityVideoPerceptionPipeline, components=components)
    first, second = clip(seed=1), clip(seed=2)
    settings = dict(modality="depth", height=32, width=32, num_inference_steps=2, output_type="latent")
    as_list = pipe(video=[first, second], generator=seeded(), **settings).modality_frames
    assert as_list.shape[0] == 2
    stacked = np.stack([first, second])
    for videos in (stacked, torch.from_numpy(stacked).permute(0, 1, 4, 2, 3)):
        assert torch.equal(pipe(video=videos, generator=seeded(), **settings).modality_frames, as_list)
    assert torch.equal(pipe(video=[first, second], prompt="", generator=seeded(), **settings).modality_frames, as_list)
    with_captions = pipe(video=[first, second], prompt=["a ball", "a cube"], generator=seeded(), **settings)
    assert with_captions.modality_frames.shape == as_list.shape


def test_a_single_image_is_a_still_control_held_over_the_frames(components):
    pipe = tiny(UnityVideoControlPipeline, components=components, sampling_defaults=FOLDER_DEFAULTS)
    still = (clip(frames=1)[0] * 255).astype(np.uint8)
    settings = dict(modality="depth", height=32, width=32, num_inference_steps=2, output_type="latent")
    held = pipe("a red ball", control_video=[PIL.Image.fromarray(still)] * 5, generator=seeded(), **settings)
    for control in (PIL.Image.fromarray(still), still):
        out = pipe(
            "a red ball", control_video=control, generator=seeded(), **settings
        )  # 5: the folder's length for control
        assert torch.equal(out.frames, held.frames)
    nine = pipe("a red ball", control_video=PIL.Image.fromarray(still), num_frames=9, generator=seeded(), **settings)
    assert nine.frames.shape[2] == 3


def test_a_still_control_image_on_the_command_line_needs_no_frames(tmp_path):
    from unityvideo_diffusers.cli import main

    PIL.Image.fromarray((clip(frames=1, size=64)[0] * 255).astype(np.uint8)).save(tmp_path / "still.png")
    output = tmp_path / "controlled.mp4"
    still = ["--control-image", str(tmp_path / "still.png"), "--modality", "depth"]
    main(["control", "a ball", *still, "--steps", "2", "--output", str(output)])
    record = json.loads(output.with_suffix(".json").read_text())
    assert output.is_file() and record["settings"]["frames"] is None and record["settings"]["steps"] == 2


# ---------------------------------------------------------------- diffusers conventions


def test_tuples_put_each_jobs_main_output_first(components):
    settings = dict(height=32, width=32, num_inference_steps=1, output_type="latent", return_dict=False)
    joint = tiny(components=components)("a red ball", modality="depth", num_frames=5, **settings)
    control = tiny(UnityVideoControlPipeline, components=components)(
        "a", control_video=clip(), modality="depth", **settings
    )
    perception = tiny(UnityVideoPerceptionPipeline, components=components)(video=clip(), modality="depth", **settings)
    assert len(joint) == 2 and all(isinstance(t, torch.Tensor) for t in joint)
    assert len(control) == 1 and isinstance(control[0], torch.Tensor)
    assert len(perception) == 1 and isinstance(perception[0], torch.Tensor)


@pytest.mark.parametrize("job", ["joint", "control", "perception"])
def test_a_pipeline_without_text_encoder_runs_on_what_encode_prompt_returned(components, job):
    """With guidance (a negative prompt) and the modality's fixed prompt, for every job."""
    pipeline_class = {"joint": UnityVideoPipeline, "control": UnityVideoControlPipeline}.get(
        job, UnityVideoPerceptionPipeline
    )
    full = tiny(pipeline_class, components=components)
    inputs = {
        "joint": dict(num_frames=5),
        "control": dict(control_video=clip()),
        "perception": dict(video=[clip(seed=1), clip(seed=2)]),
    }[job]
    prompts = ["a red ball", "a blue cube"]
    settings = dict(height=32, width=32, num_inference_steps=2, guidance_scale=3.0, output_type="latent", **inputs)
    expected = full(prompt=prompts, negative_prompt="blurry", modality="depth", generator=seeded(), **settings)
    embeds = full.encode_prompt(prompts, negative_prompt="blurry", modality="depth")
    assert len(embeds) == 3 and len(full.encode_prompt(prompts)) == 2
    bare = pipeline_class.from_pipe(full, text_encoder=None, tokenizer=None)
    names = ("prompt_embeds", "negative_prompt_embeds", "modality_prompt_embeds")
    actual = bare(modality="depth", generator=seeded(), **dict(zip(names, embeds)), **settings)
    for field in ("frames", "modality_frames"):
        assert (getattr(expected, field) is None) == (getattr(actual, field) is None)
        if getattr(expected, field) is not None:
            assert torch.equal(getattr(expected, field), getattr(actual, field))


def test_save_then_load_reproduces_outputs_bit_for_bit(components, tmp_path):
    pipe = tiny(components=components)
    settings = dict(modality="depth", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")
    before = pipe("a red ball", generator=seeded(), **settings)
    pipe.save_pretrained(tmp_path)
    after = UnityVideoPipeline.from_pretrained(tmp_path)("a red ball", generator=seeded(), **settings)
    assert torch.equal(before.frames, after.frames) and torch.equal(before.modality_frames, after.modality_frames)


def test_a_missing_folder_is_named_as_neither_a_folder_nor_a_hub_id():
    with pytest.raises(FileNotFoundError, match=r"\./pretrained_models: no such folder, and not a Hub id"):
        UnityVideoPipeline.from_pretrained("./pretrained_models")
