"""Our transformer's forward against the authors' model code, in one process, alternating calls, as a ratio.

The authors' `UnifiedWanModel` (their repository's `unityvideo/model.py`) runs on DiffSynth-Studio's Wan DiT
(`diffsynth==2.1.12`). Neither is a dependency of this project; install them apart, e.g.

    mkdir -p /tmp/unityvideo_ref/unityvideo          # put their model.py here
    pip download --no-deps diffsynth==2.1.12 -d /tmp/dl
    pip install --no-deps --target /tmp/unityvideo_ref/site /tmp/dl/diffsynth-*.whl einops

    python benchmarks/authors_forward.py /tmp/unityvideo_ref --site /tmp/unityvideo_ref/site

DiffSynth's package `__init__` imports its whole model zoo (torchvision, loaders); only
`diffsynth.models.wan_video_dit` is needed, so `diffsynth` and `diffsynth.core` are registered as bare packages.
The authors' random weights go through our converter, so both models compute the same function: the script
checks the outputs agree (relative error) before timing. Default size: the medium config (the released model's head
dim 128, 1152 joint tokens = a 33 x 256 x 256 video), fp32, text of 512 tokens as in the release, 2 threads.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformer_forward import SIZES

from unityvideo_diffusers import UnityVideoTransformer3DModel
from unityvideo_diffusers.conversion import convert_released_to_diffusers


def import_authors_model(code: Path, site: Path | None):
    """The authors' `UnifiedWanModel` and DiffSynth's `WanModel`, importing only DiffSynth's Wan DiT module."""
    for folder in (site, code):
        if folder is not None:
            sys.path.insert(0, str(folder))
    spec = importlib.util.find_spec("diffsynth")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("diffsynth is not importable: pass --site with the folder it was installed into.")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (("diffsynth", package_dir), ("diffsynth.core", package_dir / "core")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    wan_video_dit = importlib.import_module("diffsynth.models.wan_video_dit")
    authors = importlib.import_module("unityvideo.model")
    return authors.UnifiedWanModel, wan_video_dit.WanModel


def build_pair(config: dict, code: Path, site: Path | None, seed: int):
    """The authors' model with random weights, and ours converted from its state dict."""
    unified_class, wan_class = import_authors_model(code, site)
    torch.manual_seed(seed)
    base = wan_class(
        dim=config["num_attention_heads"] * config["attention_head_dim"],
        in_dim=config["in_channels"],
        ffn_dim=config["ffn_dim"],
        out_dim=config["out_channels"],
        text_dim=config["text_dim"],
        freq_dim=config["freq_dim"],
        eps=1e-6,
        patch_size=(1, 2, 2),
        num_heads=config["num_attention_heads"],
        num_layers=config["num_layers"],
        has_image_input=False,
    )
    authors = unified_class(base).eval()
    with torch.no_grad():  # the added layers start at zero: random weights everywhere, so both streams matter
        for name, parameter in authors.named_parameters():
            if parameter.ndim > 1 or "modality_embeddings" in name:
                parameter.normal_(0.0, 0.02)
    with tempfile.TemporaryDirectory() as folder:
        state = {key: value.contiguous() for key, value in authors.state_dict().items()}
        save_file(state, f"{folder}/released.safetensors")
        convert_released_to_diffusers(
            f"{folder}/released.safetensors",
            f"{folder}/converted",
            transformer_config_overrides=config,
            dtype="fp32",
            transformer_only=True,
            progress=False,
        )
        ours = UnityVideoTransformer3DModel.from_pretrained(f"{folder}/converted").eval()
    return authors, ours


def profile_forwards(forwards: dict, rounds: int = 3) -> str:
    """Milliseconds of own CPU time per forward and operator (the ten largest), each side profiled `rounds` times,
    alternating, so that a drift of the machine's speed falls on both."""
    per_forward = {name: collections.Counter() for name in forwards}
    for index in range(rounds):
        for name in list(forwards) if index % 2 == 0 else reversed(forwards):
            with torch.profiler.profile() as trace:
                forwards[name]()
            for event in trace.key_averages():
                per_forward[name][event.key] += event.self_cpu_time_total / 1e3 / rounds
    largest = sorted(set().union(*per_forward.values()), key=lambda op: -max(c[op] for c in per_forward.values()))
    lines = [f"{'operator':<52}" + "".join(f"{name + ' ms':>12}" for name in forwards)]
    for op in largest[:10]:
        lines.append(f"{op[:51]:<52}" + "".join(f"{per_forward[name][op]:>12.0f}" for name in forwards))
    lines.append(f"{'all':<52}" + "".join(f"{sum(per_forward[name].values()):>12.0f}" for name in forwards))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("code", type=Path, help="folder holding the authors' unityvideo/model.py")
    parser.add_argument("--site", type=Path, default=None, help="folder diffsynth (and einops) were installed into")
    parser.add_argument("--size", default="medium", choices=list(SIZES))
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="ours with compile_repeated_blocks()")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="ours as at every step of a denoising call after the first: inside cache_text_projections(), the "
        "texts' keys and values projected (timed apart, amortised over --steps)",
    )
    parser.add_argument("--steps", type=int, default=20, help="forwards of a call, to amortise one-time costs over")
    parser.add_argument("--profile", action="store_true", help="also print where one forward of each spends its time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config, (frames, height, width) = SIZES[args.size]
    authors, ours = build_pair(config, args.code, args.site, seed=0)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, config["in_channels"], frames, height, width, generator=generator)
    modality_latents = torch.randn(latents.shape, generator=generator)
    timestep = torch.tensor([700.0])
    text = torch.randn(1, args.text_len, config["text_dim"], generator=generator)
    modality_text = torch.randn(1, args.text_len, config["text_dim"], generator=generator)

    def run_authors():
        return authors(latents, modality_latents, timestep, text, modality_text, "depth")

    def run_ours():
        return ours(latents, timestep, text, modality_latents, modality_text, modality="depth", return_dict=False)

    with torch.no_grad(), ours.cache_text_projections() if args.reuse else contextlib.nullcontext():
        expected = run_authors()
        if args.compile:
            ours.compile_repeated_blocks(fullgraph=True)
        start = time.perf_counter()
        actual = run_ours()
        first_call = time.perf_counter() - start
        errors = [((a - e).abs().max() / e.abs().max()).item() for a, e in zip(actual, expected)]

        run_authors()  # warm-up
        start = time.perf_counter()
        run_ours()
        one_time = first_call - (time.perf_counter() - start)  # compiling, projecting the texts
        times = {"authors": [], "ours": []}
        cpu_times = {"authors": [], "ours": []}  # the process's CPU time: less sensitive to other processes
        for index in range(args.pairs):
            order = [("authors", run_authors), ("ours", run_ours)]
            for name, fn in order if index % 2 == 0 else reversed(order):
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
        profile = profile_forwards({"authors": run_authors, "ours": run_ours}) if args.profile else None
    ratios = [ours / authors for ours, authors in zip(times["ours"], times["authors"])]
    cpu_ratios = [ours / authors for ours, authors in zip(cpu_times["ours"], cpu_times["authors"])]

    tokens = 2 * frames * (height // 2) * (width // 2)
    print(
        f"torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} tokens={tokens} "
        f"text_len={args.text_len} fp32 pairs={args.pairs} compile={args.compile} reuse={args.reuse}"
    )
    print(f"relative error ours vs authors: rgb {errors[0]:.1e}, modality {errors[1]:.1e}")
    print(
        f"authors s: median {statistics.median(times['authors']):.3f}  ours s: median {statistics.median(times['ours']):.3f}"
    )
    for clock, values in (("wall", ratios), ("cpu", cpu_ratios)):
        print(
            f"ratio ours/authors ({clock}): median {statistics.median(values):.3f}  min {min(values):.3f}  "
            f"max {max(values):.3f}"
        )
    if profile:
        print(
            f"\nwhere a forward's time goes (own CPU time per operator, mean of 3 profiled forwards each)\n{profile}"
        )
    if args.compile or args.reuse:
        per_call = statistics.median(times["ours"]) * args.steps + one_time
        amortised = per_call / (statistics.median(times["authors"]) * args.steps)
        print(
            f"first call of ours {first_call:.1f} s, {one_time:.1f} s more than a steady one (compiling / projecting "
            f"the texts); over a {args.steps}-forward call, ours / authors = {amortised:.3f}"
        )


if __name__ == "__main__":
    main()
