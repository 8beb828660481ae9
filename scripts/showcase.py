"""The README's animation: the bundled demo model doing its three jobs, one row each.

    python scripts/showcase.py --output docs/assets/demo.gif

Row 1, text -> video + depth: RGB and its generated depth for two prompts (one of them a held-out colour x shape pair).
Row 2, depth -> video: a held-out clip's exact depth as the control, and the generated video.
Row 3, video -> depth, segmentation and optical flow: a held-out clip, and the model's estimates.
Each row is titled with its job and each video with its stream, and whether it is the truth or the model's; frames
are enlarged 2x (nearest) so the 64 x 64 model output stays legible. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


PROMPTS = (
    "a large blue ball bounces in front of a beige wall",
    "a large yellow triangle slides right in front of a grey wall",
)


ROW_TITLE_HEIGHT = 18
CAPTION_HEIGHT = 15


def tile(
    rows: list[list[np.ndarray]],
    row_titles: list[str],
    captions: list[list[str]],
    scale: int = 2,
    gap: int = 2,
) -> np.ndarray:
    """(F, H, W, 3) videos in [0, 1], as rows of columns -> one (F, H', W', 3) uint8 video on white: each row under its
    title, each video under its caption. The labels are drawn once with PIL's built-in font (scalable from Pillow
    10.1), so no font file is needed."""
    if [len(row) for row in rows] != [len(row) for row in captions] or len(row_titles) != len(rows):
        raise ValueError("tile needs one title per row and one caption per video")
    frames, height, width, _ = rows[0][0].shape
    panel_height, panel_width = height * scale, width * scale
    row_height = ROW_TITLE_HEIGHT + CAPTION_HEIGHT + panel_height
    columns = max(len(row) for row in rows)
    page = Image.new("RGB", (columns * (panel_width + gap) - gap, len(rows) * (row_height + gap) - gap), "white")
    draw = ImageDraw.Draw(page)
    title_font, caption_font = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    panels = []
    for r, (row, title, row_captions) in enumerate(zip(rows, row_titles, captions)):
        top = r * (row_height + gap)
        draw.text((2, top + 2), title, fill="black", font=title_font)
        for c, (video, caption) in enumerate(zip(row, row_captions)):
            left = c * (panel_width + gap)
            draw.text((left + 2, top + ROW_TITLE_HEIGHT), caption, fill=(70, 70, 70), font=caption_font)
            panels.append((top + ROW_TITLE_HEIGHT + CAPTION_HEIGHT, left, video))
    canvas = np.repeat(np.asarray(page)[None], frames, axis=0)
    for top, left, video in panels:
        big = video.repeat(scale, axis=1).repeat(scale, axis=2)
        canvas[:, top : top + panel_height, left : left + panel_width] = (big * 255).round().astype(np.uint8)
    return canvas


def main() -> None:
    from unityvideo_diffusers import (
        DEMO_MODEL,
        UnityVideoControlPipeline,
        UnityVideoPerceptionPipeline,
        UnityVideoPipeline,
    )
    from unityvideo_diffusers.shapesworld.evaluation import scene_prompt
    from unityvideo_diffusers.shapesworld.world import DEMO_WORLD, WorldConfig, write_split
    from unityvideo_diffusers.video_io import load_frames, save_video

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--output", default="docs/assets/demo.gif")
    parser.add_argument("--steps", type=int, help="default: the model folder's, per job")
    parser.add_argument(
        "--guidance-scale", type=float, help="for the text-conditioned rows; default: the model folder's"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = UnityVideoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    control = UnityVideoControlPipeline.from_pipe(pipe)
    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)
    # sizes, and steps and guidance left at None, are the model folder's defaults for each job
    steps, guidance = args.steps, args.guidance_scale
    generator = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731

    joint_row = []
    for prompt in PROMPTS:
        out = pipe(prompt, modality="depth", num_inference_steps=steps, guidance_scale=guidance, generator=generator())
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
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator(),
        ).frames[0]
        estimates = [
            perception(
                video=str(clip / "rgb"), modality=m, num_inference_steps=steps, generator=generator()
            ).modality_frames[0]
            for m in ("depth", "segmentation", "raft")
        ]
    video = tile(
        [joint_row, [depth, controlled], [rgb, *estimates]],
        [
            "text -> video + depth   (blue ball: a held-out pair, yellow triangle: a seen one)",
            "depth -> video   (control: a held-out clip's depth)",
            "video -> depth, segmentation, flow   (a held-out clip)",
        ],
        [
            ["model: RGB", "model: depth", "model: RGB", "model: depth"],
            ["truth: depth", "model: RGB"],
            ["truth: RGB", "model: depth", "model: segmentation", "model: flow"],
        ],
    )
    print(f"wrote {save_video(video, args.output, fps=8)}")


if __name__ == "__main__":
    main()
