"""diffusers' step caches on the two-stream model: what each saves, and what it costs in the demo model's metrics.

    python -m unityvideo_diffusers.shapesworld.world --output data/demo-world --train 0 --eval 40 --seed 0 --demo-world
    python -m unityvideo_diffusers.shapesworld.world --output data/calibration --train 8 --eval 0 --seed 1 --demo-world
    python benchmarks/step_caches.py --data data/demo-world/eval --calibration data/calibration/train --steps 20
    python benchmarks/step_caches.py --data data/demo-world/eval --calibration data/calibration/train --steps 20 --timing

Each job samples with UniPC (at the folder's flow shift, or `--flow-shift`) at `--steps`, without guidance, uncached
and under each cache: FirstBlockCache at three thresholds, MagCache with ratios calibrated on this model for each job
(on clips apart from the held-out ones, averaged), and TaylorSeer (its blocks' attention and feed-forward outputs
forecast between full steps). Quality is `unityvideo eval`'s metrics on the held-out clips; speed (`--timing`, apart,
on an idle machine) is the time spent inside the transformer and the wall time of a call on one clip, both against
the uncached run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from sampling_defaults import clip_folders, first_clip, save_atomically

from unityvideo_diffusers import (
    DEMO_MODEL,
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
)
from unityvideo_diffusers.schedulers import scheduler_by_name
from unityvideo_diffusers.shapesworld.evaluation import calibrate_shape_reader, evaluate, scene_prompt
from unityvideo_diffusers.shapesworld.world import read_world
from unityvideo_diffusers.video_io import load_frames


JOBS = ("perception", "control", "joint")


def job_call(pipe: UnityVideoPipeline, job: str, clip: Path, steps: int):
    """One call of `job` on `clip` at `steps` UniPC steps, without guidance."""
    prompt = scene_prompt(json.loads((clip / "scene.json").read_text()))
    settings = dict(num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    if job == "perception":
        runner = UnityVideoPerceptionPipeline.from_pipe(pipe)
        return lambda: runner(video=load_frames(clip / "rgb"), modality="depth", **settings)
    if job == "control":
        runner = UnityVideoControlPipeline.from_pipe(pipe)
        video = load_frames(clip / "depth")
        return lambda: runner(prompt, control_video=video, modality="depth", guidance_scale=1.0, **settings)
    return lambda: pipe(prompt, modality="segmentation", guidance_scale=1.0, **settings)


def load(model: str, flow_shift: float | None) -> UnityVideoPipeline:
    """The folder's pipeline, sampling with UniPC at `flow_shift` (None: the folder's)."""
    pipe = UnityVideoPipeline.from_pretrained(model)
    pipe.scheduler = scheduler_by_name("unipc", pipe.scheduler, flow_shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def calibrate_mag_ratios(
    model: str, job: str, calibration: str, steps: int, flow_shift: float | None, clips: int = 4
) -> list[float]:
    """MagCache's per-step residual magnitude ratios for `job`, averaged over `clips` calibration clips."""
    pipe = load(model, flow_shift)
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    runs = []
    for clip in clip_folders(calibration)[:clips]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            job_call(pipe, job, clip, steps)()
        runs.append(json.loads(re.findall(r"^\[.*\]$", printed.getvalue(), re.MULTILINE)[-1]))
    return [float(r) for r in np.mean(runs, axis=0)]


def caches(mag_ratios: list[float], steps: int) -> dict:
    return {
        "none": None,
        "first-block 0.05": FirstBlockCacheConfig(threshold=0.05),
        "first-block 0.1": FirstBlockCacheConfig(threshold=0.1),
        "first-block 0.2": FirstBlockCacheConfig(threshold=0.2),
        "mag 0.06": MagCacheConfig(mag_ratios=mag_ratios, num_inference_steps=steps, threshold=0.06),
        "mag 0.12": MagCacheConfig(mag_ratios=mag_ratios, num_inference_steps=steps, threshold=0.12),
        # diffusers' default identifiers ("^blocks.*attn", matched whole) miss Wan's attn1 / attn2: name them
        "taylorseer": TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=max(2, steps // 5),
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[r"blocks\.\d+\.(attn1|attn2|ffn)"],
        ),
    }


def speed(
    model: str, job: str, config, clip: Path, steps: int, rounds: int, flow_shift: float | None
) -> tuple[float, float]:
    """Median seconds (inside the transformer, whole call) of a call with `config` on `clip`."""
    pipe = load(model, flow_shift)
    if config is not None:
        pipe.transformer.enable_cache(config)
    forward, inside = pipe.transformer.forward, [0.0]

    def timed_forward(*args, **kwargs):
        started = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - started

    pipe.transformer.forward = timed_forward
    call = job_call(pipe, job, clip, steps)
    call()  # warm-up
    transformer_times, call_times = [], []
    for _ in range(rounds):
        inside[0] = 0.0
        started = time.perf_counter()
        call()
        call_times.append(time.perf_counter() - started)
        transformer_times.append(inside[0])
    return statistics.median(transformer_times), statistics.median(call_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--data", required=True, help="a ShapesWorld eval split (held-out clips)")
    parser.add_argument("--calibration", required=True, help="ShapesWorld clips apart from --data, for MagCache")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-shift", type=float, help="UniPC's shift (default: the folder's)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per setting")
    parser.add_argument("--results", type=Path, default=Path("step_caches.json"))
    parser.add_argument("--timing", action="store_true", help="time the calls (on an otherwise idle machine)")
    args = parser.parse_args()

    results = json.loads(args.results.read_text()) if args.results.exists() else {}

    def save(key: str, value) -> None:
        results[key] = value
        save_atomically(results, args.results)

    shift = "" if args.flow_shift is None else f"|shift{args.flow_shift:g}"

    def key(job: str, name: str, which) -> str:  # which: a seed's metrics, or "time"
        return f"{job}|{name}|{args.steps}|{which}{shift}"

    reader = calibrate_shape_reader(UnityVideoPipeline.from_pretrained(args.model).vae, read_world(args.data))
    for job in args.jobs:
        ratios_key = f"{job}|mag_ratios|{args.steps}{shift}"
        if ratios_key not in results:
            save(ratios_key, calibrate_mag_ratios(args.model, job, args.calibration, args.steps, args.flow_shift))
        for name, config in caches(results[ratios_key], args.steps).items():
            if args.timing:  # always measured afresh: a timing belongs to the machine's state of the moment
                transformer_seconds, seconds = speed(
                    args.model, job, config, first_clip(args.data), args.steps, args.rounds, args.flow_shift
                )
                save(key(job, name, "time"), {"transformer": transformer_seconds, "call": seconds})
                print(f"{job:<12}{name:<18} transformer {transformer_seconds:.3f} s, call {seconds:.3f} s", flush=True)
                continue
            if key(job, name, args.seed) not in results:
                save(
                    key(job, name, args.seed),
                    evaluate(
                        args.model,
                        args.data,
                        args.steps,
                        "unipc",
                        args.limit,
                        args.seed,
                        (job,),
                        1.0,
                        reader,
                        "cpu",
                        config,
                        args.flow_shift,
                    ),
                )
                print(key(job, name, args.seed), flush=True)

    for job in args.jobs:
        none = results.get(key(job, "none", args.seed))
        if none is None:
            continue
        metrics = sorted(m for m in none if m.startswith(f"{job}/") and m.count("/") == 1)
        print(f"\n{job}, UniPC {args.steps} steps, seed {args.seed}")
        print("time: against the uncached call, inside the transformer and for the whole call (--timing)")
        print(f"{'cache':<18}{'transformer':>12}{'call':>7}" + "".join(f"{m.split('/')[1][:16]:>18}" for m in metrics))
        base = results.get(key(job, "none", "time"))
        for name in caches([1.0], args.steps):
            scores, time_ = (results.get(key(job, name, which)) for which in (args.seed, "time"))
            ratios = [time_[k] / base[k] if time_ and base else float("nan") for k in ("transformer", "call")]
            cells = "".join(f"{scores[m]:>18.3f}" if scores else f"{'-':>18}" for m in metrics)
            print(f"{name:<18}{ratios[0]:>12.2f}{ratios[1]:>7.2f}" + cells)


if __name__ == "__main__":
    main()
