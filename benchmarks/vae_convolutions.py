"""The demo model's VAE with PyTorch's own choice of 3-D convolution kernel against the pipelines' oneDNN routing.

    python benchmarks/vae_convolutions.py                 # batch 1 and 2, encode and decode, 2 threads
    python benchmarks/vae_convolutions.py --model DIR     # another pipeline folder's VAE

On the CPU, PyTorch runs a float32 3-D convolution at batch 1 on a small input through its reference kernel; the
pipelines run the VAE inside `conv3d_through_onednn`, which sends them to oneDNN on channels-last activations. Both
settings run alternately in one process on the same inputs (a 17-frame clip at the folder's size, as the pipelines
encode it, and its latents); the table gives seconds per call (median), the ratio per round (median, quartiles) and
the largest difference of the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from diffusers import AutoencoderKLWan

from unityvideo_diffusers import DEMO_MODEL
from unityvideo_diffusers.pipelines.pipeline_unityvideo_base import conv3d_through_onednn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--size", type=int, default=64, help="height and width of the clip")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = AutoencoderKLWan.from_pretrained(args.model, subfolder="vae").eval()
    settings = {"pytorch": nullcontext, "onednn": lambda: conv3d_through_onednn(vae)}

    print(f"torch={torch.__version__} threads={args.threads} rounds={args.rounds} clip={args.frames}x{args.size}^2")
    print(f"{'call':<12}{'batch':>6}{'pytorch s':>11}{'onednn s':>10}{'ratio':>8}{'q1 - q3':>15}{'max diff':>10}")
    for batch in args.batches:
        generator = torch.Generator().manual_seed(batch)
        video = torch.rand(batch, 3, args.frames, args.size, args.size, generator=generator) * 2 - 1
        with torch.inference_mode():
            latents = vae.encode(video).latent_dist.mode()
        calls = {
            "encode": lambda: vae.encode(video).latent_dist.mode(),
            "decode": lambda: vae.decode(latents).sample,
        }
        for name, call in calls.items():
            times, outputs = {setting: [] for setting in settings}, {}
            for round_ in range(args.rounds + 2):  # two rounds warm up
                for setting in list(settings) if round_ % 2 else reversed(settings):
                    started = time.perf_counter()  # entering and leaving the routing counts
                    with torch.inference_mode(), settings[setting]():
                        outputs[setting] = call()
                    if round_ >= 2:
                        times[setting].append(time.perf_counter() - started)
            ratios = [ours / theirs for ours, theirs in zip(times["onednn"], times["pytorch"])]
            quartiles = statistics.quantiles(ratios, n=4)
            difference = (outputs["onednn"] - outputs["pytorch"]).abs().max().item()
            print(
                f"{name:<12}{batch:>6}{statistics.median(times['pytorch']):>11.4f}"
                f"{statistics.median(times['onednn']):>10.4f}{statistics.median(ratios):>8.3f}"
                f"{quartiles[0]:>8.3f} - {quartiles[2]:.3f}{difference:>10.1e}"
            )


if __name__ == "__main__":
    main()
