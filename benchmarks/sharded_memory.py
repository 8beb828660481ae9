"""Per-GPU memory of a full fine-tune of the released 5B: DDP, FSDP2, DeepSpeed ZeRO-2/3 on 1, 2, 4 and 8 GPUs,
with and without 8-bit Adam and gradient checkpointing. Computed, not measured: estimates from the real parameter
counts (the released config built on the meta device, which allocates nothing) and the byte counts below.

    python benchmarks/sharded_memory.py                 # a markdown table (docs/training.md)
    python benchmarks/sharded_memory.py --frames 81 --height 480 --width 832

What each GPU holds, bf16 mixed precision (fp32 master weights, as accelerate and DeepSpeed keep them), P parameters:
- DDP: weights 4P, autocast's bf16 copies of them 2P (cached through the forward), gradients 4P, DDP's gradient
  buckets 4P on 2 GPUs or more (a copy: accelerate leaves gradient_as_bucket_view off), Adam's two moments 8P
  (8-bit Adam: 2P).
- FSDP2: weights, gradients and moments sharded, (4 + 4 + 8) P / N (8-bit: 10 P / N), plus the unsharded bf16 copy of
  the blocks being computed (this one and the prefetched next: 2 blocks of weights and 2 of gradients) and of the
  modules outside the blocks (gathered for the whole step).
- ZeRO-2: bf16 weights 2P on every GPU, fp32 master weights, moments and bf16 gradients sharded, (4 + 8 + 2) P / N,
  plus DeepSpeed's reduce buckets (2 x 5e8 elements in bf16, its default).
- ZeRO-3: everything sharded, (2 + 4 + 8 + 2) P / N, plus the same working set as FSDP2.
Activations, batch 1, bf16, both streams (T tokens: the RGB and the modality video's): a block keeps about
12 h + 2 ffn values a token for its backward (norms, q k v, attention output, the feed-forward's two ffn-wide
tensors, residuals); with gradient checkpointing only each block's input (h a token) stays, plus one block's worth
while it is recomputed. Not counted: the CUDA context and allocator slack (~1-3 GB), the text encoder and VAE (the
latent cache is encoded before training and they are freed).
"""

from __future__ import annotations

import argparse

from accelerate import init_empty_weights

from unityvideo_diffusers.models import UnityVideoTransformer3DModel


GB = 1024**3
GPUS = (1, 2, 4, 8)
STRATEGIES = ("DDP", "FSDP2", "ZeRO-2", "ZeRO-3")


def counts() -> dict:
    """Parameters of the released 5B (its default config), of one block, and outside the blocks."""
    with init_empty_weights():
        model = UnityVideoTransformer3DModel()
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    config = model.config
    return dict(
        total=total,
        block=block,
        outside=total - block * config.num_layers,
        layers=config.num_layers,
        hidden=config.num_attention_heads * config.attention_head_dim,
        ffn=config.ffn_dim,
    )


def tokens(frames: int, height: int, width: int) -> int:
    """Transformer tokens of one training sample: both streams, at the VAE's 4x time and 16x space, patches 1x2x2."""
    return 2 * ((frames - 1) // 4 + 1) * (height // 32) * (width // 32)


def model_states(strategy: str, gpus: int, sizes: dict, adam8bit: bool) -> float:
    """Bytes of weights, gradients and optimizer state on one GPU."""
    p, moments = sizes["total"], 2 if adam8bit else 8
    working = 2 * (2 * 2 * sizes["block"]) + 2 * sizes["outside"]  # bf16: 2 blocks' weights and gradients + the rest
    if strategy == "DDP":
        return (4 + 2 + 4 + (4 if gpus > 1 else 0) + moments) * p
    if strategy == "FSDP2":
        return (4 + 4 + moments) * p / gpus + working
    if strategy == "ZeRO-2":
        return 2 * p + (4 + moments + 2) * p / gpus + 2 * 2 * 5e8
    return (2 + 4 + moments + 2) * p / gpus + working


def activations(sizes: dict, token_count: int, checkpointing: bool) -> float:
    per_block = (12 * sizes["hidden"] + 2 * sizes["ffn"]) * 2 * token_count
    if checkpointing:
        return sizes["layers"] * sizes["hidden"] * 2 * token_count + per_block
    return sizes["layers"] * per_block


def table(frames: int, height: int, width: int) -> str:
    sizes = counts()
    token_count = tokens(frames, height, width)
    lines = [
        f"Full fine-tune of the released transformer ({sizes['total'] / 1e9:.3f} B parameters: 30 blocks of "
        f"{sizes['block'] / 1e6:.1f} M, {sizes['outside'] / 1e6:.1f} M outside them), bf16 mixed precision, batch 1 "
        f"at {frames} x {height} x {width} ({token_count} tokens); GiB per GPU, estimates:",
        "",
        "| strategy | 8-bit Adam | grad. ckpt | " + " | ".join(f"{n} GPU" for n in GPUS) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in GPUS) + " |",
    ]
    for strategy in STRATEGIES:
        for adam8bit in (False, True):
            for checkpointing in (False, True):
                cells = [
                    (model_states(strategy, n, sizes, adam8bit) + activations(sizes, token_count, checkpointing)) / GB
                    for n in GPUS
                ]
                flags = ["yes" if adam8bit else "no", "yes" if checkpointing else "no"]
                lines.append(f"| {strategy} | {' | '.join(flags)} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    print(table(args.frames, args.height, args.width))


if __name__ == "__main__":
    main()
