"""Training throughput (samples/s) and peak memory: LoRA vs full fine-tuning, with and without gradient checkpointing.

    python benchmarks/training_throughput.py            # the "small" transformer, 17 frames at 128 x 128, CPU

Each variant runs in its own process on the same tiny dataset (the latent cache is built once, before timing);
throughput is measured from the training log over the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from transformer_forward import SIZES


VARIANTS = {
    "lora": dict(training_mode="lora", gradient_checkpointing=False),
    "lora + checkpointing": dict(training_mode="lora", gradient_checkpointing=True),
    "full": dict(training_mode="full", gradient_checkpointing=False),
    "full + checkpointing": dict(training_mode="full", gradient_checkpointing=True),
}


def make_world(root: Path, frames: int, size: int) -> dict:
    import csv

    from unityvideo_diffusers import UnityVideoPipeline
    from unityvideo_diffusers.testing import tiny_pipeline_components
    from unityvideo_diffusers.video_io import save_video

    config = {**SIZES["small"][0], "in_channels": 48, "out_channels": 48}
    UnityVideoPipeline(**tiny_pipeline_components(transformer_config=config, randomize=False)).save_pretrained(
        root / "model"
    )
    rng = np.random.default_rng(0)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "depth"])
        writer.writeheader()
        for i in range(4):
            save_video(rng.random((frames, size, size, 3)), root / f"rgb{i}")
            save_video(rng.random((frames, size, size, 3)), root / f"depth{i}")
            writer.writerow({"video": f"rgb{i}", "prompt": f"clip {i}", "depth": f"depth{i}"})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_world(root, args.frames, args.size)
        base = dict(
            model_path=str(root / "model"),
            dataset_path=str(root / "metadata.csv"),
            num_frames=args.frames,
            height=args.size,
            width=args.size,
            batch_size=args.batch_size,
            max_steps=args.steps,
            checkpoint_every=10_000,
            log_every=1,
            ema_decay=0.0,
            lr_warmup_steps=0,
        )
        cache = root / "cache_run" / "latent_cache"
        rows = []
        for name, variant in VARIANTS.items():
            save = root / name.replace(" ", "_").replace("+", "and")
            save.mkdir()
            if cache.exists():  # reuse the encoded data: time training alone
                (save / "latent_cache").symlink_to(cache)
            config_path = save / "config.yaml"
            config_path.write_text(yaml.safe_dump({**base, **variant, "save_path": str(save)}))
            script = (
                "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            command = [sys.executable, "-m", "unityvideo_diffusers", "train", "--config", str(config_path), "--quiet"]
            peak_kib = int(
                subprocess.run(
                    [sys.executable, "-c", script, *command], check=True, capture_output=True, text=True
                ).stdout.split()[-1]
            )
            if not cache.exists():
                cache.parent.mkdir(exist_ok=True)
                (save / "latent_cache").rename(cache)
            log = [json.loads(line) for line in (save / "train_log.jsonl").read_text().splitlines()]
            seconds = log[-1]["elapsed"] - log[0]["elapsed"]
            samples = (log[-1]["step"] - log[0]["step"]) * args.batch_size
            rows.append((name, samples / seconds, peak_kib / 1024))

    print(
        f"{args.steps} steps, batch {args.batch_size}, {args.frames} frames at {args.size}x{args.size}, small transformer (CPU)"
    )
    print(f"{'variant':<24}{'samples/s':>11}{'peak RSS MiB':>14}")
    for name, throughput, peak in rows:
        print(f"{name:<24}{throughput:>11.2f}{peak:>14.0f}")


if __name__ == "__main__":
    main()
