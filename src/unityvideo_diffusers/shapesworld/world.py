"""ShapesWorld: seeded procedural videos of simple objects with exact, frame-aligned modality videos.

A scene is a tilted floor-and-wall background and one to a few objects (ball, cube face, triangle) of some colour,
size and depth, each moving (sliding, bouncing, approaching, receding). Everything is analytic, so every modality is
exact: depth, optical flow (forward, frame t -> t + 1), instance segmentation, surface normals and edges. Prompts are
written from the scene. Colour x shape pairs listed in `held_out` never appear in the training split, so the eval
split measures composition.

    python -m unityvideo_diffusers.shapesworld.world --output data/shapesworld --train 400 --eval 40 --seed 0

writes `train/metadata.csv` and `eval/metadata.csv` in the authors' layout (video, prompt, one column per modality;
each video a folder of PNG frames, lossless so colours decode exactly) and `gt.npz` per clip with the numbers.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import PIL.Image

from ..modalities import encode_depth, encode_flow, encode_segmentation


COLOURS = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.18, 0.72, 0.27),
    "blue": (0.18, 0.35, 0.88),
    "yellow": (0.95, 0.85, 0.18),
    "purple": (0.58, 0.25, 0.75),
    "orange": (0.97, 0.55, 0.12),
    "white": (0.93, 0.93, 0.93),
}
SHAPES = ("ball", "cube", "triangle")
MOTIONS = ("slides left", "slides right", "rises", "falls", "bounces", "approaches", "recedes")
BACKGROUNDS = {
    "grey": (0.55, 0.55, 0.58),
    "beige": (0.78, 0.72, 0.6),
    "teal": (0.35, 0.55, 0.58),
    "dark": (0.22, 0.22, 0.26),
}
MODALITY_COLUMNS = ("depth", "raft", "segmentation", "normal", "edge")
LARGE_FROM = 0.27  # default size (radius at depth 1) from which prompts say "large" rather than "small"
LIGHT = np.array([-0.4, -0.5, -0.77]) / np.linalg.norm([-0.4, -0.5, -0.77])  # towards a light up-left, in front


@dataclass(frozen=True)
class WorldConfig:
    height: int = 64
    width: int = 64
    frames: int = 17
    min_objects: int = 1
    max_objects: int = 2
    min_size: float = 0.2  # object radius at depth 1, as a fraction of the image height
    max_size: float = 0.35
    large_from: float = LARGE_FROM  # prompts call objects of this size and up "large", smaller ones "small"
    x_range: tuple[float, float] = (0.25, 0.75)  # where an object's centre starts, as fractions of the width
    y_range: tuple[float, float] = (0.3, 0.7)  # ... and of the height
    speed_range: tuple[float, float] = (
        0.2,
        0.4,
    )  # how far an object slides, rises or falls in a clip, fraction of the frame
    held_out: tuple[tuple[str, str], ...] = (
        ("red", "cube"),
        ("green", "triangle"),
        ("blue", "ball"),
        ("yellow", "cube"),
    )

    def validate(self) -> None:
        problems = []
        if self.height < 16 or self.width < 16:
            problems.append(f"frames must be at least 16 x 16, got {self.height} x {self.width}")
        if self.frames < 2:
            problems.append(f"frames must be >= 2 (flow needs a next frame), got {self.frames}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            problems.append(f"need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}")
        if not 0.05 <= self.min_size <= self.max_size <= 0.6:
            problems.append(
                f"need 0.05 <= min_size <= max_size <= 0.6 of the height, got {self.min_size}, {self.max_size}"
            )
        if not self.min_size < self.large_from <= self.max_size:
            problems.append(f"need min_size < large_from <= max_size (both words must occur), got {self.large_from}")
        for name in ("x_range", "y_range", "speed_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= 1:
                problems.append(f"{name} must be (low, high) with 0 <= low <= high <= 1, got {getattr(self, name)}")
        for colour, shape in self.held_out:
            if colour not in COLOURS or shape not in SHAPES:
                problems.append(f"held_out pair ({colour!r}, {shape!r}) is not a colour x shape of this world")
        if len(set(self.held_out)) >= len(COLOURS) * len(SHAPES):
            problems.append("held_out leaves no colour x shape pair for training")
        if problems:
            raise ValueError("Impossible ShapesWorld settings:\n  - " + "\n  - ".join(problems))


# Starts near the middle and fast motion: the motion word then says where the object is in every frame, and a slide
# crosses two of the transformer's 16-pixel tokens (at the default speeds about one, and a model trained there learned
# to approach and recede but no slide, rise or fall: docs/research/shapesworld_runs.md).
DEMO_WORLD = dict(
    height=64,
    width=64,
    frames=17,
    min_size=0.3,
    max_size=0.45,
    large_from=0.375,
    x_range=(0.4, 0.6),
    y_range=(0.4, 0.6),
    speed_range=(0.4, 0.6),
)


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: float  # radius at depth 1, fraction of the height
    x: float  # centre at t = 0, fraction of the width
    y: float  # centre at t = 0, fraction of the height
    depth: float  # distance from the camera at t = 0
    motion: str
    speed: float  # fraction of the frame per clip


@dataclass
class Scene:
    background: str
    objects: list[SceneObject] = field(default_factory=list)
    large_from: float = LARGE_FROM  # its world's WorldConfig.large_from

    def prompt(self, rng: np.random.Generator | None = None) -> str:
        """The scene's caption ("a large red cube slides right in front of a grey wall"). With `rng`, a partial one:
        each object's size, colour and motion are left out with probability 1/2 and its shape is named "object" with
        probability 1/2 (never both colour and shape), and the wall with probability 1/2."""
        parts = []
        for obj in sorted(self.objects, key=lambda o: o.depth):
            words = ["small" if obj.size < self.large_from else "large", obj.colour, obj.shape, obj.motion]
            if rng is not None:
                kept = rng.random(len(words)) < 0.5
                if not kept[1] and not kept[2]:
                    kept[1 + int(rng.integers(2))] = True
                words = [
                    word if keep else "object" if index == 2 else None
                    for index, (word, keep) in enumerate(zip(words, kept))
                ]
            description = " ".join(word for word in words if word)
            parts.append(f"{'an' if description[0] in 'aeiou' else 'a'} {description}")
        wall = rng is None or rng.random() < 0.5
        return " and ".join(parts) + (f" in front of a {self.background} wall" if wall else "")


def sample_scene(rng: np.random.Generator, config: WorldConfig, split: str) -> Scene:
    """A random scene; the training split never uses a held-out colour x shape pair, the eval split always has one."""
    allowed = [pair for pair in itertools.product(COLOURS, SHAPES) if pair not in config.held_out]
    held = list(config.held_out)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    pairs = [allowed[int(rng.integers(len(allowed)))] for _ in range(count)]
    if split == "eval" and held:
        pairs[0] = held[int(rng.integers(len(held)))]
    objects = []
    for colour, shape in pairs:
        objects.append(
            SceneObject(
                shape=shape,
                colour=colour,
                size=float(rng.uniform(config.min_size, config.max_size)),
                x=float(rng.uniform(*config.x_range)),
                y=float(rng.uniform(*config.y_range)),
                depth=float(rng.uniform(1.5, 3.0)),
                motion=MOTIONS[int(rng.integers(len(MOTIONS)))],
                speed=float(rng.uniform(*config.speed_range)),
            )
        )
    return Scene(
        background=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        objects=objects,
        large_from=config.large_from,
    )


def _position(obj: SceneObject, time: float) -> tuple[float, float, float]:
    """(x, y, depth) at `time` in [0, 1] (fractions of the frame; depth in world units)."""
    x, y, depth = obj.x, obj.y, obj.depth
    travel = obj.speed * (time - 0.5)
    if obj.motion == "slides left":
        x -= travel
    elif obj.motion == "slides right":
        x += travel
    elif obj.motion == "rises":
        y -= travel
    elif obj.motion == "falls":
        y += travel
    elif obj.motion == "bounces":
        y -= 0.5 * obj.speed * abs(math.sin(2 * math.pi * time))  # twice up and down: half the height keeps it in view
    elif obj.motion == "approaches":
        depth *= 1 - 0.4 * time
    elif obj.motion == "recedes":
        depth *= 1 + 0.6 * time
    return x, y, depth


def _background(config: WorldConfig, colour) -> dict[str, np.ndarray]:
    """A wall (upper half, depth 6) and a floor rising towards the camera (depth 6 -> 2.5 at the bottom)."""
    rows = (np.arange(config.height) + 0.5) / config.height
    floor = rows > 0.5
    depth_rows = np.where(floor, 6.0 - (rows - 0.5) * 7.0, 6.0)
    shade = np.where(floor, 0.75 + 0.25 * (rows - 0.5) * 2, 1.0)
    wall_normal, floor_normal = np.array([0.0, 0.0, -1.0]), np.array([0.0, -0.8, -0.6])
    normals = np.where(floor[:, None], floor_normal, wall_normal)
    return {
        "rgb": np.broadcast_to(np.array(colour)[None, None] * shade[:, None, None], (config.height, config.width, 3)),
        "depth": np.broadcast_to(depth_rows[:, None], (config.height, config.width)),
        "normal": np.broadcast_to(normals[:, None], (config.height, config.width, 3)),
    }


def _footprint(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if shape == "ball":
        return dx**2 + dy**2 <= radius**2
    if shape == "cube":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    # an upward equilateral triangle inscribed in the circle of `radius` (image y points down)
    return (dy <= radius / 2) & (np.abs(dx) * math.sqrt(3) <= dy + radius)


def render(scene: Scene, config: WorldConfig) -> dict[str, np.ndarray]:
    """Frames (F, H, W, 3) in [0, 1] and exact modalities: depth (F, H, W), flow (F, H, W, 2) in pixels towards the
    next frame, labels (F, H, W) (0 background, i + 1 for object i), normals (F, H, W, 3) (camera frame, unit)."""
    height, width, frames = config.height, config.width, config.frames
    ys, xs = np.meshgrid((np.arange(height) + 0.5), (np.arange(width) + 0.5), indexing="ij")
    background = _background(config, BACKGROUNDS[scene.background])
    out = {
        "rgb": np.empty((frames, height, width, 3)),
        "depth": np.empty((frames, height, width)),
        "flow": np.zeros((frames, height, width, 2)),
        "labels": np.zeros((frames, height, width), dtype=np.int64),
        "normal": np.empty((frames, height, width, 3)),
    }
    for frame in range(frames):
        time, next_time = frame / (frames - 1), (frame + 1) / (frames - 1)
        rgb, depth, normal = (background[k].copy() for k in ("rgb", "depth", "normal"))
        flow, labels = np.zeros((height, width, 2)), np.zeros((height, width), dtype=np.int64)
        placed = [(i, obj, _position(obj, time), _position(obj, next_time)) for i, obj in enumerate(scene.objects)]
        for index, obj, (x, y, z), (nx, ny, nz) in sorted(placed, key=lambda item: -item[2][2]):  # far to near
            radius = obj.size * height / z
            cx, cy = x * width, y * height
            dx, dy = xs - cx, ys - cy
            mask = _footprint(obj.shape, dx, dy, radius)
            if obj.shape == "ball":
                bulge = np.sqrt(np.clip(1 - (dx**2 + dy**2) / radius**2, 0, 1))
                surface_normal = np.stack([dx / radius, dy / radius, -bulge], axis=-1)
                surface_depth = z - obj.size * bulge
                light = 0.45 + 0.55 * np.clip(surface_normal @ LIGHT, 0, 1)
            else:
                surface_normal = np.broadcast_to(np.array([0.0, 0.0, -1.0]), (height, width, 3))
                surface_depth = np.full((height, width), z)
                light = np.full((height, width), 0.92)
            # pixel flow: the object's image motion, with the scaling about its centre when its depth changes
            scale = z / nz
            motion = np.stack([(nx * width + dx * scale) - xs, (ny * height + dy * scale) - ys], axis=-1)
            in_front = mask & (surface_depth < depth)
            rgb[in_front] = np.array(COLOURS[obj.colour]) * light[in_front][:, None]
            depth[in_front] = surface_depth[in_front]
            normal[in_front] = surface_normal[in_front]
            flow[in_front] = motion[in_front]
            labels[in_front] = index + 1
        out["rgb"][frame], out["depth"][frame], out["normal"][frame] = rgb, depth, normal
        out["flow"][frame], out["labels"][frame] = flow, labels
    out["normal"] /= np.linalg.norm(out["normal"], axis=-1, keepdims=True)
    return out


def edges(labels: np.ndarray, depth: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Boolean (F, H, W): pixels whose right or lower neighbour belongs to another object or jumps in depth."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (-1, -2):
        label_change = np.diff(labels, axis=axis) != 0
        depth_jump = np.abs(np.diff(depth, axis=axis)) > threshold
        change = label_change | depth_jump
        pad = [(0, 0)] * labels.ndim
        pad[axis] = (0, 1)
        edge |= np.pad(change, pad)
    return edge


def visualise(truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The modality videos a model sees, (F, H, W, 3) in [0, 1], from the exact numbers."""
    normal = truth["normal"]
    return {
        "depth": encode_depth(truth["depth"]),  # disparity normalised over the clip: near warm, far cool
        "raft": encode_flow(truth["flow"]),  # Middlebury wheel, normalised by the clip's largest motion
        "segmentation": encode_segmentation(truth["labels"]),
        "normal": np.stack([(normal[..., 0] + 1) / 2, (1 - normal[..., 1]) / 2, (1 - normal[..., 2]) / 2], axis=-1),
        "edge": np.repeat(edges(truth["labels"], truth["depth"])[..., None], 3, axis=-1).astype(np.float64),
    }


def _write_frames(video: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(np.clip(np.round(video * 255), 0, 255).astype(np.uint8)):
        PIL.Image.fromarray(frame).save(folder / f"{index:05d}.png", optimize=False)


def _write_clip(
    root: Path, split: str, index: int, seed: int, config: WorldConfig, captions: int
) -> list[dict[str, str]]:
    """Render clip `index` of `split` into root/NNNNN and return its metadata rows: the full caption, then
    `captions` - 1 partial ones (`Scene.prompt`)."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    scene = sample_scene(rng, config, split)
    truth = render(scene, config)
    clip = f"{index:05d}"
    _write_frames(truth["rgb"], root / clip / "rgb")
    for name, video in visualise(truth).items():
        _write_frames(video, root / clip / name)
    np.savez_compressed(
        root / clip / "gt.npz",
        depth=truth["depth"].astype(np.float32),
        flow=truth["flow"].astype(np.float32),
        labels=truth["labels"].astype(np.uint8),
        normal=truth["normal"].astype(np.float32),
    )
    (root / clip / "scene.json").write_text(json.dumps(asdict(scene), indent=1))
    paths = {"video": f"{clip}/rgb", **{m: f"{clip}/{m}" for m in MODALITY_COLUMNS}}
    return [{**paths, "prompt": scene.prompt(rng if caption else None)} for caption in range(captions)]


def write_split(
    output: str | os.PathLike,
    split: str,
    count: int,
    seed: int,
    config: WorldConfig,
    processes: int = 1,
    captions: int = 1,
) -> Path:
    """Write `count` clips of `split` ("train" or "eval") and their metadata.csv; returns the CSV path. Clip i uses
    the generator seeded by (seed, split, i): the same settings always give the same files, however many
    `processes` render them. `captions` > 1 gives each clip that many rows: its full caption, then partial ones
    (`Scene.prompt`), so that each word is also seen apart from the words it always comes with."""
    config.validate()
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}.")
    if processes < 1 or captions < 1:
        raise ValueError(f"processes and captions must be positive, got {processes} and {captions}.")
    root = Path(output) / split
    if root.exists():
        shutil.rmtree(root)
    jobs = [(root, split, index, seed, config, captions) for index in range(count)]
    if processes == 1:
        clips = list(itertools.starmap(_write_clip, jobs))
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            clips = pool.starmap(_write_clip, jobs, chunksize=max(1, count // (8 * processes)))
    rows = [row for clip_rows in clips for row in clip_rows]
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", *MODALITY_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    (root / "world.json").write_text(json.dumps({**asdict(config), "seed": seed, "count": count}, indent=1))
    return root / "metadata.csv"


def read_world(split: str | os.PathLike) -> WorldConfig:
    """The settings a split folder of `write_split` was written with (JSON lists back to the config's tuples)."""
    path = Path(split) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {split} is not a split folder written by ShapesWorld's write_split."
        )
    values = json.loads(path.read_text())
    names = {setting.name for setting in fields(WorldConfig)}
    as_tuple = lambda value: tuple(map(as_tuple, value)) if isinstance(value, list) else value  # noqa: E731
    return WorldConfig(**{name: as_tuple(value) for name, value in values.items() if name in names})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--train", type=int, default=400, help="training clips (0: no training split)")
    parser.add_argument("--eval", type=int, default=40, help="held-out evaluation clips (0: no eval split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64, help="height = width")
    parser.add_argument("--min-objects", type=int, default=WorldConfig.min_objects)
    parser.add_argument("--max-objects", type=int, default=WorldConfig.max_objects)
    parser.add_argument(
        "--processes", type=int, default=1, help="render clips in this many processes (the files are the same)"
    )
    parser.add_argument(
        "--captions", type=int, default=1, help="rows per training clip: the full caption, then partial ones"
    )
    parser.add_argument(
        "--demo-world",
        action="store_true",
        help="the bundled demo model's world (its object sizes, starts and speeds) instead of the defaults",
    )
    args = parser.parse_args(argv)
    if min(args.train, args.eval) < 0 or not args.train + args.eval:
        parser.error(f"--train and --eval must be >= 0 and not both 0, got {args.train} and {args.eval}")
    if args.processes < 1 or args.captions < 1:
        parser.error(f"--processes and --captions must be >= 1, got {args.processes} and {args.captions}")
    world = {}
    if args.demo_world:
        world = DEMO_WORLD
    config = WorldConfig(
        **{
            **world,
            "height": args.size,
            "width": args.size,
            "frames": args.frames,
            "min_objects": args.min_objects,
            "max_objects": args.max_objects,
        }
    )
    for split, count in (("train", args.train), ("eval", args.eval)):
        if count:
            print(
                f"Wrote {write_split(args.output, split, count, args.seed, config, args.processes, args.captions if split == 'train' else 1)}"
            )


if __name__ == "__main__":
    main()
