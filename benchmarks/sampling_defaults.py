"""How few transformer evaluations each job needs to sample as well as the authors' procedure, on the demo model.

    python -m unityvideo_diffusers.shapesworld.world --output data/demo-world --train 0 --eval 40 --seed 0 --demo-world
    python benchmarks/sampling_defaults.py --data data/demo-world/eval --results sweep.json    # quality, resumable
    python benchmarks/sampling_defaults.py --data data/demo-world/eval --timing                # time of the calls

The authors sample with Euler on a linear grid, 20 steps, no guidance (`reference`, 20, 1): 20 evaluations. Each
candidate (scheduler, steps, guidance[, flow shift when not the folder's]) is scored with `unityvideo eval`'s metrics
on the held-out clips at every seed. A candidate *reaches* the authors' procedure when, on every metric of its job,
its mean over the seeds is no worse than the procedure's mean by more than the procedure's seed-to-seed spread (max -
min over the seeds). The cheapest candidate that reaches it, counted in transformer evaluations (steps, twice that
under guidance), is the job's pick; among equals, the folder's own flow shift first. Results are kept in `--results`
after every evaluation, so a stopped sweep resumes where it stopped.

`--timing` times each job's default call (the model folder's `sampling_defaults`, no settings passed) against the
authors' procedure on one held-out clip, alternating the two in one process, and prints the ratio per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from unityvideo_diffusers import (
    DEMO_MODEL,
    LinearFlowMatchEulerScheduler,
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
)
from unityvideo_diffusers.shapesworld.evaluation import calibrate_shape_reader, evaluate, scene_prompt
from unityvideo_diffusers.shapesworld.world import read_world
from unityvideo_diffusers.video_io import load_frames


AUTHORS = ("reference", 20, 1.0)
# (scheduler, steps, guidance); estimation runs without guidance
CANDIDATES = {
    "perception": [AUTHORS, *[("unipc", n, 1.0) for n in (1, 2, 3, 4, 6, 8)], ("euler", 4, 1.0)],
    "control": [AUTHORS, *[("unipc", n, 1.0) for n in (2, 3, 4, 6, 8, 10)], ("unipc", 4, 3.0), ("euler", 8, 1.0)],
    "joint": [
        AUTHORS,
        *[("unipc", n, 1.0) for n in (2, 3, 4, 6, 8, 10)],
        ("unipc", 4, 3.0),
        ("euler", 8, 1.0),
        ("dpm", 3, 1.0),
        ("dpm", 4, 1.0),
        *[("unipc", 3, 1.0, shift) for shift in (2.0, 5.0, 7.0, 10.0)],  # the folder's shift is 3
    ],
}
LOWER_IS_BETTER = ("abs_rel", "flow_epe", "normal_degrees")  # parts of metric names


def key(job: str, candidate: tuple, seed: int) -> str:
    scheduler, steps, guidance, *shift = candidate
    return f"{job}|{scheduler}|{steps}|{guidance:g}|{seed}" + "".join(f"|shift{value:g}" for value in shift)


def label(candidate: tuple) -> str:
    scheduler, steps, guidance, *shift = candidate
    return f"{scheduler}, {steps}, {guidance:g}" + "".join(f", shift {value:g}" for value in shift)


def evaluations(candidate: tuple) -> int:
    """Transformer evaluations of one call: a guided step evaluates twice."""
    _, steps, guidance, *_ = candidate
    return steps * (2 if guidance > 1 else 1)


def clip_folders(data: str | Path) -> list[Path]:
    """A ShapesWorld split's clips, in order."""
    return sorted(p for p in Path(data).iterdir() if (p / "scene.json").is_file())


def first_clip(data: str | Path) -> Path:
    return clip_folders(data)[0]


def save_atomically(results: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(temporary, path)


def sweep(model: str, data: str, seeds: list[int], jobs: list[str], limit: int | None, path: Path) -> dict:
    results = json.loads(path.read_text()) if path.exists() else {}
    reader = None
    for seed in seeds:
        for job in jobs:
            for candidate in sorted(CANDIDATES[job], key=lambda c: (c != AUTHORS, evaluations(c))):  # cheap first
                if key(job, candidate, seed) in results:
                    continue
                if job == "joint" and reader is None:
                    vae = UnityVideoPipeline.from_pretrained(model).vae
                    reader = calibrate_shape_reader(vae, read_world(data))
                scheduler, steps, guidance, *shift = candidate
                started = time.perf_counter()
                scores = evaluate(
                    model,
                    data,
                    steps,
                    scheduler,
                    limit,
                    seed,
                    (job,),
                    guidance_scale=guidance,
                    shape_reader=reader,
                    flow_shift=shift[0] if shift else None,
                )
                results[key(job, candidate, seed)] = scores
                save_atomically(results, path)
                print(f"{key(job, candidate, seed):<32} {time.perf_counter() - started:6.0f} s", flush=True)
    return results


def job_metrics(scores: dict, job: str) -> list[str]:
    """The job's metrics, without the per-class breakdowns (`joint/shape_accuracy/cube`)."""
    return sorted(name for name in scores if name.startswith(f"{job}/") and name.count("/") == 1)


def report(results: dict, seeds: list[int], jobs: list[str]) -> None:
    for job in jobs:
        per_candidate = {}
        for candidate in CANDIDATES[job]:
            runs = [results.get(key(job, candidate, seed)) for seed in seeds]
            if all(runs):
                per_candidate[candidate] = {m: [run[m] for run in runs] for m in job_metrics(runs[0], job)}
        if AUTHORS not in per_candidate:
            print(f"{job}: the authors' procedure is not scored at every seed yet")
            continue
        reference = per_candidate[AUTHORS]
        spread = {m: max(values) - min(values) for m, values in reference.items()}
        metrics = list(reference)
        print(f"\n{job} (mean over seeds {seeds}; * = worse than the authors' mean by more than their spread)")
        print(
            f"{'scheduler, steps, guidance':<28}{'evals':>6}" + "".join(f"{m.split('/')[1][:16]:>18}" for m in metrics)
        )
        print(f"{'authors spread':<34}" + "".join(f"{spread[m]:>18.3f}" for m in metrics))
        reaching = []
        for candidate, values in per_candidate.items():
            cells, reaches = [], True
            for m in metrics:
                mean, target = np.mean(values[m]), np.mean(reference[m])
                lower = any(part in m for part in LOWER_IS_BETTER)
                worse = (mean - target if lower else target - mean) > spread[m] + 1e-12
                reaches &= not worse
                cells.append(f"{mean:>17.3f}{'*' if worse else ' '}")
            print(f"{label(candidate):<28}{evaluations(candidate):>6}" + "".join(cells))
            if reaches:
                reaching.append(candidate)
        pick = min(reaching, key=lambda c: (evaluations(c), c[2], len(c), c[1]))
        print(f"pick: {label(pick)} ({evaluations(pick)} evaluations against the authors' 20)")


def timing(model: str, data: str, rounds: int, threads: int) -> None:
    """Each job's default call against the authors' procedure on the first held-out clip, alternating."""
    torch.set_num_threads(threads)
    clip = first_clip(data)
    prompt = scene_prompt(json.loads((clip / "scene.json").read_text()))
    pipe = UnityVideoPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    calls = {
        "joint": (UnityVideoPipeline, dict(prompt=prompt, modality="segmentation")),
        "control": (
            UnityVideoControlPipeline,
            dict(prompt=prompt, control_video=load_frames(clip / "depth"), modality="depth"),
        ),
        "perception": (UnityVideoPerceptionPipeline, dict(video=load_frames(clip / "rgb"), modality="depth")),
    }
    print(f"torch={torch.__version__} threads={threads} rounds={rounds}; seconds per call, median over rounds")
    print(f"{'job':<12}{'default':>10}{'authors':>10}{'ratio median':>14}{'min':>8}{'max':>8}  default settings")
    for job, (pipeline_class, arguments) in calls.items():
        default = pipeline_class.from_pipe(pipe)  # untouched: the folder's defaults decide everything
        authors = pipeline_class.from_pipe(pipe)
        authors.scheduler = LinearFlowMatchEulerScheduler()  # an assigned scheduler wins over the folder's
        defaults = default.job_defaults(job)
        size = dict(height=defaults["height"], width=defaults["width"])
        if job != "perception":
            size["num_frames"] = defaults["num_frames"]
        settings = {
            "default": (default, {}),
            "authors": (authors, dict(num_inference_steps=20, guidance_scale=1.0, **size)),
        }
        times = {"default": [], "authors": []}
        for round_ in range(rounds + 1):  # the first round warms up
            for setting in ("default", "authors") if round_ % 2 else ("authors", "default"):
                runner, extra = settings[setting]
                started = time.perf_counter()
                runner(**arguments, **extra, generator=torch.Generator().manual_seed(0))
                if round_:
                    times[setting].append(time.perf_counter() - started)
        ratios = [d / a for d, a in zip(times["default"], times["authors"])]
        shown = {k: v for k, v in defaults.items() if k in ("num_inference_steps", "guidance_scale", "scheduler")}
        print(
            f"{job:<12}{statistics.median(times['default']):>10.3f}{statistics.median(times['authors']):>10.3f}"
            f"{statistics.median(ratios):>14.3f}{min(ratios):>8.3f}{max(ratios):>8.3f}  {shown}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--data", required=True, help="a ShapesWorld eval split (held-out clips)")
    parser.add_argument("--results", type=Path, default=Path("sampling_defaults.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument("--timing", action="store_true", help="time the default calls instead")
    parser.add_argument("--report", action="store_true", help="only print the table of what --results holds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.timing:
        timing(args.model, args.data, args.rounds, args.threads)
        return
    if args.report:
        report(json.loads(args.results.read_text()), args.seeds, args.jobs)
        return
    report(sweep(args.model, args.data, args.seeds, args.jobs, args.limit, args.results), args.seeds, args.jobs)


if __name__ == "__main__":
    main()
