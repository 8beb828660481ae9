"""Peak memory of converting a released-layout checkpoint, against its size and its largest tensor.

    python benchmarks/conversion_memory.py            # a synthetic ~1.1 GB bf16 checkpoint in a temp folder

Each step runs in its own process and its peak RSS is read from the OS. For scale, the same file is also
round-tripped the plain way (`safetensors.torch.load_file` + `save_file`), and a process that only imports
the package gives the baseline.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unityvideo_diffusers.conversion import diffusers_to_released_key, expected_parameters, transformer_config
from unityvideo_diffusers.models.safetensors_stream import write_safetensors


# ~1.1 GB in bf16: 5B-like blocks at a third of the width
CONFIG = dict(
    num_attention_heads=8,
    attention_head_dim=128,
    num_layers=32,
    ffn_dim=4096,
    in_channels=48,
    out_channels=48,
    text_dim=1024,
    freq_dim=256,
)


def make_checkpoint(path: Path) -> tuple[int, int]:
    """Write a random released-layout checkpoint tensor by tensor; returns (bytes, largest tensor bytes)."""
    shapes = expected_parameters(transformer_config([], {**CONFIG, "modalities": ["depth", "raft"]}))
    specs = {diffusers_to_released_key(name): (torch.bfloat16, shape) for name, shape in shapes.items()}
    generator = torch.Generator().manual_seed(0)
    write_safetensors(path, specs, lambda name: torch.randn(specs[name][1], generator=generator).to(torch.bfloat16))
    largest = max(torch.Size(shape).numel() * 2 for _, shape in specs.values())
    return path.stat().st_size, largest


def peak_rss_of(command: list[str]) -> tuple[int, float]:
    """Run `command` in a fresh process; return its peak resident set (bytes) and wall time."""
    script = (
        "import resource, subprocess, sys, time; start = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - start)"
    )
    output = subprocess.run([sys.executable, "-c", script, *command], check=True, capture_output=True, text=True)
    rss, seconds = output.stdout.split()
    return int(rss), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where to write the synthetic files (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        folder = Path(folder)
        checkpoint = folder / "synthetic_released.safetensors"
        size, largest = make_checkpoint(checkpoint)
        (folder / "config.json").write_text(json.dumps(CONFIG))

        python = sys.executable
        rows = {
            "import only (baseline)": [python, "-c", "import unityvideo_diffusers.conversion"],
            "unityvideo convert": [
                python,
                "-m",
                "unityvideo_diffusers",
                "convert",
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(folder / "converted"),
                "--transformer-config",
                str(folder / "config.json"),
                "--max-shard-size",
                "500MB",
                "--quiet",
            ],
            "unityvideo convert (back)": [
                python,
                "-m",
                "unityvideo_diffusers",
                "convert",
                "--checkpoint",
                str(folder / "converted"),
                "--output",
                str(folder / "back.safetensors"),
                "--quiet",
            ],
            "safetensors load_file + save_file": [
                python,
                "-c",
                "import sys; from safetensors.torch import load_file, save_file; "
                "save_file(load_file(sys.argv[1]), sys.argv[2])",
                str(checkpoint),
                str(folder / "plain.safetensors"),
            ],
        }
        results = {name: peak_rss_of(command) for name, command in rows.items()}

    baseline = results["import only (baseline)"][0]
    print(
        f"checkpoint {size / 2**30:.2f} GiB, largest tensor {largest / 2**20:.1f} MiB, "
        f"RUSAGE_SELF of this script {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    print(f"{'step':<36}{'peak RSS MiB':>14}{'above baseline MiB':>20}{'/ file size':>13}{'seconds':>9}")
    for name, (rss, seconds) in results.items():
        above = rss - baseline
        print(f"{name:<36}{rss / 2**20:>14.0f}{above / 2**20:>20.0f}{above / size:>13.3f}{seconds:>9.1f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
