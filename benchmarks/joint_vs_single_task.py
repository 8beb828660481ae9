"""Does joint multi-task training help? The paper's central claim, at toy scale, on ShapesWorld.

    python benchmarks/joint_vs_single_task.py --work models/shapesworld-demo.work --steps 3000

Two transformer runs from the demo recipe's untrained starting point (`--work` is the recipe's work folder: its
`initial/` pipeline, ShapesWorld splits and latent cache), with the recipe's batch, learning rate, schedule and seed:
- joint: the multi-task recipe, every task (joint generation, control, estimation) x every ShapesWorld modality;
- single: depth estimation only (the perception task, depth).
Same number of optimizer steps, so the single run sees no other samples and 20x as many depth-estimation samples (the
joint run draws perception with weight 0.25, then one of 5 modalities). Reported:
- convergence: the held-out depth-estimation loss (velocity MSE at fixed t and noise, logged by the trainer) over
  the steps, for both runs, beside the depth-estimation batches each run has seen by then (expected counts): per
  step the comparison is one of compute, per depth batch one of data;
- final quality: depth AbsRel and delta1 of the perception pipeline (EMA weights) on held-out clips.
Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path


VARIANTS = {"joint": {}, "single": dict(task="perception", modalities=["depth"])}


def held_out_subset(eval_csv: Path, rows: int, output: Path) -> Path:
    """The first `rows` rows of the eval split, as a CSV whose paths still resolve."""
    with open(eval_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        kept = [next(reader) for _ in range(rows)]
        fields = reader.fieldnames
    for row in kept:
        for column in fields:
            if column != "prompt" and row[column]:
                row[column] = str((eval_csv.parent / row[column]).resolve())
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return output


def depth_estimation_share(config, csv_path: Path) -> float:
    """Expected share of a run's batches that train depth estimation, from its task and modality weights."""
    if config.task == "multi":
        task_share = config.task_weights.get("perception", 0.0) / sum(config.task_weights.values())
    else:
        task_share = float(config.task == "perception")
    with open(csv_path, newline="") as handle:
        modalities = config.modalities or [c for c in next(csv.reader(handle)) if c not in ("video", "prompt")]
    weights = config.modality_weights or dict.fromkeys(modalities, 1.0)
    return task_share * weights.get("depth", 0.0) / sum(weights.get(m, 0.0) for m in modalities)


def depth_curve(log_path: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    return [(r["step"], r["held_out"]["perception/depth"]) for r in records if "held_out" in r]


def main() -> None:
    from unityvideo_diffusers import UnityVideoPipeline, UnityVideoTransformer3DModel
    from unityvideo_diffusers.shapesworld.evaluation import evaluate
    from unityvideo_diffusers.shapesworld.recipe import train_config
    from unityvideo_diffusers.training import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="the demo recipe's work folder")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--held-out-rows", type=int, default=12, help="eval clips for the held-out loss")
    parser.add_argument("--eval-clips", type=int, default=10, help="eval clips for the final depth metrics")
    parser.add_argument("--output", default="joint_vs_single_task.json")
    args = parser.parse_args()

    work = Path(args.work)
    runs = work / "joint_vs_single"
    held_out = held_out_subset(
        work / "shapesworld" / "eval" / "metadata.csv", args.held_out_rows, runs / "held_out.csv"
    )
    results = {"steps": args.steps}
    for name, overrides in VARIANTS.items():
        save = runs / name
        if save.exists():
            shutil.rmtree(save)
        config = train_config(
            work,
            save,
            args.steps,
            latent_cache=str(work / "run" / "latent_cache"),
            held_out_dataset_path=str(held_out),
            held_out_loss_every=max(1, args.steps // 10),
            checkpoint_every=args.steps,
            **overrides,
        )
        train(config, progress=True)
        share = depth_estimation_share(config, Path(config.dataset_path))
        pipe = UnityVideoPipeline.from_pretrained(work / "initial")
        pipe.transformer = UnityVideoTransformer3DModel.from_pretrained(save / "final_ema" / "transformer")
        pipe.save_pretrained(save / "pipeline")
        metrics = evaluate(
            save / "pipeline", work / "shapesworld" / "eval", limit=args.eval_clips, jobs=("perception",)
        )
        results[name] = {
            "held_out_depth_loss": depth_curve(save / "train_log.jsonl"),
            "depth_batch_share": share,
            "depth_abs_rel": metrics["perception/depth_abs_rel"],
            "depth_delta1": metrics["perception/depth_delta1"],
        }
    Path(args.output).write_text(json.dumps(results, indent=2))

    joint_share, single_share = results["joint"]["depth_batch_share"], results["single"]["depth_batch_share"]
    print(f"held-out depth-estimation loss after N steps ({args.steps} in all), and the depth batches seen by then")
    print(f"{'step':>6} {'joint':>8} {'batches':>8} {'single':>8} {'batches':>8}")
    for (step, joint), (_, single) in zip(
        results["joint"]["held_out_depth_loss"], results["single"]["held_out_depth_loss"]
    ):
        print(f"{step:>6} {joint:>8.4f} {step * joint_share:>8.0f} {single:>8.4f} {step * single_share:>8.0f}")
    for metric in ("depth_abs_rel", "depth_delta1"):
        print(f"{metric:<14} joint {results['joint'][metric]:.3f}   single {results['single'][metric]:.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
