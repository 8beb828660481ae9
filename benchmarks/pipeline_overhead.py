"""Where a pipeline call's time goes: transformer, VAE, text encoder, and the pipeline's own work.

    python benchmarks/pipeline_overhead.py                  # tiny and medium configs, CPU, all three jobs
    python benchmarks/pipeline_overhead.py --configs demo   # the bundled demo model's default calls

"own" is the call time minus the time inside the three models (scheduler steps, guidance arithmetic, video pre-
and post-processing, Python): the cost the pipeline adds. "scheduler" is the part of it inside the scheduler's `step`
(diffusers' code: a fixed cost per step and stream, which a small model's steps feel most). Peak memory is the
process's max RSS after each row.
"""

from __future__ import annotations

import argparse
import resource
import time
from contextlib import contextmanager

import torch
from transformer_forward import SIZES

from unityvideo_diffusers import (
    DEMO_MODEL,
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
)
from unityvideo_diffusers.testing import tiny_pipeline_components


# name: (transformer config, video frames, height, width); "demo" is the bundled model, called with its defaults
CONFIGS = {
    "tiny": ({**SIZES["tiny"][0], "in_channels": 48, "out_channels": 48}, 9, 64, 64),
    "medium": (SIZES["medium"][0], 33, 256, 256),
    "demo": (None, 17, 64, 64),
}


@contextmanager
def timed(owner, method: str, totals: dict, key: str):
    """Accumulate the time spent in `owner.<method>` into totals[key]. `owner` is an object, or a class (the
    pipelines step a copy of their scheduler per stream: the copies share the class)."""
    original = getattr(owner, method)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, method, wrapper)
    try:
        yield
    finally:
        if isinstance(owner, type):
            setattr(owner, method, original)
        else:
            delattr(owner, method)  # the class's method shows through again


def run(pipe, call, steps: int, job: str) -> dict:
    totals = {"transformer": 0.0, "vae": 0.0, "text": 0.0, "scheduler": 0.0}
    with (
        timed(type(pipe.job_scheduler(job)), "step", totals, "scheduler"),
        timed(pipe.transformer, "forward", totals, "transformer"),
        timed(pipe.vae, "encode", totals, "vae"),
        timed(pipe.vae, "decode", totals, "vae"),
        timed(pipe.text_encoder, "forward", totals, "text"),
    ):
        call()  # warm-up (and the modality prompt cache, as in real use)
        for key in totals:
            totals[key] = 0.0
        start = time.perf_counter()
        call()
        totals["total"] = time.perf_counter() - start
    totals["own"] = totals["total"] - totals["transformer"] - totals["vae"] - totals["text"]
    totals["per_step"] = totals["transformer"] / steps
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "medium"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    print(
        f"torch={torch.__version__} threads={torch.get_num_threads()}; tiny, medium: steps={args.steps}, guidance=5 "
        "(2 passes/step); demo: the folder's defaults"
    )
    header = f"{'config':<8}{'job':<12}{'total s':>9}{'transformer s':>15}{'vae s':>8}{'text s':>8}{'own s':>8}"
    print(header + f"{'own %':>8}{'of it scheduler %':>19}{'step s':>8}{'peak RSS MiB':>14}")
    for name in args.configs:
        transformer_config, frames, height, width = CONFIGS[name]
        video = torch.rand(frames, 3, height, width)
        if name == "demo":
            folder = UnityVideoPipeline.from_pretrained(DEMO_MODEL)
            components, common, length = folder.components, {}, {}
        else:
            components = tiny_pipeline_components(transformer_config=transformer_config, randomize=False)
            common = dict(height=height, width=width, num_inference_steps=args.steps, guidance_scale=5.0)
            length = dict(num_frames=frames)
        jobs = {
            "joint": (UnityVideoPipeline, lambda p: p("a red ball", modality="depth", **length, **common)),
            "control": (
                UnityVideoControlPipeline,
                lambda p: p("a red ball", control_video=video, modality="depth", **common),
            ),
            "perception": (UnityVideoPerceptionPipeline, lambda p: p(video=video, modality="depth", **common)),
        }
        for job, (pipeline_class, call) in jobs.items():
            pipe = pipeline_class.from_pipe(folder) if name == "demo" else pipeline_class(**components)
            pipe.set_progress_bar_config(disable=True)
            steps = pipe.job_defaults(job)["num_inference_steps"] if name == "demo" else args.steps
            t = run(pipe, lambda: call(pipe), steps, job)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{name:<8}{job:<12}{t['total']:>9.2f}{t['transformer']:>15.2f}{t['vae']:>8.2f}{t['text']:>8.3f}"
                f"{t['own']:>8.3f}{100 * t['own'] / t['total']:>7.1f}%{100 * t['scheduler'] / t['total']:>18.1f}%"
                f"{t['per_step']:>8.3f}{peak:>14.0f}"
            )


if __name__ == "__main__":
    main()
