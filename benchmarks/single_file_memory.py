"""Peak memory of `from_single_file` at the released size: a random checkpoint with the real 5B names and shapes.

    python benchmarks/single_file_memory.py --workdir /big/disk     # writes a 10.02 GB file there, then loads it

The checkpoint is streamed to disk tensor by tensor by this script's own writer (random bf16 values, the released
layout's 837 tensors), its SHA-256 is taken, and then a fresh process runs
`UnityVideoTransformer3DModel.from_single_file(file, torch_dtype=torch.bfloat16, sha256=...)`, checksum included.
Its peak RSS, read from the OS, must stay under the bf16 weights plus 1 GiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unityvideo_diffusers import UnityVideoTransformer3DModel
from unityvideo_diffusers.conversion import diffusers_to_released_key, sha256_of, write_safetensors


RELEASED_MODALITIES = ["depth", "densepose", "raft", "segmentation", "skeleton"]
LOAD = """
import resource, sys, time, torch
from unityvideo_diffusers import UnityVideoTransformer3DModel
start = time.perf_counter()
model = UnityVideoTransformer3DModel.from_single_file(sys.argv[1], torch_dtype=torch.bfloat16, sha256=sys.argv[2],
                                                      progress=False)
parameters = sum(p.numel() for p in model.parameters())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - start, parameters)
"""


def write_random_release(path: Path, seed: int = 0) -> int:
    """A random checkpoint in the released 5B layout, written one tensor at a time; returns its bf16 weight bytes."""
    config = UnityVideoTransformer3DModel.released_config([], {"modalities": RELEASED_MODALITIES})
    shapes = UnityVideoTransformer3DModel.expected_parameters(config)
    specs = {diffusers_to_released_key(name): (torch.bfloat16, shape) for name, shape in shapes.items()}
    generator = torch.Generator().manual_seed(seed)
    write_safetensors(
        path, specs, lambda name: torch.randn(specs[name][1], generator=generator, dtype=torch.bfloat16) * 0.02
    )
    return sum(2 * torch.Size(shape).numel() for _, shape in specs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where to write the 10 GB file (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        checkpoint = Path(folder) / "random_5b_released_layout.safetensors"
        started = time.perf_counter()
        weight_bytes = write_random_release(checkpoint)
        written = time.perf_counter()
        digest = sha256_of(checkpoint, progress=False)
        output = subprocess.run(
            [sys.executable, "-c", LOAD, str(checkpoint), digest], check=True, capture_output=True, text=True
        )
        rss, seconds, parameters = output.stdout.split()
        size = checkpoint.stat().st_size

    limit = weight_bytes + 2**30
    print(
        f"file {size:,} bytes ({size / 2**30:.2f} GiB), {int(parameters) / 1e9:.3f} B parameters, written in "
        f"{written - started:.0f} s"
    )
    print(
        f"from_single_file (bf16, SHA-256 checked): peak RSS {int(rss) / 2**30:.2f} GiB in {float(seconds):.0f} s; "
        f"bound: bf16 weights {weight_bytes / 2**30:.2f} GiB + 1 GiB = {limit / 2**30:.2f} GiB"
    )
    if int(rss) > limit:
        sys.exit("FAILED: the peak is above the bound")


if __name__ == "__main__":
    main()
