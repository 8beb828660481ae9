"""The pipelines' outputs for fixed seeds on tiny components, against outputs stored before the pipelines were
restructured (tests/golden/pipelines.safetensors). A refactor that changes any number fails here. Rewritten twice
since, on purpose: the joint job's two streams decode in one VAE batch (frames moved by 7.2e-7 at most), and the
VAE's 3-D convolutions run through oneDNN on channels-last activations on the CPU (2.3e-6 at most).

    python tests/test_pipeline_golden.py   # rewrite the stored outputs (only for an intended change of behaviour)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from unityvideo_diffusers import UnityVideoControlPipeline, UnityVideoPerceptionPipeline, UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components


GOLDEN = Path(__file__).parent / "golden" / "pipelines.safetensors"
SIZE = dict(height=32, width=32, num_inference_steps=3)
GUIDED = dict(guidance_scale=5.0)  # the released folder's default when these were stored; given, so they stay put


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def outputs() -> dict[str, torch.Tensor]:
    """Every job, with and without guidance, windows, a first frame and several videos per prompt."""
    pipe = UnityVideoPipeline(**tiny_pipeline_components())
    pipe.set_progress_bar_config(disable=True)
    control = UnityVideoControlPipeline.from_pipe(pipe)
    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)
    video = np.random.default_rng(0).random((9, 32, 32, 3)).astype(np.float32)
    image = PIL.Image.fromarray((video[0] * 255).astype(np.uint8))
    results = {
        "joint": pipe(
            "a red ball", modality="depth", num_frames=5, guidance_scale=1.0, generator=_generator(), **SIZE
        ),
        "joint_guided": pipe(
            ["a red ball", "a blue cube"],
            negative_prompt="blurry",
            modality=["depth", "raft"],
            num_frames=5,
            guidance_scale=4.0,
            generator=_generator(1),
            **SIZE,
        ),
        "text2video": pipe(
            "a red ball", num_frames=5, num_videos_per_prompt=2, generator=_generator(2), **SIZE, **GUIDED
        ),
        "first_frame": pipe(
            "a red ball", image=image, modality="depth", num_frames=5, generator=_generator(3), **SIZE, **GUIDED
        ),
        "windows": pipe(
            "a red ball",
            modality="depth",
            num_frames=9,
            window_frames=5,
            window_overlap_frames=4,
            generator=_generator(4),
            **SIZE,
            **GUIDED,
        ),
        "control": control(
            "a red ball", control_video=video, modality="depth", generator=_generator(5), **SIZE, **GUIDED
        ),
        "perception": perception(video=video, modality="depth", generator=_generator(6), **SIZE),
        "perception_guided": perception(
            video=video[:5], modality="raft", prompt="a ball", guidance_scale=3.0, generator=_generator(7), **SIZE
        ),
    }
    tensors = {}
    for name, result in results.items():
        for field in ("frames", "modality_frames"):
            value = getattr(result, field)
            if value is not None:
                tensors[f"{name}.{field}"] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors


def test_pipeline_outputs_equal_the_stored_ones():
    expected = load_file(GOLDEN)
    actual = outputs()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"{name}: max abs diff {(actual[name] - tensor).abs().max()}"


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    save_file(outputs(), GOLDEN)
    print(f"wrote {GOLDEN}")
