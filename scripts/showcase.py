"""The README's animation: the bundled demo model doing its three jobs, one row each.

    python scripts/showcase.py --output docs/assets/demo.gif

Row 1, text -> video + depth: RGB and its generated depth for two prompts (one of them a held-out colour x shape pair).
Row 2, depth -> video: a held-out clip's exact depth as the control, and the generated video.
Row 3, video -> depth, segmentation and optical flow: a held-out clip, and the model's estimates.
Frames are enlarged 2x (nearest) so the 64 x 64 model output stays legible.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


PROMPTS = (
    "a large blue ball bounces in front of a beige wall",
    "a large yellow triangle slides right in front of a grey wall",
)


def tile(rows: list[list[np.ndarray]], scale: int = 2, gap: int = 2) -> np.ndarray:
    """(F, H, W, 3) videos in [0, 1], as rows of columns -> one (F, H', W', 3) uint8 video with white gaps."""
    frames, height, width, _ = rows[0][0].shape
    columns = max(len(row) for row in rows)
    canvas = np.ones((frames, len(rows) * (height * scale + gap) - gap, columns * (width * scale + gap) - gap, 3))
    for r, row in enumerate(rows):
        for c, video in enumerate(row):
            big = video.repeat(scale, axis=1).repeat(scale, axis=2)
            top, left = r * (height * scale + gap), c * (width * scale + gap)
            canvas[:, top : top + height * scale, left : left + width * scale] = big
    return (canvas * 255).round().astype(np.uint8)


def main() -> None:
    from unityvideo_diffusers import (
        DEMO_MODEL,
        UnityVideoControlPipeline,
        UnityVideoPerceptionPipeline,
        UnityVideoPipeline,
    )
    from unityvideo_diffusers.jobs import recipe_defaults
    from unityvideo_diffusers.shapesworld.evaluation import scene_prompt
    from unityvideo_diffusers.shapesworld.world import DEMO_WORLD, WorldConfig, write_split
    from unityvideo_diffusers.video_io import load_frames, save_video

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--output", default="docs/assets/demo.gif")
    parser.add_argument("--steps", type=int, help="default: the model's recipe.json, else 20")
    parser.add_argument(
        "--guidance-scale", type=float, help="for the text-conditioned rows; default as --steps, else 5"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sampling = recipe_defaults(args.model)
    steps = sampling.get("steps", 20) if args.steps is None else args.steps
    guidance = sampling.get("guidance_scale", 5.0) if args.guidance_scale is None else args.guidance_scale

    pipe = UnityVideoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    control = UnityVideoControlPipeline.from_pipe(pipe)
    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)
    common = dict(height=64, width=64, num_inference_steps=steps)
    generator = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731

    joint_row = []
    for prompt in PROMPTS:
        out = pipe(prompt, modality="depth", num_frames=17, guidance_scale=guidance, generator=generator(), **common)
        joint_row += [out.frames[0], out.modality_frames[0]]
    with tempfile.TemporaryDirectory() as folder:
        clip = write_split(Path(folder), "eval", 2, seed=7, config=WorldConfig(**DEMO_WORLD)).parent / "00001"
        prompt = scene_prompt(json.loads((clip / "scene.json").read_text()))
        rgb = np.stack([np.asarray(f, dtype=np.float64) / 255 for f in load_frames(clip / "rgb")])
        depth = np.stack([np.asarray(f, dtype=np.float64) / 255 for f in load_frames(clip / "depth")])
        controlled = control(
            prompt,
            control_video=str(clip / "depth"),
            modality="depth",
            guidance_scale=guidance,
            generator=generator(),
            **common,
        ).frames[0]
        estimates = [
            perception(video=str(clip / "rgb"), modality=m, generator=generator(), **common).modality_frames[0]
            for m in ("depth", "segmentation", "raft")
        ]
    video = tile([joint_row, [depth, controlled], [rgb, *estimates]])
    print(f"wrote {save_video(video, args.output, fps=8)}")


if __name__ == "__main__":
    main()
