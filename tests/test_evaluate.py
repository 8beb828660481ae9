"""The ShapesWorld metrics: exact on the truth, and the frame reader recovers what the prompt says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.shapesworld.evaluation import (
    EXACT_SHAPES,
    Scores,
    ShapeReader,
    calibrate_shape_reader,
    depth_metrics,
    flow_epe,
    foreground_iou,
    largest_region,
    layering_accuracy,
    mask_agreement,
    normal_error_degrees,
    object_mask,
    of_jobs,
    read_object,
    reconstruct,
    score_word_reading,
    swapped_scene,
    trivial_baselines,
)
from unityvideo_diffusers.shapesworld.world import (
    COLOURS,
    WorldConfig,
    read_world,
    render,
    sample_scene,
    visualise,
    write_split,
)
from unityvideo_diffusers.testing import tiny_pipeline_components


def test_metrics_are_exact_on_the_truth():
    rng = np.random.default_rng(0)
    config = WorldConfig(height=48, width=48, frames=9)
    truth = render(sample_scene(rng, config, "train"), config)
    disparity = 1 / truth["depth"]
    scores = depth_metrics(3 * disparity + 1, truth["depth"])  # any scale and shift of the truth is perfect
    assert scores["abs_rel"] < 1e-6 and scores["delta1"] == 1.0
    assert (
        flow_epe(truth["flow"] * 0.1, truth["flow"]) < 1e-6
        and flow_epe(truth["flow"] * 0.1, truth["flow"], moving_only=True) < 1e-6
    )
    moving = np.linalg.norm(truth["flow"], axis=-1) > 0.25
    still = flow_epe(np.zeros_like(truth["flow"]), truth["flow"], moving_only=True)
    assert still == np.linalg.norm(truth["flow"], axis=-1)[moving].mean() > 0.25
    assert foreground_iou(truth["labels"] > 0, truth["labels"] > 0) == 1.0
    assert normal_error_degrees(visualise(truth)["normal"], truth["normal"]) < 1e-3


def test_the_reader_recovers_colour_shape_and_motion_from_true_frames():
    config = WorldConfig(height=64, width=64, frames=17, min_objects=1, max_objects=1)
    rng = np.random.default_rng(1)
    hits, ious = {"colour": 0, "shape": 0, "motion": 0}, []
    trials = 60
    for _ in range(trials):
        scene = sample_scene(rng, config, "train")
        truth = render(scene, config)
        read = read_object(truth["rgb"], scene.background)
        target = scene.objects[0]
        hits["colour"] += read["colour"] == target.colour
        hits["shape"] += read["shape"] == target.shape
        hits["motion"] += read["motion"] == target.motion
        ious.append(foreground_iou(object_mask(truth["rgb"], scene.background), truth["labels"] > 0))
    rates = {k: v / trials for k, v in hits.items()}
    assert rates["colour"] > 0.95 and rates["shape"] > 0.8 and rates["motion"] > 0.8 and np.mean(ious) > 0.9, (
        rates,
        np.mean(ious),
    )


def test_a_bounce_reads_as_one_when_its_last_landing_is_short():
    config = WorldConfig(height=64, width=64, frames=17, min_objects=1, max_objects=1)
    rng = np.random.default_rng(5)
    scene = next(
        s for s in (sample_scene(rng, config, "train") for _ in range(200)) if s.objects[0].motion == "bounces"
    )
    frames = render(scene, config)["rgb"]
    assert read_object(frames, scene.background)["motion"] == "bounces"
    frames[-1] = np.roll(frames[-1], -4, axis=0)  # as a 4x temporal VAE draws it: the last landing 4 px high
    assert read_object(frames, scene.background)["motion"] == "bounces"


def test_the_reader_ignores_stray_pixels_off_the_object():
    config = WorldConfig(height=64, width=64, frames=17, min_objects=1, max_objects=1)
    rng = np.random.default_rng(3)
    scene = next(s for s in (sample_scene(rng, config, "train") for _ in range(100)) if s.objects[0].shape == "cube")
    frames = render(scene, config)["rgb"]
    frames[:, 1, 1] = frames[:, 62, 62] = (1.0, 0.0, 1.0)  # two specks in opposite corners
    assert read_object(frames, scene.background)["shape"] == "cube"
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:3] = mask[6, 6] = mask[6:8, 0] = True
    assert largest_region(mask).sum() == 6 and largest_region(mask)[1:4, 1:3].all()
    assert not largest_region(np.zeros((4, 4), bool)).any()


class BlurringVAE:
    """Stands in for a small VAE that rounds small shapes: 4 x 4 average pooling, then trilinear upsampling back."""

    factor = 4
    device = torch.device("cpu")

    def encode(self, video):
        latents = torch.nn.functional.avg_pool3d(video, (1, self.factor, self.factor))
        return type("Encoded", (), {"latent_dist": type("Mode", (), {"mode": lambda _: latents})()})()

    def decode(self, latents):
        video = torch.nn.functional.interpolate(latents, scale_factor=(1, self.factor, self.factor), mode="trilinear")
        return type("Decoded", (), {"sample": video})()


def _one_object_clips(config, split, count, seed):
    rng = np.random.default_rng(seed)
    return [
        (scene, render(scene, config)["rgb"]) for scene in (sample_scene(rng, config, split) for _ in range(count))
    ]


def test_a_reader_calibrated_on_a_vaes_reconstructions_reads_the_shapes_it_rounds():
    config = WorldConfig(height=64, width=64, frames=9, min_objects=1, max_objects=1)
    vae = BlurringVAE()
    reader = calibrate_shape_reader(vae, config, per_shape=8)
    assert set(reader.centres) == {"ball", "cube", "triangle"}
    assert (
        reader.centres["cube"][0] < 0.97 and reader.centres["triangle"][0] > 0.55
    )  # corners rounded: the fill ratios close in

    def balanced_accuracy(shape_reader):
        hits = {}
        for scene, frames in _one_object_clips(config, "eval", 45, seed=5):
            read = read_object(reconstruct(vae, frames), scene.background, shape_reader)["shape"]
            hits.setdefault(scene.objects[0].shape, []).append(read == scene.objects[0].shape)
        return np.mean([np.mean(values) for values in hits.values()])

    assert balanced_accuracy(reader) > 0.8 and balanced_accuracy(reader) > balanced_accuracy(EXACT_SHAPES) + 0.1


def test_shape_reader_fit_and_the_exact_centres():
    reader = ShapeReader.fit({"ball": [(0.7, 0.5), (0.8, 0.5)], "cube": [(0.9, 0.4), (0.9, 0.6)]})
    assert reader.centres == {"ball": (0.75, 0.5), "cube": (0.9, 0.5)}
    assert np.allclose(reader.spread, (np.sqrt(0.0025 / 2), np.sqrt(0.01 / 2)))
    assert reader((0.84, 0.9)) == "cube" and reader((0.8, 0.5)) == "ball"
    assert EXACT_SHAPES((0.55, 0.3)) == "triangle" and EXACT_SHAPES((0.76, 0.45)) == "ball"


def test_calibration_refuses_a_world_whose_training_split_lacks_a_shape():
    no_triangles = tuple((colour, "triangle") for colour in COLOURS)
    config = WorldConfig(height=32, width=32, frames=5, min_objects=1, max_objects=1, held_out=no_triangles)
    with pytest.raises(
        ValueError, match=r"Cannot calibrate the shape reader.*'triangle': 0.*Is every shape in the training split"
    ):
        calibrate_shape_reader(BlurringVAE(), config, per_shape=1)


def test_the_world_a_split_was_written_with_reads_back(tmp_path):
    config = WorldConfig(height=32, width=32, frames=5, speed_range=(0.3, 0.5))
    write_split(tmp_path, "eval", 1, seed=0, config=config)
    assert read_world(tmp_path / "eval") == config
    with pytest.raises(FileNotFoundError, match="not a split folder"):
        read_world(tmp_path)


def test_trivial_baselines(tmp_path):
    write_split(tmp_path, "eval", 4, 0, WorldConfig(height=32, width=32, frames=5, min_objects=1, max_objects=1))
    scores = trivial_baselines(tmp_path / "eval")
    assert scores["perception/segmentation_iou"] == 0.0 and scores["perception/flow_epe"] >= 0
    assert 0 < scores["perception/depth_abs_rel"] < 1
    scenes = [json.loads((clip / "scene.json").read_text()) for clip in sorted((tmp_path / "eval").glob("0*"))]
    for attribute in ("colour", "shape", "motion"):  # one constant answer, scored class-balanced
        used = {scene["objects"][0][attribute] for scene in scenes}
        assert scores[f"joint/{attribute}_accuracy"] == 1 / len(used)


def test_scores_can_be_kept_to_the_jobs_asked_for(tmp_path):
    """`--jobs joint` keeps text adherence and the RGB-segmentation agreement (read from the same generated clip) only."""
    write_split(tmp_path, "eval", 2, 0, WorldConfig(height=32, width=32, frames=5))
    scores = trivial_baselines(tmp_path / "eval")
    text = of_jobs(scores, ("joint",))
    assert "joint/rgb_segmentation_kappa" in text and "joint/colour_accuracy" in text
    assert all(name.startswith("joint/") for name in text)
    assert of_jobs(scores, ("perception", "control", "joint")) == scores
    assert (
        set(of_jobs(scores, ("perception",))) == {name for name in scores if name.startswith("perception/")} != set()
    )


def test_accuracy_is_class_balanced_so_a_constant_answer_gains_nothing_from_a_majority():
    always_cube, half_the_cubes_and_the_rest = Scores(), Scores()
    for shape in ("cube", "cube", "cube", "ball", "triangle"):
        always_cube.add("shape_accuracy", float(shape == "cube"), group=shape)
    for shape, correct in (("cube", 1), ("cube", 0), ("ball", 1), ("triangle", 1)):
        half_the_cubes_and_the_rest.add("shape_accuracy", float(correct), group=shape)
    assert always_cube.means()["shape_accuracy"] == 1 / 3  # plain accuracy: 0.6
    assert half_the_cubes_and_the_rest.means()["shape_accuracy"] == (0.5 + 1 + 1) / 3
    assert {
        name: value
        for name, value in half_the_cubes_and_the_rest.means().items()
        if name.startswith("shape_accuracy/")
    } == {"shape_accuracy/ball": 1.0, "shape_accuracy/cube": 0.5, "shape_accuracy/triangle": 1.0}
    plain = Scores()
    for value in (1.0, 0.0, 0.0):
        plain.add("iou", value)
    assert plain.means() == {"iou": 1 / 3}


def test_layering_accuracy_is_high_on_the_truth_and_chance_when_objects_swap():
    config = WorldConfig(height=64, width=64, frames=9, min_objects=2, max_objects=3)
    rng = np.random.default_rng(2)
    exact, swapped = [], []
    while len(exact) < 10:
        scene = sample_scene(rng, config, "train")
        colours = [obj.colour for obj in scene.objects]
        if len(set(colours)) < len(colours):
            continue
        truth = render(scene, config)
        exact.append(layering_accuracy(truth["rgb"], truth["labels"], colours))
        swapped.append(layering_accuracy(truth["rgb"], truth["labels"], colours[1:] + colours[:1]))
    assert np.mean(exact) > 0.95 and np.mean(swapped) < 0.2, (np.mean(exact), np.mean(swapped))


def test_mask_agreement_is_one_on_equal_masks_and_zero_when_either_is_constant_or_independent():
    rng = np.random.default_rng(3)
    mask = rng.random((5, 32, 32)) < 0.3
    assert mask_agreement(mask, mask) == 1.0 and mask_agreement(mask, ~mask) < -0.5
    everything = np.ones_like(mask)
    assert mask_agreement(everything, everything) == 0.0 and mask_agreement(mask, everything) == 0.0
    assert abs(mask_agreement(mask, rng.random(mask.shape) < 0.3)) < 0.05


def test_word_reading_is_zero_exactly_when_the_model_ignores_the_prompt(tmp_path):
    write_split(tmp_path, "eval", 1, 0, WorldConfig(min_objects=1, max_objects=1, frames=5))
    clip = tmp_path / "eval" / "00000"
    scene = json.loads((clip / "scene.json").read_text())
    for attribute in ("colour", "shape", "motion"):
        swapped = swapped_scene(scene, attribute, torch.Generator().manual_seed(0))
        assert swapped["objects"][0][attribute] != scene["objects"][0][attribute]
        assert {k: v for k, v in swapped["objects"][0].items() if k != attribute} == {
            k: v for k, v in scene["objects"][0].items() if k != attribute
        }
    pipe = UnityVideoPipeline(**tiny_pipeline_components())

    def reading() -> dict:
        scores = Scores()
        score_word_reading(scores, pipe, scene, clip, torch.Generator().manual_seed(0))
        return scores.means()

    assert all(abs(value) > 1e-4 for value in reading().values())
    for block in pipe.transformer.blocks:  # no cross-attention output: the text cannot reach the video
        torch.nn.init.zeros_(block.attn2.to_out[0].weight)
        torch.nn.init.zeros_(block.attn2.to_out[0].bias)
    assert all(value == 0 for value in reading().values())


def test_the_eval_command_scores_the_bundled_model_and_writes_its_table(tmp_path, capsys):
    """`unityvideo eval` runs the evaluation in Python (no argv rebuilt) and writes the JSON it prints."""
    from unityvideo_diffusers import DEMO_MODEL
    from unityvideo_diffusers.cli import main
    from unityvideo_diffusers.shapesworld.world import DEMO_WORLD

    write_split(tmp_path, "eval", 1, 0, WorldConfig(**DEMO_WORLD))
    output = tmp_path / "quality.json"
    argv = ["eval", "--model", str(DEMO_MODEL), "--data", str(tmp_path / "eval"), "--jobs", "perception"]
    main([*argv, "--steps", "2", "--shape-reader", "exact", "--output", str(output)])
    results = json.loads(output.read_text())
    assert set(results) == {"trivial", "model/default/2"}
    assert (
        results["model/default/2"].keys() == results["trivial"].keys()
        and "perception/depth_delta1" in results["trivial"]
    )
    printed = capsys.readouterr().out
    assert "model/default/2" in printed and f"Wrote {output}." in printed
    main([*argv, "--shape-reader", "exact", "--output", str(output)])  # no --steps: each job the folder's own
    assert set(json.loads(output.read_text())) == {"trivial", "model/default/defaults"}
