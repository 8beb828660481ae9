"""Encoding the training data with 1 process vs 2: wall time of the encoding, and whether the caches are identical.

    python benchmarks/encode_processes.py            # 24 clips (RGB + depth), 33 frames at 256 x 256, tiny VAE, CPU

Each count of processes runs `unityvideo train --encode-only` under `accelerate launch` (one CPU thread per process,
as one GPU per process), into a fresh cache folder. The clips are folders of PNG frames, read in the process itself:
mp4 files are decoded by ffmpeg subprocesses with threads of their own, which would blur what one process uses. The same command is then run again on the finished cache: that
second run's time (start-up, loading the pipeline, reading the index) is subtracted, so what is compared is the
encoding itself. The machine may be shared: compare the ratio measured in one run, not times across runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def make_world(root: Path, clips: int, frames: int, size: int) -> Path:
    from unityvideo_diffusers import UnityVideoPipeline
    from unityvideo_diffusers.testing import tiny_pipeline_components
    from unityvideo_diffusers.video_io import save_video

    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "depth"])
        writer.writeheader()
        for i in range(clips):
            save_video(rng.random((frames, size, size, 3)), root / f"rgb{i}")  # no suffix: a folder of PNG frames
            save_video(rng.random((frames, size, size, 3)), root / f"depth{i}")
            writer.writerow({"video": f"rgb{i}", "prompt": f"clip {i}", "depth": f"depth{i}"})
    return root / "metadata.csv"


def encode(root: Path, csv_path: Path, cache: Path, processes: int, frames: int, size: int) -> float:
    """Seconds of one `--encode-only` launch with `processes` CPU processes."""
    config = root / f"encode_{processes}.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(
                model_path=str(root / "model"),
                dataset_path=str(csv_path),
                save_path=str(root / f"run_{processes}"),
                latent_cache=str(cache),
                num_frames=frames,
                height=size,
                width=size,
            )
        )
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    launch += ["--multi_gpu"] if processes > 1 else []
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--num_cpu_threads_per_process", "1"]
    command = [*launch, "-m", "unityvideo_diffusers.training", "--config", str(config), "--encode-only", "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    return time.perf_counter() - started


def same_files(first: Path, second: Path) -> bool:
    names = sorted(p.name for p in first.iterdir())
    return names == sorted(p.name for p in second.iterdir()) and all(
        (first / name).read_bytes() == (second / name).read_bytes() for name in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        csv_path = make_world(root, args.clips, args.frames, args.size)
        results = {}
        for processes in (1, 2):
            cache = root / f"cache_{processes}"
            total = encode(root, csv_path, cache, processes, args.frames, args.size)
            overhead = encode(root, csv_path, cache, processes, args.frames, args.size)  # the cache is complete
            results[processes] = {"launch_s": round(total, 2), "overhead_s": round(overhead, 2)}
            results[processes]["encoding_s"] = round(total - overhead, 2)
        ratio = results[2]["encoding_s"] / results[1]["encoding_s"]
        print(
            json.dumps(
                {
                    "clips": args.clips,
                    "video": [args.frames, args.size, args.size],
                    "processes": results,
                    "two_over_one": round(ratio, 3),
                    "caches_identical": same_files(root / "cache_1", root / "cache_2"),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
