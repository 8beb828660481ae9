"""The three UnityVideo jobs end to end with tiny random components: runs anywhere, offline, in seconds.

    python examples/quickstart_offline.py --output outputs/quickstart

The weights are random, so the videos are noise; swap `pipe` for `UnityVideoPipeline.from_pretrained(...)` of a
converted checkpoint to get real ones (README).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from unityvideo_diffusers import UnityVideoControlPipeline, UnityVideoPerceptionPipeline, UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.video_io import save_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/quickstart")
    args = parser.parse_args()
    output = Path(args.output)
    size = dict(num_frames=17, height=64, width=64, num_inference_steps=4)

    pipe = UnityVideoPipeline(**tiny_pipeline_components())
    generator = torch.Generator().manual_seed(0)
    joint = pipe("a red ball bouncing", modality="depth", generator=generator, **size)
    written = [
        save_video(joint.frames[0], output / "joint_rgb.mp4"),
        save_video(joint.modality_frames[0], output / "joint_depth.mp4"),
    ]

    control = UnityVideoControlPipeline.from_pipe(pipe)  # same components, another job
    video = control("a blue cube sliding", control_video=joint.modality_frames[0], modality="depth", **size).frames[0]
    written.append(save_video(video, output / "control_rgb.mp4"))

    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)
    depth = perception(video=joint.frames[0], modality="depth", **size).modality_frames[0]
    written.append(save_video(depth, output / "perception_depth.mp4"))
    print("Wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
