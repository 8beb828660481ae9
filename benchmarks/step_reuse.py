"""What reusing work across denoising steps saves: the transformer's time per guided step with and without it.

    python benchmarks/step_reuse.py                        # medium config (1152 joint tokens), texts of 512 tokens
    python benchmarks/step_reuse.py --size small --rounds 9

One guided step of the joint job (conditional and unconditional text, a modality prompt) three ways:
- plain: two forwards, every text projected at each (`reuse_text_projections = False` in a pipeline);
- reuse: two forwards inside `cache_text_projections()`, the texts' keys and values projected once per call, as the
  pipelines do by default (bit-identical);
- reuse+batch: one forward of twice the batch (`batch_guidance = True`; ~1e-6 relative from two passes).
The projections are made before timing (a call's first step makes them; over a call of n steps their cost is
1/n of one plain step's text work). The settings alternate within each round in one process, so that load on a
shared machine hits them alike; the ratios to plain are per round (median, min, max), by wall clock and by the
process's CPU time (less sensitive to other processes taking the cores).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformer_forward import SIZES

from unityvideo_diffusers import UnityVideoTransformer3DModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="medium", choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--text-len", type=int, default=512, help="tokens per text (512 in Wan and the release)")
    args = parser.parse_args()

    config, (frames, height, width) = SIZES[args.size]
    torch.manual_seed(0)
    model = UnityVideoTransformer3DModel(**config).eval()
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, config["in_channels"], frames, height, width, generator=generator)
    modality_latents = torch.randn(latents.shape, generator=generator)
    timestep = torch.tensor([700.0])
    texts = {
        name: torch.randn(1, args.text_len, config["text_dim"], generator=generator)
        for name in ("prompt", "negative", "modality")
    }
    both = torch.cat([texts["prompt"], texts["negative"]])  # made once per call by the pipeline, too

    plain_model = copy.deepcopy(model)  # never inside the cache context

    # per batch size: the inputs, made once (the modality prompt is one tensor for the whole call in a pipeline)
    batches = {
        batch: [torch.cat([x] * batch) for x in (latents, timestep, modality_latents, texts["modality"])]
        for batch in (1, 2)
    }

    def forward(text, batch=1, model=model):
        latents, timestep, modality_latents, modality_text = batches[batch]
        model(latents, timestep, text, modality_latents, modality_text, modality="depth")

    settings = {
        "plain": lambda: [forward(texts[name], model=plain_model) for name in ("prompt", "negative")],
        "reuse": lambda: [forward(texts[name]) for name in ("prompt", "negative")],
        "reuse+batch": lambda: forward(both, batch=2),
    }
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    seconds = {clock: {name: [] for name in settings} for clock in clocks}
    with torch.no_grad(), model.cache_text_projections():
        for step in settings.values():  # warm-up; the cache gets the texts' projections
            step()
        for _ in range(args.rounds):
            for name, step in settings.items():
                start = {clock: read() for clock, read in clocks.items()}
                step()
                for clock, read in clocks.items():
                    seconds[clock][name].append(read() - start[clock])

    tokens = 2 * frames * (height // 2) * (width // 2)
    print(
        f"torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} tokens={tokens} "
        f"text_len={args.text_len} rounds={args.rounds} fp32, one guided step (cond + uncond)"
    )
    print(f"{'clock':<6}{'setting':<14}{'step s (median)':>17}{'ratio median':>14}{'min':>8}{'max':>8}")
    for clock, by_setting in seconds.items():
        for name, times in by_setting.items():
            ratios = [t / plain for t, plain in zip(times, by_setting["plain"])]
            print(
                f"{clock:<6}{name:<14}{statistics.median(times):>17.3f}{statistics.median(ratios):>14.3f}"
                f"{min(ratios):>8.3f}{max(ratios):>8.3f}"
            )


if __name__ == "__main__":
    main()
