"""Measured quality on held-out ShapesWorld scenes, for any UnityVideo pipeline folder trained on the world.

    unityvideo eval --model models/shapesworld-demo --data DIR/eval --output quality.json

- perception: depth AbsRel and delta < 1.25 after per-video scale-and-shift alignment (on disparity), optical-flow
  end-point error (after per-frame scale alignment, in pixels; over all pixels and over the moving ones), segmentation
  foreground IoU, normal angular error;
- control: IoU between the objects of the video generated from a segmentation (or depth) control and the control's
  objects; depth layering: with a depth control, the share of object pixels painted in the colour of the object the
  depth puts there (the nearer one where objects overlap);
- text -> video (one-object prompts): colour, shape and motion direction recovered from the generated frames, as
  class-balanced accuracy (the mean over the prompts' values of the share read right, each value's share reported
  too, e.g. `joint/shape_accuracy/cube`): the held-out colour x shape pairs are half cubes, so plain accuracy
  would give a model that draws every object as a cube 0.5. Shapes are read by a reader calibrated on how the
  evaluated model's VAE draws each shape (`calibrate_shape_reader`, fresh scenes of the training split), the same
  reader for every column; `--shape-reader exact` reads them as drawn exactly;
- joint generation: agreement (Cohen's kappa) between the objects of the generated RGB video and of its generated
  segmentation;
- word reading (one-object prompts, no sampling): how much worse the model denoises a clip when its prompt's colour,
  shape or motion word is swapped for another, as the relative increase of the joint task's RGB velocity error at a
  few noise levels. A word the model ignores costs nothing when swapped; the truth cannot be denoised better
  without it, so it is the training signal that word gives, as the model has learned to use it.
Baselines: trivial predictors (constant depth, zero flow, no foreground, normals facing the camera, a random object
colour per pixel, one constant colour, shape and motion (1 / the values the prompts use, under balanced accuracy),
independent RGB and segmentation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from ..modalities import decode_depth, decode_flow, decode_segmentation
from ..pipelines import UnityVideoControlPipeline, UnityVideoPerceptionPipeline, UnityVideoPipeline
from ..schedulers import check_scheduler_choice, scheduler_by_name
from ..tasks import TASK_NAMES
from ..video_io import load_frames
from .world import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    Scene,
    SceneObject,
    WorldConfig,
    read_world,
    render,
    sample_scene,
)


# ---------------------------------------------------------------- metrics on arrays


def align_scale_shift(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares a * prediction + b closest to target (one pair per video)."""
    a, b = np.linalg.lstsq(np.stack([prediction.ravel(), np.ones(prediction.size)], 1), target.ravel(), rcond=None)[0]
    return a * prediction + b


def depth_metrics(disparity: np.ndarray, depth: np.ndarray) -> dict:
    """AbsRel and delta < 1.25 of a relative disparity against metric depth, after scale-and-shift alignment."""
    aligned = np.clip(align_scale_shift(disparity, 1 / depth), 1e-3, None)
    predicted = 1 / aligned
    ratio = np.maximum(predicted / depth, depth / predicted)
    return {"abs_rel": float(np.mean(np.abs(predicted - depth) / depth)), "delta1": float(np.mean(ratio < 1.25))}


def flow_epe(flow: np.ndarray, truth: np.ndarray, moving_only: bool = False) -> float:
    """End-point error in pixels after one least-squares scale per frame: the visualisation normalises each frame's
    flow, so it carries direction and relative size, not pixels. `moving_only` averages over the pixels that truly
    move (more than 0.25 px), where the static background cannot outweigh the objects."""
    scale = (flow * truth).sum((1, 2, 3), keepdims=True) / np.maximum(
        (flow * flow).sum((1, 2, 3), keepdims=True), 1e-12
    )
    error = np.sqrt(np.square(scale * flow - truth).sum(-1))
    if moving_only:
        moving = np.linalg.norm(truth, axis=-1) > 0.25
        return float(error[moving].mean()) if moving.any() else 0.0
    return float(error.mean())


def foreground_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def mask_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Cohen's kappa of two boolean masks: their pixel agreement beyond what independent masks of the same coverage
    reach, so two masks that both cover everything (or nothing) score 0, not a perfect IoU."""
    observed = np.mean(first == second)
    p, q = first.mean(), second.mean()
    chance = p * q + (1 - p) * (1 - q)
    return float((observed - chance) / (1 - chance)) if chance < 1 else 0.0


def normal_error_degrees(visualisation: np.ndarray, truth: np.ndarray) -> float:
    """Mean angle between decoded normals (the world's colour code) and the true ones."""
    x, y, z = visualisation[..., 0] * 2 - 1, 1 - visualisation[..., 1] * 2, 1 - visualisation[..., 2] * 2
    normals = np.stack([x, y, z], -1)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)
    return float(np.degrees(np.arccos(np.clip((normals * truth).sum(-1), -1, 1))).mean())


# ---------------------------------------------------------------- reading generated RGB frames


def object_mask(frames: np.ndarray, background: str) -> np.ndarray:
    """Pixels (F, H, W) far from every shade of the scene's background colour."""
    base = np.array(BACKGROUNDS[background])
    shades = base[None] * np.linspace(0.7, 1.05, 8)[:, None]
    distance = np.min(np.linalg.norm(frames[..., None, :] - shades, axis=-1), axis=-1)
    return distance > 0.15


def nearest_colour(pixels: np.ndarray, colours: list[str]) -> np.ndarray:
    """Index into `colours` of each pixel's closest colour; shading darkens, so brightness-normalised colours compare."""
    palette = np.array([COLOURS[name] for name in colours])
    normalised = pixels / np.maximum(pixels.max(-1, keepdims=True), 1e-3)
    palette = palette / palette.max(-1, keepdims=True)
    return np.argmin(np.linalg.norm(normalised[..., None, :] - palette, axis=-1), axis=-1)


def layering_accuracy(frames: np.ndarray, labels: np.ndarray, colours: list[str]) -> float:
    """Of the pixels where the truth shows an object, the share whose generated colour is that object's (and not
    another object's): each object drawn where the control puts it, the nearer one in front where they overlap."""
    visible = labels > 0
    return float(np.mean(nearest_colour(frames[visible], colours) == labels[visible] - 1))


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean (H, W) mask (all False when the mask is)."""
    if not mask.any():
        return mask
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:  # every pixel takes the largest label among itself and its neighbours, until nothing changes
        padded = np.pad(labels, 1)
        spread = np.where(
            mask,
            np.maximum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]),
            0,
        )
        if np.array_equal(spread, labels):
            break
        labels = spread
    names, sizes = np.unique(labels[mask], return_counts=True)
    return labels == names[sizes.argmax()]


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """An object mask's (fill ratio of its bounding box, share of its pixels above the box's middle). Drawn exactly, a
    ball fills pi / 4 of its box and a cube all of it, each half above the middle; the upward triangle fills half of
    its box, a quarter above the middle. The second tells a triangle whose corners a VAE has rounded from a ball."""
    ys, xs = np.nonzero(mask)
    height = ys.max() - ys.min() + 1
    return len(ys) / (height * (xs.max() - xs.min() + 1)), float(np.mean(ys + 0.5 < ys.min() + height / 2))


@dataclass(frozen=True)
class ShapeReader:
    """Names the shape whose centre is nearest to an object's `shape_features`, each feature in units of `spread`."""

    centres: dict[str, tuple[float, float]]
    spread: tuple[float, float] = (1.0, 1.0)

    def __call__(self, features: tuple[float, float]) -> str:
        distance = lambda centre: np.sum(((np.asarray(features) - centre) / self.spread) ** 2)  # noqa: E731
        return min(self.centres, key=lambda shape: distance(self.centres[shape]))

    @classmethod
    def fit(cls, examples: dict[str, list[tuple[float, float]]]) -> ShapeReader:
        """Centres at each shape's median features; spread the within-shape standard deviation, pooled over shapes."""
        centres = {shape: tuple(np.median(values, axis=0).tolist()) for shape, values in examples.items()}
        spread = np.sqrt(np.mean([np.var(values, axis=0) for values in examples.values()], axis=0))
        return cls(centres, tuple(np.maximum(spread, 1e-3).tolist()))


EXACT_SHAPES = ShapeReader({"ball": (math.pi / 4, 0.5), "cube": (1.0, 0.5), "triangle": (0.5, 0.25)})


def frames_showing(masks: np.ndarray) -> list[np.ndarray]:
    """The frames' object masks with enough pixels (5) to have a shape and a centre."""
    return [mask for mask in masks if mask.sum() >= 5]


def median_shape_features(masks: list[np.ndarray]) -> tuple[float, float]:
    return tuple(np.median([shape_features(mask) for mask in masks], axis=0).tolist())


def object_masks(frames: np.ndarray, background: str) -> np.ndarray:
    """The (single) object of each frame as its largest connected region off the background: stray pixels elsewhere
    would stretch its bounding box and shift its centre (one is enough to turn a cube's fill ratio into a triangle's)."""
    return np.stack([largest_region(frame_mask) for frame_mask in object_mask(frames, background)])


def read_object(frames: np.ndarray, background: str, shape_reader: ShapeReader = EXACT_SHAPES) -> dict:
    """Colour, shape and motion of the (single) object in generated frames, from its `object_masks`; the shape from
    the median over frames of its `shape_features`."""
    mask = object_masks(frames, background)
    if mask.sum() < 10:
        return {"colour": None, "shape": None, "motion": None}
    votes = nearest_colour(frames[mask], list(COLOURS))
    colour = list(COLOURS)[int(np.bincount(votes, minlength=len(COLOURS)).argmax())]
    seen = frames_showing(mask)
    if len(seen) < 2:
        return {"colour": colour, "shape": None, "motion": None}
    shape = shape_reader(median_shape_features(seen))
    centres = np.array([np.argwhere(frame_mask).mean(0)[::-1] for frame_mask in seen])  # (x, y)
    areas = [frame_mask.sum() for frame_mask in seen]
    dx, dy = centres[-1] - centres[0]
    growth = math.log(areas[-1] / areas[0])
    candidates = {
        "slides left": -dx,
        "slides right": dx,
        "rises": -dy,
        "falls": dy,
        "approaches": 8 * growth,
        "recedes": -8 * growth,
    }
    # A bounce goes up and comes back: its height range is at least twice every other motion's measure (each is in
    # `candidates` with both signs). Not "ends where it began": a 4x temporal VAE rounds off the last landing, leaving
    # 2-6 px of net rise.
    height_range = centres[:, 1].max() - centres[:, 1].min()
    bounce = height_range > 2 and max(candidates.values()) < height_range / 2
    motion = "bounces" if bounce else max(candidates, key=candidates.get)
    return {"colour": colour, "shape": shape, "motion": motion}


# ---------------------------------------------------------------- the evaluation


def _clips(data: Path, limit: int | None):
    clips = sorted(p for p in data.iterdir() if (p / "gt.npz").is_file())
    return clips[:limit] if limit else clips


def _array(frames) -> np.ndarray:
    return np.asarray(frames, dtype=np.float64)


class Scores(dict):
    """Per-clip values of each metric, averaged at the end. Values added with a `group` (the class a clip's answer
    should be) average per group first, then over the groups: class-balanced, so a set with more clips of one class
    does not favour an answer that always names it. Each group's own mean is kept too, as `name/group` (the share of
    the prompts naming a cube read as a cube: "joint/shape_accuracy/cube")."""

    def add(self, name: str, value: float, group: str | None = None) -> None:
        self.setdefault(name, {}).setdefault(group, []).append(value)

    def means(self) -> dict[str, float]:
        means = {}
        for name, groups in sorted(self.items()):
            means[name] = float(np.mean([np.mean(values) for values in groups.values()]))
            means.update(
                {
                    f"{name}/{group}": float(np.mean(values))
                    for group, values in sorted(groups.items())
                    if group is not None
                }
            )
        return means


JOBS = TASK_NAMES
PERCEIVED = ("depth", "raft", "segmentation", "normal")
CONTROLS = ("segmentation", "depth")


def score_perception(scores: Scores, truth, estimated: dict[str, np.ndarray]) -> None:
    """`estimated`: each of PERCEIVED's modality videos for the clip, as visualisation frames in [0, 1]."""
    for name, value in depth_metrics(decode_depth(estimated["depth"]), truth["depth"]).items():
        scores.add(f"perception/depth_{name}", value)
    flow = decode_flow(estimated["raft"])
    scores.add("perception/flow_epe", flow_epe(flow, truth["flow"]))
    scores.add("perception/flow_epe_moving", flow_epe(flow, truth["flow"], moving_only=True))
    scores.add(
        "perception/segmentation_iou",
        foreground_iou(decode_segmentation(estimated["segmentation"]) > 0, truth["labels"] > 0),
    )
    scores.add("perception/normal_degrees", normal_error_degrees(estimated["normal"], truth["normal"]))


def score_control(scores: Scores, scene: dict, truth, controlled: dict[str, np.ndarray]) -> None:
    """`controlled`: the RGB video made from each of CONTROLS' modality videos of the clip."""
    for modality, frames in controlled.items():
        scores.add(
            f"control/{modality}_iou", foreground_iou(object_mask(frames, scene["background"]), truth["labels"] > 0)
        )
    if len(colours := _distinct_colours(scene)) > 1:
        scores.add("control/depth_layering_accuracy", layering_accuracy(controlled["depth"], truth["labels"], colours))


def score_joint(
    scores: Scores, scene: dict, frames: np.ndarray, segmentation: np.ndarray, shape_reader: ShapeReader
) -> None:
    """A one-object clip's prompt against the RGB video made from it, and that video against its segmentation."""
    read = read_object(frames, scene["background"], shape_reader)
    target = scene["objects"][0]
    for attribute in ("colour", "shape", "motion"):
        scores.add(f"joint/{attribute}_accuracy", float(read[attribute] == target[attribute]), group=target[attribute])
    scores.add(
        "joint/rgb_segmentation_kappa",
        mask_agreement(object_mask(frames, scene["background"]), decode_segmentation(segmentation) > 0),
    )


WORDS = {"colour": list(COLOURS), "shape": list(SHAPES), "motion": list(MOTIONS)}
WORD_READING_TIMES = (0.3, 0.5, 0.7, 0.9)


def swapped_scene(scene: dict, attribute: str, generator: torch.Generator) -> dict:
    """`scene` with its first object's `attribute` replaced by another value, drawn from `generator`."""
    values = [value for value in WORDS[attribute] if value != scene["objects"][0][attribute]]
    first = {**scene["objects"][0], attribute: values[int(torch.randint(len(values), (1,), generator=generator))]}
    return {**scene, "objects": [first, *scene["objects"][1:]]}


@torch.no_grad()
def score_word_reading(scores: Scores, pipe, scene: dict, clip: Path, generator: torch.Generator) -> None:
    """The relative increase of the joint task's RGB velocity error when one word of the prompt is swapped (the
    module docstring); the same noise for every prompt."""
    frames = {name: load_frames(clip / name) for name in ("rgb", "segmentation")}
    height, width = frames["rgb"][0].height, frames["rgb"][0].width
    pixels = torch.cat([pipe.video_processor.preprocess_video(f, height=height, width=width) for f in frames.values()])
    rgb, segmentation = pipe.encode_video(pixels, pipe.device).split(1)
    length = pipe.text_length()
    modality_text = pipe.encode_modality_prompt(["segmentation"], length, pipe.device, torch.float32)
    prompts = {"true": scene_prompt(scene), **{a: scene_prompt(swapped_scene(scene, a, generator)) for a in WORDS}}
    texts = {
        name: pipe.encode_prompt(
            prompt, do_classifier_free_guidance=False, max_sequence_length=length, device=pipe.device
        )[0]
        for name, prompt in prompts.items()
    }
    errors = {name: 0.0 for name in prompts}
    for t in WORD_READING_TIMES:
        noise = torch.randn(rgb.shape, generator=generator).to(rgb.device)  # drawn on the CPU: the same on any device
        modality_noise = torch.randn(segmentation.shape, generator=generator).to(rgb.device)
        noisy, noisy_modality = (1 - t) * rgb + t * noise, (1 - t) * segmentation + t * modality_noise
        for name, text in texts.items():
            velocity = pipe.transformer(
                noisy,
                torch.tensor([t * 1000.0], device=rgb.device),
                text,
                noisy_modality,
                modality_text,
                modality="segmentation",
                task="joint",
                return_dict=False,
            )[0]
            errors[name] += float((velocity - (noise - rgb)).square().mean())
    for attribute in WORDS:
        scores.add(f"joint/{attribute}_word_reading", errors[attribute] / errors["true"] - 1)


@torch.no_grad()
def evaluate(
    model: str | Path,
    data: str | Path,
    steps: int | None = None,
    scheduler: str = "default",
    limit: int | None = None,
    seed: int = 0,
    jobs: tuple[str, ...] = JOBS,
    guidance_scale: float | None = None,
    shape_reader: ShapeReader | None = None,
    device: str = "cpu",
    cache_config=None,
    flow_shift: float | None = None,
) -> dict:
    """Every metric of the module docstring for one model, sampler and step count (of `jobs` only; joint
    includes the joint RGB-modality agreement). Clips are sampled at the world's size and length; `steps` and
    `guidance_scale` left at None are the model folder's. `guidance_scale` applies to the text-conditioned jobs (control and
    joint); estimation runs without guidance. `shape_reader` reads the generated objects' shapes; None:
    `calibrate_shape_reader` on this model's VAE and the world `data` was written with. Noise is drawn on the CPU,
    so another `device` samples from the same starting points. `cache_config`: a diffusers step cache
    (`FirstBlockCacheConfig`, `MagCacheConfig`, ...) to sample with. `flow_shift`: the scheduler's shift, when not the
    folder's."""
    if unknown := set(jobs) - set(JOBS):
        raise ValueError(f"Unknown jobs {sorted(unknown)}; choose from {JOBS}.")

    pipe = UnityVideoPipeline.from_pretrained(model).to(device)
    pipe.scheduler = scheduler_by_name(scheduler, pipe.scheduler, flow_shift)
    pipe.set_progress_bar_config(disable=True)
    if cache_config is not None:
        pipe.transformer.enable_cache(cache_config)
    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)
    control = UnityVideoControlPipeline.from_pipe(pipe)
    world = read_world(data)
    common = dict(height=world.height, width=world.width, num_inference_steps=steps)
    if "joint" in jobs and shape_reader is None:
        shape_reader = calibrate_shape_reader(pipe.vae, read_world(data))
    scores = Scores()

    for clip in _clips(Path(data), limit):
        truth = np.load(clip / "gt.npz")
        scene = json.loads((clip / "scene.json").read_text())
        rgb = load_frames(clip / "rgb")
        generator = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
        if "perception" in jobs:
            score_perception(
                scores,
                truth,
                {
                    modality: _array(
                        perception(video=rgb, modality=modality, generator=generator(), **common).modality_frames[0]
                    )
                    for modality in PERCEIVED
                },
            )
        if "control" in jobs:
            score_control(
                scores,
                scene,
                truth,
                {
                    modality: _array(
                        control(
                            scene_prompt(scene),
                            control_video=load_frames(clip / modality),
                            modality=modality,
                            generator=generator(),
                            guidance_scale=guidance_scale,
                            **common,
                        ).frames[0]
                    )
                    for modality in CONTROLS
                },
            )
        if "joint" in jobs and len(scene["objects"]) == 1:
            joint = pipe(
                scene_prompt(scene),
                modality="segmentation",
                num_frames=world.frames,
                generator=generator(),
                guidance_scale=guidance_scale,
                **common,
            )
            score_joint(scores, scene, _array(joint.frames[0]), _array(joint.modality_frames[0]), shape_reader)
            if cache_config is not None:  # word reading scores single forwards, not a sampler
                pipe.transformer.disable_cache()
            score_word_reading(scores, pipe, scene, clip, torch.Generator().manual_seed(seed))
            if cache_config is not None:
                pipe.transformer.enable_cache(cache_config)
    return scores.means()


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """`vae`'s reconstruction of a video (F, H, W, 3) in [0, 1]."""
    video = torch.from_numpy(np.asarray(frames) * 2 - 1).float().permute(3, 0, 1, 2)[None].to(vae.device)
    decoded = vae.decode(vae.encode(video).latent_dist.mode()).sample[0]
    return ((decoded.permute(1, 2, 3, 0).double().cpu().numpy() + 1) / 2).clip(0, 1)


CALIBRATION_STREAM = 2  # write_split seeds its training clips' generators with 0 and its eval clips' with 1


def calibrate_shape_reader(vae, world: WorldConfig, per_shape: int = 30, seed: int = 0) -> ShapeReader:
    """A ShapeReader fitted to how `vae` draws each shape, on its reconstructions of `per_shape` fresh one-object
    scenes of each shape from `world`'s training split (none of them a training or an eval clip). An 8x VAE rounds a
    ten-pixel cube's corners and a triangle's towards a ball, so EXACT_SHAPES would read a perfect model's frames,
    which are these reconstructions, as balls; this reader knows each shape as a model with this VAE can draw it."""
    world = replace(world, min_objects=1, max_objects=1)
    examples = {shape: [] for shape in SHAPES}
    for index in range(100 * per_shape * len(SHAPES)):
        if min(map(len, examples.values())) >= per_shape:
            return ShapeReader.fit(examples)
        scene = sample_scene(np.random.default_rng([seed, CALIBRATION_STREAM, index]), world, "train")
        if len(examples[scene.objects[0].shape]) >= per_shape:
            continue
        frames = np.round(render(scene, world)["rgb"] * 255) / 255  # as write_split stores them
        seen = frames_showing(object_masks(reconstruct(vae, frames), scene.background))
        if len(seen) >= 2:
            examples[scene.objects[0].shape].append(median_shape_features(seen))
    raise ValueError(
        f"Cannot calibrate the shape reader: after {index + 1} scenes of this world, the VAE's "
        f"reconstructions show {dict(zip(examples, map(len, examples.values())))} objects of each shape, "
        f"{per_shape} needed. Is every shape in the training split, and does the VAE reconstruct objects?"
    )


def vae_ceiling(
    model: str | Path,
    data: str | Path,
    limit: int | None = None,
    jobs: tuple[str, ...] = JOBS,
    shape_reader: ShapeReader | None = None,
    device: str = "cpu",
) -> dict:
    """The metrics of `evaluate` (of `jobs` only) scored on the model's VAE reconstructions of the true clips in place
    of generated ones: what a perfect transformer would score through this VAE, i.e. which metrics the VAE, not the
    transformer, caps. (For control, the reconstructed RGB video stands for the one made from the control.)
    `shape_reader`: as for `evaluate`."""
    vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae").eval().to(device)
    if "joint" in jobs and shape_reader is None:
        shape_reader = calibrate_shape_reader(vae, read_world(data))
    scores = Scores()

    for clip in _clips(Path(data), limit):
        truth = np.load(clip / "gt.npz")
        scene = json.loads((clip / "scene.json").read_text())
        rgb = reconstruct(vae, _array(load_frames(clip / "rgb")) / 255)
        text = "joint" in jobs and len(scene["objects"]) == 1
        needed = PERCEIVED if "perception" in jobs else ("segmentation",) if text else ()
        modalities = {modality: reconstruct(vae, _array(load_frames(clip / modality)) / 255) for modality in needed}
        if "perception" in jobs:
            score_perception(scores, truth, modalities)
        if "control" in jobs:
            score_control(scores, scene, truth, dict.fromkeys(CONTROLS, rgb))
        if text:
            score_joint(scores, scene, rgb, modalities["segmentation"], shape_reader)
    return scores.means()


def _distinct_colours(scene: dict) -> list[str]:
    """The objects' colours, or [] when two objects share one (then colour cannot tell them apart)."""
    colours = [obj["colour"] for obj in scene["objects"]]
    return colours if len(set(colours)) == len(colours) else []


def scene_prompt(scene: dict) -> str:
    return Scene(
        **{**scene, "objects": [SceneObject(**o) for o in scene["objects"]]}
    ).prompt()  # scene.json is asdict(Scene)


def trivial_baselines(data: str | Path, limit: int | None = None) -> dict:
    """What knowing nothing scores: constant depth, zero flow, no foreground, every normal facing the camera; chance
    for the layering and the RGB-segmentation agreement; one constant colour, shape and motion for the prompts'."""
    scores, used = Scores(), {attribute: set() for attribute in WORDS}
    for clip in _clips(Path(data), limit):
        truth = np.load(clip / "gt.npz")
        depth = truth["depth"]
        constant = np.full_like(depth, np.median(depth))
        ratio = np.maximum(constant / depth, depth / constant)
        scores.add("perception/depth_abs_rel", float(np.mean(np.abs(constant - depth) / depth)))
        scores.add("perception/depth_delta1", float(np.mean(ratio < 1.25)))
        still = np.zeros_like(truth["flow"])
        scores.add("perception/flow_epe", flow_epe(still, truth["flow"]))
        scores.add("perception/flow_epe_moving", flow_epe(still, truth["flow"], moving_only=True))
        scores.add(
            "perception/segmentation_iou", foreground_iou(np.zeros_like(truth["labels"], bool), truth["labels"] > 0)
        )
        facing = np.broadcast_to(np.array([0.5, 0.5, 1.0]), truth["normal"].shape)
        scores.add("perception/normal_degrees", normal_error_degrees(facing, truth["normal"]))
        scene = json.loads((clip / "scene.json").read_text())
        if len(colours := _distinct_colours(scene)) > 1:
            scores.add("control/depth_layering_accuracy", 1 / len(colours))
        if len(scene["objects"]) == 1:
            for attribute in WORDS:
                used[attribute].add(scene["objects"][0][attribute])
    scores.add("joint/rgb_segmentation_kappa", 0.0)
    for attribute, values in WORDS.items():  # balanced, a constant answer scores 1 / the values used; it reads no word
        scores.add(f"joint/{attribute}_accuracy", 1 / len(used[attribute] or values))
        scores.add(f"joint/{attribute}_word_reading", 0.0)
    return scores.means()


def of_jobs(scores: dict[str, float], jobs: tuple[str, ...]) -> dict[str, float]:
    """The scores of `jobs` only; a metric's job is its name's prefix."""
    return {name: value for name, value in scores.items() if name.split("/")[0] in jobs}


def evaluate_all(
    model: str | Path,
    data: str | Path,
    steps: tuple[int, ...] | None = None,
    schedulers: tuple[str, ...] = ("default",),
    limit: int | None = None,
    jobs: tuple[str, ...] = JOBS,
    guidance_scale: float | None = None,
    baseline_model: str | Path | None = None,
    with_vae_ceiling: bool = False,
    shape_reader: str = "calibrated",
    device: str = "cpu",
    flow_shift: float | None = None,
) -> dict[str, dict[str, float]]:
    """The columns `unityvideo eval` prints: the trivial baselines, the model at every scheduler x step count, and
    optionally an untrained `baseline_model` and the VAE's ceiling. `steps` and `guidance_scale` left at None are the
    model folder's, each job its own (the column is then `model/<scheduler>/defaults`). One shape reader serves every
    column: calibrated on `model`'s VAE (`shape_reader="calibrated"`), or the exact shapes (`"exact"`). `flow_shift`:
    the schedulers' shift, when not the folder's."""
    if shape_reader not in ("calibrated", "exact"):
        raise ValueError(f"shape_reader must be 'calibrated' or 'exact', got {shape_reader!r}.")
    for scheduler in schedulers:  # before the first clip is sampled
        check_scheduler_choice(scheduler, flow_shift)
    jobs = tuple(jobs)
    steps = (None,) if steps is None else steps
    reader = EXACT_SHAPES
    if "joint" in jobs and shape_reader == "calibrated":
        vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae").eval().to(device)
        reader = calibrate_shape_reader(vae, read_world(data))
    results = {"trivial": of_jobs(trivial_baselines(data, limit), jobs)}
    common = dict(
        limit=limit,
        jobs=jobs,
        guidance_scale=guidance_scale,
        shape_reader=reader,
        device=device,
        flow_shift=flow_shift,
    )
    for scheduler in schedulers:
        for count in steps:
            results[f"model/{scheduler}/{'defaults' if count is None else count}"] = evaluate(
                model, data, count, scheduler, **common
            )
    if baseline_model:
        results["untrained"] = evaluate(baseline_model, data, steps[0], schedulers[0], **common)
    if with_vae_ceiling:
        results["vae_ceiling"] = vae_ceiling(model, data, limit, jobs, shape_reader=reader, device=device)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One row per metric, one column per evaluated model or baseline."""
    names = sorted({name for scores in results.values() for name in scores})
    lines = [f"{'metric':<32}" + "".join(f"{column:>22}" for column in results)]
    for name in names:
        lines.append(f"{name:<32}" + "".join(f"{results[c].get(name, float('nan')):>22.3f}" for c in results))
    return "\n".join(lines)
