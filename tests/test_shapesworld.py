"""ShapesWorld: deterministic, exact modalities, held-out compositions, readable by the trainer."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import PIL.Image
import pytest

from unityvideo_diffusers.modalities import decode_depth, decode_flow, decode_segmentation
from unityvideo_diffusers.shapesworld.world import WorldConfig, render, sample_scene, write_split
from unityvideo_diffusers.training.data import load_row_frames, read_metadata


CONFIG = WorldConfig(height=48, width=48, frames=9)


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def frames(folder):
    return np.stack([np.asarray(PIL.Image.open(p), dtype=np.float64) / 255 for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapesworld")
    write_split(root, "train", 6, 3, CONFIG)
    write_split(root, "eval", 4, 3, CONFIG)
    return root


def test_same_seed_same_files(world, tmp_path):
    write_split(tmp_path, "train", 6, 3, CONFIG)
    assert digest(tmp_path / "train") == digest(world / "train")
    write_split(tmp_path / "other", "train", 6, 4, CONFIG)
    assert digest(tmp_path / "other" / "train") != digest(world / "train")


def test_processes_render_the_same_files(world, tmp_path):
    write_split(tmp_path, "train", 6, 3, CONFIG, processes=2)
    assert digest(tmp_path / "train") == digest(world / "train")
    with pytest.raises(ValueError, match="processes and captions must be positive, got 0 and 1"):
        write_split(tmp_path, "train", 6, 3, CONFIG, processes=0)


def test_extra_captions_are_partial_captions_of_the_same_clip(tmp_path):
    """`captions` rows per clip: the full caption first, then partial ones of the same videos, each naming every
    object by its colour or its shape (or both); the clips themselves are those of one caption."""
    import csv

    write_split(tmp_path / "one", "train", 6, 3, CONFIG)
    write_split(tmp_path / "three", "train", 6, 3, CONFIG, captions=3)
    single = list(csv.DictReader(open(tmp_path / "one" / "train" / "metadata.csv")))
    rows = list(csv.DictReader(open(tmp_path / "three" / "train" / "metadata.csv")))
    assert len(rows) == 18 and digest(tmp_path / "one" / "train" / "00000") == digest(
        tmp_path / "three" / "train" / "00000"
    )
    for index, row in enumerate(single):
        captions = rows[3 * index : 3 * index + 3]
        assert captions[0] == row and {c["video"] for c in captions} == {row["video"]}
        scene = json.loads((tmp_path / "one" / "train" / f"{index:05d}" / "scene.json").read_text())
        for caption in captions[1:]:
            words = set(caption["prompt"].split())
            for obj in scene["objects"]:
                assert obj["colour"] in words or obj["shape"] in words, caption["prompt"]
            assert words <= set(row["prompt"].split()) | {"an", "object"}
    assert any(c["prompt"] != r["prompt"] for c, r in zip(rows[1::3], single))


def test_the_command_writes_one_split_of_one_object_scenes(tmp_path):
    from unityvideo_diffusers.shapesworld.world import main

    main(
        [
            "--output",
            str(tmp_path),
            "--train",
            "0",
            "--eval",
            "3",
            "--size",
            "32",
            "--frames",
            "5",
            "--min-objects",
            "1",
            "--max-objects",
            "1",
        ]
    )
    assert not (tmp_path / "train").exists()
    scenes = [json.loads(path.read_text()) for path in sorted((tmp_path / "eval").glob("*/scene.json"))]
    assert len(scenes) == 3 and all(len(scene["objects"]) == 1 for scene in scenes)
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "none"), "--train", "0", "--eval", "0"])
    assert not (tmp_path / "none").exists()


def test_the_command_writes_the_demo_models_world(tmp_path):
    from unityvideo_diffusers.shapesworld.world import DEMO_WORLD, main

    main(["--output", str(tmp_path), "--train", "0", "--eval", "4", "--size", "32", "--frames", "5", "--demo-world"])
    objects = [o for path in (tmp_path / "eval").glob("*/scene.json") for o in json.loads(path.read_text())["objects"]]
    low, high = DEMO_WORLD["speed_range"]
    assert objects and all(
        low <= o["speed"] <= high and DEMO_WORLD["min_size"] <= o["size"] <= DEMO_WORLD["max_size"] for o in objects
    )


def test_held_out_compositions(world):
    held = {tuple(pair) for pair in CONFIG.held_out}
    for split, expect_held in (("train", False), ("eval", True)):
        for scene_file in sorted((world / split).glob("*/scene.json")):
            pairs = {(o["colour"], o["shape"]) for o in json.loads(scene_file.read_text())["objects"]}
            assert bool(pairs & held) == expect_held, (split, pairs)


def test_modality_videos_decode_to_the_truth(world):
    clip = world / "train" / "00000"
    truth = np.load(clip / "gt.npz")
    assert np.array_equal(decode_segmentation(frames(clip / "segmentation")), truth["labels"])
    disparity = 1 / truth["depth"]
    normalised = (disparity - disparity.min()) / (disparity.max() - disparity.min())
    assert np.abs(decode_depth(frames(clip / "depth")) - normalised).mean() < 0.01
    flow = truth["flow"]
    largest = np.sqrt(np.square(flow).sum(-1)).max()
    if largest > 0:
        error = np.sqrt(np.square(decode_flow(frames(clip / "raft"), largest) - flow).sum(-1))
        assert error.mean() < 0.02 * largest


def test_flow_carries_objects_to_the_next_frame():
    """Pixels moved by their flow land where the object is in the next frame: centroids agree within a pixel."""
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(20):
        scene = sample_scene(rng, CONFIG, "train")
        truth = render(scene, CONFIG)
        labels, flow = truth["labels"], truth["flow"]
        for t in range(CONFIG.frames - 1):
            for label in range(1, len(scene.objects) + 1):
                now, after = labels[t] == label, labels[t + 1] == label
                ys, xs = np.nonzero(now)
                # only objects fully visible in both frames (no occlusion, not at the border)
                if (
                    len(ys) < 10
                    or abs(now.sum() - after.sum()) > 0.3 * now.sum()
                    or now[[0, -1]].any()
                    or now[:, [0, -1]].any()
                ):
                    continue
                moved = np.stack([xs + flow[t, ys, xs, 0], ys + flow[t, ys, xs, 1]]).mean(axis=1)
                ys2, xs2 = np.nonzero(after)
                errors.append(np.abs(moved - np.array([xs2.mean(), ys2.mean()])).max())
    # median: exactness; the tail: rasterisation of small shapes and partial occlusion by the floor
    assert len(errors) > 50 and np.median(errors) < 0.3 and np.percentile(errors, 90) < 1.0, (
        len(errors),
        np.median(errors),
        max(errors),
    )


def test_speed_range_sets_how_far_objects_travel():
    """A slide covers its speed's share of the frame; a bounce rises half as far, so a fast one stays in view."""
    config = WorldConfig(min_objects=1, max_objects=1, x_range=(0.5, 0.5), y_range=(0.6, 0.6), speed_range=(0.5, 0.5))
    travelled = {}
    for motion in ("slides left", "bounces"):
        scene = sample_scene(np.random.default_rng(1), config, "train")
        scene.objects[0].motion = motion
        centres = [np.argwhere(frame > 0).mean(axis=0) for frame in render(scene, config)["labels"]]
        travelled[motion] = np.ptp(np.array(centres), axis=0) / config.height  # (rows, columns) as fractions
    assert abs(travelled["slides left"][1] - 0.5) < 0.03 and travelled["slides left"][0] < 0.01, travelled
    assert abs(travelled["bounces"][0] - 0.25) < 0.03 and travelled["bounces"][1] < 0.01, travelled


def test_depth_and_occlusion_agree(world):
    for clip in sorted((world / "train").glob("0000*")):
        truth = np.load(clip / "gt.npz")
        objects = truth["labels"] > 0
        background_depth = 6.0
        assert (truth["depth"][objects] < background_depth).all()
        assert np.allclose(np.linalg.norm(truth["normal"], axis=-1), 1, atol=1e-5)


def test_the_trainer_reads_it(world):
    rows = read_metadata(world / "train" / "metadata.csv", ["depth", "raft", "segmentation", "normal", "edge"])
    assert len(rows) == 6 and "in front of a" in rows[0].prompt
    loaded = load_row_frames(rows[0], 9, 48, 48)
    assert set(loaded) == {"rgb", "depth", "raft", "segmentation", "normal", "edge"} and len(loaded["edge"]) == 9
    header = next(csv.reader(open(world / "eval" / "metadata.csv")))
    assert header == ["video", "prompt", "depth", "raft", "segmentation", "normal", "edge"]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(height=8), "at least 16 x 16"),
        (dict(frames=1), "flow needs a next frame"),
        (dict(min_objects=3, max_objects=2), "min_objects <= max_objects"),
        (dict(min_size=0.5, max_size=0.9), "max_size <= 0.6"),
        (dict(min_size=0.3, max_size=0.45), "min_size < large_from <= max_size"),
        (dict(x_range=(0.7, 0.3)), "x_range must be"),
        (dict(speed_range=(0.3, 1.5)), "speed_range must be"),
        (dict(held_out=(("pink", "ball"),)), "not a colour x shape"),
    ],
)
def test_impossible_settings_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        write_split(tmp_path, "train", 2, 0, WorldConfig(**settings))
    assert not (tmp_path / "train").exists()
