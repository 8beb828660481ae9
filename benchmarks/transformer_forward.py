"""Time UnityVideoTransformer3DModel's forward (and forward + backward) at a few sizes, in fp32 and bf16.

    python benchmarks/transformer_forward.py                 # tiny and small configs, CPU
    python benchmarks/transformer_forward.py --sizes medium --device cuda --dtypes bf16

Prints one table; numbers are medians over `--repeats` runs after a warm-up. Compare rows of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from unityvideo_diffusers import UnityVideoTransformer3DModel


# name: (model config, latent (F, H, W)); medium is 1/4 of the 5B width at a 33 x 256 x 256 video's latent size
SIZES = {
    "tiny": (
        dict(
            num_attention_heads=2,
            attention_head_dim=24,
            num_layers=2,
            ffn_dim=128,
            in_channels=4,
            out_channels=4,
            text_dim=32,
            freq_dim=32,
        ),
        (3, 8, 8),
    ),
    "small": (
        dict(
            num_attention_heads=4,
            attention_head_dim=48,
            num_layers=4,
            ffn_dim=768,
            in_channels=16,
            out_channels=16,
            text_dim=64,
            freq_dim=64,
        ),
        (5, 16, 16),
    ),
    "medium": (
        dict(
            num_attention_heads=6,
            attention_head_dim=128,
            num_layers=8,
            ffn_dim=3584,
            in_channels=48,
            out_channels=48,
            text_dim=512,
            freq_dim=256,
        ),
        (9, 16, 16),
    ),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(size: str, dtype: torch.dtype, device: torch.device, repeats: int, text_len: int) -> dict:
    config, (frames, height, width) = SIZES[size]
    with tempfile.TemporaryDirectory() as folder:  # load as users do, so fp32-kept modules stay fp32
        UnityVideoTransformer3DModel(**config).save_pretrained(folder)
        model = UnityVideoTransformer3DModel.from_pretrained(folder, dtype=dtype).to(device)
    channels, text_dim = config["in_channels"], config["text_dim"]
    latents = torch.randn(1, channels, frames, height, width, device=device, dtype=dtype)
    inputs = dict(
        hidden_states=latents,
        modality_hidden_states=torch.randn_like(latents),
        timestep=torch.tensor([500.0], device=device),
        encoder_hidden_states=torch.randn(1, text_len, text_dim, device=device, dtype=dtype),
        modality_encoder_hidden_states=torch.randn(1, text_len, text_dim, device=device, dtype=dtype),
        modality="depth",
    )

    def forward():
        with torch.no_grad():
            model(**inputs)

    def forward_backward():
        out = model(**inputs)
        (out.sample.float().square().mean() + out.modality_sample.float().square().mean()).backward()
        model.zero_grad(set_to_none=True)

    tokens = 2 * frames * (height // 2) * (width // 2)
    parameters = sum(p.numel() for p in model.parameters())
    return dict(
        size=size,
        dtype=str(dtype).removeprefix("torch."),
        params=f"{parameters / 1e6:.1f}M",
        tokens=tokens,
        forward_ms=1000 * median_seconds(forward, repeats, device),
        train_step_ms=1000 * median_seconds(forward_backward, repeats, device),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-len", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)

    rows = [bench(s, DTYPES[d], device, args.repeats, args.text_len) for s in args.sizes for d in args.dtypes]
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'size':<8}{'dtype':<10}{'params':>9}{'tokens':>8}{'forward ms':>12}{'fwd+bwd ms':>12}{'bwd/fwd':>9}")
    for row in rows:
        print(
            f"{row['size']:<8}{row['dtype']:<10}{row['params']:>9}{row['tokens']:>8}"
            f"{row['forward_ms']:>12.1f}{row['train_step_ms']:>12.1f}{row['train_step_ms'] / row['forward_ms']:>9.2f}"
        )


if __name__ == "__main__":
    main()
