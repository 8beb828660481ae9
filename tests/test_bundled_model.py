"""The bundled ShapesWorld demo model: every command's default, and measurably good at its world.

The floors sit between what the model measures on these clips (10 steps, seed 0) and the better of the trivial
predictor and the recipe's untrained start, so a pipeline or codec change that breaks the model fails here. Measured
on the three clips (model / trivial / untrained): depth AbsRel 0.186 / 0.558 / 0.445, delta1 0.861 / 0.488 / 0.226,
segmentation IoU 0.746 / 0 / 0.185, normal error 11.1 / 27.3 / 93.5 degrees, flow end-point error 0.436 / 0.485 /
0.576 px (moving pixels 1.673 / 2.255 / 2.212); control IoU (segmentation, depth) 0.522, 0.541 / - / 0.143, 0.143;
on eight one-object clips class-balanced colour accuracy 0.833 / 0.250 / 0.000, motion accuracy 0.333 / 0.250 /
0.000 (eight clips for seven motions: the word reading below, and 0.668 against 0.170 on the docs' 56 clips, are
the steadier measure), RGB-segmentation kappa 0.374 / 0 / 0.024, and word reading of the colour and motion words
1.46 and 0.21 / 0 / 0.000."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unityvideo_diffusers import DEMO_MODEL
from unityvideo_diffusers.shapesworld.evaluation import calibrate_shape_reader, evaluate, vae_ceiling
from unityvideo_diffusers.shapesworld.recipe import SAMPLING_DEFAULTS, SAMPLING_FLOW_SHIFT
from unityvideo_diffusers.shapesworld.world import DEMO_WORLD, WorldConfig, write_split
from unityvideo_diffusers.video_io import load_frames


def unityvideo(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "unityvideo_diffusers", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_the_demo_model_is_bundled_and_small():
    size = sum(p.stat().st_size for p in DEMO_MODEL.rglob("*") if p.is_file())
    assert (DEMO_MODEL / "model_index.json").is_file() and size < 25 * 2**20
    defaults = json.loads((DEMO_MODEL / "model_index.json").read_text())["sampling_defaults"]
    assert {(d["height"], d["width"], d["num_frames"]) for d in defaults.values()} == {(64, 64, 17)}
    assert defaults == SAMPLING_DEFAULTS  # a rebuild by the recipe records the same measured defaults
    scheduler = json.loads((DEMO_MODEL / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["flow_shift"] == SAMPLING_FLOW_SHIFT


def test_generate_estimate_control_default_to_the_demo_model(tmp_path):
    result = unityvideo(
        "generate", "a large red ball slides left in front of a grey wall", "--modality", "depth", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [video] = [v for v in (tmp_path / "outputs").glob("generate-*.mp4") if not v.stem.endswith("_depth")]
    record = json.loads(video.with_suffix(".json").read_text())
    assert record["settings"]["model"] == str(DEMO_MODEL)
    defaults = json.loads((DEMO_MODEL / "model_index.json").read_text())["sampling_defaults"]
    assert record["settings"]["steps"] == defaults["joint"]["num_inference_steps"]
    frames = load_frames(video)
    assert len(frames) == 17 and frames[0].size == (64, 64)

    depth = video.with_name(video.stem + "_depth.mp4")
    result = unityvideo(
        "control",
        "a small green cube rises in front of a teal wall",
        "--control-video",
        depth,
        "--modality",
        "depth",
        "--output",
        tmp_path / "control.mp4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = unityvideo(
        "estimate", video, "--modality", "segmentation", "--output", tmp_path / "seg.mp4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(load_frames(tmp_path / "seg.mp4")) == 17


def held_out_clips(folder, config: WorldConfig, count: int = 3):
    """Clips the model never saw (another seed), each with a colour x shape pair held out of its training."""
    return write_split(folder, "eval", count, seed=12345, config=config).parent


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return held_out_clips(tmp_path_factory.mktemp("world"), WorldConfig(**DEMO_WORLD))


@pytest.fixture(scope="module")
def held_out_single_objects(tmp_path_factory):
    """Text adherence is read from one-object scenes (the reader cannot tell whose colour is whose)."""
    return held_out_clips(
        tmp_path_factory.mktemp("single"), WorldConfig(**DEMO_WORLD, min_objects=1, max_objects=1), count=8
    )


@pytest.fixture(scope="module")
def shape_reader():
    """Calibrated as `unityvideo eval` does, on fewer scenes."""
    from diffusers import AutoencoderKLWan

    return calibrate_shape_reader(
        AutoencoderKLWan.from_pretrained(DEMO_MODEL, subfolder="vae").eval(), WorldConfig(**DEMO_WORLD), per_shape=10
    )


def test_perception_beats_trivial_predictors_by_far(held_out):
    scores = evaluate(DEMO_MODEL, held_out, steps=10, jobs=("perception",))
    assert scores["perception/depth_abs_rel"] < 0.3 and scores["perception/depth_delta1"] > 0.68, scores
    assert scores["perception/segmentation_iou"] > 0.35, scores
    assert scores["perception/normal_degrees"] < 17, scores
    assert scores["perception/flow_epe_moving"] < 1.95 and scores["perception/flow_epe"] < 0.46, scores


def test_control_follows_the_control_video(held_out):
    scores = evaluate(DEMO_MODEL, held_out, steps=10, jobs=("control",))
    assert scores["control/segmentation_iou"] > 0.35 and scores["control/depth_iou"] > 0.35, scores


def test_generation_follows_the_prompt_colour_and_motion_and_its_segmentation_agrees(
    held_out_single_objects, shape_reader
):
    scores = evaluate(DEMO_MODEL, held_out_single_objects, steps=10, jobs=("joint",), shape_reader=shape_reader)
    assert scores["joint/colour_accuracy"] > 0.6 and scores["joint/motion_accuracy"] > 0.29, scores
    assert scores["joint/rgb_segmentation_kappa"] > 0.3, scores
    assert scores["joint/colour_word_reading"] > 0.3 and scores["joint/motion_word_reading"] > 0.1, scores


def test_the_vae_ceiling_scores_reconstructions_of_the_truth(held_out, held_out_single_objects, shape_reader):
    """The VAE's reconstructions of the true clips score every metric, close to perfect where the VAE is not the limit
    (they are what the docs' ceiling table is measured on)."""
    scores = vae_ceiling(DEMO_MODEL, held_out)
    assert {
        "perception/depth_abs_rel",
        "perception/flow_epe_moving",
        "control/segmentation_iou",
        "control/depth_iou",
    } <= scores.keys()
    assert scores["perception/depth_delta1"] > 0.9 and scores["perception/segmentation_iou"] > 0.7, scores
    assert scores["perception/normal_degrees"] < 8 and scores["control/depth_layering_accuracy"] > 0.85, scores
    single = vae_ceiling(DEMO_MODEL, held_out_single_objects, jobs=("joint",), shape_reader=shape_reader)
    assert {"joint/colour_accuracy", "joint/shape_accuracy", "joint/rgb_segmentation_kappa"} <= single.keys()
    assert all(name.startswith("joint/") for name in single), single
    assert single["joint/rgb_segmentation_kappa"] > 0.5, single
    assert single["joint/shape_accuracy"] > 0.7, single  # read as this VAE draws shapes, they are not capped
